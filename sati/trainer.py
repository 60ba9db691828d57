"""Train SATI on the train split, select on the validation split, and checkpoint every epoch.

``fit`` knows nothing of Ray or MLflow: it takes a ``Reporter``. Runs are repeatable on CPU: each
epoch reseeds dropout and the shuffle order from ``(seed, epoch)``, so a resumed run continues
exactly as an uninterrupted one would.

Output directory (``train.out_dir``)::

    config.yaml                 the resolved pipeline
    metrics.jsonl               one JSON object per epoch
    checkpoints/last.pt (.json) the latest epoch, for --resume
    checkpoints/best.pt (.json) the best epoch by train.selection_metric
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from sati.checkpoint import frozen_identity, load_checkpoint, reconcile_best, restore_model, save_checkpoint
from sati.config import PipelineConfig
from sati.data.dataset import SplitDataset
from sati.data.h5format import DatasetInfo
from sati.data.loaders import load_split_datasets, make_loader
from sati.devices import GpuMonitor, autocast, effective_precision, resolve_device
from sati.losses import LossBreakdown, total_loss
from sati.metrics import is_improvement, regression_metrics
from sati.model import SATI
from sati.reporting import NullReporter, Reporter
from sati.seeding import derive_seed, seed_everything


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, float]
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


def build_model(cfg: PipelineConfig, info: DatasetInfo) -> SATI:
    """SATI sized for the dataset in ``info``."""
    return SATI(cfg.model, cfg.ablation, info.audio_dim, info.video_dim, info.text_feature_dim)


@torch.no_grad()
def predict(
    model: SATI, dataset: SplitDataset, batch_size: int, device: torch.device, precision: str = "auto"
) -> np.ndarray:
    """Predictions [N] for a whole split, in file order."""
    model.eval()
    preds = []
    for batch in make_loader(dataset, batch_size, shuffle=False):
        with autocast(device, precision):
            preds.append(model(batch.to(device)).prediction.float().cpu())
    return torch.cat(preds).numpy()


def split_metrics(
    model: SATI, dataset: SplitDataset, split: str, batch_size: int, device: torch.device, precision: str = "auto"
) -> dict[str, float]:
    """The paper's metrics on one split, keyed ``<split>/<metric>``."""
    return regression_metrics(predict(model, dataset, batch_size, device, precision), dataset.arrays.labels, split)


def fit(
    cfg: PipelineConfig,
    reporter: Reporter | None = None,
    resume: str | Path | None = None,
    datasets: dict[str, SplitDataset] | None = None,
    info: DatasetInfo | None = None,
) -> FitResult:
    """Train per ``cfg`` and return the best epoch's metrics and checkpoint.

    Args:
        reporter: receives progress and each epoch's metrics and checkpoint.
        resume: a checkpoint (``last.pt``) to continue from.
        datasets, info: preloaded ``train``/``valid`` splits (else read from ``cfg.data``).
    """
    reporter = reporter or NullReporter()
    tc = cfg.train
    seed_everything(cfg.seed)
    device = resolve_device(tc.device)
    if datasets is None:
        datasets, info = load_split_datasets(cfg, ("train", "valid"))
    train_set, valid_set = datasets["train"], datasets["valid"]
    model = build_model(cfg, info).to(device)
    optimizer = torch.optim.Adam(model.parameter_groups(tc.lr, tc.text_encoder_lr), weight_decay=tc.weight_decay)

    out_dir = Path(tc.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    frozen = frozen_identity(model, cfg.model.text_encoder)
    precision = effective_precision(device, tc.precision)

    state = {"best_value": None, "best_epoch": 0, "best_metrics": {}, "epochs_since_best": 0, "history": []}
    start_epoch = 1
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location=device)
        restore_model(model, ckpt, resume)
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        start_epoch = ckpt["epoch"] + 1
        if Path(resume).resolve() != last_path.resolve():  # resuming from elsewhere: keep its pair together
            _adopt_pair(Path(resume), ckpt_dir)
        note = reconcile_best(best_path, ckpt, tc.selection_metric)
        if note:
            print(f"note: {note}", file=sys.stderr)
    _rewrite_history(out_dir / "metrics.jsonl", state["history"])

    stopped_early = False
    monitor = GpuMonitor(device).start()  # utilization and peak memory per epoch, on CUDA
    try:
        for epoch in range(start_epoch, tc.epochs + 1):
            started = time.perf_counter()
            train_losses = _train_epoch(model, optimizer, train_set, cfg, device, epoch, reporter)
            metrics = {
                "epoch": epoch,
                **{f"train/{k}": v for k, v in train_losses.items()},
                **split_metrics(model, valid_set, "valid", tc.eval_batch_size, device, tc.precision),
            }
            metrics["time/epoch_s"] = time.perf_counter() - started
            metrics.update(monitor.epoch_metrics())
            value = metrics[tc.selection_metric] if tc.selection_metric in metrics else _unknown_metric(tc, metrics)
            is_best = state["best_epoch"] == 0 or is_improvement(value, state["best_value"], tc.selection_direction)
            if is_best:
                state.update(best_value=value, best_epoch=epoch, best_metrics=metrics, epochs_since_best=0)
            else:
                state["epochs_since_best"] += 1
            stopped_early = bool(tc.patience) and state["epochs_since_best"] >= tc.patience
            metrics[f"best/{tc.selection_metric}"] = state["best_value"]
            metrics["trainer/finished"] = float(stopped_early or epoch == tc.epochs)
            state["history"].append(metrics)
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            common = {
                "epoch": epoch,
                "config": cfg.to_dict(),
                "metrics": metrics,
                "frozen": frozen,
                "precision": precision,
                "missing_modalities": info.missing_modalities,
            }
            model_ref = None
            if is_best:  # best.pt first: last.pt never names a best checkpoint that was not written
                kept = _keep_previous_best(best_path, last_path)
                state["best_sha256"] = save_checkpoint(best_path, model=model, optimizer=None, state={}, **common)
                model_ref = {
                    "file": best_path.name,
                    "sha256": state["best_sha256"],
                }  # its weights are not written twice
            save_checkpoint(last_path, model=model, optimizer=optimizer, state=state, model_ref=model_ref, **common)
            if is_best and kept is not None:
                kept.unlink(missing_ok=True)
            reporter.on_epoch_end(epoch, metrics, last_path, is_best)
            if stopped_early:
                break
    finally:
        monitor.stop()
    return FitResult(
        best_epoch=state["best_epoch"],
        best_metrics=state["best_metrics"],
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        history=state["history"],
        stopped_early=stopped_early,
    )


