"""HDF5 objects read so that a file cannot reach outside itself or cost more than it stores.

HDF5 can point outside the file: a soft or external link names another object or another file; a
dataset with *external storage* reads its bytes from any file on the host (``/etc/passwd``); a
*virtual* dataset maps other files' datasets; a filter id makes the library load a plugin. It can also
declare more than it stores: an unwritten chunked dataset of 10^10 elements reads as fill values from a
2 KB file, and gzip turns a few MB into GBs of zeros. So every object sati reads from a dataset .h5 or
an SDK .csd goes through ``SafeH5``:

- ``member``: reached by a hard link, and stored under one name only (a split may not be another
  split under a second name);
- ``array`` / ``strings``: no external storage, not virtual, only HDF5's built-in filters, the dtype
  and rank the format defines, no empty axis after the first, a declared size within
  ``sati.untrusted.limits()`` (``array_bytes``, and ``expansion`` × the bytes the dataset occupies),
  finite values where asked; strings decoded as UTF-8 and no more of them than the file could hold.

Every refusal is a ``DataError`` naming the file and the object, raised before the data is read.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np

from sati.data.errors import DataError
from sati.untrusted import H5_ALLOWANCE, cap_hint, limits, short

BUILTIN_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset", 32000: "lzf"}
DTYPES = {  # name the format uses: (numpy kinds, item sizes)
    "float32": ("f", (4,)),
    "int32": ("i", (4,)),
    "number": ("fiu", (1, 2, 4, 8)),
}
_STRING_SLICE = 4096  # strings are decoded this many at a time, so a crafted heap is caught early


class SafeH5:
    """An HDF5 file open for reading, whose objects are handed out only after the checks above.

    Args:
        path: the file.
        hint: what the file should be, for the message when it is not HDF5 at all.
    """

    def __init__(self, path: str | Path, hint: str):
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(f"{self.path}: not a readable HDF5 file ({err}); {hint}") from None
        self.size = self.path.stat().st_size
        self.limits = limits()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> SafeH5:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- objects -----------------------------------------------------------------------------------

    def has(self, group: h5py.Group, key: str) -> bool:
        """Whether ``group`` has a link named ``key`` (without following it)."""
        return group.get(key, getlink=True) is not None

    def names(self, group: h5py.Group) -> list[str]:
        """The link names in ``group`` (none followed)."""
        return list(group.keys())

    def member(self, group: h5py.Group, key: str, kind: type = h5py.Dataset) -> h5py.Group | h5py.Dataset:
        """``group[key]``: a hard link to a ``kind`` (Group or Dataset) stored under this one name."""
        where = _where(group, key)
        link = group.get(key, getlink=True)
        if link is None:
            raise DataError(f"{self.path}: '{where}' missing")
        if isinstance(link, h5py.SoftLink):
            raise DataError(
                f"{self.path}: '{where}' is a soft link to '{link.path}': only objects stored under their own "
                "name are read (a link lets one split or array stand in for another)"
            )
        if isinstance(link, h5py.ExternalLink):
            raise DataError(
                f"{self.path}: '{where}' is an external link to '{link.path}' in {link.filename}: only objects "
                "stored in the file itself are read"
            )
        if not isinstance(link, h5py.HardLink):
            raise DataError(f"{self.path}: '{where}' is a {type(link).__name__}: only hard links are read")
        obj = group[key]
        if not isinstance(obj, kind):
            raise DataError(f"{self.path}: '{where}' is a {type(obj).__name__}, expected a {kind.__name__}")
        names = h5py.h5o.get_info(obj.id).rc
        if names != 1:
            raise DataError(
                f"{self.path}: '{where}' is stored under {names} names (hard links): each split and array "
                "must be stored once (a second name lets one split stand in for another)"
            )
        return obj

    # --- data --------------------------------------------------------------------------------------

    def array(
        self,
        group: h5py.Group,
        key: str,
        *,
        dtype: str,
        ndim: int | tuple[int, ...],
        finite: bool = False,
    ) -> np.ndarray:
        """The dataset ``group[key]`` read whole, after every check; ``dtype`` is a name in ``DTYPES``."""
        dset = self.member(group, key)
        where = _where(group, key)
        kinds, sizes = DTYPES[dtype]
        if dset.dtype.kind not in kinds or dset.dtype.itemsize not in sizes:
            raise DataError(f"{self.path}: '{where}' is {_dtype_name(dset.dtype)}, expected {dtype}")
        self._check_layout(dset, where, ndim)
        try:
            data = dset[()]
        except (OSError, ValueError) as err:
            raise DataError(f"{self.path}: '{where}' could not be read ({err})") from None
        if finite and data.size and not (np.isfinite(data.min()) and np.isfinite(data.max())):
            row = int(np.argwhere(~np.isfinite(data))[0][0])
            raise DataError(f"{self.path}: '{where}' has NaN or infinite values (the first in row {row})")
        return data

    def strings(self, group: h5py.Group, key: str, ndim: int | tuple[int, ...] = 1) -> np.ndarray:
        """The string dataset ``group[key]`` (variable or fixed length) decoded as UTF-8: an object array of
        its shape. Decoded a slice at a time: all of it may not exceed what the file could hold."""
        dset = self.member(group, key)
        where = _where(group, key)
        if h5py.check_string_dtype(dset.dtype) is None:
            raise DataError(f"{self.path}: '{where}' is {_dtype_name(dset.dtype)}, expected strings")
        self._check_layout(dset, where, ndim)
        budget = self.limits.expanded_bytes(self.size, H5_ALLOWANCE)
        parts, used = [], 0
        try:
            for start in range(0, dset.shape[0], _STRING_SLICE):
                raw = np.asarray(dset[start : start + _STRING_SLICE])
                decoded = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in raw.ravel()]
                used += sum(len(x) for x in decoded)
                if used > budget:
                    raise DataError(
                        f"{self.path}: '{where}' holds over {used} characters of text, more than a file of "
                        f"{self.size} bytes can store; {cap_hint('expansion')}"
                    )
                parts.append(np.array(decoded, dtype=object).reshape(raw.shape))
        except UnicodeDecodeError as err:
            raise DataError(f"{self.path}: '{where}' is not UTF-8 text ({err.reason} at byte {err.start})") from None
        except OSError as err:
            raise DataError(f"{self.path}: '{where}' could not be read ({err})") from None
        return np.concatenate(parts) if parts else np.empty(dset.shape, dtype=object)

    def _check_layout(self, dset: h5py.Dataset, where: str, ndim: int | tuple[int, ...]) -> None:
        """Storage inside the file, built-in filters, rank ``ndim``, no empty axis after the first, size caps."""
        plist = dset.id.get_create_plist()
        if plist.get_external_count():
            files = ", ".join(short(str(name), 80) for name, *_ in (dset.external or ())) or "another file"
            raise DataError(
                f"{self.path}: '{where}' has external storage (its bytes would be read from {files}): only data "
                "stored in the file itself is read"
            )
        if dset.is_virtual:
            raise DataError(
                f"{self.path}: '{where}' is a virtual dataset (its data would come from other files): only data "
                "stored in the file itself is read"
            )
        for i in range(plist.get_nfilters()):
            code = plist.get_filter(i)[0]
            if code not in BUILTIN_FILTERS:
                raise DataError(
                    f"{self.path}: '{where}' needs HDF5 filter {code}, which is not built in (a plugin would be "
                    f"loaded); rewrite the file with {', '.join(sorted(set(BUILTIN_FILTERS.values())))} or none"
                )
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if len(dset.shape) not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise DataError(f"{self.path}: '{where}' has shape {dset.shape}, expected {want} dimension(s)")
        if any(n == 0 for n in dset.shape[1:]):
            raise DataError(f"{self.path}: '{where}' has shape {dset.shape}: an axis after the first is empty")
        declared = math.prod(dset.shape) * dset.dtype.itemsize
        if declared > self.limits.array_bytes:
            raise DataError(
                f"{self.path}: '{where}' declares {declared} bytes (shape {dset.shape}), over the cap of "
                f"{self.limits.array_bytes} bytes for one array; {cap_hint('array_bytes')}"
            )
        stored = dset.id.get_storage_size()
        if declared > self.limits.expanded_bytes(stored, H5_ALLOWANCE):
            raise DataError(
                f"{self.path}: '{where}' declares {declared} bytes (shape {dset.shape}) but stores {stored}: "
                f"more than {self.limits.expansion}× (unwritten fill values or a compression bomb); "
                f"{cap_hint('expansion')}"
            )


def _where(group: h5py.Group, key: str) -> str:
    return f"{group.name.rstrip('/')}/{key}".lstrip("/")


def _dtype_name(dtype: np.dtype) -> str:
    return "strings" if h5py.check_string_dtype(dtype) is not None else dtype.name
