"""``sati_search.json``: what ``sati search --resume`` needs (MLflow parent run id, tracking URI, resolved
pipeline, name), kept in the search directory beside Ray Tune's experiment state.

A search directory is a local path or a URI (``s3://bucket/prefix/name?scheme=http&endpoint_override=…``,
``gs://…``, ``file://…``), resolved as Ray Tune resolves ``storage_path`` (``sati.storage``).
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import pyarrow.fs

from sati.checkpoint import atomic_write
from sati.storage import filesystem, is_uri
from sati.tracking.store import TrackingError

STATE_FILE = "sati_search.json"


def as_search_dir(target: str) -> str | None:
    """``target`` as a search directory: a URI as given, an existing local directory made absolute;
    None when it names neither (an MLflow run id, say)."""
    if is_uri(target):
        return target
    if Path(target).is_dir():
        return str(Path(target).resolve())
    return None


def _resolve(search_dir: str | Path) -> tuple[pyarrow.fs.FileSystem, str]:
    try:
        return filesystem(search_dir)
    except (OSError, ValueError) as err:  # pyarrow: an unknown scheme or a bad query parameter
        raise TrackingError(f"{search_dir}: cannot resolve its filesystem ({err})") from err


def write_search_state(search_dir: str | Path, state: dict) -> None:
    """Write ``<search_dir>/sati_search.json``: atomically on a local disk (temp file + rename), in one
    upload on an object store (an object appears whole or not at all)."""
    data = json.dumps(state, indent=2).encode()
    fs, path = _resolve(search_dir)
    try:
        if isinstance(fs, pyarrow.fs.LocalFileSystem):
            atomic_write(Path(path) / STATE_FILE, lambda f: f.write(data))
            return
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(posixpath.join(path, STATE_FILE)) as f:
            f.write(data)
    except OSError as err:
        raise TrackingError(f"{search_dir}: cannot write {STATE_FILE} ({err})") from err


def read_search_state(search_dir: str | Path) -> dict:
    """The state ``write_search_state`` wrote; a ``TrackingError`` naming ``search_dir`` when it is missing
    or unreadable."""
    fs, path = _resolve(search_dir)
    file = posixpath.join(path, STATE_FILE)
    try:
        if fs.get_file_info(file).type != pyarrow.fs.FileType.File:
            raise TrackingError(f"{search_dir}: not a sati search directory (no {STATE_FILE})")
        with fs.open_input_stream(file) as f:
            return json.loads(f.read())
    except OSError as err:
        raise TrackingError(f"{search_dir}: cannot read {STATE_FILE} ({err})") from err
    except ValueError as err:
        raise TrackingError(f"{search_dir}: {STATE_FILE} is not valid JSON ({err})") from err
