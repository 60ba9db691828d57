"""Choosing among runs by a validation metric: which value is better, a pessimistic score over seeds,
and a ranking. Pure functions; the search, the confirmation round and promotion all use them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def better(new: float, old: float, mode: str, min_delta: float = 0.0) -> bool:
    """``new`` beats ``old`` by more than ``min_delta`` in direction ``mode`` (ties never win)."""
    return new < old - min_delta if mode == "min" else new > old + min_delta


def pessimistic_score(values: list[float], mode: str) -> tuple[float, float, float]:
    """(mean, sample std, score): score = mean − std when maximizing, mean + std when minimizing."""
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return mean, std, mean + std if mode == "min" else mean - std


def rank(items: Iterable[T], value: Callable[[T], float], mode: str) -> list[tuple[T, float]]:
    """``(item, value)`` pairs with a finite value, best first."""
    scored = [(item, value(item)) for item in items]
    scored = [(item, v) for item, v in scored if isinstance(v, (int, float)) and math.isfinite(v)]
    return sorted(scored, key=lambda iv: iv[1], reverse=mode == "max")


def rank_trials(trials: Iterable[T], metric: str, mode: str) -> list[tuple[T, float]]:
    """Trial runs (``RunInfo``) with a finite ``best/<metric>``, best first."""
    return rank(trials, lambda t: t.metrics.get(f"best/{metric}", float("nan")), mode)
