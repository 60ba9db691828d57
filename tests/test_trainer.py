"""The trainer: learning, repeatability, resume, checkpoints, ablations, failures."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from sati.checkpoint import CheckpointError, load_checkpoint
from sati.data.h5format import read_split, write_dataset
from sati.data.synth import generate
from sati.trainer import NonFiniteLossError, fit


def test_same_seed_same_metrics_and_resume_continues_exactly(make_config, tmp_path):
    three = make_config(train={"epochs": 3, "out_dir": str(tmp_path / "a")})
    again = make_config(train={"epochs": 3, "out_dir": str(tmp_path / "b")})
    first, second = fit(three), fit(again)
    assert first.history[-1]["valid/mae"] == second.history[-1]["valid/mae"]
    assert [h["train/loss"] for h in first.history] == [h["train/loss"] for h in second.history]

    # Stop after 2 epochs, then resume from the last checkpoint to 3 epochs.
    two = make_config(train={"epochs": 2, "out_dir": str(tmp_path / "c")})
    partial = fit(two)
    assert load_checkpoint(partial.last_checkpoint)["epoch"] == 2
    resumed = fit(make_config(train={"epochs": 3, "out_dir": str(tmp_path / "c")}), resume=partial.last_checkpoint)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[-1]["valid/mae"] == pytest.approx(first.history[-1]["valid/mae"], abs=1e-6)
    lines = (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_checkpoints_are_self_describing_and_best_follows_validation(make_config):
    cfg = make_config(train={"epochs": 3, "patience": 0})
    result = fit(cfg)
    best = load_checkpoint(result.best_checkpoint)
    maes = [h["valid/mae"] for h in result.history]
    assert best["epoch"] == result.best_epoch == 1 + int(np.argmin(maes))
    assert best["config"]["train"]["epochs"] == 3 and best["config"]["seed"] == cfg.seed
    assert best["metrics"]["valid/mae"] == pytest.approx(min(maes))
    assert {"torch", "transformers", "sati"} <= set(best["versions"])
    assert not any(k.startswith("test/") for h in result.history for k in h)  # test split sealed
    sidecar = json.loads(result.best_checkpoint.with_suffix(".json").read_text())
    assert sidecar["epoch"] == best["epoch"]
    assert not list(result.best_checkpoint.parent.glob("*.tmp"))


def test_unsafe_or_broken_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {}, "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt: cannot read checkpoint"):
        load_checkpoint(evil)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(pickle.dumps([1, 2, 3])[:5])
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(broken)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_early_stopping_on_patience(make_config):
    # lr so small that validation cannot improve for long: stops after `patience` flat epochs.
    result = fit(make_config(train={"epochs": 20, "patience": 1, "lr": 1.0e-9}))
    assert result.stopped_early
    assert len(result.history) < 20 and len(result.history) == result.best_epoch + 1


@pytest.mark.parametrize(
    "ablation", [{"til": False}, {"gate": False}, {"adversarial": False}], ids=["no-til", "no-gate", "no-al"]
)
def test_ablations_train(make_config, ablation):
    result = fit(make_config(ablation=ablation, train={"epochs": 1}))
    h = result.history[-1]
    assert np.isfinite(h["valid/mae"])
    if ablation.get("til") is False:
        assert h["train/temporal"] == 0.0
    if ablation.get("adversarial") is False:
        assert h["train/domain"] == 0.0
    if ablation.get("gate") is False:
        assert h["train/gate_mean"] == 1.0


def test_gate_forms_and_margin_forms_train(make_config):
    for model, loss in (
        ({"gate": "sign"}, {"margin_form": "cosface"}),
        ({"gate": "sigmoid"}, {"domain_reduction": "sum"}),
    ):
        result = fit(make_config(model=model, loss=loss, train={"epochs": 1}))
        assert np.isfinite(result.history[-1]["train/loss"])


def test_precomputed_text_features(tmp_path, make_config):
    path = tmp_path / "feat.h5"
    splits = generate("mosi", scale=0.1, text_feature_dim=24)
    write_dataset(path, splits, name="feat", provenance={})
    result = fit(make_config(data={"path": str(path)}, model={"text_encoder": "precomputed"}, train={"epochs": 1}))
    assert np.isfinite(result.history[-1]["valid/mae"])


def test_nonfinite_loss_stops_with_reason(tmp_path, make_config):
    splits = generate("mosi", scale=0.05)
    # a corrupt feature file: finite values (non-finite ones are refused when read) that overflow float32
    splits["train"].audio[:, 0, :] = np.finfo(np.float32).max
    path = tmp_path / "inf.h5"
    write_dataset(path, splits, name="inf", provenance={})
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1: training loss is not finite \(total=nan"):
        fit(make_config(data={"path": str(path)}, train={"epochs": 1}))


def test_training_never_reads_the_test_split(tmp_path, make_config):
    splits = generate("mosi", scale=0.05)
    path = tmp_path / "sealed.h5"
    write_dataset(path, splits, name="sealed", provenance={})
    import h5py

    with h5py.File(path, "a") as f:  # make the test split unreadable
        del f["test/audio"]
    result = fit(make_config(data={"path": str(path)}, train={"epochs": 1}))
    assert result.best_epoch == 1
    with pytest.raises(Exception, match="test/audio"):
        read_split(path, "test")
