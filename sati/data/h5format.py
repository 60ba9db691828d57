"""The canonical SATI dataset file (HDF5): one writer, one reader, one checksum.

Layout (format version 2)::

    /  attrs: format="sati-dataset", format_version, name, provenance (JSON), checksum (sha256),
              audio_dim, video_dim, text_feature_dim (0 = none), missing_modalities (JSON list: the
              modalities no sample of the file has)
    /<split>/  attrs: checksum (sha256 of this split alone, hashed as in the file's checksum; absent in
               files written before it was added)
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

Every object is read through ``sati.data.h5safe`` (no links, external storage or virtual datasets; the
dtypes and ranks above; declared sizes within caps; finite features). ``read_split`` verifies the
split's own checksum (files without one: the file's checksum, over every split), and ``read_tokens``
the tokens' checksum, so what trains is what was written.
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

from sati.data.errors import DataError
from sati.data.h5safe import SafeH5
from sati.untrusted import short, short_text

FORMAT = "sati-dataset"
FORMAT_VERSION = 2  # 2: per-sample presence (/<split>/present); 1 still reads
SPLITS = ("train", "valid", "test")
MODALITIES = ("text", "audio", "video")  # the columns of a presence mask


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


def _hash_split(hashes: list, name: str, s: SplitArrays) -> None:
    """Feed one split's ids, text, labels, lengths and features (as stored) to each of ``hashes``."""
    parts = [name.encode(), "\x1f".join(s.ids).encode(), "\x1f".join(s.text).encode()]
    for h in hashes:
        for part in parts:
            h.update(part)
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
            data = np.ascontiguousarray(arr, dtype=dtype).reshape(-1).view(np.uint8)
            for h in hashes:
                h.update(data)


def _hash_presence(h, present: np.ndarray) -> None:
    """Feed a presence mask [N, 3] (as stored, uint8) to ``h``."""
    h.update(b"present")
    h.update(np.ascontiguousarray(present, dtype=np.uint8).reshape(-1))


def _hash_file_presence(h, splits: dict[str, SplitArrays]) -> None:
    """Per-sample presence joins the file's hash where a modality is held by some samples and not by
    others. A modality held by all or by none is the file's missing_modalities, as in format 1, so files
    of both formats with the same contents hash alike."""
    present = np.concatenate([splits[name].present for name in sorted(splits)])
    if (present.any(0) & ~present.all(0)).any():
        _hash_presence(h, present)


def content_checksum(splits: dict[str, SplitArrays]) -> str:
    """sha256 over every split's ids, text, labels, lengths and features (as stored), in a fixed order,
    and the samples' presence where it varies."""
    h = hashlib.sha256()
    for name in sorted(splits):
        _hash_split([h], name, splits[name])
    _hash_file_presence(h, splits)
    return h.hexdigest()


def split_checksum(name: str, s: SplitArrays) -> str:
    """sha256 of one split, hashed as ``content_checksum`` hashes its contents, and its presence mask
    (the attribute ``<split>/checksum``)."""
    h = hashlib.sha256()
    _hash_split([h], name, s)
    _hash_presence(h, s.present)
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
    whole = hashlib.sha256()
    per_split = {}
    for split_name in sorted(splits):
        h = hashlib.sha256()
        _hash_split([whole, h], split_name, splits[split_name])
        _hash_presence(h, splits[split_name].present)
        per_split[split_name] = h.hexdigest()
    _hash_file_presence(whole, splits)
    checksum = whole.hexdigest()
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
            g.attrs["checksum"] = per_split[split_name]
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


def _open(path: Path) -> SafeH5:
    if not path.is_file():
        raise DataError(
            f"{path}: dataset file not found (create one with `sati data prepare ... --out {path}` "
            f"or `sati data synth --out {path}`)"
        )
    h5 = SafeH5(path, "is it truncated or of another format?")
    if h5.file.attrs.get("format") != FORMAT:
        h5.close()
        raise DataError(f"{path}: not a SATI dataset (attribute format={FORMAT!r} missing)")
    return h5


