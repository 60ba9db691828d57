"""Every Ray call of the project: the trainable, its reporter, the searcher, the Tuner.

A trial is ``train_trial(config)``: it applies the sampled dotted keys to the base pipeline, trains
with ``sati.trainer.fit`` on the train and validation splits only, and reports each epoch to Tune
with a checkpoint (``last.pt`` to resume, ``best.pt`` to promote). The MLflow side runs on the
driver (``TrackingCallback``), so runs end properly even when a scheduler stops a trial.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from sati.config import PipelineConfig, flatten, from_dict
from sati.search.space import SearchSpace
from sati.tracking import TrialRuns

FINISHED = "trainer/finished"


# ---------------------------------------------------------------------------------------------
# Inside a trial (worker process)


class TuneReporter:
    """Reports each epoch's metrics and checkpoint files to Tune (no progress bars in trials)."""

    def progress(self, batches, total, desc):
        return batches

    def on_epoch_end(self, epoch, metrics, checkpoint, is_best):
        ckpt_dir = Path(checkpoint).parent
        with tempfile.TemporaryDirectory() as d:
            for name in ("last.pt", "best.pt", "best.json"):
                if (ckpt_dir / name).exists():
                    _link_or_copy(ckpt_dir / name, Path(d) / name)
            node = ray.get_runtime_context().get_node_id()
            tune.report({**_plain(metrics), "node_id": node}, checkpoint=tune.Checkpoint.from_directory(d))


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where possible (Tune copies the directory to storage anyway)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _plain(metrics: dict) -> dict:
    return {k: (float("nan") if v is None else v) for k, v in metrics.items()}


class SearchTrial:
    """A search trial's config: the base pipeline with the sampled ``{dotted key: value}`` applied."""

    def __init__(self, base: dict):
        self.base = base

    def __call__(self, trial_config: dict[str, Any]) -> tuple[PipelineConfig, dict[str, str]]:
        sampled = {k: v for k, v in trial_config.items() if "." in k}
        cfg = from_dict(self.base, "search pipeline").replace(sampled, source="sampled trial")
        return cfg, {f"sampled.{k}": str(v) for k, v in sampled.items()}


class ConfirmTrial:
    """A confirmation trial: candidate ``i``'s resolved pipeline retrained with a fresh seed."""

    def __init__(self, bases: list[dict], source_runs: list[str]):
        self.bases, self.source_runs = bases, source_runs

    def __call__(self, trial_config: dict[str, Any]) -> tuple[PipelineConfig, dict[str, str]]:
        i, seed = int(trial_config["candidate"]), int(trial_config["seed"])
        cfg = from_dict(self.bases[i], f"candidate {self.source_runs[i]}").replace({"seed": seed})
        return cfg, {"sati.candidate_run_id": self.source_runs[i], "sati.candidate": str(i), "sati.seed": str(seed)}


def train_trial(config: dict[str, Any], resolve) -> None:
    """Ray function trainable: ``resolve(config)`` gives the trial's pipeline (``SearchTrial``, ``ConfirmTrial``)."""
    from sati.trainer import fit

    cfg, _ = resolve(config)
    trial_dir = Path(tune.get_context().get_trial_dir())
    cfg = cfg.replace(
        {
            "train.out_dir": str(trial_dir / "train"),
            "train.selection_metric": cfg.search.metric,
            "train.selection_mode": cfg.search.mode,
        }
    )
    gpu = cfg.search.resources.gpu
    if 0 < gpu < 1:  # Ray does not isolate GPU memory between trials that share a GPU
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(gpu * 0.95)
    resume = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            local = trial_dir / "restored"
            local.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(d) / "last.pt", local / "last.pt")
            if (Path(d) / "best.pt").exists():
                (trial_dir / "train" / "checkpoints").mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(d) / "best.pt", trial_dir / "train" / "checkpoints" / "best.pt")
            resume = local / "last.pt"
    datasets, info = _cached_datasets(cfg)
    fit(cfg, TuneReporter(), resume=resume, datasets=datasets, info=info)


_DATA_CACHE: dict = {}


def _cached_datasets(cfg: PipelineConfig):
    """Train/valid splits, read and tokenized once per worker process (trials reuse workers)."""
    from sati.data.loaders import load_split_datasets

    path = Path(cfg.data.path)
    key = (str(path), path.stat().st_mtime_ns, cfg.model.text_encoder, cfg.data.max_text_tokens)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_split_datasets(cfg, ("train", "valid"))
    return _DATA_CACHE[key]


# ---------------------------------------------------------------------------------------------
# Searcher: Optuna (seeded TPE), told PRUNED when a scheduler stopped the trial


class _DefineByRun:
    """A picklable define-by-run function for OptunaSearch."""

    def __init__(self, space: SearchSpace, base: PipelineConfig):
        self.space, self.base = space, base

    def __call__(self, trial):
        return self.space.sample(trial, self.base)


class StopAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED, not COMPLETE with a truncated value, for trials a
    scheduler stopped before the trainer finished (Ray's default treats them as complete)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if (
            result
            and not error
            and not result.get(FINISHED)
            and trial_id in self._ot_trials
            and trial_id not in self._completed_trials
        ):
            import optuna

            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


# ---------------------------------------------------------------------------------------------
# Driver side: MLflow runs follow Tune's trial events


