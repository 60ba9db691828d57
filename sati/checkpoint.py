"""Self-describing checkpoints sized by what trains, written atomically, read with ``weights_only=True``.

A checkpoint holds the epoch, the resolved config, the metrics, library versions, the precision and
device it was trained with, and the **trainable** weights. Parameters that stay frozen for the whole
run (a frozen text encoder) are not written: the checkpoint names where they come from (encoder
name or folder, revision) and their content hash, and loading rebuilds them from there and refuses a
mismatch (``restore_model``).

Two kinds, one format:

- ``best.pt``: the best epoch's weights, for evaluation and promotion (no optimizer state);
- ``last.pt``: what ``--resume`` needs (optimizer state and the trainer's bookkeeping). When the
  last epoch is also the best, its weights are not written twice: ``model_ref`` names ``best.pt``
  and its sha256 instead.

``best.pt`` is written before ``last.pt``, and ``last.pt`` records the sha256 of the ``best.pt`` it
goes with, so a crash between the two writes is recognized on resume (``reconcile_best``).
A JSON sidecar (same name, ``.json``) repeats everything but the tensors for humans and tools.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sati.provenance import file_sha256, versions

FORMAT_VERSION = 2  # 1: full state dicts, still read
READABLE_VERSIONS = (1, 2)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, not a SATI checkpoint, or not the model it claims."""


def atomic_write(path: Path, write) -> str:
    """Write ``path`` through ``write(binary file)`` to a temp file, fsync, rename: all or nothing.
    Returns the sha256 of what was written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        digest = file_sha256(Path(tmp))
        os.replace(tmp, path)
        return digest
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# What trains, and what stays frozen


def frozen_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters that do not train (``requires_grad`` False), in state-dict order."""
    return [name for name, p in model.named_parameters() if not p.requires_grad]


