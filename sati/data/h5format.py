"""The canonical SATI dataset file (HDF5): one writer, one reader, one checksum.

Layout (format version 2)::

    /  attrs: format="sati-dataset", format_version, name, provenance (JSON), checksum (sha256),
              audio_dim, video_dim, text_feature_dim (0 = none), missing_modalities (JSON list: the
              modalities no sample of the file has)
    /<split>/ids            [N] str
    /<split>/text           [N] str (raw text, so any tokenizer can run on it)
    /<split>/labels         [N] float32, sentiment in [-3, 3]
    /<split>/lengths        [N] int32, audio/video time steps per sample (>= 1)
    /<split>/audio          [N, T, D_a] float32, zero beyond each length
    /<split>/video          [N, T, D_v] float32, zero beyond each length
    /<split>/text_features  [N, T_t, D_t] float32 (optional: precomputed text features)
    /<split>/text_lengths   [N] int32 (with text_features)
    /<split>/present        [N, 3] uint8, 1 where the sample has the modality (columns text, audio,
                            video); an absent modality is stored as zeros and the model never reads
                            absence from the values
    /<split>/tokens/<key>/  optional, one group per tokenizer (``sati data prepare --tokenizer``):
        ids [N, L] int32 padded with pad_id, lengths [N] int32; attrs tokenizer (name as given),
        fingerprint (vocabulary and rules), max_length, pad_id, truncated (count), checksum
        (sha256 of ids and lengths). Derived from text, so outside the content checksum.

Splits are ``train``, ``valid`` and ``test``. Files without token groups are still version 2.
Version 1 files (no ``present``) still load: a modality in their ``missing_modalities`` is absent from
every sample, every other one present in every sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

FORMAT = "sati-dataset"
FORMAT_VERSION = 2  # 2: per-sample presence (/<split>/present); 1 still reads
SPLITS = ("train", "valid", "test")
MODALITIES = ("text", "audio", "video")  # the columns of a presence mask


class DataError(ValueError):
    """A dataset file or input that cannot be used as it is."""


@dataclass
class SplitArrays:
    """One split in memory. N samples, T padded steps."""

    ids: list[str]
    text: list[str]
    labels: np.ndarray  # [N] float32
    lengths: np.ndarray  # [N] int32
    audio: np.ndarray  # [N, T, D_a] float32
    video: np.ndarray  # [N, T, D_v] float32
    text_features: np.ndarray | None = None  # [N, T_t, D_t] float32
    text_lengths: np.ndarray | None = None  # [N] int32
    present: np.ndarray | None = None  # [N, 3] bool, text/audio/video held by each sample; None: all

    def __post_init__(self) -> None:
        if self.present is None:
            self.present = np.ones((len(self.labels), len(MODALITIES)), dtype=bool)

    def __len__(self) -> int:
        return len(self.labels)


def with_absent(s: SplitArrays, modalities: tuple[str, ...]) -> SplitArrays:
    """A copy of ``s`` in which every sample lacks ``modalities`` (their features zeroed)."""
    if not modalities:
        return s
    present = s.present.copy()
    present[:, [MODALITIES.index(m) for m in modalities]] = False
    zeroed = {m: np.zeros_like(getattr(s, m)) for m in modalities if m != "text"}
    return dataclasses.replace(s, present=present, **zeroed)


def absent_everywhere(splits: dict[str, SplitArrays]) -> tuple[str, ...]:
    """The modalities no sample of any split has."""
    held = np.concatenate([s.present for s in splits.values()]).any(0)
    return tuple(m for m, here in zip(MODALITIES, held) if not here)


def content_checksum(splits: dict[str, SplitArrays]) -> str:
    """sha256 over every split's ids, text, labels, lengths and features (as stored), in a fixed order."""
    h = hashlib.sha256()
    for name in sorted(splits):
        s = splits[name]
        h.update(name.encode())
        h.update("\x1f".join(s.ids).encode())
        h.update("\x1f".join(s.text).encode())
        # Hash the dtypes the file stores, so a checksum recomputed from a read split matches.
        for arr, dtype in (
            (s.labels, np.float32),
            (s.lengths, np.int32),
            (s.audio, np.float32),
            (s.video, np.float32),
            (s.text_features, np.float32),
            (s.text_lengths, np.int32),
        ):
            if arr is not None:
                h.update(np.ascontiguousarray(arr, dtype=dtype).reshape(-1).view(np.uint8))
    # Per-sample presence joins the hash where a modality is held by some samples and not by others. A
    # modality held by all or by none is the file's missing_modalities, as in format 1, so files of both
    # formats with the same contents hash alike.
    present = np.concatenate([splits[name].present for name in sorted(splits)])
    if (present.any(0) & ~present.all(0)).any():
        h.update(b"present")
        h.update(np.ascontiguousarray(present, dtype=np.uint8).reshape(-1))
    return h.hexdigest()


