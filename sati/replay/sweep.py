"""Strategies compared on replayed searches, many seeds each, and what a person reads from them.

A strategy is a searcher × scheduler setting (sampler, scheduler, grace period, reduction factor,
trials, trials at once). Every strategy replays the same seeds: seed ``i`` seeds the sampler (and
ASHA's bracket draws) identically in every strategy and picks the same repeat of a recorded
configuration, so strategies are compared on common random numbers.

Cost is what the trials held: the recorded seconds of every replayed epoch × the trial's GPUs (CPUs for
a recording made on CPUs), in hours. The reference is random search × FIFO with the pipeline's trials
and concurrency; ``y_ref`` is the median over seeds of its final best, and ``T_hit`` the cost at which a
search's best-so-far first reaches ``y_ref`` (censored at the search's own total cost when it never does).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sati.config import ConfigError, PipelineConfig, read_yaml_mapping
from sati.replay.harness import replay_search
from sati.replay.store import SOURCES, CurveStore
from sati.search.space import SearchSpace
from sati.seeding import derive_seed

GRID_KEYS = ("sampler", "scheduler", "grace_period", "reduction_factor", "num_samples", "max_concurrent")
QUARTILES = (25, 50, 75)


@dataclass(frozen=True)
class Strategy:
    sampler: str
    scheduler: str
    grace_period: int
    reduction_factor: int
    num_samples: int
    max_concurrent: int

    @property
    def label(self) -> str:
        """``tpe asha g1 rf2 n64 c8`` (grace only for ASHA, reduction factor only for ASHA and HyperBand)."""
        parts = [self.sampler, self.scheduler]
        parts += [f"g{self.grace_period}"] if self.scheduler == "asha" else []
        parts += [f"rf{self.reduction_factor}"] if self.scheduler != "fifo" else []
        return " ".join([*parts, f"n{self.num_samples}", f"c{self.max_concurrent}"])

    def overrides(self) -> dict[str, Any]:
        return {f"search.{k}": getattr(self, k) for k in GRID_KEYS}

    @classmethod
    def reference(cls, cfg: PipelineConfig) -> Strategy:
        """Random search × FIFO with the pipeline's trials and concurrency."""
        s = cfg.search
        return cls("random", "fifo", s.grace_period, s.reduction_factor, s.num_samples, s.max_concurrent)


def strategy_grid(cfg: PipelineConfig, grid: dict[str, list]) -> list[Strategy]:
    """The reference first, then every combination of ``grid``'s values (a key left out takes the
    pipeline's value; grace and reduction factor collapse where the scheduler has none)."""
    s = cfg.search
    values = {k: grid.get(k) or [getattr(s, k)] for k in GRID_KEYS}
    found = [Strategy.reference(cfg)]
    for combo in itertools.product(*(values[k] for k in GRID_KEYS)):
        strategy = Strategy(**dict(zip(GRID_KEYS, combo)))
        if strategy.scheduler != "asha":
            strategy = Strategy(**{**strategy.__dict__, "grace_period": s.grace_period})
        if strategy.scheduler == "fifo":
            strategy = Strategy(**{**strategy.__dict__, "reduction_factor": s.reduction_factor})
        found.append(strategy)
    labels: dict[str, Strategy] = {}
    for strategy in found:
        labels.setdefault(strategy.label, strategy)
    return list(labels.values())


def load_grid(path: str | Path) -> dict[str, list]:
    """A grid file: ``{sampler: [tpe, random], scheduler: [asha], grace_period: [1, 2], ..., seeds: 20}``
    (each key optional; a single value counts as a list of one)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "simulation grid")
    unknown = sorted(set(raw) - set(GRID_KEYS) - {"seeds"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; expected {', '.join(GRID_KEYS)} or seeds")
    return {k: v if isinstance(v, list) or k == "seeds" else [v] for k, v in raw.items()}


def check_grid(cfg: PipelineConfig, strategies: list[Strategy], source: str) -> None:
    """Each strategy must be a pipeline the config accepts (a sampler it knows, reduction factor >= 2, …)."""
    for strategy in strategies:
        cfg.replace(strategy.overrides(), source=source)


@dataclass
class Run:
    """One replayed search (arrays [R], one entry per result in simulated-time order)."""

    strategy: Strategy
    seed: int
    cost_h: np.ndarray  # cumulative resource-hours after each result
    time_h: np.ndarray  # simulated hours since the search started, at each result
    best: np.ndarray  # the search's best-so-far value after each result
    trials: int
    epochs: int
    lookups: Counter
    distances: np.ndarray  # of each lookup to the recorded configuration it served
    stalled: bool

    @property
    def total_cost_h(self) -> float:
        return float(self.cost_h[-1]) if len(self.cost_h) else 0.0

    @property
    def final(self) -> float:
        return float(self.best[-1]) if len(self.best) else math.nan

    def best_within(self, cost_h: np.ndarray) -> np.ndarray:
        """The best value reached at or before each cost (NaN before the first result)."""
        idx = np.searchsorted(self.cost_h, cost_h, side="right") - 1
        return np.where(idx >= 0, self.best[np.clip(idx, 0, None)], np.nan) if len(self.best) else cost_h * np.nan

    def best_by_time(self, time_h: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.time_h, time_h, side="right") - 1
        return np.where(idx >= 0, self.best[np.clip(idx, 0, None)], np.nan) if len(self.best) else time_h * np.nan

    def hit(self, target: float, mode: str) -> float:
        """The cost at which the best-so-far first reaches ``target``; inf when it never does."""
        reached = self.best <= target if mode == "min" else self.best >= target
        return float(self.cost_h[int(np.argmax(reached))]) if reached.any() else math.inf


def sweep(
    cfg: PipelineConfig,
    space: SearchSpace,
    store: CurveStore,
    strategies: list[Strategy],
    seeds: int,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[Strategy, list[Run]]:
    """Every strategy replayed with seeds 0 … ``seeds``-1; each search tries the pipeline's own values
    first, as ``sati search`` does."""
    first = space.defaults(cfg)
    runs: dict[Strategy, list[Run]] = {}
    for strategy in strategies:
        runs[strategy] = []
        for i in range(seeds):
            seeded = cfg.replace({**strategy.overrides(), "seed": derive_seed(cfg.seed, "simulate", i)})
            trajectory = replay_search(
                seeded, space, store, seeded.seed, replay_seed=i, points=[first] if first else None
            )
            runs[strategy].append(
                Run(
                    strategy=strategy,
                    seed=i,
                    cost_h=np.cumsum(trajectory.cost_s) / 3600,
                    time_h=trajectory.time_s / 3600,
                    best=trajectory.incumbent(cfg.train.selection_direction),
                    trials=len(trajectory.trials),
                    epochs=len(trajectory.value),
                    lookups=Counter(trajectory.lookups.lookups),
                    distances=np.array(trajectory.lookups.distances),
                    stalled=trajectory.stalled,
                )
            )
        progress(f"  {strategy.label}: {seeds} seeds replayed")
    return runs


@dataclass
class Comparison:
    """The table's numbers: per strategy, over seeds."""

    reference: Strategy
    target: float  # y_ref: the reference's median final best
    budget_h: float  # B: the reference's median total cost
    best_recorded: float  # y*: the best value any serving recorded curve reaches
    rows: list[dict[str, Any]]