class TrackingCallback(tune.Callback):
    """One MLflow child run per trial: params, per-epoch metrics, best checkpoint, learning curve."""

    def __init__(self, runs: TrialRuns, resolve, metric: str):
        self.runs, self.resolve, self.metric = runs, resolve, metric

    def on_trial_start(self, iteration, trials, trial, **info):
        resolved, tags = self.resolve(trial.config)
        self.runs.start(trial.trial_id, str(trial), flatten(resolved.to_dict()), tags=tags)

    on_trial_restore = on_trial_start

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id not in self.runs.runs:
            self.on_trial_start(iteration, trials, trial)
        self.runs.log_epoch(trial.trial_id, result)
        if result.get("node_id") and result.get("iterations_since_restore") == 1:
            self.runs.record_node(trial.trial_id, result["node_id"])

    def _finish(self, trial, status: str, reason: str | None):
        ckpt = trial.checkpoint
        if ckpt is not None:
            try:
                with ckpt.as_directory() as d:
                    if (Path(d) / "best.pt").exists():
                        self.runs.log_checkpoint(trial.trial_id, Path(d) / "best.pt")
            except Exception as err:  # the search goes on; the run says what is missing
                reason = (reason or "") + f" (checkpoint upload failed: {err})"
        self.runs.finish(trial.trial_id, status, reason, self.metric)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        self._finish(
            trial,
            "finished" if last.get(FINISHED) else "stopped",
            None if last.get(FINISHED) else "stopped early by the scheduler",
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "failed", _error_text(trial))

    def get_state(self):
        return {"runs": self.runs.runs}

    def set_state(self, state):
        self.runs.runs.update(state.get("runs", {}))


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        text = Path(path).read_text().strip().splitlines()
        return " | ".join(text[-3:]) if text else "trial raised"
    return "trial raised an error"


# ---------------------------------------------------------------------------------------------
# The Tuner


def init_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address``, or start a local Ray bound to 127.0.0.1; True if we started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the compact CLIReporter table
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    # "local": always a new instance, never a cluster that `ray start` left on this machine
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def shutdown_ray() -> None:
    ray.shutdown()


def _scheduler(cfg: PipelineConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    s = cfg.search
    if s.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=cfg.train.epochs,
            grace_period=min(s.grace_period, cfg.train.epochs),
            reduction_factor=s.reduction_factor,
        )
    if s.scheduler == "hyperband":
        return HyperBandScheduler(
            time_attr="training_iteration", max_t=cfg.train.epochs, reduction_factor=s.reduction_factor
        )
    return FIFOScheduler()


def _run_config(
    cfg: PipelineConfig, name: str, storage_path: str, runs: TrialRuns, resolve, parameter_columns: list[str]
) -> tune.RunConfig:
    """Where the experiment state goes, the MLflow callback, retries, and the live table (trials,
    state, epoch, best validation metric, ``parameter_columns``)."""
    s = cfg.search
    table = tune.CLIReporter(
        metric_columns={"epoch": "epoch", tune_metric(cfg): f"best {s.metric}"},
        parameter_columns=parameter_columns,
        max_report_frequency=15,
        sort_by_metric=True,
    )
    return tune.RunConfig(
        name=name,
        storage_path=storage_path,
        callbacks=[TrackingCallback(runs, resolve, s.metric)],
        progress_reporter=table,
        failure_config=tune.FailureConfig(max_failures=s.max_failures, fail_fast=False),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=1,
    )


def tune_metric(cfg: PipelineConfig) -> str:
    """Tune and Optuna see the trial's best-so-far validation value (comparable at every rung)."""
    return f"best/{cfg.search.metric}"


def build_tuner(cfg: PipelineConfig, space: SearchSpace, storage_path: str, name: str, runs: TrialRuns) -> tune.Tuner:
    import optuna

    s = cfg.search
    first = space.defaults(cfg)  # the pipeline's own values are the first point tried
    searcher = StopAwareOptunaSearch(
        space=_DefineByRun(space, cfg),
        metric=tune_metric(cfg),
        mode=s.mode,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        points_to_evaluate=[first] if first else None,
    )
    resolve = SearchTrial(cfg.to_dict())
    return tune.Tuner(
        _trainable(resolve, cfg),
        tune_config=tune.TuneConfig(
            metric=tune_metric(cfg),
            mode=s.mode,
            num_samples=s.num_samples,
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent),
            scheduler=_scheduler(cfg),
            time_budget_s=s.time_budget_s,
            reuse_actors=s.reuse_actors,
        ),
        run_config=_run_config(cfg, name, storage_path, runs, resolve, space.keys),
    )


def build_confirm_tuner(
    cfg: PipelineConfig, bases: list[dict], source_runs: list[str], seeds: list[int], name: str, runs: TrialRuns
) -> tune.Tuner:
    """Every candidate pipeline in ``bases`` retrained once per seed (a grid, FIFO, no early stopping);
    ``cfg`` (the first candidate's) gives the metric, resources, concurrency and storage."""
    s = cfg.search
    resolve = ConfirmTrial(bases, source_runs)
    return tune.Tuner(
        _trainable(resolve, cfg),
        param_space={"candidate": tune.grid_search(list(range(len(bases)))), "seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(
            metric=tune_metric(cfg), mode=s.mode, max_concurrent_trials=s.max_concurrent, reuse_actors=s.reuse_actors
        ),
        run_config=_run_config(cfg, name, s.storage_path, runs, resolve, ["candidate", "seed"]),
    )


def restore_tuner(search_dir: str, cfg: PipelineConfig) -> tune.Tuner:
    if not tune.Tuner.can_restore(search_dir):
        raise ValueError(f"{search_dir}: no restorable Ray Tune experiment state here")
    return tune.Tuner.restore(
        search_dir,
        trainable=_trainable(SearchTrial(cfg.to_dict()), cfg),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
    )


def _trainable(resolve, cfg: PipelineConfig):
    """``train_trial`` bound to its config resolver, with the per-trial resources of ``cfg``."""
    return tune.with_resources(
        tune.with_parameters(train_trial, resolve=resolve),
        {"cpu": cfg.search.resources.cpu, "gpu": cfg.search.resources.gpu},
    )
