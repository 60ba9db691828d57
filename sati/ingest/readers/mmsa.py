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
  the time axis of aligned_50. The mask must hold 0s and 1s, so no length exceeds the padded
  ``text_bert`` it is counted in.

Every array is checked for its type, rank and numbers before use: a value of another kind (a 0-d
label array, a dict as audio) is a ``DataError`` naming the split and key.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sati.data.h5format import DataError, SplitArrays
from sati.ingest.readers.common import Source, order_splits, pool_to_length, sanitize, split_name
from sati.ingest.safe_pickle import load_pickle
from sati.untrusted import short

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
            raise DataError(f"{path}: split {short(raw_name, 60)} is a {type(d).__name__}, expected a dict of arrays")
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
    labels = _array(path, raw, d, "regression_labels", (1, 2), numbers=True).astype(np.float32)
    n = len(labels)
    labels = labels.reshape(n, -1)[:, 0]
    arrays = {key: _array(path, raw, d, key, (1,)) for key in ("raw_text", "id")}
    arrays |= {key: _array(path, raw, d, key, (3,), numbers=True) for key in ("audio", "vision")}
    for key, ndims in (("text", (1, 2, 3, 4)), ("text_bert", (3,)), ("audio_lengths", (1,)), ("vision_lengths", (1,))):
        if key in d:
            arrays[key] = _array(path, raw, d, key, ndims, numbers=key != "text")
    for key, value in arrays.items():
        if len(value) != n:
            raise DataError(f"{path}: '{raw}/{key}' has {len(value)} rows but '{raw}/regression_labels' has {n}")
    audio, video = sanitize(arrays["audio"]), sanitize(arrays["vision"])

    text_len = None
    if "text_bert" in arrays:
        bert = arrays["text_bert"]
        if bert.shape[1] < 2:
            raise DataError(f"{path}: '{raw}/text_bert' must be [N, 3, L] (ids; mask; segments), got {bert.shape}")
        mask = np.rint(bert[:, 1])
        if not np.isin(mask, (0, 1)).all():
            raise DataError(
                f"{path}: '{raw}/text_bert' row 1 (the attention mask) must hold 0s and 1s; it holds e.g. "
                f"{short(mask[~np.isin(mask, (0, 1))][:3].tolist())}"
            )
        text_len = np.maximum(mask.sum(1), 1).astype(np.int32)  # [N], at most L
    text_features = text_lengths = None
    if "text" in arrays and arrays["text"].ndim == 3 and arrays["text"].dtype.kind in _NUMBERS:
        text_features = sanitize(arrays["text"])
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
        a_len = _lengths(arrays, "audio_lengths", audio)
        v_len = _lengths(arrays, "vision_lengths", video)
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

    ids = [_str(x).replace("$_$", "_") for x in arrays["id"]]
    text = [_str(x) for x in arrays["raw_text"]]
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


_NUMBERS = "biuf"  # numpy kinds of real numbers (complex, strings and objects are not features)


def _array(path: Path, raw: str, d: dict, key: str, ndims: tuple[int, ...], numbers: bool = False) -> np.ndarray:
    """``d[key]`` as an array of one of ``ndims`` dimensions (of real numbers with ``numbers``), or a
    ``DataError`` naming the split and key."""
    value = d[key]
    if not isinstance(value, (np.ndarray, list, tuple)):
        raise DataError(f"{path}: '{raw}/{key}' is a {type(value).__name__}, expected an array")
    array = np.asarray(value)
    if array.ndim not in ndims:
        want = " or ".join(f"{k}-d" for k in ndims)
        raise DataError(f"{path}: '{raw}/{key}' has shape {array.shape}, expected a {want} array")
    if numbers and array.dtype.kind not in _NUMBERS:
        raise DataError(f"{path}: '{raw}/{key}' holds {array.dtype} values, expected real numbers")
    return array


def _str(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _lengths(arrays: dict, key: str, x: np.ndarray) -> np.ndarray:
    """Each sample's real frames of ``x`` [N, L, D]: ``arrays[key]`` clipped to [0, L], or L for all."""
    if key not in arrays:
        return np.full(len(x), x.shape[1], np.int64)
    return np.clip(np.nan_to_num(arrays[key].astype(np.float64)), 0, x.shape[1]).astype(np.int64)


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
