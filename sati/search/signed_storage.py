"""A search's storage as the driver reads and writes it: every pickle and state file signed on the way
out, verified on the way in.

Ray Tune restores an experiment by unpickling what it finds in the storage (``tuner.pkl``,
``searcher-state-*.pkl``, ``callback-states-*.pkl``, ``experiment_state-*.json`` with cloudpickled fields,
a trial's ``error.pkl``), and ``sati_search.json`` says what a resume trains and where it logs. Anyone
who can write to a shared storage could plant such a file. ``signed_filesystem`` wraps the storage's
pyarrow filesystem, and sati hands the wrapper to Ray (``RunConfig.storage_filesystem``,
``Tuner.restore``), so that:

- **writing** a *guarded* file (below) computes its HMAC-SHA256 (``sati.search.search_key``) from the
  bytes being written: Ray stages its experiment state in a local folder of the driver and uploads it
  from there, so the MAC covers what the driver wrote, never what an attacker may have put in the
  shared storage meanwhile. The MAC goes to ``<file>.mac`` *before* the file: that sidecar holds the MAC
  of the file's previous version and of the new one, so a driver killed between the two writes (or
  during the second) leaves a file that still verifies. Each write is atomic (a temp file renamed on
  a local disk; one upload on an object store, where an object appears whole or not at all).
- **reading** a guarded file reads it whole, checks its size and its MAC, and hands Ray those very
  bytes, so nothing can swap the file between the check and the unpickling. A file without a valid MAC
  is refused with ``UnverifiedFileError`` naming it.

Guarded: every ``*.pkl`` at any depth, and every ``*.json`` in an experiment directory itself (Ray's
``experiment_state-*.json``, ``basic-variant-state-*.json``, sati's ``sati_search.json``). Not guarded:
the trials' ``result.json``, ``params.json`` and ``progress.csv`` (plain JSON and CSV, read as data) and
the checkpoints (``best.pt``/``last.pt``, read with ``weights_only``). A trial's ``params.pkl`` is
signed like any pickle, though nothing sati runs reads it back (Tune rebuilds a restored trial's config
from the signed experiment state).

Only the driver holds the key (``sati.search.search_key``). The wrapper also travels to the trials (Ray
ships the storage with each trial), where it passes checkpoints through untouched: a trial never
reads or writes a guarded file.
"""

from __future__ import annotations

import hmac
import io
import json
import posixpath
import threading
from pathlib import Path

import pyarrow
import pyarrow.fs

from sati import storage
from sati.search.search_key import SearchKey, active_key, search_key

MAC_SUFFIX = ".mac"
MAX_GUARDED_BYTES = 1 << 30  # a state file larger than this is refused before it is read
_MAX_SIDECAR_BYTES = 1 << 16


class UnverifiedFileError(ValueError):
    """A pickle or state file in a search's storage without a valid MAC: refused, never loaded."""


def is_guarded(name: str) -> bool:
    """Whether the file at ``name`` (its path below the storage root: ``<experiment>/<file>``,
    ``<experiment>/<trial>/<file>``, …) is signed and verified."""
    parts = name.split("/")
    return parts[-1].endswith(".pkl") or (parts[-1].endswith(".json") and len(parts) <= 2)


