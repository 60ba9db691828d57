"""What ``sati search --resume/--extend`` and ``sati reproduce --resume`` open: the search that a directory
or an MLflow run id names, found only where the user's own configuration agrees.

Nothing in the shared storage or in a mutable MLflow tag decides where a resume reads from or whom it
talks to:

- **The tracking URI** is the user's: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else
  ``./mlflow.db``. The state file's must be the same, else the resume is refused naming both (it would
  send the user's MLflow credentials there).
- **A search directory typed on the command line** is taken as typed; a URI with ``.`` or ``..`` in
  its path is refused. Its parent is the storage it lies in.
- **A run id** leads to the run's tag ``sati.search_dir``, which anyone with EDIT on the experiment can
  change, so the tag counts only if it names a folder directly in the storage that the run's
  ``search.storage_path`` parameter names (MLflow never lets a logged parameter change), and the
  state found there names that run as its own.
- **The state file** (signed: ``sati.search.signed_storage``) must name that same storage as its
  ``search.storage_path`` (no other folder, scheme, bucket or endpoint), the folder's name as its own,
  and plain names (no ``/``, ``..``) as its Tune experiments, which are then looked up in that storage.
"""

from __future__ import annotations

import os
import posixpath
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from sati import storage
from sati.search.state import STATE_FILE, as_search_dir, read_search_state
from sati.search.study import mask_password
from sati.tracking import contract
from sati.tracking.store import RunInfo, TrackingStore, resolve_uri

STORAGE_PARAM = "search.storage_path"  # the run parameter (the pipeline key) of the search's storage


class SearchLocationError(ValueError):
    """A resume that would read from, or log to, somewhere the user did not configure."""


@dataclass(frozen=True)
class SearchTarget:
    """An interrupted or finished search (or reproduction), checked as the module docstring says."""

    store: TrackingStore
    parent_run_id: str
    search_dir: str  # <storage_path>/<name>
    storage_path: str
    state: dict

    @property
    def experiments(self) -> list[str]:
        """The Tune experiments of the search, first to last (each a folder in ``storage_path``)."""
        return list(self.state.get("experiments", [self.state["name"]]))


def open_search(target: str, tracking_uri: str | None, find: Callable[[TrackingStore, str], RunInfo]) -> SearchTarget:
    """The search ``target`` names (its directory, or its MLflow run id, which ``find`` looks up and
    checks the role of), with the tracking store at the user's ``tracking_uri`` (``resolve_uri``)."""
    uri = resolve_uri(tracking_uri)
    if (search_dir := as_search_dir(target)) is not None:
        if storage.is_uri(search_dir):
            _refuse_dot_segments(search_dir, "the search directory")
        storage_path, name = storage.split(search_dir)
        state = read_search_state(search_dir)
        _check_tracking_uri(state, uri, tracking_uri, search_dir)
        store, parent = TrackingStore.open(uri), str(state.get("parent_run_id"))
    else:
        store, parent = TrackingStore.open(uri), target
        run = find(store, target)
        storage_path, name = _tagged_location(run)
        search_dir = storage.join(storage_path, name)
        state = read_search_state(search_dir)
        _check_tracking_uri(state, uri, tracking_uri, search_dir)
        if state.get("parent_run_id") != target:
            raise SearchLocationError(
                f"{search_dir}/{STATE_FILE} belongs to MLflow run {state.get('parent_run_id')}, not to run {target} "
                f"whose tag {contract.SEARCH_DIR} points there; refusing to resume it"
            )
    _check_state(state, storage_path, name, search_dir)
    return SearchTarget(store, parent, search_dir, storage_path, state)


