"""Search storage as Ray Tune sees it: a local folder, a shared mount, or an object-store URI
(``s3://bucket/prefix?scheme=http&endpoint_override=…``, ``gs://…``), read and written through pyarrow,
the layer Tune itself resolves ``storage_path`` with (``pyarrow.fs.FileSystem.from_uri``). Query
parameters configure the filesystem and stay at the end of every URI built from a base (``join``).
Credentials come from the environment (``AWS_ACCESS_KEY_ID``, …), never from the URI.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from pathlib import Path


def is_uri(location: str | Path) -> bool:
    """``s3://…``, ``gs://…``, ``file://…``: anything with a scheme; a plain path is not."""
    return "://" in str(location)


def join(base: str | Path, *names: str) -> str:
    """``base`` (a path or a URI) with ``names`` appended to its path; a URI keeps its query string.

    This is what Tune does with ``storage_path`` and a run name (``ray.air._internal.uri_utils.URI``):
    ``join("s3://b/p/?scheme=http", "x")`` is ``"s3://b/p/x?scheme=http"``, and ``Tuner.restore``
    splits such a directory back into the same ``storage_path`` and name."""
    if not is_uri(base):
        return str(Path(base).joinpath(*names))
    parsed = urllib.parse.urlparse(str(base))
    path = posixpath.normpath(posixpath.join(parsed.netloc + parsed.path, *names))
    return parsed._replace(netloc=path, path="").geturl()


def split(location: str | Path) -> tuple[str, str]:
    """``(parent, name)`` of a path or URI, the inverse of ``join`` (a URI's parent keeps its query string):
    what ``Tuner.restore`` makes of an experiment directory (``storage_path``, run name)."""
    if not is_uri(location):
        path = Path(location)
        return str(path.parent), path.name
    parsed = urllib.parse.urlparse(str(location))
    parent, name = posixpath.split(posixpath.normpath(parsed.netloc + parsed.path))
    return parsed._replace(netloc=parent, path="").geturl(), name


def filesystem(location: str | Path):
    """``(pyarrow filesystem, path in it)`` for a local path or a URI, as Tune resolves ``storage_path``."""
    import pyarrow.fs

    if not is_uri(location):
        return pyarrow.fs.LocalFileSystem(), str(Path(location).resolve())
    return pyarrow.fs.FileSystem.from_uri(str(location))


def copy_file_to_local(location: str, dst: Path) -> Path:
    """Copy the file at ``location`` to the local path ``dst``; returns ``dst``."""
    fs, path = filesystem(location)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(path) as src, open(dst, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    return dst


def delete_files(fs, directory: str, names: tuple[str, ...]) -> list[str]:
    """Delete ``names`` in ``directory`` of ``fs`` where they exist; returns those deleted."""
    import pyarrow.fs

    deleted = []
    for name in names:
        path = posixpath.join(directory, name)
        if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
            fs.delete_file(path)
            deleted.append(name)
    return deleted
