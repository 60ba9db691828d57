"""Checkpoints sized by what trains, and a checkpoint pair that stays consistent across a crash."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sati.checkpoint import CheckpointError, frozen_names, frozen_sha256, load_checkpoint
from sati.data.h5format import read_info, read_split
from sati.metrics import regression_metrics
from sati.predictor import SATIPredictor
from sati.testing.tiny_encoder import build_tiny_text_encoder
from sati.trainer import build_model, fit


def _state_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def test_a_frozen_encoder_is_named_not_stored_and_the_checkpoint_round_trips(make_config, synth_path):
    cfg = make_config(model={"freeze_text_layers": -1}, train={"epochs": 2})
    result = fit(cfg)
    best = load_checkpoint(result.best_checkpoint)
    frozen = best["frozen"]
    assert frozen["text_encoder"] == cfg.model.text_encoder and len(frozen["sha256"]) == 64
    full = build_model(cfg, read_info(synth_path))
    names = set(frozen_names(full))
    assert names and not names & set(best["model"])  # no frozen tensor is in the file
    frozen_bytes = _state_bytes({k: v for k, v in full.state_dict().items() if k in names})
    assert _state_bytes(best["model"]) == _state_bytes(full.state_dict()) - frozen_bytes
    # it loads back through the named encoder and reproduces the trainer's validation metrics
    predictor = SATIPredictor(result.best_checkpoint, device="cpu")
    valid = read_split(synth_path, "valid")
    again = regression_metrics(predictor.predict_arrays(valid), valid.labels, "valid")
    assert again["valid/mae"] == pytest.approx(best["metrics"]["valid/mae"], abs=1e-5)


def test_a_frozen_part_that_does_not_match_is_refused_naming_both_hashes(make_config, tmp_path):
    cfg = make_config(model={"freeze_text_layers": -1}, train={"epochs": 1})
    result = fit(cfg)
    recorded = load_checkpoint(result.best_checkpoint)["frozen"]["sha256"]
    assert recorded == frozen_sha256(build_model(cfg, read_info(cfg.data.path)))  # the trained encoder's hash
    other = build_tiny_text_encoder(tmp_path / "other-encoder", seed=1)  # same shapes, other weights
    actual = frozen_sha256(build_model(cfg.replace({"model.text_encoder": str(other)}), read_info(cfg.data.path)))
    assert re.fullmatch("[0-9a-f]{64}", actual) and actual != recorded
    with pytest.raises(CheckpointError) as err:
        SATIPredictor(result.best_checkpoint, text_encoder=str(other), device="cpu")
    assert str(err.value) == (
        f"{result.best_checkpoint}: the frozen text encoder does not match: the checkpoint was trained with "
        f"{cfg.model.text_encoder!r} whose frozen weights hash to {recorded}, but {str(other)!r} here hashes to "
        f"{actual}"
    )


def test_no_epoch_writes_more_than_one_model_and_one_optimizer_state(make_config):
    result = fit(make_config(train={"epochs": 3}))
    last, best = load_checkpoint(result.last_checkpoint), load_checkpoint(result.best_checkpoint)
    sidecar = json.loads(result.last_checkpoint.with_suffix(".json").read_text())
    if result.best_epoch == 3:  # the last epoch is the best: last.pt takes its weights from best.pt
        assert sidecar["model_ref"]["file"] == "best.pt"
        raw = torch.load(result.last_checkpoint, weights_only=True)
        assert raw["model"] is None and raw["optimizer"] is not None
        assert all(torch.equal(last["model"][k], best["model"][k]) for k in best["model"])
    else:
        assert sidecar["model_ref"] is None


_CRASHING_RUN = """
import os, signal, sys
from pathlib import Path
import sati.trainer as trainer
from sati.config import from_dict
import json
cfg = from_dict(json.loads(Path(sys.argv[1]).read_text()), "test")
crash_epoch = int(sys.argv[2])
real = trainer.save_checkpoint
def save_then_crash(path, **kw):
    digest = real(path, **kw)
    if kw["epoch"] == crash_epoch:  # the first of the epoch's writes is done: the machine dies now
        os.kill(os.getpid(), signal.SIGKILL)
    return digest
trainer.save_checkpoint = save_then_crash
trainer.fit(cfg)
"""


def test_a_crash_between_the_two_checkpoint_writes_leaves_a_consistent_pair(make_config, tmp_path):
    straight = fit(make_config(train={"epochs": 3, "out_dir": str(tmp_path / "straight")}))
    best_epochs = [h["epoch"] for h in straight.history if h["valid/mae"] == h["best/valid/mae"] and h["epoch"] > 1]
    assert best_epochs, "precondition: some epoch after the first improves the validation MAE"
    crash = best_epochs[0]
    cfg = make_config(train={"epochs": crash, "out_dir": str(tmp_path / "crashed")})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(_CRASHING_RUN))
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "cfg.json"), str(crash)], capture_output=True)
    assert out.returncode == -9, out.stderr[-2000:]

    resumed = fit(cfg, resume=tmp_path / "crashed" / "checkpoints" / "last.pt")
    best = load_checkpoint(resumed.best_checkpoint)
    # the state names the epoch whose weights best.pt holds, and both are the uninterrupted run's
    assert best["epoch"] == resumed.best_epoch == crash
    assert best["metrics"]["valid/mae"] == pytest.approx(straight.history[crash - 1]["valid/mae"], abs=1e-6)
    assert resumed.best_metrics["valid/mae"] == pytest.approx(best["metrics"]["valid/mae"], abs=1e-6)
    assert [h["epoch"] for h in resumed.history] == list(range(1, crash + 1))
    assert np.isfinite(resumed.history[-1]["train/loss"])
