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
    """Reports each epoch's metrics to Tune (no progress bars in trials), with a checkpoint only when
    the trial's best improves or every ``checkpoint_every`` epochs: ``best.pt`` (the weights, once)
    and ``last.pt`` (optimizer state; its weights are ``best.pt``'s when the epoch is the best)."""

    def __init__(self, checkpoint_every: int = 0):
        self.checkpoint_every = checkpoint_every

    def progress(self, batches, total, desc):
        return batches

    def on_epoch_end(self, epoch, metrics, checkpoint, is_best):
        report = {**_plain(metrics), "node_id": ray.get_runtime_context().get_node_id()}
        if not (is_best or (self.checkpoint_every and epoch % self.checkpoint_every == 0)):
            tune.report({**report, "storage/checkpoint_mb": 0.0})
            return
        ckpt_dir = Path(checkpoint).parent
        with tempfile.TemporaryDirectory(dir=ckpt_dir.parent) as d:
            for name in CHECKPOINT_FILES:
                if (ckpt_dir / name).exists():
                    _link_or_copy(ckpt_dir / name, Path(d) / name)
            # what this report copies to the search's storage (a trial's storage cost, epoch by epoch)
            report["storage/checkpoint_mb"] = sum(f.stat().st_size for f in Path(d).iterdir()) / 1e6
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(d))


# What a reported checkpoint holds; ``last.*`` are deleted from a trial's final checkpoint once it
# can no longer resume (``sati.search.callbacks``).
CHECKPOINT_FILES = ("best.pt", "best.json", "last.pt", "last.json")
RESUME_FILES = ("last.pt", "last.json")


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where possible (Tune copies the directory to storage anyway)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _plain(metrics: dict) -> dict:
    return {k: (float("nan") if v is None else v) for k, v in metrics.items()}


def train_trial(config: dict[str, Any], resolve: TrialResolver) -> None:
    """Ray function trainable: ``resolve(config)`` gives the trial's pipeline.

    The trainer works in a scratch folder on the worker's local disk, not under the search's storage:
    the only copy in storage is the checkpoint Tune keeps. The folder goes when the trial ends."""
    from sati.trainer import fit

    cfg, _ = resolve(config)
    work = Path(tempfile.mkdtemp(prefix=f"sati-trial-{tune.get_context().get_trial_id()}-"))
    try:
        cfg = cfg.replace({"train.out_dir": str(work)})
        gpu = cfg.search.resources.gpu
        if 0 < gpu < 1:  # Ray does not isolate GPU memory between trials that share a GPU
            import torch

            if torch.cuda.is_available():
                torch.cuda.set_per_process_memory_fraction(gpu * 0.95)
        resume = None
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as d:
                (work / "checkpoints").mkdir(parents=True, exist_ok=True)
                for name in CHECKPOINT_FILES:
                    if (Path(d) / name).exists():
                        shutil.copy2(Path(d) / name, work / "checkpoints" / name)
            if (work / "checkpoints" / "last.pt").exists():  # an emptied old checkpoint: start afresh
                resume = work / "checkpoints" / "last.pt"
        datasets, info = _cached_datasets(cfg)
        fit(cfg, TuneReporter(cfg.search.checkpoint_every), resume=resume, datasets=datasets, info=info)
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
