"""A search's strategy, built from the pipeline: the searcher (Optuna's sampler behind the concurrency
and budget gate) and the scheduler. The search's Tuner and the replay (``sati.replay``) build the same
objects here, so a replay drives the decision code a search runs."""

from __future__ import annotations

from typing import Any

from sati.config import PipelineConfig
from sati.search.searcher import BudgetedLimiter, DefineByRun, StopAwareOptunaSearch, make_sampler
from sati.search.space import SearchSpace

# The trainer's epoch: what ASHA and HyperBand count, also when a trial restarted afresh after a restore.
TIME_ATTR = "epoch"


def tune_metric(cfg: PipelineConfig) -> str:
    """The metric Tune, the scheduler and Optuna read: the trial's best-so-far validation value."""
    return f"best/{cfg.train.selection_metric}"


def build_searcher(
    cfg: PipelineConfig,
    space: SearchSpace,
    seed: int,
    points: list[dict[str, Any]] | None,
    study: tuple[Any, str | None] = (None, None),
) -> BudgetedLimiter:
    """``search.sampler`` seeded with ``seed`` over ``space`` (``points``: tried before any sample), at
    most ``search.max_concurrent`` trials at once and none once a budget is spent; the Optuna study is
    kept in ``study`` = (Optuna storage, None: in memory; study name)."""
    s = cfg.search
    storage, name = study
    searcher = StopAwareOptunaSearch(
        space=DefineByRun(space, cfg),
        metric=tune_metric(cfg),
        mode=cfg.train.selection_direction,
        sampler=make_sampler(s.sampler, seed),
        points_to_evaluate=points or None,
        storage=storage,
        study_name=name,
    )
    return BudgetedLimiter(
        searcher,
        s.max_concurrent,
        (s.resources.cpu, s.resources.gpu),
        (s.budget_cpu_hours, s.budget_gpu_hours),
    )


def build_scheduler(cfg: PipelineConfig):
    """``search.scheduler`` over ``train.epochs`` epochs: ASHA, synchronous HyperBand, or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    s = cfg.search
    if s.scheduler == "asha":
        return ASHAScheduler(
            time_attr=TIME_ATTR,
            max_t=cfg.train.epochs,
            grace_period=min(s.grace_period, cfg.train.epochs),
            reduction_factor=s.reduction_factor,
        )
    if s.scheduler == "hyperband":
        return HyperBandScheduler(time_attr=TIME_ATTR, max_t=cfg.train.epochs, reduction_factor=s.reduction_factor)
    return FIFOScheduler()
