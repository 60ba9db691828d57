"""A reproduction's training on Ray: every variant × seed one trial, under the reproduction's MLflow run.

A grid (FIFO, no early stopping) with the pipeline's ``search.resources``, ``search.max_concurrent``,
``search.storage_path`` and retries, exactly as a search runs its trials: each trial is a child MLflow
run (its variant and seed in tags, its ``rerun.json``), selects its checkpoint on the validation split,
and uploads ``best.pt``. The Tune experiment lives in ``<search.storage_path>/<name>`` beside
``sati_search.json``, so an interrupted reproduction resumes like a search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import tune

from sati.config import PipelineConfig
from sati.search.preflight import run_preflight
from sati.search.ray_session import ray_session
from sati.search.trainable import FINISHED
from sati.search.trial_configs import VariantPipelines
from sati.search.tuner import _run_config, _trainable, restore_tuner, tune_metric
from sati.tracking.searches import TrialRuns


def build_reproduction_tuner(
    cfg: PipelineConfig, variants: dict[str, dict[str, Any]], seeds: list[int], name: str, runs: TrialRuns
) -> tune.Tuner:
    """The grid ``variants`` (name → config overrides) × ``seeds``, one trial each."""
    s = cfg.search
    resolve = VariantPipelines(cfg.to_dict(), variants)
    return tune.Tuner(
        _trainable(resolve, cfg),
        param_space={"variant": tune.grid_search(list(variants)), "seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(
            metric=tune_metric(cfg),
            mode=cfg.train.selection_direction,
            max_concurrent_trials=s.max_concurrent,
            reuse_actors=s.reuse_actors,
        ),
        run_config=_run_config(cfg, name, s.storage_path, runs, resolve, ["variant", "seed"]),
    )


def train_variants(
    cfg: PipelineConfig,
    variants: dict[str, dict[str, Any]],
    seeds: list[int],
    *,
    name: str,
    start: Callable[[], TrialRuns],
    address: str | None,
    console: Callable[[str], None],
    resume: bool = False,
) -> int:
    """Train the grid on Ray (started for the call, or joined at ``address``): a new one, or (``resume``)
    the interrupted one in ``<search.storage_path>/<name>``. ``start`` runs after the pre-flight and
    before any trial: it opens the MLflow run the trials go under and returns their ``TrialRuns``.
    Returns how many trials did not end (Tune returns after Ctrl-C with its state saved)."""
    with ray_session(address):
        run_preflight(cfg, embedded=not address, console=console)
        runs = start()
        if not resume:
            tuner = build_reproduction_tuner(cfg, variants, seeds, name, runs)
        else:  # the callbacks (and their TrialRuns) come back from the state; a trial that died with its
            # worker trains on from its checkpoint
            trainable = _trainable(VariantPipelines(cfg.to_dict(), variants), cfg)
            tuner = restore_tuner(cfg.search.storage_path, name, trainable, resume_errored=True)
        results = tuner.fit()
    # After Ctrl-C Tune returns (its state saved) with the running trials marked terminated and the rest
    # not created: a trial ended only if the trainer said so on its last report, or it failed.
    ended = sum(1 for r in results if r.error is not None or (r.metrics or {}).get(FINISHED))
    return len(variants) * len(seeds) - ended