def compare(runs: dict[Strategy, list[Run]], reference: Strategy, mode: str, best_recorded: float) -> Comparison:
    """Per strategy: the best value reached within ¼, ½ and 1 × B (median [IQR]), the cost spent, T_hit to
    the reference's final best (median [IQR], censored as ``>``), the hit rate, the speedup against the
    reference, trials and epochs, and the share of lookups out of the recording's support."""
    ref = runs[reference]
    target = float(np.nanmedian([r.final for r in ref]))
    budget = float(np.median([r.total_cost_h for r in ref]))
    ref_hit = _quantiles([r.hit(target, mode) for r in ref])[1]
    rows = []
    for strategy, group in runs.items():
        hits = [r.hit(target, mode) for r in group]
        at = np.array([r.best_within(np.array([budget / 4, budget / 2, budget])) for r in group])
        lookups = sum((r.lookups for r in group), Counter())
        q_hit = _quantiles(hits)
        rows.append(
            {
                "strategy": strategy.label,
                "seeds": len(group),
                "best_at": [_quantiles(at[:, j]) for j in range(3)],
                "cost_h": _quantiles([r.total_cost_h for r in group]),
                "hours": _quantiles([float(r.time_h[-1]) if len(r.time_h) else 0.0 for r in group]),
                "t_hit": q_hit,
                "censored_at": max((r.total_cost_h for r, h in zip(group, hits) if math.isinf(h)), default=None),
                "hit_rate": (sum(math.isfinite(h) for h in hits), len(hits)),
                "speedup": ref_hit / q_hit[1] if math.isfinite(ref_hit) and math.isfinite(q_hit[1]) else None,
                "trials": float(np.median([r.trials for r in group])),
                "epochs": float(np.median([r.epochs for r in group])),
                "out_of_support": lookups["out_of_support"] / max(sum(lookups.values()), 1),
                "stalled": sum(r.stalled for r in group),
            }
        )
    return Comparison(reference, target, budget, best_recorded, rows)


def lookup_summary(runs: dict[Strategy, list[Run]], d95: float) -> str:
    """Every lookup of the sweep: how many exact, nearest and out of support, and their distances."""
    counts = sum((r.lookups for group in runs.values() for r in group), Counter())
    d = np.concatenate([r.distances for group in runs.values() for r in group])
    shares = ", ".join(f"{100 * counts[s] / max(len(d), 1):.0f} % {s.replace('_', ' ')}" for s in SOURCES)
    spread = f"distance p50 {np.median(d):.3g}, p95 {np.percentile(d, 95):.3g} (d95 {d95:.3g})" if len(d) else ""
    return f"lookups: {len(d)} ({shares}); {spread}"


def regret_curves(
    runs: Iterable[Run], grid: np.ndarray, best_recorded: float, mode: str, by: str = "cost"
) -> np.ndarray:
    """Regret (distance of the best-so-far from y*, ≥ 0) of each run at each point of ``grid`` [runs, G],
    ``by`` cost (resource-hours) or simulated hours."""
    values = np.array([r.best_within(grid) if by == "cost" else r.best_by_time(grid) for r in runs])
    return values - best_recorded if mode == "min" else best_recorded - values


def _quantiles(values: Iterable[float]) -> tuple[float, float, float]:
    """(25th, 50th, 75th percentile) ignoring NaN; a quantile that falls among censored (inf) values is inf."""
    x = np.array([v for v in values if not (isinstance(v, float) and math.isnan(v))], dtype=float)
    if not len(x):
        return (math.nan, math.nan, math.nan)
    with np.errstate(invalid="ignore"):
        q = np.percentile(x, QUARTILES)
    return tuple(math.inf if math.isnan(v) else float(v) for v in q)
