"""MMSA pickles (``MOSI/Processed/aligned_50.pkl``, ``unaligned_50.pkl``; likewise MOSEI).

Top level: ``{"train" | "valid" | "dev" | "test": split}``; each split is a dict of arrays:
``raw_text`` [N] str, ``id`` [N] ``"video$_$clip"``, ``text`` [N, 50, 768] BERT features,
``text_bert`` [N, 3, 50] (BERT ids; attention mask; segment ids), ``audio`` [N, L_a, D_a],
``vision`` [N, L_v, D_v], ``regression_labels`` [N]; unaligned files add ``audio_lengths`` and
``vision_lengths``.

What the canonical file gets:
- ids ``video_clip`` (``$_$`` → ``_``, as in the SDK and ``label.csv``); text = ``raw_text`` (to be
  re-tokenized: ``text_bert`` holds BERT WordPiece ids); labels = ``regression_labels``;
- ``text`` → ``text_features``, their lengths = the ``text_bert`` attention-mask row sum;
- audio/video with -inf, +inf and NaN set to 0;
- aligned files have no lengths: each sample's A/V length is its ``text_bert`` mask row sum (the
  length MMSA's own models use for aligned data), or the full padded length without ``text_bert``;
- unaligned files (L_a ≠ L_v) are refused unless ``pool_unaligned``: then each sample's real audio and
  video frames are average-pooled to its text length (mask row sum), i.e. one step per BERT token,
  the time axis of aligned_50.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sati.data.h5format import DataError, SplitArrays
from sati.ingest.readers.common import Source, order_splits, pool_to_length, sanitize, split_name
from sati.ingest.safe_pickle import load_pickle

REQUIRED = ("raw_text", "id", "audio", "vision", "regression_labels")


def read_mmsa(path: str | Path, *, pool_unaligned: bool = False) -> Source:
    """Read an MMSA pickle into canonical splits."""
    path = Path(path)
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict of splits (train/valid/test), found {type(data).__name__}")
    notes: list[str] = []
    splits = {}
    for raw_name, d in data.items():
        if not isinstance(d, dict):
            raise DataError(f"{path}: split {raw_name!r} is a {type(d).__name__}, expected a dict of arrays")
        splits[split_name(raw_name, path)] = _split(path, str(raw_name), d, pool_unaligned, notes)
    pooled = any(note.startswith("unaligned") for note in notes)
    return Source(
        splits=order_splits(splits),
        name=_dataset_name(path),
        provenance={"format": "mmsa", "unaligned_pooled": pooled},
        notes=sorted(set(notes)),
        inputs=[path],
    )


def _split(path: Path, raw: str, d: dict, pool_unaligned: bool, notes: list[str]) -> SplitArrays:
    for key in REQUIRED:
        if key not in d:
            raise DataError(
                f"{path}: '{raw}/{key}' missing (an MMSA split has {', '.join(REQUIRED)}, and usually text, text_bert)"
            )
    labels = np.asarray(d["regression_labels"], dtype=np.float32)
    n = len(labels)
    labels = labels.reshape(n, -1)[:, 0]
    for key in ("raw_text", "id", "audio", "vision", "text", "text_bert", "audio_lengths", "vision_lengths"):
        if key in d and len(d[key]) != n:
            raise DataError(f"{path}: '{raw}/{key}' has {len(d[key])} rows but '{raw}/regression_labels' has {n}")
    audio, video = sanitize(d["audio"]), sanitize(d["vision"])
    if audio.ndim != 3 or video.ndim != 3:
        raise DataError(
            f"{path}: '{raw}/audio' and '{raw}/vision' must be [N, T, D]; got {audio.shape} and {video.shape}"
        )

    text_len = None
    if "text_bert" in d:
        bert = np.asarray(d["text_bert"])
        if bert.ndim != 3 or bert.shape[1] < 2:
            raise DataError(f"{path}: '{raw}/text_bert' must be [N, 3, L] (ids; mask; segments), got {bert.shape}")
        text_len = np.maximum(np.rint(bert[:, 1]).sum(1), 1).astype(np.int32)  # [N]
    text_features = text_lengths = None
    if "text" in d and np.ndim(d["text"]) == 3:
        text_features = sanitize(d["text"])
        full = np.full(n, text_features.shape[1], np.int32)
        text_lengths = full if text_len is None else np.minimum(text_len, full)

    unaligned = "audio_lengths" in d or "vision_lengths" in d or audio.shape[1] != video.shape[1]
    if unaligned:
        if not pool_unaligned:
            raise DataError(
                f"{path}: '{raw}' is unaligned (audio {audio.shape[1]} steps, vision {video.shape[1]}); SATI's "
                "gate needs one time axis. Use aligned_50.pkl, or pass --pool-unaligned to average-pool "
                "each sample's audio and video to its text length"
            )
        a_len = _lengths(d, "audio_lengths", audio)
        v_len = _lengths(d, "vision_lengths", video)
        target = text_len if text_len is not None else np.maximum(np.minimum(a_len, v_len), 1)
        t = int(target.max())
        audio = _pool_all(audio, a_len, target, t)
        video = _pool_all(video, v_len, target, t)
        lengths = target.astype(np.int32)
        notes.append(
            "unaligned audio/video average-pooled to each sample's text length (text_bert mask row sum)"
            if text_len is not None
            else "unaligned audio/video average-pooled to min(audio, vision length)"
        )
    else:
        t = audio.shape[1]
        if text_len is not None:
            lengths = np.minimum(text_len, t).astype(np.int32)
            notes.append("aligned file: audio/video lengths = text_bert attention-mask row sum")
        else:
            lengths = np.full(n, t, np.int32)
            notes.append("aligned file without text_bert: audio/video lengths = full padded length")
        keep = (np.arange(t)[None, :] < lengths[:, None])[..., None]
        audio, video = audio * keep, video * keep

    ids = [_str(x).replace("$_$", "_") for x in d["id"]]
    text = [_str(x) for x in d["raw_text"]]
    return SplitArrays(
        ids=ids,
        text=text,
        labels=labels,
        lengths=lengths,
        audio=audio,
        video=video,
        text_features=text_features,
        text_lengths=text_lengths,
    )


def _str(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _lengths(d: dict, key: str, x: np.ndarray) -> np.ndarray:
    if key not in d:
        return np.full(len(x), x.shape[1], np.int64)
    return np.clip(np.asarray(d[key]).astype(np.int64).reshape(-1), 0, x.shape[1])


def _pool_all(x: np.ndarray, lengths: np.ndarray, target: np.ndarray, t: int) -> np.ndarray:
    """[N, L, D] with real lengths → [N, t, D], sample i pooled to target[i] steps."""
    out = np.zeros((len(x), t, x.shape[-1]), dtype=np.float32)
    for i in range(len(x)):
        out[i, : target[i]] = pool_to_length(x[i, : lengths[i]], int(target[i]))
    return out


def _dataset_name(path: Path) -> str:
    for part in reversed(path.resolve().parts[:-1]):
        if re.fullmatch(r"(?i)(mosi|mosei|sims\w*|ur_funny)", part):
            return f"{part.upper()} (MMSA {path.stem})"
    return f"MMSA {path.stem}"