def read_info(path: str | Path) -> DatasetInfo:
    """The file's attributes, without reading any features."""
    path = Path(path)
    with _open(path) as h5:
        a = h5.file.attrs
        try:
            info = DatasetInfo(
                path=str(path),
                name=str(a["name"]),
                checksum=str(a["checksum"]),
                audio_dim=int(a["audio_dim"]),
                video_dim=int(a["video_dim"]),
                text_feature_dim=int(a["text_feature_dim"]),
                missing_modalities=tuple(str(m) for m in json.loads(a["missing_modalities"])),
                provenance=json.loads(a["provenance"]),
            )
        except KeyError as err:
            raise DataError(f"{path}: attribute {err} missing; re-create the file with `sati data prepare`") from None
        except (TypeError, ValueError, RecursionError) as err:  # json.JSONDecodeError is a ValueError
            raise DataError(
                f"{path}: malformed file attributes ({type(err).__name__}: {short_text(str(err), 200)}); "
                "re-create the file with `sati data prepare`"
            ) from None
    if not isinstance(info.provenance, dict):
        raise DataError(f"{path}: attribute 'provenance' is {type(info.provenance).__name__}, expected a JSON object")
    return info


_REQUIRED = ("ids", "text", "labels", "lengths", "audio", "video")


def list_splits(path: str | Path) -> list[str]:
    """The splits stored in the file: train, valid, test first (those present), then any others."""
    path = Path(path)
    with _open(path) as h5:
        # groups, and links (not followed: reading one names it and refuses it)
        f = h5.file
        present = [
            k
            for k in h5.names(f)
            if f.get(k, getclass=True, getlink=True) is not h5py.HardLink or f.get(k, getclass=True) is h5py.Group
        ]
    return [s for s in SPLITS if s in present] + sorted(s for s in present if s not in SPLITS)


def read_split(path: str | Path, split: str, *, verify: bool = True) -> SplitArrays:
    """Read one split into memory and check its arrays and, with ``verify``, its checksum.

    The split's own checksum attribute is compared with its contents; a file written before splits had
    one is verified whole (``verify_checksum``). A mismatch is a ``DataError``: the file was changed
    after it was written."""
    path = Path(path)
    s = _read_split(path, split)
    if verify:
        recorded = recorded_split_checksum(path, split)
        if recorded is None:
            verify_checksum(path)
        elif (actual := split_checksum(split, s)) != recorded:
            raise _changed(path, f"split '{split}'", actual, recorded)
    return s


def _read_split(path: Path, split: str) -> SplitArrays:
    """One split, checked (not its checksum)."""
    with _open(path) as h5:
        if not h5.has(h5.file, split):
            present = ", ".join(sorted(h5.names(h5.file)))
            raise DataError(f"{path}: split '{split}' missing (present: {present})")
        g = h5.member(h5.file, split, h5py.Group)
        for key in _REQUIRED:
            if not h5.has(g, key):
                raise DataError(f"{path}: '{split}/{key}' missing")
        with_text = h5.has(g, "text_features")
        s = SplitArrays(
            ids=list(h5.strings(g, "ids")),
            text=list(h5.strings(g, "text")),
            labels=h5.array(g, "labels", dtype="float32", ndim=1),
            lengths=h5.array(g, "lengths", dtype="int32", ndim=1).astype(np.int64),
            audio=h5.array(g, "audio", dtype="float32", ndim=3, finite=True),
            video=h5.array(g, "video", dtype="float32", ndim=3, finite=True),
            text_features=h5.array(g, "text_features", dtype="float32", ndim=3, finite=True) if with_text else None,
            text_lengths=h5.array(g, "text_lengths", dtype="int32", ndim=1).astype(np.int64)
            if h5.has(g, "text_lengths")
            else None,
            present=h5.array(g, "present", dtype="number", ndim=2).astype(bool) if h5.has(g, "present") else None,
        )
        if not h5.has(g, "present"):  # format 1: absence is the file's, for every sample
            s = with_absent(s, _missing_modalities(path, h5.file.attrs.get("missing_modalities", "[]")))
    check_split(path, split, s)
    return s


def _missing_modalities(path: Path, raw) -> tuple[str, ...]:
    """A format 1 file's ``missing_modalities`` attribute: a JSON list of modality names."""
    try:
        names = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        names = None
    if not isinstance(names, list) or not all(isinstance(m, str) and m in MODALITIES for m in names):
        raise DataError(
            f"{path}: attribute 'missing_modalities' = {short(raw, 100)}: expected a JSON list of "
            f"{', '.join(MODALITIES)}"
        )
    return tuple(names)


def recorded_split_checksum(path: str | Path, split: str) -> str | None:
    """The checksum the split's group records (None in files written before splits had one)."""
    path = Path(path)
    with _open(path) as h5:
        recorded = h5.member(h5.file, split, h5py.Group).attrs.get("checksum")
    return None if recorded is None else str(recorded)


