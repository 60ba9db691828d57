"""The Tuners: a search (Optuna + a scheduler over the YAML space), a retraining grid (configurations
× seeds), and restoring an interrupted search. Tune and Optuna see ``best/<train.selection_metric>``,
the trial's best-so-far validation value, which is comparable at every rung. Every Tuner reads and
writes its storage through ``sati.search.signed_storage``: what it pickles there is signed, and a
restore loads nothing unsigned."""

from __future__ import annotations

from typing import Any

from ray import tune

from sati import storage
from sati.config import PipelineConfig, from_dict
from sati.search.callbacks import TrackingCallback
from sati.search.signed_storage import signed_filesystem
from sati.search.space import SearchSpace
from sati.search.strategy import build_scheduler, build_searcher, tune_metric
from sati.search.trainable import TrialResolver, train_trial
from sati.search.trial_configs import ReseededPipelines, SampledPipelines
from sati.seeding import derive_seed
from sati.tracking.leaderboard import LiveBoard
from sati.tracking.searches import TrialRuns


def _run_config(
    cfg: PipelineConfig,
    name: str,
    storage_path: str,
    runs: TrialRuns,
    resolve: TrialResolver,
    parameter_columns: list[str],
    first_number: int = 1,
) -> tune.RunConfig:
    """Where the experiment state goes, the MLflow callback, retries, and the live table (trials,
    state, epoch, best validation metric, ``parameter_columns``)."""
    s, metric = cfg.search, cfg.train.selection_metric
    experiment_uri = storage.join(storage_path, name)
    board = LiveBoard(runs.store, runs.parent, metric, cfg.train.selection_direction, parameter_columns)
    fs, fs_path = signed_filesystem(storage_path)
    table = tune.CLIReporter(
        metric_columns={"epoch": "epoch", tune_metric(cfg): f"best {metric}"},
        parameter_columns=parameter_columns,
        max_report_frequency=15,
        sort_by_metric=True,
    )
    return tune.RunConfig(
        name=name,
        storage_path=fs_path,
        storage_filesystem=fs,
        callbacks=[TrackingCallback(runs, resolve, board, experiment_uri, s.log_checkpoints, first_number)],
        progress_reporter=table,
        failure_config=tune.FailureConfig(max_failures=s.max_failures, fail_fast=False),
        # every checkpoint directory is kept; TrackingCallback empties all but the newest (its docstring)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        verbose=1,
    )


def _trainable(resolve: TrialResolver, cfg: PipelineConfig):
    """``train_trial`` bound to its config resolver, with the per-trial resources of ``cfg``."""
    return tune.with_resources(
        tune.with_parameters(train_trial, resolve=resolve),
        {"cpu": cfg.search.resources.cpu, "gpu": cfg.search.resources.gpu},
    )


def build_search_tuner(
    cfg: PipelineConfig,
    space: SearchSpace,
    name: str,
    runs: TrialRuns,
    study: tuple[Any, str],
    first_number: int = 1,
) -> tune.Tuner:
    """A search: ``search.num_samples`` trials sampled (``search.sampler``) from ``space`` under the scheduler,
    its Optuna study kept in ``study`` = (Optuna storage, None: in memory; study name). A new search
    tries the pipeline's own values first; an extension (``first_number`` > 1: its trials are numbered on
    from there) continues the same study, so TPE starts from what it learned."""
    extend, s = first_number > 1, cfg.search
    first = None if extend else space.defaults(cfg)  # the pipeline's own values are the first point tried
    # an extension draws other random points than the search did (the same seed would repeat them)
    seed = derive_seed(cfg.seed, "extend", name) if extend else cfg.seed
    resolve = SampledPipelines(cfg.to_dict())
    trial_cfg = from_dict(resolve.base, "search pipeline")  # no study URL: Tune pickles the searcher
    return tune.Tuner(
        _trainable(resolve, cfg),
        tune_config=tune.TuneConfig(
            metric=tune_metric(cfg),
            mode=cfg.train.selection_direction,
            num_samples=s.num_samples,
            search_alg=build_searcher(trial_cfg, space, seed, [first] if first else None, study),
            scheduler=build_scheduler(cfg),
            time_budget_s=s.time_budget_s,
            reuse_actors=s.reuse_actors,
        ),
        run_config=_run_config(cfg, name, s.storage_path, runs, resolve, space.keys, first_number),
    )


def build_retrain_tuner(
    cfg: PipelineConfig, bases: list[dict], source_runs: list[str], seeds: list[int], name: str, runs: TrialRuns
) -> tune.Tuner:
    """Every candidate pipeline in ``bases`` retrained once per seed (a grid, FIFO, no early stopping);
    ``cfg`` (the first candidate's) gives the metric, resources, concurrency and storage."""
    s = cfg.search
    resolve = ReseededPipelines(bases, source_runs)
    return tune.Tuner(
        _trainable(resolve, cfg),
        param_space={"candidate": tune.grid_search(list(range(len(bases)))), "seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(
            metric=tune_metric(cfg),
            mode=cfg.train.selection_direction,
            max_concurrent_trials=s.max_concurrent,
            reuse_actors=s.reuse_actors,
        ),
        run_config=_run_config(cfg, name, s.storage_path, runs, resolve, ["candidate", "seed"]),
    )


def restore_tuner(storage_path: str, name: str, trainable, resume_errored: bool) -> tune.Tuner:
    """The interrupted Tune experiment ``<storage_path>/<name>``: finished trials kept, unfinished ones
    resumed (and failed ones too with ``resume_errored``). Tune reads every pickle and state file in it
    through their MAC check (callers check them all with ``verify_experiment`` before Ray starts)."""
    fs, fs_path = signed_filesystem(storage_path)
    path = f"{fs_path.rstrip('/')}/{name}"
    if not tune.Tuner.can_restore(path, storage_filesystem=fs):
        raise ValueError(f"{storage.join(storage_path, name)}: no restorable Ray Tune experiment state here")
    return tune.Tuner.restore(
        path,
        trainable=trainable,
        storage_filesystem=fs,
        resume_unfinished=True,
        resume_errored=resume_errored,
        restart_errored=False,
    )


def restore_search_tuner(storage_path: str, name: str, cfg: PipelineConfig) -> tune.Tuner:
    """The interrupted search experiment ``<storage_path>/<name>`` (``restore_tuner``)."""
    return restore_tuner(storage_path, name, _trainable(SampledPipelines(cfg.to_dict()), cfg), resume_errored=False)
