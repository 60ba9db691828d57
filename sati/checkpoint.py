"""Self-describing checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint holds the model and optimizer state, the epoch, the resolved config, the metrics
and library versions, plus the trainer's bookkeeping (best value, history) needed to resume.
A JSON sidecar (same name, ``.json``) repeats everything but the tensors for humans and tools.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sati.provenance import versions

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or not a SATI checkpoint."""


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(binary file)`` to a temp file, fsync, rename: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    config: dict,
    metrics: dict[str, float],
    state: dict[str, Any],
) -> Path:
    """Write ``path`` (and its JSON sidecar) atomically; ``state`` is trainer bookkeeping (plain values)."""
    path = Path(path)
    meta = {
        "format_version": FORMAT_VERSION,
        "epoch": epoch,
        "config": config,
        "metrics": metrics,
        "versions": versions(),
        "state": state,
    }
    payload = {
        **meta,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
    }
    atomic_write(path, lambda f: torch.save(payload, f))
    atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=2, default=str).encode()))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, foreign, or unsafe content
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a SATI checkpoint (format_version {FORMAT_VERSION} expected)")
    return ckpt