class SignedStorage(pyarrow.fs.FileSystemHandler):
    """A pyarrow filesystem handler over ``inner`` that signs and verifies the guarded files below
    ``root`` (the storage root's path in ``inner``); ``location`` is that root as the user named it
    (a path or URI), for messages."""

    def __init__(self, inner: pyarrow.fs.FileSystem, root: str, location: str):
        self.inner, self.root, self.location = inner, root.rstrip("/") or "/", location
        self._local = isinstance(inner, pyarrow.fs.LocalFileSystem)
        self._known: dict[str, str] = {}  # path → MAC of what is there (written or verified by this process)
        self._lock = threading.Lock()

    def __reduce__(self):  # no cache, no lock, never a key: a trial gets the plain pass-through
        return SignedStorage, (self.inner, self.root, self.location)

    def __eq__(self, other) -> bool:
        return isinstance(other, SignedStorage) and self.root == other.root and self.inner.equals(other.inner)

    def __ne__(self, other) -> bool:
        return not self == other

    # -- what is guarded, and how it is named -----------------------------------------------

    def _name(self, path: str) -> str | None:
        """``path`` below the root (``a/b/c``), or None outside it."""
        prefix = self.root if self.root.endswith("/") else self.root + "/"
        if not path.startswith(prefix):
            return None
        name = path[len(prefix) :]
        return name if name and ".." not in name.split("/") else None

    def _guarded(self, path: str) -> str | None:
        """The name a guarded file is signed under; None for a file passed through. A pickle outside the
        root is refused outright: nothing sati runs reads or writes one there."""
        name = self._name(path)
        if name is None:
            if path.endswith(".pkl"):
                raise UnverifiedFileError(f"{path}: a pickle outside the search storage {self.location}; refused")
            return None
        return name if is_guarded(name) else None

    def where(self, name: str) -> str:
        """A file below the root as the user names it: a path, or a URI with its query string."""
        return storage.join(self.location, *name.split("/"))

    # -- verified reads ----------------------------------------------------------------------

    def _read(self, path: str, limit: int) -> bytes:
        with self.inner.open_input_stream(path) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise UnverifiedFileError(f"{path}: larger than {limit} bytes; refused")
        return data

    def _sidecar(self, path: str) -> tuple[str | None, list[str]]:
        """(key id, MACs) of ``<path>.mac``; (None, []) when it is missing or malformed."""
        try:
            record = json.loads(self._read(path + MAC_SUFFIX, _MAX_SIDECAR_BYTES))
        except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested past Python's limit
            return None, []
        if not isinstance(record, dict) or not isinstance(record.get("macs"), list):
            return None, []
        macs = [m for m in record["macs"] if isinstance(m, str) and len(m) == 64]
        key_id = record.get("key_id")
        return (key_id if isinstance(key_id, str) else None), macs

    def verified(self, path: str, name: str) -> bytes:
        """The bytes of the guarded file at ``path`` (signed as ``name``) once their MAC matches; else
        ``UnverifiedFileError`` naming the file and why."""
        key = active_key(self.where(name))
        info = self.inner.get_file_info(path)
        if info.type == pyarrow.fs.FileType.File and (info.size or 0) > MAX_GUARDED_BYTES:
            raise UnverifiedFileError(f"{self.where(name)}: {info.size} bytes, above {MAX_GUARDED_BYTES}; refused")
        data = self._read(path, MAX_GUARDED_BYTES)
        mac = key.mac(name, data)
        key_id, macs = self._sidecar(path)
        if not any(hmac.compare_digest(mac, m) for m in macs):
            raise UnverifiedFileError(f"{self.where(name)}: refusing to load it: {_why(name, key, key_id, macs)}")
        with self._lock:
            self._known[path] = mac
        return data

    def open_input_stream(self, path):
        name = self._guarded(path)
        return self.inner.open_input_stream(path) if name is None else pyarrow.BufferReader(self.verified(path, name))

    def open_input_file(self, path):
        name = self._guarded(path)
        return self.inner.open_input_file(path) if name is None else pyarrow.BufferReader(self.verified(path, name))

    # -- signed writes -----------------------------------------------------------------------

    def _put(self, path: str, data: bytes) -> None:
        """Write ``path`` whole or not at all."""
        if self._local:
            from sati.checkpoint import atomic_write

            atomic_write(Path(path), lambda f: f.write(data))
        else:
            with self.inner.open_output_stream(path) as f:
                f.write(data)

    def commit(self, path: str, name: str, data: bytes) -> None:
        """Write the guarded file ``path`` (signed as ``name``): its MAC first, then the file."""
        key = active_key(self.where(name))
        mac = key.mac(name, data)
        with self._lock:
            previous = self._known.get(path)
        kept = [previous] if previous else self._sidecar(path)[1][-1:]  # valid until the new file has landed
        if kept != [mac]:
            self._put(path + MAC_SUFFIX, json.dumps({"key_id": key.id, "macs": [*kept, mac]}).encode())
        self._put(path, data)
        with self._lock:
            self._known[path] = mac

    def open_output_stream(self, path, metadata):
        name = self._guarded(path)
        if name is None:
            return self.inner.open_output_stream(path, metadata=metadata)
        return pyarrow.PythonFile(_SignOnClose(lambda data: self.commit(path, name, data)), mode="w")

    def open_append_stream(self, path, metadata):
        if self._guarded(path) is not None:
            raise UnverifiedFileError(f"{path}: a signed file is written whole, never appended to")
        return self.inner.open_append_stream(path, metadata=metadata)

    # -- everything else passes through ----------------------------------------------------------

    def get_type_name(self):
        return f"sati-signed+{self.inner.type_name}"

    def normalize_path(self, path):
        return self.inner.normalize_path(path)

    def get_file_info(self, paths):
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.inner.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.inner.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self.inner.delete_file(path)

    def move(self, src, dest):
        for path in (src, dest):
            if self._guarded(path) is not None:
                raise UnverifiedFileError(f"{path}: a signed file is not moved (its MAC is bound to its name)")
        self.inner.move(src, dest)

    def copy_file(self, src, dest):
        for path in (src, dest):
            if self._guarded(path) is not None:
                raise UnverifiedFileError(f"{path}: a signed file is not copied (its MAC is bound to its name)")
        self.inner.copy_file(src, dest)