def frozen_sha256(model: torch.nn.Module) -> str:
    """Content hash of the frozen parameters (names, shapes, dtypes, values); cached on the model,
    since they never change during a run."""
    cached = getattr(model, "_sati_frozen_sha256", None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    params = dict(model.named_parameters())
    for name in frozen_names(model):
        t = params[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()
    model._sati_frozen_sha256 = digest
    return digest


def frozen_identity(model: torch.nn.Module, text_encoder: str) -> dict[str, Any] | None:
    """Where the frozen parameters come from and their hash, or None when everything trains."""
    names = frozen_names(model)
    if not names:
        return None
    from sati.pretrained import encoder_revision, resolve_text_encoder

    resolved = resolve_text_encoder(text_encoder)
    return {
        "text_encoder": text_encoder,
        "resolved": str(resolved),
        "revision": encoder_revision(text_encoder),
        "sha256": frozen_sha256(model),
        "tensors": len(names),
    }


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the frozen parameters (buffers are kept: they are small)."""
    frozen = set(frozen_names(model))
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


# --------------------------------------------------------------------------------------------
# Writing and reading


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    config: dict,
    metrics: dict[str, float],
    state: dict[str, Any],
    frozen: dict[str, Any] | None,
    precision: str,
    model_ref: dict[str, str] | None = None,
    missing_modalities: tuple[str, ...] = (),
) -> str:
    """Write ``path`` (and its JSON sidecar) atomically; returns the file's sha256.

    ``state`` is trainer bookkeeping (plain values); ``model_ref`` ({"file", "sha256"}) replaces the
    weights with a reference to a checkpoint beside this one that holds them; ``missing_modalities``
    are those the training data lacked in every sample (inputs without a data file lack them too)."""
    path = Path(path)
    meta = {
        "format_version": FORMAT_VERSION,
        "epoch": epoch,
        "config": config,
        "metrics": metrics,
        "versions": versions(),
        "precision": precision,
        "missing_modalities": list(missing_modalities),
        "frozen": frozen,
        "model_ref": model_ref,
        "state": state,
    }
    payload = {
        **meta,
        "model": None if model_ref else trainable_state(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
    }
    digest = atomic_write(path, lambda f: torch.save(payload, f))
    atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=2, default=str).encode()))
    return digest


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary unpickling); ``model_ref`` resolved."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, foreign, or unsafe content
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") not in READABLE_VERSIONS or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a SATI checkpoint (format_version {FORMAT_VERSION} expected)")
    ckpt.setdefault("frozen", None)
    ckpt.setdefault("precision", None)
    ckpt.setdefault("missing_modalities", [])  # not recorded before per-sample absence
    if ckpt["model"] is None and ckpt.get("model_ref"):
        ckpt["model"] = _referenced_weights(path, ckpt["model_ref"], map_location)
    return ckpt


def read_config(path: str | Path) -> dict:
    """The resolved config embedded in a checkpoint, read with ``weights_only`` and its tensors memory-mapped
    rather than loaded."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path}: not a SATI checkpoint (no config in it)")
    return ckpt["config"]


def _referenced_weights(path: Path, ref: dict[str, str], map_location) -> dict:
    """The weights ``ref`` names: the file beside ``path``, or its kept previous version, by sha256."""
    for candidate in (path.parent / ref["file"], path.parent / (ref["file"] + ".prev")):
        if candidate.is_file() and file_sha256(candidate) == ref["sha256"]:
            return load_checkpoint(candidate, map_location)["model"]
    raise CheckpointError(
        f"{path}: its weights are in {ref['file']} with sha256 {ref['sha256'][:12]}…, "
        f"which is not beside it (or was replaced); cannot resume from it"
    )


def restore_model(model: torch.nn.Module, ckpt: dict, source: str | Path, built_from: str | None = None) -> None:
    """Load ``ckpt``'s weights into a freshly built ``model``: trainable tensors from the checkpoint,
    frozen ones as the model was built (from the named encoder), checked against the recorded hash.
    ``built_from`` names the text encoder the model was built from (default: the one the checkpoint names)."""
    frozen = ckpt.get("frozen")
    if frozen is None:
        model.load_state_dict(ckpt["model"])
        return
    have = frozen_sha256(model)
    if have != frozen["sha256"]:
        raise CheckpointError(
            f"{source}: the frozen text encoder does not match: the checkpoint was trained with "
            f"{frozen['text_encoder']!r} whose frozen weights hash to {frozen['sha256']}, but "
            f"{built_from or frozen['resolved']!r} here hashes to {have}"
        )
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if unexpected or set(missing) != set(frozen_names(model)):
        raise CheckpointError(
            f"{source}: weights do not fit the model (unexpected {sorted(unexpected)[:5]}, "
            f"missing {sorted(set(missing) - set(frozen_names(model)))[:5]})"
        )


def reconcile_best(best_path: Path, resume: dict, metric: str) -> str | None:
    """After a crash between writing ``best.pt`` and ``last.pt``, ``best.pt`` is newer than the
    resumed state: adopt it as the state's best (its weights exist and were evaluated). Returns a
    note when that happened; raises when ``best.pt`` is neither the one the state names nor newer."""
    state = resume["state"]
    expected = state.get("best_sha256")
    if expected is None or not best_path.is_file():
        return None
    actual = file_sha256(best_path)
    if actual == expected:
        return None
    best = load_checkpoint(best_path)
    if best["epoch"] <= resume["epoch"]:
        raise CheckpointError(
            f"{best_path} (epoch {best['epoch']}, sha256 {actual[:12]}…) is not the best checkpoint that "
            f"{best_path.parent / 'last.pt'} goes with (sha256 {expected[:12]}…)"
        )
    state.update(
        best_value=best["metrics"][metric],
        best_epoch=best["epoch"],
        best_metrics=best["metrics"],
        best_sha256=actual,
        epochs_since_best=0,
    )
    return (
        f"{best_path} is from epoch {best['epoch']}, newer than last.pt (epoch {resume['epoch']}): "
        "the run stopped between the two writes; its best is kept"
    )
