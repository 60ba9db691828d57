"""What every reader returns, and the array helpers they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sati.data.h5format import SPLITS, DataError, SplitArrays
from sati.untrusted import cap_hint, limits, short

SPLIT_ALIASES = {"train": "train", "valid": "valid", "dev": "valid", "val": "valid", "test": "test"}
DEFAULT_AUDIO_DIM, DEFAULT_VIDEO_DIM = 74, 47  # MOSI in MISA's pickles (COVAREP, FACET 4.1)


@dataclass
class Source:
    """A dataset read from another tool's files, ready to check and write."""

    splits: dict[str, SplitArrays]
    name: str
    provenance: dict
    missing_modalities: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)  # what the reader decided, printed by prepare
    inputs: list[Path] = field(default_factory=list)  # the files read (prepare records their sha256)


def split_name(raw: str, source: Path | str) -> str:
    """``train``/``valid``/``test`` for any of the names tools use (``dev``, ``val``)."""
    if not isinstance(raw, str):
        raise DataError(f"{source}: split name {short(raw, 60)} is a {type(raw).__name__}, expected a string")
    key = raw.strip().lower()
    if key not in SPLIT_ALIASES:
        raise DataError(f"{source}: unknown split name {short(raw, 60)}; expected one of {', '.join(SPLIT_ALIASES)}")
    return SPLIT_ALIASES[key]


def video_of(segment_id: str) -> str:
    """``<video>_<clip>`` → video id. Video ids may contain ``_``, so split on the last one."""
    return segment_id.rsplit("_", 1)[0]


def sanitize(x: np.ndarray) -> np.ndarray:
    """float32 copy with NaN and ±inf set to 0 (MMSA stores -inf in audio)."""
    x = np.asarray(x, dtype=np.float32)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def pad_stack(seqs: Sequence[np.ndarray], dim: int, t_max: int | None = None, *, what: str = "") -> np.ndarray:
    """List of [L_i, D] → [N, T, D] float32, zero past each L_i (T = max L_i, at least 1).

    The longest sample sets T for all: ``DataError`` (naming ``what``) when [N, T, D] exceeds the
    ``array_bytes`` cap."""
    t = t_max or max([len(s) for s in seqs] + [1])
    need = len(seqs) * t * dim * 4
    if need > limits().array_bytes:
        raise DataError(
            f"{what}: padding {len(seqs)} samples to the longest one ({t} steps of {dim} features) needs {need} "
            f"bytes, over the cap of {limits().array_bytes} for one array; {cap_hint('array_bytes')}"
        )
    out = np.zeros((len(seqs), t, dim), dtype=np.float32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def pool_to_length(frames: np.ndarray, n: int) -> np.ndarray:
    """Average [F, D] frames into ``n`` contiguous, near-equal windows → [n, D].

    Windows are ``floor(linspace(0, F, n + 1))``; a window left empty (F < n) takes the frame at its
    start. F = 0 gives zeros.
    """
    f, d = frames.shape
    if f == 0:
        return np.zeros((n, d), dtype=np.float32)
    edges = np.floor(np.linspace(0, f, n + 1)).astype(np.int64)
    csum = np.concatenate([np.zeros((1, d)), np.cumsum(frames, axis=0, dtype=np.float64)])
    width = edges[1:] - edges[:-1]
    out = (csum[edges[1:]] - csum[edges[:-1]]) / np.maximum(width, 1)[:, None]
    empty = width == 0
    out[empty] = frames[np.minimum(edges[:-1][empty], f - 1)]
    return out.astype(np.float32)


def zeros_modality(n: int, t: int, dim: int) -> np.ndarray:
    """An absent modality: zeros [N, T, D]."""
    if dim < 1:
        raise DataError(f"the dimension of an absent modality must be >= 1, got {dim}")
    return np.zeros((n, t, dim), dtype=np.float32)


def order_splits(splits: dict[str, SplitArrays]) -> dict[str, SplitArrays]:
    return {s: splits[s] for s in SPLITS if s in splits} | {s: v for s, v in splits.items() if s not in SPLITS}


def text_only_split(ids: list[str], text: list[str], labels: np.ndarray, audio_dim: int, video_dim: int) -> SplitArrays:
    """A split with real text and labels and absent audio/video: zeros [N, 1, D], every length 1, marked absent."""
    n = len(ids)
    return SplitArrays(
        ids=list(ids),
        text=list(text),
        labels=np.asarray(labels, dtype=np.float32),
        lengths=np.ones(n, np.int32),
        audio=zeros_modality(n, 1, audio_dim),
        video=zeros_modality(n, 1, video_dim),
        present=np.tile([True, False, False], (n, 1)),
    )


TEXT_ONLY_NOTE = (
    "audio and video absent: each filled with one zero step per sample "
    "(audio {audio_dim}-d, video {video_dim}-d; the model learns from text only)"
)
