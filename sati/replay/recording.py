"""A recording: every trial of a search, epoch by epoch, in one Parquet file (long format, one row per
trial × epoch), with what it was recorded under in the file's own metadata and a JSON copy beside it.

Columns (``sati search export`` writes them; ``read_recording`` checks them):

- ``search_id``, ``experiment`` (the Tune experiment: a search's first, then one per ``--extend``),
  ``trial_id`` (Tune's), ``trial_seq`` (1, 2, … in the order the search created its trials),
  ``config_id`` (a hash of the trial's searched values), ``hp_<key>`` (each searched key; null where a
  ``when`` condition left it unsampled), ``train_seed``;
- ``epoch`` (1, 2, …; 0 on the one row of a trial that failed before reporting), every ``valid/*``
  metric and ``best/<selection metric>`` of that epoch;
- ``epoch_time_s`` (Tune's ``time_this_iter_s``: the seconds the trial held its resources for this epoch,
  its start-up included in epoch 1), ``train_time_s`` (the trainer's own train + validation seconds),
  ``cum_time_s``, ``cpus``, ``gpus`` (per trial), ``t_report_wall`` (seconds after the search's first
  report);
- ``final_status`` (``completed``: the trainer finished; ``sched_stop``: the scheduler stopped it;
  ``error``; ``interrupted``: the search ended before it did) and ``censored`` (its curve ends before
  the trainer would have ended it).

The metadata (JSON under the schema key ``sati_recording``) holds the format version, the selection
metric and mode, ``max_t`` (epochs per trial), the space (keys, kinds, bounds, log, ``when``), the
pipeline's fixed values (paths reduced to file names), the searcher and scheduler settings the search
ran with (they explain the censoring), resources, the cost unit, versions, the git commit, the data
checksum and the command that made it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sati.search.space import KINDS, Param, SearchSpace

FORMAT_VERSION = 1
META_KEY = b"sati_recording"
HP_PREFIX = "hp_"
STATUSES = ("completed", "sched_stop", "error", "interrupted")
REQUIRED_COLUMNS = (
    "trial_id",
    "trial_seq",
    "config_id",
    "epoch",
    "epoch_time_s",
    "cpus",
    "gpus",
    "final_status",
    "censored",
)
REQUIRED_META = ("metric", "mode", "max_t", "space")


class RecordingError(ValueError):
    """A recording file that cannot be replayed; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Recording:
    """A recording as read: its path, its metadata and its rows (a ``pyarrow.Table``)."""

    path: str
    meta: dict[str, Any]
    table: Any

    @property
    def space(self) -> SearchSpace:
        return space_from_meta(self.meta["space"], self.path)

    @property
    def metric_columns(self) -> list[str]:
        return [c for c in self.table.column_names if c.startswith(("valid/", "best/"))]

    def column(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy(zero_copy_only=False)

    def describe(self) -> str:
        """One line: trials, epochs, how it was recorded, the cost unit."""
        m = self.meta
        trials = len(set(self.column("trial_id").tolist()))
        recorded = m.get("searcher", {}).get("sampler", "?"), m.get("scheduler", {}).get("scheduler", "?")
        return (
            f"{trials} trials, up to {m['max_t']} epochs each ({len(self.table)} trial-epochs), recorded with "
            f"{recorded[0]} × {recorded[1]}, {m.get('scheduler', {}).get('max_concurrent', '?')} at a time"
        )


def config_id(values: dict[str, Any]) -> str:
    """A short hash of a trial's searched values (``{dotted key: value or None}``), the same for the same
    values whatever their order."""
    text = json.dumps({k: values[k] for k in sorted(values)}, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def space_to_meta(space: SearchSpace) -> list[dict[str, Any]]:
    """The space as JSON-able records (``Param`` fields)."""
    return [{**dataclasses.asdict(p), "args": list(p.args)} for p in space.params]


def space_from_meta(items: Any, path: str) -> SearchSpace:
    """The space a recording's metadata describes; a ``RecordingError`` naming ``path`` when it is malformed."""
    try:
        params = []
        for item in items:
            if item["kind"] not in KINDS or not isinstance(item["args"], list) or not item["args"]:
                raise ValueError(f"parameter {item.get('key')!r}: kind {item['kind']!r} with args {item['args']!r}")
            params.append(
                Param(
                    key=str(item["key"]),
                    kind=item["kind"],
                    args=tuple(item["args"]),
                    step=item.get("step"),
                    log=bool(item.get("log", False)),
                    when=dict(item.get("when") or {}),
                )
            )
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        raise RecordingError(f"{path}: the recorded search space is malformed ({err})") from None
    if not params:
        raise RecordingError(f"{path}: the recorded search space is empty")
    return SearchSpace(f"{path} (recorded space)", tuple(params))


def write_recording(path: str | Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write ``rows`` (one per trial × epoch) and ``meta`` to ``path`` (Parquet, zstd) and the metadata
    as ``<path>.json`` beside it; returns the JSON copy's path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"format": FORMAT_VERSION, **meta}
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return sidecar


def read_recording(path: str | Path) -> Recording:
    """Read and check a recording; every problem is a ``RecordingError`` naming the file and what was
    expected (no input may crash the reader)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"{path}: recording file not found (make one with `sati search export`)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise RecordingError(f"{path}: not a readable Parquet file ({err})") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise RecordingError(
            f"{path}: no sati recording metadata in this Parquet file (write one with `sati search export`)"
        )
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise RecordingError(f"{path}: its recording metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise RecordingError(f"{path}: recording format {found!r}; this sati reads format {FORMAT_VERSION}")
    missing_meta = [k for k in REQUIRED_META if k not in meta]
    if missing_meta:
        raise RecordingError(f"{path}: its metadata lacks {', '.join(missing_meta)}")
    if meta["mode"] not in ("min", "max") or not isinstance(meta["max_t"], int) or meta["max_t"] < 1:
        raise RecordingError(
            f"{path}: metadata mode = {meta['mode']!r}, max_t = {meta['max_t']!r}: expected min or max, and a whole "
            "number of epochs >= 1"
        )
    recording = Recording(str(path), meta, table)
    _check_columns(recording)
    return recording


def _check_columns(rec: Recording) -> None:
    names = set(rec.table.column_names)
    space_columns = [HP_PREFIX + k for k in rec.space.keys]
    missing = [c for c in (*REQUIRED_COLUMNS, *space_columns, rec.meta["metric"]) if c not in names]
    if missing:
        raise RecordingError(f"{rec.path}: missing column(s) {', '.join(missing)}")
    if rec.table.num_rows == 0:
        raise RecordingError(f"{rec.path}: the recording holds no trials")
    try:
        epochs = rec.column("epoch").astype(float)
        times = rec.column("epoch_time_s").astype(float)
        resources = np.concatenate([rec.column("cpus").astype(float), rec.column("gpus").astype(float)])
    except (TypeError, ValueError) as err:
        raise RecordingError(f"{rec.path}: epoch, epoch_time_s, cpus and gpus must be numbers ({err})") from None
    if not (np.all(np.isfinite(epochs)) and np.all(epochs >= 0) and np.all(epochs == np.round(epochs))):
        raise RecordingError(f"{rec.path}: column epoch must hold whole numbers >= 0")
    if epochs.max() > rec.meta["max_t"]:
        raise RecordingError(f"{rec.path}: an epoch ({int(epochs.max())}) exceeds max_t = {rec.meta['max_t']}")
    if not (np.all(np.isfinite(times)) and np.all(times >= 0) and np.all(np.isfinite(resources) & (resources >= 0))):
        raise RecordingError(f"{rec.path}: epoch_time_s, cpus and gpus must be finite numbers >= 0")
    bad = sorted(set(rec.column("final_status").tolist()) - set(STATUSES))
    if bad:
        raise RecordingError(f"{rec.path}: final_status {bad[0]!r}: expected one of {', '.join(STATUSES)}")