def plain_name(name: object) -> bool:
    """Whether ``name`` is one folder name: no separator, not ``.``/``..``, no query or scheme."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\?#\0")
        and not storage.is_uri(name)
    )


def same_location(a: str, b: str) -> bool:
    """Whether two storage locations are the same folder: local paths resolved; URIs by scheme, bucket
    and path (normalized) and their query parameters (endpoint, scheme), in any order."""
    if storage.is_uri(a) != storage.is_uri(b):
        return False
    if not storage.is_uri(a):
        return os.path.realpath(a) == os.path.realpath(b)
    return _uri_key(a) == _uri_key(b)


def _uri_key(uri: str) -> tuple:
    parsed = urllib.parse.urlparse(uri)
    path = posixpath.normpath(parsed.netloc + parsed.path)
    return parsed.scheme.lower(), path, sorted(urllib.parse.parse_qsl(parsed.query))


def _refuse_dot_segments(location: str, what: str) -> None:
    parsed = urllib.parse.urlparse(location) if storage.is_uri(location) else None
    path = (parsed.netloc + parsed.path) if parsed else location
    if any(part in (".", "..") for part in path.split("/")):
        raise SearchLocationError(f"{what} {location}: '.' and '..' are not allowed in it; name the folder itself")


def _tagged_location(run: RunInfo) -> tuple[str, str]:
    """(storage, folder name) of the run's search directory: its tag, if it lies in its storage parameter."""
    tagged, configured = run.tags.get(contract.SEARCH_DIR, ""), run.params.get(STORAGE_PARAM, "")
    if not tagged or not configured:
        raise SearchLocationError(
            f"MLflow run {run.run_id} has no tag {contract.SEARCH_DIR} or no parameter {STORAGE_PARAM}: "
            "resume it from its search directory instead"
        )
    _refuse_dot_segments(tagged, f"MLflow run {run.run_id}: tag {contract.SEARCH_DIR} =")
    parent, name = storage.split(tagged)
    if not plain_name(name) or not same_location(parent, configured):
        raise SearchLocationError(
            f"MLflow run {run.run_id}: tag {contract.SEARCH_DIR} = {tagged} is not a folder directly in the "
            f"search's storage ({STORAGE_PARAM} = {configured}). Anyone with EDIT on the experiment can change "
            "that tag; refusing to restore from where it points"
        )
    return configured, name


def _normalized_tracking(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + os.path.realpath(uri.removeprefix("sqlite:///"))
    return uri.rstrip("/")


def _check_tracking_uri(state: dict, uri: str, given: str | None, search_dir: str) -> None:
    recorded, yours = state.get("tracking_uri"), mask_password(uri)
    if isinstance(recorded, str) and _normalized_tracking(recorded) == _normalized_tracking(yours):
        return
    env = os.environ.get("MLFLOW_TRACKING_URI")
    source = "--tracking-uri" if given else ("$MLFLOW_TRACKING_URI" if env else "the default")
    raise SearchLocationError(
        f"{search_dir}/{STATE_FILE} says the search logs to MLflow at {recorded}, but your tracking URI is "
        f"{yours} ({source}). A resume logs, with your MLflow credentials, only where you point it: if "
        f"{recorded} is your tracking store, pass --tracking-uri {recorded}"
    )


def _check_state(state: dict, storage_path: str, name: str, search_dir: str) -> None:
    where = f"{search_dir}/{STATE_FILE}"
    pipeline = state.get("pipeline")
    recorded = pipeline.get("search", {}).get("storage_path") if isinstance(pipeline, dict) else None
    if not isinstance(recorded, str) or not same_location(recorded, storage_path):
        raise SearchLocationError(
            f"{where}: its search.storage_path = {recorded} is not the storage the search directory lies in "
            f"({storage_path}); refusing to restore from another place (a moved search folder resumes only "
            "where it was started)"
        )
    experiments = state.get("experiments", [state.get("name")])
    if state.get("name") != name or not isinstance(experiments, list) or experiments[:1] != [name]:
        raise SearchLocationError(f"{where}: it names search {state.get('name')!r}, but its folder is {name!r}")
    bad = [e for e in experiments if not plain_name(e)]
    if bad:
        raise SearchLocationError(
            f"{where}: experiments = {bad!r}: each must be a folder name in {storage_path} (no '/', '..' or URI)"
        )
