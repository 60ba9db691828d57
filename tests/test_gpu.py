"""The GPU path on CUDA: bf16 autocast training, a bf16 checkpoint reloaded on the GPU, and the memory cap of
trials that share a GPU. Marked ``gpu``: skipped where torch sees no GPU (``tests/conftest.py``);
``benchmarks/gpu_check.py`` times the same path with a roberta-base-sized encoder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sati.checkpoint import load_checkpoint
from sati.data.h5format import read_split
from sati.data.loaders import load_split_datasets
from sati.devices import autocast, effective_precision, resolve_device
from sati.metrics import regression_metrics
from sati.predictor import SATIPredictor
from sati.promote import BF16_METRIC_TOLERANCE, reload_tolerance
from sati.reporting import NullReporter
from sati.trainer import _train_epoch, build_model, fit

pytestmark = pytest.mark.gpu
CONTINUOUS = ("valid/mae", "valid/corr")  # the rest are shares of samples: they move in steps of 1/N


def test_a_bf16_autocast_train_step_on_cuda_is_finite_and_computes_in_bf16(make_config):
    cfg = make_config(train={"device": "cuda", "precision": "bf16", "max_steps_per_epoch": 2})
    device = resolve_device(cfg.train.device)
    assert device.type == "cuda"
    assert effective_precision(device, cfg.train.precision) == "bf16"
    datasets, info = load_split_datasets(cfg, ("train",))
    model = build_model(cfg, info).to(device)
    optimizer = torch.optim.Adam(model.parameter_groups(cfg.train.lr, cfg.train.text_encoder_lr))
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    dtypes = set()
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    try:
        losses = _train_epoch(model, optimizer, datasets["train"], cfg, device, 1, NullReporter())
    finally:
        for h in hooks:
            h.remove()
    assert math.isfinite(losses["loss"]), losses
    assert torch.bfloat16 in dtypes  # the matmuls ran under autocast
    after = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 and bool(torch.isfinite(p).all()) for p in after)  # fp32 master weights
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # Adam stepped
    with autocast(device, "fp32"):  # and fp32 is really fp32
        batch = datasets["train"].collate(list(range(4))).to(device)
        assert model.eval()(batch).prediction.dtype == torch.float32


def test_a_checkpoint_trained_in_bf16_on_cuda_reproduces_its_metrics_when_reloaded_there(make_config, synth_path):
    cfg = make_config(train={"device": "cuda", "precision": "bf16", "epochs": 2})
    result = fit(cfg)
    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt["precision"] == "bf16"
    assert json.loads(result.best_checkpoint.with_suffix(".json").read_text())["precision"] == "bf16"

    predictor = SATIPredictor(result.best_checkpoint, device="cuda")
    assert predictor.device.type == "cuda" and predictor.precision == "bf16"
    reloaded = effective_precision(predictor.device, predictor.cfg.train.precision)
    assert reloaded == "bf16"
    assert reload_tolerance(predictor.precision, reloaded, 1e-3)[1] == "checked in bf16, as trained"

    valid = read_split(synth_path, "valid")
    redone = regression_metrics(predictor.predict_arrays(valid), valid.labels, "valid")
    logged = {k: v for k, v in result.best_metrics.items() if k.startswith("valid/")}
    assert set(CONTINUOUS) <= set(logged)
    for key, value in logged.items():
        # a share of samples may also move by one sample whose prediction sits on a class boundary
        allowed = BF16_METRIC_TOLERANCE + (0 if key in CONTINUOUS else 1 / len(valid.labels))
        assert abs(redone[key] - value) <= allowed, (key, value, redone[key])


class _Context:
    def get_trial_id(self) -> str:
        return "gpu-test"


@pytest.mark.parametrize("share", [0.25, 0.5, 1.0])
def test_trials_that_share_a_gpu_cap_their_memory_to_their_share(make_config, monkeypatch, share):
    """``train_trial`` with ``search.resources.gpu`` < 1 calls ``torch.cuda.set_per_process_memory_fraction``
    (share x 0.95) before training, and the cap holds; a whole GPU is not capped. Tune's context is faked:
    the trial runs in this process, and ``fit`` only looks at the cap."""
    from sati.search import trainable

    cfg = make_config(train={"device": "cuda"}, search={"resources": {"cpu": 1, "gpu": share}})
    real = torch.cuda.set_per_process_memory_fraction
    calls: list[float] = []
    seen: dict = {}

    def spy(fraction, device=None):
        calls.append(fraction)
        real(fraction, device)

    def fake_fit(cfg, reporter, resume=None, datasets=None, info=None):
        seen["fraction"] = torch.cuda.get_per_process_memory_fraction(0)
        if share < 1:  # a little more than the share: refused
            total = torch.cuda.get_device_properties(0).total_memory
            try:
                block = torch.empty(int(total * (share * 0.95 + 0.03)), dtype=torch.uint8, device="cuda")
                seen["over_share"] = "allocated"
                del block
            except torch.OutOfMemoryError:
                seen["over_share"] = "refused"
            torch.cuda.empty_cache()

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", spy)
    monkeypatch.setattr(trainable.tune, "get_context", lambda: _Context())
    monkeypatch.setattr(trainable.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(trainable, "_cached_datasets", lambda cfg: ({}, None))
    monkeypatch.setattr("sati.trainer.fit", fake_fit)
    try:
        trainable.train_trial({}, lambda config: (cfg, {}))
    finally:
        real(1.0)
        torch.cuda.empty_cache()
    if share < 1:
        assert calls == [pytest.approx(share * 0.95)]
        assert seen["fraction"] == pytest.approx(share * 0.95)
        assert seen["over_share"] == "refused"
    else:
        assert calls == []
        assert seen["fraction"] == pytest.approx(1.0)