def _why(name: str, key: SearchKey, key_id: str | None, macs: list[str]) -> str:
    if not macs:
        return (
            f"it has no MAC ({posixpath.basename(name)}{MAC_SUFFIX} is missing or unreadable). sati signs every "
            "pickle and state file a search writes; this one was not written by a sati driver holding your "
            "search key (planted, or left by a sati that did not sign)"
        )
    if key_id and key_id != key.id:
        return (
            f"it is signed with another search key (key id {key_id}; yours, from {key.source}, is {key.id}): "
            "resume where the search was started, or set $SATI_SEARCH_KEY to the key it was signed with"
        )
    return "its MAC does not match: it changed after sati wrote it"


class _SignOnClose(io.RawIOBase):
    """A write-only stream that hands everything written to ``commit`` when it is closed."""

    def __init__(self, commit):
        super().__init__()
        self._buffer, self._commit = io.BytesIO(), commit

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._buffer.write(data)

    def close(self) -> None:
        if not self.closed:
            data = self._buffer.getvalue()
            super().close()
            self._commit(data)


def _writing_in_place(fs: pyarrow.fs.FileSystem) -> pyarrow.fs.FileSystem:
    """``fs``, an S3 one made to upload in the thread that writes (``background_writes=False``).

    Tune uploads with ``pyarrow.fs.copy_files``, which closes each file on Arrow's IO thread pool; a
    file of this wrapper is a Python stream whose close writes the file and its MAC. An S3 stream that
    uploads in the background would wait, in that close, for IO-pool threads that are all busy
    closing such files: a deadlock as soon as there are more of them than IO threads."""
    if not isinstance(fs, pyarrow.fs.S3FileSystem):
        return fs
    rebuild, (options,) = fs.__reduce__()
    return rebuild({**options, "background_writes": False})


def signed_filesystem(location: str | Path) -> tuple[pyarrow.fs.FileSystem, str]:
    """``(filesystem, path in it)`` for the search storage ``location`` (a path or URI, as ``search.storage_path``),
    signing and verifying its guarded files with this user's search key (loaded here)."""
    search_key()
    inner, root = storage.filesystem(location)
    return pyarrow.fs.PyFileSystem(SignedStorage(_writing_in_place(inner), root, str(location))), root


def verify_experiment(location: str | Path, experiment: str) -> int:
    """Check every guarded file of the Tune experiment ``<location>/<experiment>`` before anything is
    restored from it (``UnverifiedFileError`` names the first that fails); returns how many were checked."""
    fs, root = signed_filesystem(location)
    base = posixpath.join(root, experiment)
    selector = pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True)
    checked = 0
    for info in fs.get_file_info(selector):
        if info.type == pyarrow.fs.FileType.File and is_guarded(posixpath.relpath(info.path, root)):
            fs.open_input_stream(info.path).close()
            checked += 1
    return checked