def _token_groups(h5: SafeH5, split: str) -> list[tuple[str, h5py.Group]]:
    if not h5.has(h5.file, split):
        return []
    g = h5.member(h5.file, split, h5py.Group)
    if not h5.has(g, "tokens"):
        return []
    tokens = h5.member(g, "tokens", h5py.Group)
    return [(key, h5.member(tokens, key, h5py.Group)) for key in h5.names(tokens)]


def list_tokens(path: str | Path, split: str) -> list[TokensInfo]:
    """The token groups stored for ``split`` (attributes only)."""
    path = Path(path)
    with _open(path) as h5:
        out = []
        for key, g in _token_groups(h5, split):
            a = g.attrs
            try:
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
                        shape=tuple(h5.member(g, "ids").shape),
                    )
                )
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(
                    f"{path}: malformed attributes of '{split}/tokens/{key}' ({type(err).__name__}: "
                    f"{short_text(str(err), 200)}); re-run `sati data prepare`"
                ) from None
        return out


def read_tokens(path: str | Path, info: TokensInfo, *, verify: bool = True) -> StoredTokens:
    """The arrays of one stored token group, checked against the split's size and, with ``verify``,
    against the checksum the group records."""
    path = Path(path)
    where = f"'{info.split}/tokens/{info.key}'"
    with _open(path) as h5:
        g = dict(_token_groups(h5, info.split)).get(info.key)
        if g is None:
            raise DataError(f"{path}: {where} missing")
        ids = h5.array(g, "ids", dtype="int32", ndim=2).astype(np.int64)
        lengths = h5.array(g, "lengths", dtype="int32", ndim=1).astype(np.int64)
        n = h5.member(h5.member(h5.file, info.split, h5py.Group), "labels").shape[0]
    if len(ids) != n or len(lengths) != n or (n and (lengths.min() < 1 or lengths.max() > ids.shape[1])):
        raise DataError(
            f"{path}: {where} does not fit the split ({len(ids)} rows, {n} samples); re-run `sati data prepare`"
        )
    tokens = StoredTokens(
        tokenizer=info.tokenizer,
        fingerprint=info.fingerprint,
        max_length=info.max_length,
        pad_id=info.pad_id,
        truncated=info.truncated,
        ids=ids,
        lengths=lengths,
    )
    if verify and (actual := tokens.checksum()) != info.checksum:
        raise _changed(path, f"the tokens {where}", actual, info.checksum)
    return tokens


def _changed(path: Path, what: str, actual: str, recorded: str) -> DataError:
    return DataError(
        f"{path}: its contents ({what}) hash to {actual[:12]}… but the file records {recorded[:12]}…: it was "
        "changed after it was written (re-create it with `sati data prepare` or `sati data synth`)"
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
    for key, size in sizes.items():
        if size != n:
            raise DataError(f"{path}: '{split}/{key}' has {size} rows but '{split}/labels' has {n}")
    if n == 0:
        raise DataError(f"{path}: split '{split}' is empty")
    if s.present.shape != (n, len(MODALITIES)):
        raise DataError(
            f"{path}: '{split}/present' has shape {list(s.present.shape)}, expected [{n}, {len(MODALITIES)}] "
            f"(one row per sample, columns {', '.join(MODALITIES)})"
        )
    if not np.all(np.isfinite(s.labels)) or s.labels.min() < -3 or s.labels.max() > 3:
        bad = np.flatnonzero(~np.isfinite(s.labels) | (np.abs(s.labels) > 3))[:5]
        raise DataError(
            f"{path}: '{split}/labels' must lie in [-3, 3]; e.g. ids "
            f"{short([s.ids[i] for i in bad], 300)} have {s.labels[bad].tolist()}"
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
        shown = ", ".join(short_text(i, 60) for i in dup[:5])
        raise DataError(f"{path}: '{split}/ids' has {n - len(set(s.ids))} duplicate ids (e.g. {shown})")


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
    """Recompute the content checksum over every split in the file, and each split's own; refuse a file
    whose contents no longer match what it was written with (edited afterwards). Returns the checksum."""
    path = Path(path)
    info = read_info(path)
    splits = {split: _read_split(path, split) for split in list_splits(path)}
    actual = content_checksum(splits)
    if actual != info.checksum:
        raise DataError(
            f"{path}: its contents hash to {actual[:12]}… but the file records {info.checksum[:12]}…: "
            "it was changed after it was written (re-create it with `sati data prepare` or `sati data synth`)"
        )
    for split, s in splits.items():
        recorded = recorded_split_checksum(path, split)
        if recorded is not None and (mine := split_checksum(split, s)) != recorded:
            raise _changed(path, f"split '{split}'", mine, recorded)
    return actual
