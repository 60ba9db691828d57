"""The canonical SATI dataset file (HDF5): one writer, one reader, one checksum.

Layout (format version 1)::

    /  attrs: format="sati-dataset", format_version, name, provenance (JSON), checksum (sha256),
              audio_dim, video_dim, text_feature_dim (0 = none), missing_modalities (JSON list)
    /<split>/ids            [N] str
    /<split>/text           [N] str (raw text, so any tokenizer can run on it)
    /<split>/labels         [N] float32, sentiment in [-3, 3]
    /<split>/lengths        [N] int32, audio/video time steps per sample (>= 1)
    /<split>/audio          [N, T, D_a] float32, zero beyond each length
    /<split>/video          [N, T, D_v] float32, zero beyond each length
    /<split>/text_features  [N, T_t, D_t] float32 (optional: precomputed text features)
    /<split>/text_lengths   [N] int32 (with text_features)

Splits are ``train``, ``valid`` and ``test``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

FORMAT = "sati-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """A dataset file or input that cannot be used as it is."""


@dataclass
class SplitArrays:
    """One split in memory. N samples, T padded steps."""
    ids: list[str]
    text: list[str]
    labels: np.ndarray            # [N] float32
    lengths: np.ndarray           # [N] int32
    audio: np.ndarray             # [N, T, D_a] float32
    video: np.ndarray             # [N, T, D_v] float32
    text_features: Optional[np.ndarray] = None   # [N, T_t, D_t] float32
    text_lengths: Optional[np.ndarray] = None    # [N] int32

    def __len__(self) -> int:
        return len(self.labels)


def content_checksum(splits: dict[str, SplitArrays]) -> str:
    """sha256 over every split's ids, text, labels, lengths and features, in a fixed order."""
    h = hashlib.sha256()
    for name in sorted(splits):
        s = splits[name]
        h.update(name.encode())
        h.update("\x1f".join(s.ids).encode())
        h.update("\x1f".join(s.text).encode())
        for arr in (s.labels, s.lengths, s.audio, s.video, s.text_features, s.text_lengths):
            if arr is not None:
                h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def write_dataset(path: str | Path, splits: dict[str, SplitArrays], *, name: str,
                  provenance: dict, missing_modalities: tuple[str, ...] = ()) -> str:
    """Write ``splits`` atomically (temp file + rename) and return the content checksum."""
    path = Path(path)
    for split in SPLITS:
        if split not in splits:
            raise DataError(f"{path}: split '{split}' missing; a dataset needs {', '.join(SPLITS)}")
    checksum = content_checksum(splits)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    str_dt = h5py.string_dtype()
    with h5py.File(tmp, "w") as f:
        first = splits["train"]
        f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, name=name,
                       provenance=json.dumps(provenance), checksum=checksum,
                       audio_dim=first.audio.shape[-1], video_dim=first.video.shape[-1],
                       text_feature_dim=0 if first.text_features is None else first.text_features.shape[-1],
                       missing_modalities=json.dumps(list(missing_modalities)))
        for split_name, s in splits.items():
            g = f.create_group(split_name)
            g.create_dataset("ids", data=np.array(s.ids, dtype=object), dtype=str_dt)
            g.create_dataset("text", data=np.array(s.text, dtype=object), dtype=str_dt)
            g.create_dataset("labels", data=s.labels.astype(np.float32))
            g.create_dataset("lengths", data=s.lengths.astype(np.int32))
            g.create_dataset("audio", data=s.audio.astype(np.float32))
            g.create_dataset("video", data=s.video.astype(np.float32))
            if s.text_features is not None:
                g.create_dataset("text_features", data=s.text_features.astype(np.float32))
                g.create_dataset("text_lengths", data=s.text_lengths.astype(np.int32))
    os.replace(tmp, path)
    return checksum


@dataclass(frozen=True)
class DatasetInfo:
    path: str
    name: str
    checksum: str
    audio_dim: int
    video_dim: int
    text_feature_dim: int
    missing_modalities: tuple[str, ...]
    provenance: dict


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found (create one with `sati data synth --out {path}`)")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err}); is it truncated or of another format?") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise DataError(f"{path}: not a SATI dataset (attribute format={FORMAT!r} missing)")
    return f


def read_info(path: str | Path) -> DatasetInfo:
    """The file's attributes, without reading any features."""
    path = Path(path)
    with _open(path) as f:
        a = f.attrs
        return DatasetInfo(path=str(path), name=str(a["name"]), checksum=str(a["checksum"]),
                           audio_dim=int(a["audio_dim"]), video_dim=int(a["video_dim"]),
                           text_feature_dim=int(a["text_feature_dim"]),
                           missing_modalities=tuple(json.loads(a["missing_modalities"])),
                           provenance=json.loads(a["provenance"]))


_REQUIRED = ("ids", "text", "labels", "lengths", "audio", "video")


def read_split(path: str | Path, split: str) -> SplitArrays:
    """Read one split into memory and check that its arrays agree with each other."""
    path = Path(path)
    with _open(path) as f:
        if split not in f:
            raise DataError(f"{path}: split '{split}' missing (present: {', '.join(sorted(f.keys()))})")
        g = f[split]
        for key in _REQUIRED:
            if key not in g:
                raise DataError(f"{path}: '{split}/{key}' missing")
        s = SplitArrays(
            ids=[x.decode() if isinstance(x, bytes) else str(x) for x in g["ids"][()]],
            text=[x.decode() if isinstance(x, bytes) else str(x) for x in g["text"][()]],
            labels=g["labels"][()].astype(np.float32), lengths=g["lengths"][()].astype(np.int64),
            audio=g["audio"][()], video=g["video"][()],
            text_features=g["text_features"][()] if "text_features" in g else None,
            text_lengths=g["text_lengths"][()].astype(np.int64) if "text_lengths" in g else None)
    _check_split(path, split, s)
    return s


def _check_split(path: Path, split: str, s: SplitArrays) -> None:
    n = len(s.labels)
    sizes = {"ids": len(s.ids), "text": len(s.text), "lengths": len(s.lengths),
             "audio": len(s.audio), "video": len(s.video)}
    if s.text_features is not None:
        sizes["text_features"] = len(s.text_features)
    for key, size in sizes.items():
        if size != n:
            raise DataError(f"{path}: '{split}/{key}' has {size} rows but '{split}/labels' has {n}")
    if n == 0:
        raise DataError(f"{path}: split '{split}' is empty")
    if not np.all(np.isfinite(s.labels)) or s.labels.min() < -3 or s.labels.max() > 3:
        bad = np.flatnonzero(~np.isfinite(s.labels) | (np.abs(s.labels) > 3))[:5]
        raise DataError(f"{path}: '{split}/labels' must lie in [-3, 3]; e.g. ids "
                        f"{[s.ids[i] for i in bad]} have {s.labels[bad].tolist()}")
    t_max = min(s.audio.shape[1], s.video.shape[1])
    if s.lengths.min() < 1 or s.lengths.max() > t_max:
        raise DataError(f"{path}: '{split}/lengths' must be in [1, {t_max}] (the padded audio/video length)")
    if len(set(s.ids)) != n:
        raise DataError(f"{path}: '{split}/ids' has {n - len(set(s.ids))} duplicate ids")
