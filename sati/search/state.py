"""``sati_search.json``: what ``sati search --resume`` needs (MLflow parent run id, tracking URI, resolved
pipeline, name), kept in the search directory beside Ray Tune's experiment state, signed like it
(``sati.search.signed_storage``: a state file without a valid MAC is refused). It holds no password:
the pipeline's study storage and the tracking URI are written masked.

A search directory is a local path or a URI (``s3://bucket/prefix/name?scheme=http&endpoint_override=…``,
``gs://…``, ``file://…``), resolved as Ray Tune resolves ``storage_path`` (``sati.storage``).
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import pyarrow
import pyarrow.fs

from sati import storage
from sati.search.signed_storage import signed_filesystem
from sati.storage import is_uri
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


def _signed(search_dir: str | Path) -> tuple[pyarrow.fs.FileSystem, str]:
    """The signed filesystem of the storage ``search_dir`` lies in, and the state file's path in it."""
    parent, name = storage.split(search_dir)
    try:
        fs, root = signed_filesystem(parent)
    except (OSError, pyarrow.ArrowException) as err:  # an unknown scheme or a bad query parameter
        raise TrackingError(f"{search_dir}: cannot resolve its filesystem ({err})") from err
    return fs, posixpath.join(root, name, STATE_FILE)


def write_search_state(search_dir: str | Path, state: dict) -> None:
    """Write ``<search_dir>/sati_search.json``, signed (``sati.search.signed_storage``), whole or not at all."""
    data = json.dumps(state, indent=2).encode()
    fs, file = _signed(search_dir)
    try:
        fs.create_dir(posixpath.dirname(file), recursive=True)
        with fs.open_output_stream(file) as f:
            f.write(data)
    except OSError as err:
        raise TrackingError(f"{search_dir}: cannot write {STATE_FILE} ({err})") from err


def read_search_state(search_dir: str | Path) -> dict:
    """The state ``write_search_state`` wrote, once its MAC checks out (else ``UnverifiedFileError``); a
    ``TrackingError`` naming ``search_dir`` when it is missing or unreadable."""
    fs, file = _signed(search_dir)
    try:
        if fs.get_file_info(file).type != pyarrow.fs.FileType.File:
            raise TrackingError(f"{search_dir}: not a sati search directory (no {STATE_FILE})")
        with fs.open_input_stream(file) as f:
            data = f.read()
    except OSError as err:
        raise TrackingError(f"{search_dir}: cannot read {STATE_FILE} ({err})") from err
    try:
        state = json.loads(data)
    except ValueError as err:
        raise TrackingError(f"{search_dir}: {STATE_FILE} is not valid JSON ({err})") from err
    if not isinstance(state, dict):
        raise TrackingError(f"{search_dir}: {STATE_FILE} is not a JSON object")
    return state
