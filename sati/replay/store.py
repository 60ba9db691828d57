"""Recorded curves for replayed trials: each sampled configuration gets the curve of the nearest
recorded configuration.

Lookup is 1-nearest-neighbour, not a surrogate model. A neighbour's curve is real data: its noise, its
shape and its epoch times were measured, and a replay never sees a value better than the recording
holds. A surrogate smooths noise away and can invent better values where data is thin, and the searcher
under test seeks exactly such places; it would flatter model-based searchers (TPE) against random
search. The price of 1-NN is piecewise-constant answers between recorded points, so every lookup
is measured and counted:

- distance: searched numbers in the space's own scale (log where the space is log), each scaled by its
  range to [0, 1]; categorical values (and whether a conditional key is sampled at all) must match;
- ``exact`` (distance 0), ``nearest`` (within d95), ``out_of_support``: farther than d95, the 95th
  percentile of the distances between each recorded configuration and its nearest other one (the
  recording's own spacing), or no recorded configuration with the same categorical values (then the
  nearest over all, each mismatch counting 1).

Only curves that are long enough serve: those whose trainer ended them (finished, stopped by patience,
failed) and those cut short (by a scheduler, an interrupted search) at or after the replayed epochs.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sati.config import PipelineConfig, flatten
from sati.metrics import is_improvement
from sati.replay.recording import HP_PREFIX, Recording, RecordingError
from sati.search.space import SearchSpace

SOURCES = ("exact", "nearest", "out_of_support")
ABSENT = "<not sampled>"  # a conditional key its condition left out


@dataclass(frozen=True)
class ReplayCurve:
    """What a replayed trial reports, epoch by epoch (arrays [E]): the trial's best-so-far selection metric
    as the trainer reports it, and the recorded seconds of each epoch."""

    best: np.ndarray
    epoch_time_s: np.ndarray
    cost_per_s: float  # resource-seconds (GPU or CPU, see CurveStore.unit) per second of the trial
    finished: bool  # the trainer ends the trial after its last epoch (else it fails then)
    source: str  # exact | nearest | out_of_support
    distance: float
    served: str  # config_id of the recorded configuration served

    @property
    def epochs(self) -> int:
        return len(self.best)


@dataclass
class LookupCounts:
    """Every lookup and every replayed epoch, by where its curve came from."""

    lookups: Counter = field(default_factory=Counter)
    distances: list[float] = field(default_factory=list)

    def add(self, curve: ReplayCurve) -> None:
        self.lookups[curve.source] += 1
        self.distances.append(curve.distance)


class CurveStore:
    """The recording's curves, served to the trials of ``cfg`` (its space, metric, direction, epochs,
    patience): ``curve_for(sampled values)`` gives the curve a trial replays."""

    def __init__(self, recording: Recording, cfg: PipelineConfig):
        self.meta, self.path = recording.meta, recording.path
        self.space: SearchSpace = recording.space
        self.metric, self.mode = cfg.train.selection_metric, cfg.train.selection_direction
        self.max_t, self.patience = cfg.train.epochs, cfg.train.patience
        self.base = flatten(cfg.to_dict())
        if self.metric not in recording.table.column_names:
            recorded = ", ".join(c for c in recording.metric_columns if c.startswith("valid/"))
            raise RecordingError(
                f"{self.path}: no column {self.metric} (train.selection_metric); it records {recorded}"
            )
        if self.max_t > recording.meta["max_t"]:
            raise RecordingError(
                f"{self.path}: its trials ran at most {recording.meta['max_t']} epochs; the pipeline asks for "
                f"train.epochs = {self.max_t} (set train.epochs <= {recording.meta['max_t']})"
            )
        gpus = recording.column("gpus").astype(float)
        self.resource, self.unit = ("gpus", "GPU-h") if (gpus > 0).any() else ("cpus", "CPU-h")
        self._numeric = [p for p in self.space.params if p.kind != "choice"]
        self._load_pool(recording)  # the table itself is not kept: a store travels to every replay worker
        self.d95 = self._support_radius()

    # ---- the pool of curves
    def _load_pool(self, rec: Recording) -> None:
        trial = rec.column("trial_id").astype(str)
        order = np.lexsort((rec.column("epoch").astype(int), trial))
        cols = {
            name: rec.column(name)[order]
            for name in ("epoch", "epoch_time_s", "final_status", "censored", "config_id", self.metric, self.resource)
        }
        hp = {k: rec.column(HP_PREFIX + k)[order] for k in self.space.keys}
        trial = trial[order]
        starts = np.flatnonzero(np.r_[True, trial[1:] != trial[:-1]])
        ends = np.r_[starts[1:], len(trial)]
        self.curves, configs, self.config_ids = [], [], []
        self.cut_short = 0  # curves a scheduler (or an interrupted search) ended before the epochs replayed
        for a, b in zip(starts, ends):
            status, censored = str(cols["final_status"][a]), bool(cols["censored"][a])
            rows = slice(a, b) if cols["epoch"][a] > 0 else slice(a + 1, b)  # epoch 0: failed before reporting
            length = b - rows.start
            if censored and length < self.max_t:
                self.cut_short += 1
                continue
            values = np.asarray(cols[self.metric][rows], dtype=float)
            times = np.asarray(cols["epoch_time_s"][rows], dtype=float)
            fails = status == "error" and length <= self.max_t
            self.curves.append((values, times, float(cols[self.resource][a]), fails))
            configs.append({k: _plain(hp[k][a]) for k in self.space.keys})
            self.config_ids.append(str(cols["config_id"][a]))
        if not self.curves:
            raise RecordingError(
                f"{self.path}: no curve reaches {self.max_t} epochs or ends in its trainer (all were cut short "
                "by a scheduler); record a search with scheduler fifo"
            )
        self.signatures = [self._signature(c) for c in configs]
        self.points = np.array([self._coordinates(c) for c in configs], dtype=float).reshape(len(configs), -1)
        self.by_signature = _indices_by(self.signatures)
        self.repeats = _indices_by(self.config_ids)

    def _signature(self, values: dict[str, Any]) -> tuple:
        """The categorical part: each choice's value, and which numeric keys are sampled."""
        return tuple(
            _category(values[p.key]) if p.kind == "choice" else values[p.key] is None for p in self.space.params
        )

    def _coordinates(self, values: dict[str, Any]) -> list[float]:
        """Each numeric key in [0, 1] over its range, in log where the space is log (NaN when not sampled)."""
        out = []
        for p in self._numeric:
            v = values[p.key]
            log = p.kind == "loguniform" or p.log
            if v is None or (log and float(v) <= 0):
                out.append(math.nan)
                continue
            f = math.log if log else float
            lo, hi = f(float(p.args[0])), f(float(p.args[1]))
            out.append((f(float(v)) - lo) / (hi - lo))
        return out

    def _support_radius(self) -> float:
        """d95: the 95th percentile of each recorded configuration's distance to its nearest other one."""
        ids = np.array(self.config_ids)
        nearest: list[float] = []
        for rows in self.by_signature.values():
            d = _pairwise(self.points[rows])
            d[ids[rows][:, None] == ids[rows][None, :]] = np.inf  # repeats of one configuration: not the spacing
            nearest += [x for x in d.min(axis=1) if np.isfinite(x)]
        return float(np.percentile(nearest, 95)) if nearest else 0.0

    # ---- lookup
    def query(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """The recorded keys' values for a trial: sampled ones as sampled, the others the pipeline's own,
        a conditional key None where its condition does not hold."""
        values: dict[str, Any] = {}
        for p in self.space.params:
            holds = all(
                (values[k] if k in values else sampled.get(k, self.base.get(k))) == v for k, v in p.when.items()
            )
            values[p.key] = (sampled[p.key] if p.key in sampled else self.base.get(p.key)) if holds else None
        return values

    def nearest(self, values: dict[str, Any], replay_seed: int = 0) -> tuple[int, float, str]:
        """(curve index, distance, source) of the recorded configuration nearest to ``values``; among
        repeats of that configuration one is drawn per (replay seed, configuration)."""
        x = np.array(self._coordinates(values), dtype=float)
        rows = self.by_signature.get(self._signature(values))
        if rows is not None:
            d = np.sqrt(np.nansum((self.points[rows] - x) ** 2, axis=1))
            best = int(rows[int(np.argmin(d))])
            distance = float(d.min())
            source = "exact" if distance == 0 else "nearest" if distance <= self.d95 else "out_of_support"
        else:
            mismatch = np.array([sum(a != b for a, b in zip(s, self._signature(values))) for s in self.signatures])
            d = np.sqrt(np.nansum((self.points - x) ** 2, axis=1) + mismatch)
            best, distance, source = int(np.argmin(d)), float(d.min()), "out_of_support"
        repeats = self.repeats[self.config_ids[best]]
        if len(repeats) > 1:
            pick = np.random.default_rng([replay_seed, int(self.config_ids[best], 16) % 2**32]).integers(len(repeats))
            best = int(repeats[pick])
        return best, distance, source

    def curve_for(self, sampled: dict[str, Any], replay_seed: int = 0) -> ReplayCurve:
        """The curve a trial with the ``sampled`` values replays: the nearest recorded one, cut at
        ``train.epochs`` and where the pipeline's patience would stop the trainer."""
        index, distance, source = self.nearest(self.query(sampled), replay_seed)
        values, times, resource, fails = self.curves[index]
        best, stop = _trainer_view(values[: self.max_t], self.mode, self.patience)
        finished = not (fails and stop == len(values))
        return ReplayCurve(best[:stop], times[:stop], resource, finished, source, distance, self.config_ids[index])

    def best_recorded(self) -> float:
        """y*: the best value of the selection metric any serving curve reaches within ``train.epochs``."""
        pick = np.nanmin if self.mode == "min" else np.nanmax
        finals = [pick(v[: self.max_t]) for v, *_ in self.curves if np.isfinite(v[: self.max_t]).any()]
        return float(pick(finals)) if finals else math.nan


def _trainer_view(values: np.ndarray, mode: str, patience: int) -> tuple[np.ndarray, int]:
    """(best-so-far per epoch, epochs the trainer runs): the trainer's own rule (``sati.trainer.fit``):
    the first epoch is the best so far, a later one only if it improves, and with ``patience`` > 0 it stops
    once that many epochs in a row did not improve."""
    best = np.empty(len(values))
    current, since = None, 0
    for e, v in enumerate(values):
        if e == 0 or is_improvement(v, current, mode):
            current, since = v, 0
        else:
            since += 1
        best[e] = current
        if patience and since >= patience:
            return best, e + 1
    return best, len(values)


def _pairwise(points: np.ndarray) -> np.ndarray:
    """Euclidean distances [n, n] between rows, over the coordinates both have (NaN: not sampled)."""
    diff = points[:, None, :] - points[None, :, :]
    return np.sqrt(np.nansum(diff**2, axis=2))


def _category(value: Any) -> str:
    """A categorical value as compared: numbers by value (a Parquet column with nulls reads 2 as 2.0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    return repr(value)


def _indices_by(keys: list) -> dict[Any, np.ndarray]:
    """``{key: the positions where it occurs}``."""
    out: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return {k: np.array(v) for k, v in out.items()}


def _plain(value: Any) -> Any:
    """A Parquet cell as a plain Python value (None for null or NaN)."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
