"""``sati search``: check the inputs, open the MLflow parent run, run or restore the Tuner, summarize.

Orchestration only: Ray is started or joined by ``ray_session``, the Tuners are built in
``sati.search.tuner``, and every MLflow call is in ``sati.tracking``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sati import storage
from sati.config import ConfigError, PipelineConfig, flatten, from_dict
from sati.data.h5format import read_info
from sati.data.loaders import ensure_dataset
from sati.provenance import git_commit, versions
from sati.search import summary
from sati.search.preflight import run_preflight
from sati.search.ray_session import ray_session
from sati.search.space import SearchSpace, load_space
from sati.search.state import STATE_FILE, as_search_dir, read_search_state, write_search_state
from sati.tracking import contract
from sati.tracking.searches import (
    TrialRuns,
    find_search,
    log_search_summary,
    start_search_run,
    trial_runs_by_id,
)
from sati.tracking.store import TrackingStore


@dataclass
class SearchOutcome:
    parent_run_id: str
    tracking_uri: str
    search_dir: str
    rows: list[dict]
    best: dict | None


def _absolute(cfg: PipelineConfig) -> PipelineConfig:
    """Trials run in their own directories (and maybe on other nodes): make local paths absolute."""
    changes = {"data.path": str(Path(cfg.data.path).resolve())}
    if Path(cfg.model.text_encoder).exists():
        changes["model.text_encoder"] = str(Path(cfg.model.text_encoder).resolve())
    if cfg.search.space:
        changes["search.space"] = str(Path(cfg.search.space).resolve())
    if "://" not in cfg.search.storage_path:
        changes["search.storage_path"] = str(Path(cfg.search.storage_path).resolve())
    return cfg.replace(changes)


def check_inputs(cfg: PipelineConfig) -> tuple[PipelineConfig, SearchSpace, TrackingStore]:
    """Every check that can fail before Ray starts or a run exists: space keys, tracking store, data."""
    if not cfg.search.space:
        raise ConfigError("search.space is not set: name a search space file, e.g. search_spaces/quickstart.yaml")
    space = load_space(cfg.search.space, cfg)
    store = TrackingStore.open(cfg.tracking.uri)
    ensure_dataset(cfg)
    return _absolute(cfg), space, store


def run_search(
    cfg: PipelineConfig, console: Callable[[str], None] = print, check_only: bool = False
) -> SearchOutcome | None:
    """Run a new search; the experiment state lives in ``<search.storage_path>/<name>``. The pre-flight
    runs once Ray is up and before the MLflow parent run exists; ``check_only`` stops after it."""
    cfg, space, store = check_inputs(cfg)
    with ray_session(cfg.search.ray_address):
        run_preflight(cfg, embedded=not cfg.search.ray_address, console=console)
        if check_only:
            return None
        info = read_info(cfg.data.path)
        name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        search_dir = storage.join(cfg.search.storage_path, name)
        parent = start_search_run(
            store,
            cfg.tracking.experiment,
            name=name,
            pipeline=cfg.to_dict(),
            params=flatten(cfg.to_dict()),
            space_path=cfg.search.space,
            data_checksum=info.checksum,
            search_dir=search_dir,
            metric=cfg.train.selection_metric,
            mode=cfg.train.selection_direction,
            model_name=cfg.registry.model_name,
            git_commit=git_commit(),
            versions=versions(),
        )
        state = {"parent_run_id": parent, "tracking_uri": store.uri, "pipeline": cfg.to_dict(), "name": name}
        write_search_state(search_dir, state)
        console(f"search {name}: MLflow parent run {parent} in experiment '{cfg.tracking.experiment}' at {store.uri}")

        def make_tuner():
            from sati.search.tuner import build_search_tuner

            return build_search_tuner(cfg, space, name, TrialRuns(store, parent))

        return _fit(cfg, space, store, parent, search_dir, console, make_tuner)


def resume_search(
    target: str, tracking_uri: str | None = None, console: Callable[[str], None] = print
) -> SearchOutcome:
    """Continue an interrupted search from its directory or its MLflow parent run id."""
    if (search_dir := as_search_dir(target)) is not None:
        state = read_search_state(search_dir)
        store, parent = TrackingStore.open(state["tracking_uri"]), state["parent_run_id"]
    else:
        store = TrackingStore.open(tracking_uri)
        run = find_search(store, target)
        search_dir, parent = run.tags[contract.SEARCH_DIR], target
        state = read_search_state(search_dir)
    cfg = from_dict(state["pipeline"], f"{search_dir}/{STATE_FILE}")
    space = load_space(cfg.search.space, cfg)
    with ray_session(cfg.search.ray_address):
        run_preflight(cfg, embedded=not cfg.search.ray_address, console=console)
        store.reopen_run(parent)
        console(f"resuming search {state['name']} (MLflow parent run {parent}) from {search_dir}")

        def make_tuner():
            from sati.search.tuner import restore_search_tuner

            return restore_search_tuner(search_dir, cfg)

        return _fit(cfg, space, store, parent, search_dir, console, make_tuner)


def _fit(cfg, space, store, parent, search_dir, console, make_tuner) -> SearchOutcome:
    """Fit and summarize (Ray is up); a search that dies marks its parent run FAILED."""
    try:
        results = make_tuner().fit()
        return _finish(cfg, space, store, parent, search_dir, results, console)
    except BaseException:
        store.end_run(parent, "FAILED")
        raise


def _finish(cfg, space, store: TrackingStore, parent, search_dir, results, console) -> SearchOutcome:
    """Close orphans, upload the top trials' weights (``log_checkpoints: top_k``), log the summary and
    the search's cost to the parent run, print the best trials."""
    from sati.search.tuner import tune_metric

    metric = cfg.train.selection_metric
    rows = summary.trial_rows(cfg, results, trial_runs_by_id(store, parent), tune_metric(cfg))
    TrialRuns(store, parent).close_orphans()
    ranked = summary.ranked_rows(cfg, rows)
    if cfg.search.log_checkpoints == "top_k":
        _upload_top_k(store, results, ranked[: cfg.search.top_k], console)
    best = None
    if ranked:
        b = ranked[0]
        best = {"run_id": b["mlflow_run_id"], "trial_id": b["trial_id"], "metrics": {metric: b[metric]}}
    cost = summary.search_cost(cfg, rows)
    log_search_summary(store, parent, rows, summary.study_plots(cfg, space, rows), best)
    store.log_metrics(parent, cost)
    budget_note = summary.budget_note(cfg, rows, cost)
    if budget_note:
        store.set_tags(parent, {contract.STOPPED_REASON: budget_note})
        console(budget_note)
    store.end_run(parent, "FINISHED")
    console(summary.best_table(cfg, ranked[:5]))
    console(
        f"\nsearch directory: {search_dir}\nMLflow parent run: {parent}\n"
        f"cost: {cost['cost/cpu_hours']:.3g} CPU-hours, {cost['cost/gpu_hours']:.3g} GPU-hours\n"
        f"see it with: mlflow ui --backend-store-uri {store.uri}"
    )
    return SearchOutcome(parent, store.uri, search_dir, rows, best)


def _upload_top_k(store: TrackingStore, results, top: list[dict], console: Callable[[str], None]) -> None:
    """``best.pt`` of the ``top`` trials from their Tune checkpoints to their MLflow runs."""
    by_trial = {(r.metrics or {}).get("trial_id"): r for r in results}
    for row in top:
        result = by_trial.get(row["trial_id"])
        if result is None or result.checkpoint is None or not row["mlflow_run_id"]:
            continue
        with result.checkpoint.as_directory() as d:
            if (Path(d) / "best.pt").exists():
                store.client.log_artifact(row["mlflow_run_id"], str(Path(d) / "best.pt"), artifact_path="checkpoint")
    console(f"uploaded best.pt of the {len(top)} best trial(s) to MLflow (search.log_checkpoints: top_k)")