def _train_epoch(
    model: SATI,
    optimizer,
    dataset: SplitDataset,
    cfg: PipelineConfig,
    device: torch.device,
    epoch: int,
    reporter: Reporter,
) -> dict[str, float]:
    tc = cfg.train
    torch.manual_seed(derive_seed(cfg.seed, "dropout", epoch))
    loader = make_loader(
        dataset,
        tc.batch_size,
        shuffle=True,
        seed=derive_seed(cfg.seed, "shuffle", epoch),
        num_workers=cfg.data.num_workers,
    )
    total = len(loader) if tc.max_steps_per_epoch is None else min(len(loader), tc.max_steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    n_samples = 0
    model.train()
    for step, batch in enumerate(reporter.progress(loader, total, f"epoch {epoch}")):
        if step >= total:
            break
        batch = batch.to(device)
        with autocast(device, tc.precision):
            out = model(batch)
        losses: LossBreakdown = total_loss(out, batch.labels, cfg.loss, cfg.ablation)
        if not torch.isfinite(losses.total):
            terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.as_floats().items())
            raise NonFiniteLossError(f"epoch {epoch}, step {step + 1}: training loss is not finite ({terms})")
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        if tc.clip_mode == "value":
            torch.nn.utils.clip_grad_value_(params, tc.clip)
        elif tc.clip_mode == "norm":
            torch.nn.utils.clip_grad_norm_(params, tc.clip)
        optimizer.step()
        b = len(batch)
        n_samples += b
        for k, v in losses.as_floats().items():
            sums[k] = sums.get(k, 0.0) + v * b
        sums["gate_mean"] = sums.get("gate_mean", 0.0) + float(out.gates.detach().float().mean()) * b
    return {("loss" if k == "total" else k): v / max(n_samples, 1) for k, v in sums.items()}


def _unknown_metric(tc, metrics: dict) -> float:
    valid = sorted(k for k in metrics if k.startswith("valid/"))
    raise ValueError(
        f"train.selection_metric = {tc.selection_metric!r} is not a computed metric; choose one of {', '.join(valid)}"
    )


def _keep_previous_best(best_path: Path, last_path: Path) -> Path | None:
    """Before ``best.pt`` is replaced: if ``last.pt`` takes its weights from it, keep the current file as
    ``best.pt.prev`` (a hard link, no copy) until the new ``last.pt`` is written."""
    if not (best_path.is_file() and last_path.is_file()):
        return None
    meta = json.loads(last_path.with_suffix(".json").read_text()) if last_path.with_suffix(".json").is_file() else {}
    if not meta.get("model_ref"):
        return None
    kept = best_path.with_name(best_path.name + ".prev")
    kept.unlink(missing_ok=True)
    try:
        os.link(best_path, kept)
    except OSError:
        shutil.copy2(best_path, kept)
    return kept


def _adopt_pair(resume: Path, ckpt_dir: Path) -> None:
    """Copy the best checkpoint beside ``resume`` (the one its state names) into this run's folder."""
    for name in ("best.pt", "best.json"):
        src = resume.parent / name
        if src.is_file() and src.resolve() != (ckpt_dir / name).resolve():
            shutil.copy2(src, ckpt_dir / name)


def _rewrite_history(path: Path, history: list[dict]) -> None:
    """metrics.jsonl holds exactly the epochs the checkpoint knows (a resume drops later lines)."""
    path.write_text("".join(json.dumps(m) + "\n" for m in history))