@dataclass
class StoredTokens:
    """One split's texts tokenized by one tokenizer: ids [N, L] padded with ``pad_id``, lengths [N]."""

    tokenizer: str  # the name or folder given to prepare
    fingerprint: str  # sati.data.tokens.tokenizer_fingerprint
    max_length: int  # truncation length, specials included
    pad_id: int
    truncated: int  # samples cut to max_length
    ids: np.ndarray
    lengths: np.ndarray

    def checksum(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.ids, dtype=np.int32).tobytes())
        h.update(np.ascontiguousarray(self.lengths, dtype=np.int32).tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class TokensInfo:
    """A stored token group's attributes (no arrays): where it is and what made it."""

    split: str
    key: str
    tokenizer: str
    fingerprint: str
    max_length: int
    pad_id: int
    truncated: int
    checksum: str
    shape: tuple[int, int]


def _tokens_key(tokenizer: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", tokenizer).strip("_") or "tokenizer"
    return slug if slug == tokenizer else f"{slug[-40:]}-{hashlib.sha1(tokenizer.encode()).hexdigest()[:8]}"


def _write_tokens(group: h5py.Group, t: StoredTokens) -> None:
    g = group.require_group("tokens").create_group(_tokens_key(t.tokenizer))
    g.create_dataset("ids", data=np.asarray(t.ids, dtype=np.int32))
    g.create_dataset("lengths", data=np.asarray(t.lengths, dtype=np.int32))
    g.attrs.update(
        tokenizer=t.tokenizer,
        fingerprint=t.fingerprint,
        max_length=int(t.max_length),
        pad_id=int(t.pad_id),
        truncated=int(t.truncated),
        checksum=t.checksum(),
    )


def write_dataset(
    path: str | Path,
    splits: dict[str, SplitArrays],
    *,
    name: str,
    provenance: dict,
    missing_modalities: tuple[str, ...] = (),
    tokens: dict[str, list[StoredTokens]] | None = None,
) -> str:
    """Write ``splits`` (and ``tokens`` per split) atomically (temp file + rename); return the content checksum.

    ``missing_modalities`` are absent from every sample; with the modalities the splits' ``present``
    masks leave out everywhere they are the file's ``missing_modalities``."""
    path = Path(path)
    for split in SPLITS:
        if split not in splits:
            raise DataError(f"{path}: split '{split}' missing; a dataset needs {', '.join(SPLITS)}")
    splits = {name: with_absent(s, tuple(missing_modalities)) for name, s in splits.items()}
    missing_modalities = absent_everywhere(splits)
    checksum = content_checksum(splits)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    str_dt = h5py.string_dtype()
    with h5py.File(tmp, "w") as f:
        first = splits["train"]
        f.attrs.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            name=name,
            provenance=json.dumps(provenance),
            checksum=checksum,
            audio_dim=first.audio.shape[-1],
            video_dim=first.video.shape[-1],
            text_feature_dim=0 if first.text_features is None else first.text_features.shape[-1],
            missing_modalities=json.dumps(list(missing_modalities)),
        )
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
            g.create_dataset("present", data=s.present.astype(np.uint8))
            for t in (tokens or {}).get(split_name, ()):
                _write_tokens(g, t)
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
        raise DataError(
            f"{path}: dataset file not found (create one with `sati data prepare ... --out {path}` "
            f"or `sati data synth --out {path}`)"
        )
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
        return DatasetInfo(
            path=str(path),
            name=str(a["name"]),
            checksum=str(a["checksum"]),
            audio_dim=int(a["audio_dim"]),
            video_dim=int(a["video_dim"]),
            text_feature_dim=int(a["text_feature_dim"]),
            missing_modalities=tuple(json.loads(a["missing_modalities"])),
            provenance=json.loads(a["provenance"]),
        )


_REQUIRED = ("ids", "text", "labels", "lengths", "audio", "video")


def list_splits(path: str | Path) -> list[str]:
    """The splits stored in the file: train, valid, test first (those present), then any others."""
    path = Path(path)
    with _open(path) as f:
        present = [k for k in f if isinstance(f[k], h5py.Group)]
    return [s for s in SPLITS if s in present] + sorted(s for s in present if s not in SPLITS)


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
            labels=g["labels"][()].astype(np.float32),
            lengths=g["lengths"][()].astype(np.int64),
            audio=g["audio"][()],
            video=g["video"][()],
            text_features=g["text_features"][()] if "text_features" in g else None,
            text_lengths=g["text_lengths"][()].astype(np.int64) if "text_lengths" in g else None,
            present=g["present"][()].astype(bool) if "present" in g else None,
        )
        if "present" not in g:  # format 1: absence is the file's, for every sample
            s = with_absent(s, tuple(json.loads(f.attrs.get("missing_modalities", "[]"))))
    check_split(path, split, s)
    return s


def list_tokens(path: str | Path, split: str) -> list[TokensInfo]:
    """The token groups stored for ``split`` (attributes only)."""
    path = Path(path)
    with _open(path) as f:
        if split not in f or "tokens" not in f[split]:
            return []
        out = []
        for key, g in f[split]["tokens"].items():
            a = g.attrs
            out.append(
                TokensInfo(
                    split=split,
                    key=key,
                    tokenizer=str(a["tokenizer"]),
                    fingerprint=str(a["fingerprint"]),
                    max_length=int(a["max_length"]),
                    pad_id=int(a["pad_id"]),
                    truncated=int(a["truncated"]),
                    checksum=str(a["checksum"]),
                    shape=tuple(g["ids"].shape),
                )
            )
        return out


