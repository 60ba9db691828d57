"""Explicit seeds, passed down: one base seed, derived seeds for epochs, trials and workers."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import torch  # here: ``derive_seed`` serves torch-free modules too (the replay)

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(base: int, *keys: object) -> int:
    """A stable 31-bit seed from a base seed and any keys (e.g. ``derive_seed(336, "epoch", 4)``)."""
    digest = hashlib.sha256(repr((base, *keys)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
