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

# Role → file-name patterns (case-insensitive), most preferred first (MISA's fields, spec 8.20).
ROLES = {
    "labels": (r"labelssentiment", r"opinion.?labels", r"labels"),
    "words": (r"timestampedwords", r"words"),
    "audio": (r"covarep", r"opensmile"),
    "video": (r"facet", r"openface"),
}


class Csd:
    """An open ``.csd`` file: ``root``, ``metadata`` (dict), ``entries`` (keys) and ``entry(key)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: file not found")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(f"{self.path}: not a readable HDF5 file ({err}); is it truncated or not a .csd?") from None
        groups = [k for k in self._f if isinstance(self._f[k], h5py.Group)]
        if not groups or "data" not in self._f[groups[0]]:
            self._f.close()
            raise DataError(f"{self.path}: not a computational sequence (expected <root>/data/<video>/features)")
        self.root = groups[0]
        self._data = self._f[self.root]["data"]
        self.entries = list(self._data.keys())
        self.metadata = _metadata(self._f[self.root].get("metadata"))

    def entry(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(features [n, d], intervals [n, 2] float64) of one entry; byte strings stay bytes."""
        g = self._data[key]
        if "features" not in g or "intervals" not in g:
            raise DataError(f"{self.path}: '{self.root}/data/{key}' needs 'features' and 'intervals'")
        feats, ivals = g["features"][()], g["intervals"][()].astype(np.float64)
        if feats.ndim == 1:
            feats = feats[:, None]
        if len(feats) != len(ivals) or ivals.ndim != 2 or ivals.shape[1] != 2:
            raise DataError(
                f"{self.path}: '{self.root}/data/{key}': features {feats.shape} and intervals "
                f"{ivals.shape} disagree; expected [n, d] and [n, 2]"
            )
        return feats, ivals

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Csd:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _metadata(group) -> dict:
    out = {}
    for key in group.keys() if group is not None else ():
        raw = group[key][()]
        raw = raw[0] if isinstance(raw, np.ndarray) and raw.size else raw
        raw = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
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