def read_tokens(path: str | Path, info: TokensInfo) -> StoredTokens:
    """The arrays of one stored token group, checked against the split's size."""
    path = Path(path)
    with _open(path) as f:
        g = f[info.split]["tokens"][info.key]
        ids, lengths = g["ids"][()].astype(np.int64), g["lengths"][()].astype(np.int64)
        n = len(f[info.split]["labels"])
    if len(ids) != n or len(lengths) != n or (n and (lengths.min() < 1 or lengths.max() > ids.shape[1])):
        raise DataError(
            f"{path}: '{info.split}/tokens/{info.key}' does not fit the split ({len(ids)} rows, "
            f"{n} samples); re-run `sati data prepare`"
        )
    return StoredTokens(
        tokenizer=info.tokenizer,
        fingerprint=info.fingerprint,
        max_length=info.max_length,
        pad_id=info.pad_id,
        truncated=info.truncated,
        ids=ids,
        lengths=lengths,
    )


def check_split(path: Path | str, split: str, s: SplitArrays) -> None:
    """Raise ``DataError`` unless the split's arrays agree: rows, labels in [-3, 3], lengths, unique ids."""
    n = len(s.labels)
    sizes = {
        "ids": len(s.ids),
        "text": len(s.text),
        "lengths": len(s.lengths),
        "audio": len(s.audio),
        "video": len(s.video),
    }
    if s.text_features is not None:
        sizes["text_features"] = len(s.text_features)
    if s.present.shape != (n, len(MODALITIES)):
        raise DataError(
            f"{path}: '{split}/present' has shape {list(s.present.shape)}, expected [{n}, {len(MODALITIES)}] "
            f"(one row per sample, columns {', '.join(MODALITIES)})"
        )
    for key, size in sizes.items():
        if size != n:
            raise DataError(f"{path}: '{split}/{key}' has {size} rows but '{split}/labels' has {n}")
    if n == 0:
        raise DataError(f"{path}: split '{split}' is empty")
    if not np.all(np.isfinite(s.labels)) or s.labels.min() < -3 or s.labels.max() > 3:
        bad = np.flatnonzero(~np.isfinite(s.labels) | (np.abs(s.labels) > 3))[:5]
        raise DataError(
            f"{path}: '{split}/labels' must lie in [-3, 3]; e.g. ids "
            f"{[s.ids[i] for i in bad]} have {s.labels[bad].tolist()}"
        )
    t_max = min(s.audio.shape[1], s.video.shape[1])
    if s.lengths.min() < 1 or s.lengths.max() > t_max:
        raise DataError(f"{path}: '{split}/lengths' must be in [1, {t_max}] (the padded audio/video length)")
    if s.text_features is not None and (
        s.text_lengths is None
        or len(s.text_lengths) != n
        or s.text_lengths.min() < 1
        or s.text_lengths.max() > s.text_features.shape[1]
    ):
        raise DataError(
            f"{path}: '{split}/text_lengths' must have one value per sample in "
            f"[1, {s.text_features.shape[1]}] (the padded text_features length)"
        )
    if len(set(s.ids)) != n:
        seen, dup = set(), []
        for i in s.ids:
            if i in seen and i not in dup:
                dup.append(i)
            seen.add(i)
        raise DataError(f"{path}: '{split}/ids' has {n - len(set(s.ids))} duplicate ids (e.g. {', '.join(dup[:5])})")


def check_feature_dims(
    source: str,
    audio_dim: int,
    video_dim: int,
    *,
    expect_audio: int | None = None,
    expect_video: int | None = None,
    audio_heads: int | None = None,
    video_heads: int | None = None,
) -> None:
    """A file's dims against expected dims (``--expect-audio-dim``) and encoder heads that must divide them."""
    for name, have, want, heads in (
        ("audio", audio_dim, expect_audio, audio_heads),
        ("video", video_dim, expect_video, video_heads),
    ):
        if want is not None and have != want:
            raise DataError(f"{source}: {name} features are {have}-d, expected {want}-d")
        if heads is not None and have % heads:
            choices = [d for d in range(1, min(have, 8) + 1) if have % d == 0]
            raise DataError(
                f"{source}: model.{name}_heads = {heads} does not divide the feature dim {have} "
                f"of its {name}; choose one of {choices}"
            )


def verify_checksum(path: str | Path) -> str:
    """Recompute the content checksum over every split in the file; refuse a file whose contents no
    longer match the checksum it was written with (edited afterwards). Returns the checksum."""
    info = read_info(path)
    actual = content_checksum({split: read_split(path, split) for split in list_splits(path)})
    if actual != info.checksum:
        raise DataError(
            f"{path}: its contents hash to {actual[:12]}… but the file records {info.checksum[:12]}…: "
            "it was changed after it was written (re-create it with `sati data prepare` or `sati data synth`)"
        )
    return actual
