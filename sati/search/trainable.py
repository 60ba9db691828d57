"""The Ray Tune function trainable: one trial trains one pipeline and reports each epoch.

``train_trial(config, resolve)`` turns Tune's trial config into a pipeline (``resolve``, one of
``sati.search.trial_configs``), trains it with ``sati.trainer.fit`` on the train and validation splits
only, and reports each epoch to Tune with a checkpoint (``last.pt`` to resume, ``best.pt`` to promote).
This module is the only one that calls ``tune.report`` and ``tune.get_checkpoint``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune

from sati.config import PipelineConfig

# Reported by the trainer: 1.0 on its last epoch (all epochs run, or stopped by patience).
FINISHED = "trainer/finished"
TrialResolver = Callable[[dict[str, Any]], tuple[PipelineConfig, dict[str, str]]]


class TuneReporter:
    """Reports each epoch's metrics and checkpoint files to Tune (no progress bars in trials)."""

    def progress(self, batches, total, desc):
        return batches

    def on_epoch_end(self, epoch, metrics, checkpoint, is_best):
        ckpt_dir = Path(checkpoint).parent
        with tempfile.TemporaryDirectory() as d:
            for name in ("last.pt", "best.pt", "best.json"):
                if (ckpt_dir / name).exists():
                    _link_or_copy(ckpt_dir / name, Path(d) / name)
            node = ray.get_runtime_context().get_node_id()
            tune.report({**_plain(metrics), "node_id": node}, checkpoint=tune.Checkpoint.from_directory(d))


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where possible (Tune copies the directory to storage anyway)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _plain(metrics: dict) -> dict:
    return {k: (float("nan") if v is None else v) for k, v in metrics.items()}


def train_trial(config: dict[str, Any], resolve: TrialResolver) -> None:
    """Ray function trainable: ``resolve(config)`` gives the trial's pipeline."""
    from sati.trainer import fit

    cfg, _ = resolve(config)
    trial_dir = Path(tune.get_context().get_trial_dir())
    cfg = cfg.replace({"train.out_dir": str(trial_dir / "train")})
    gpu = cfg.search.resources.gpu
    if 0 < gpu < 1:  # Ray does not isolate GPU memory between trials that share a GPU
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(gpu * 0.95)
    resume = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            local = trial_dir / "restored"
            local.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(d) / "last.pt", local / "last.pt")
            if (Path(d) / "best.pt").exists():
                (trial_dir / "train" / "checkpoints").mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(d) / "best.pt", trial_dir / "train" / "checkpoints" / "best.pt")
            resume = local / "last.pt"
    datasets, info = _cached_datasets(cfg)
    fit(cfg, TuneReporter(), resume=resume, datasets=datasets, info=info)


_DATA_CACHE: dict = {}


def _cached_datasets(cfg: PipelineConfig):
    """Train/valid splits, read and tokenized once per worker process (trials reuse workers)."""
    from sati.data.loaders import load_split_datasets

    path = Path(cfg.data.path)
    key = (str(path), path.stat().st_mtime_ns, cfg.model.text_encoder, cfg.data.max_text_tokens)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_split_datasets(cfg, ("train", "valid"))
    return _DATA_CACHE[key]
