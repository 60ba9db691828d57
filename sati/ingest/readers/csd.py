"""CMU-MultimodalSDK computational sequences (``.csd``, HDF5), read with h5py.

Layout: one top-level group (the "root name"; the SDK reads the first key) holding
``data/<entry>/features`` [n, d] and ``data/<entry>/intervals`` [n, 2] (start, end seconds), and
``metadata/<key>``: 1-element strings holding JSON values. Entries are video ids.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np

from sati.data.h5format import DataError
from sati.data.h5safe import SafeH5

# Role → file-name patterns (case-insensitive), most preferred first (MISA's fields, spec 8.20).
ROLES = {
    "labels": (r"labelssentiment", r"opinion.?labels", r"labels"),
    "words": (r"timestampedwords", r"words"),
    "audio": (r"covarep", r"opensmile"),
    "video": (r"facet", r"openface"),
}


class Csd(SafeH5):
    """An open ``.csd`` file: ``root``, ``metadata`` (dict), ``entries`` (keys) and ``entry(key)``.

    Read through ``sati.data.h5safe`` like a dataset file: links, external storage, virtual datasets,
    plugin filters and declared sizes over the caps are refused, naming the file and the object."""

    def __init__(self, path: str | Path):
        if not Path(path).is_file():
            raise DataError(f"{path}: file not found")
        super().__init__(path, "is it truncated or not a .csd?")
        try:
            f = self.file
            tops = [
                k
                for k in self.names(f)
                if f.get(k, getclass=True, getlink=True) is not h5py.HardLink or f.get(k, getclass=True) is h5py.Group
            ]
            if not tops or not self.has(self.member(f, tops[0], h5py.Group), "data"):
                raise DataError(f"{self.path}: not a computational sequence (expected <root>/data/<video>/features)")
            self.root = tops[0]
            top = self.member(f, self.root, h5py.Group)
            self._data = self.member(top, "data", h5py.Group)
            self.entries = self.names(self._data)
            self.metadata = _metadata(self, top)
        except BaseException:
            self.close()
            raise

    def entry(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(features [n, d], intervals [n, 2] float64) of one entry; words are ``str``."""
        g = self.member(self._data, key, h5py.Group)
        if not self.has(g, "features") or not self.has(g, "intervals"):
            raise DataError(f"{self.path}: '{self.root}/data/{key}' needs 'features' and 'intervals'")
        if h5py.check_string_dtype(self.member(g, "features").dtype) is not None:
            feats = self.strings(g, "features", ndim=(1, 2))
        else:
            feats = self.array(g, "features", dtype="number", ndim=(1, 2))
        ivals = self.array(g, "intervals", dtype="number", ndim=2).astype(np.float64)
        if feats.ndim == 1:
            feats = feats[:, None]
        if len(feats) != len(ivals) or ivals.shape[1] != 2:
            raise DataError(
                f"{self.path}: '{self.root}/data/{key}': features {feats.shape} and intervals "
                f"{ivals.shape} disagree; expected [n, d] and [n, 2]"
            )
        return feats, ivals


def _metadata(h5: SafeH5, top: h5py.Group) -> dict:
    """``metadata/<key>`` 1-element JSON strings → {key: value}; other shapes and types are ignored
    (the SDK only warns about missing metadata), text that is not JSON is kept as text."""
    if not h5.has(top, "metadata"):
        return {}
    group = h5.member(top, "metadata", h5py.Group)
    out = {}
    for key in h5.names(group):
        dset = h5.member(group, key)
        if h5py.check_string_dtype(dset.dtype) is None or dset.ndim != 1 or not dset.shape[0]:
            continue
        raw = h5.strings(group, key)[0]
        try:
            out[key] = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            out[key] = raw
    return out


def find_csd_files(folder: str | Path) -> dict[str, Path]:
    """The ``.csd`` file of each role found in ``folder`` (labels, words, audio, video)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.csd"))
    found = {}
    for role, patterns in ROLES.items():
        for pattern in patterns:
            hits = [p for p in files if re.search(pattern, p.stem, re.I) and p not in found.values()]
            if len(hits) > 1:
                raise DataError(
                    f"{folder}: several {role} files match {pattern!r}: {', '.join(p.name for p in hits)}; keep one"
                )
            if hits:
                found[role] = hits[0]
                break
    return found
