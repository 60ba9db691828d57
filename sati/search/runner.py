"""``sati search``: check the inputs, open the MLflow parent run, run or restore the Tuner, summarize.

Orchestration only: Ray is started or joined by ``ray_session``, the Tuners are built in
``sati.search.tuner``, and every MLflow call is in ``sati.tracking``.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sati import storage
from sati.config import ConfigError, PipelineConfig, flatten, from_dict
from sati.data.h5format import read_info
from sati.data.loaders import ensure_dataset
from sati.provenance import file_sha256, git_commit, versions
from sati.search import plots, summary
from sati.search.preflight import run_preflight
from sati.search.ray_session import ray_session
from sati.search.signed_storage import verify_experiment
from sati.search.space import SearchSpace, load_space
from sati.search.state import STATE_FILE, write_search_state
from sati.search.study import ENV as STUDY_ENV
from sati.search.study import (
    mask_password,
    rdb_storage,
    resumed_study_url,
    seeded_memory_storage,
    shown_pipeline,
    study_storage_url,
)
from sati.search.target import SearchTarget, open_search
from sati.tracking import contract, leaderboard
from sati.tracking.leaderboard import runs_table_link, ui_address
from sati.tracking.searches import TrialRuns, find_search, log_learning_curves, log_search_summary, start_search_run
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
    cfg: PipelineConfig,
    console: Callable[[str], None] = print,
    check_only: bool = False,
    pipeline_files: tuple[str, ...] = (),
) -> SearchOutcome | None:
    """Run a new search; the experiment state lives in ``<search.storage_path>/<name>``. The pre-flight
    runs once Ray is up and before the MLflow parent run exists; ``check_only`` stops after it.
    ``pipeline_files`` (the files ``cfg`` was composed of) are recorded with the search."""
    cfg, space, store = check_inputs(cfg)
    with ray_session(cfg.search.ray_address):
        run_preflight(cfg, embedded=not cfg.search.ray_address, console=console)
        if check_only:
            return None
        info, commit = read_info(cfg.data.path), git_commit()
        name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"  # unique: names the study too
        search_dir = storage.join(cfg.search.storage_path, name)
        shown = shown_pipeline(cfg)
        study = (study_storage_url(cfg, store.uri), name)
        parent = start_search_run(
            store,
            cfg.tracking.experiment,
            name=name,
            pipeline=shown,
            params=flatten(shown),
            space_path=cfg.search.space,
            data_checksum=info.checksum,
            search_dir=search_dir,
            metric=cfg.train.selection_metric,
            mode=cfg.train.selection_direction,
            model_name=cfg.registry.model_name,
            git_commit=commit,
            versions=versions(),
            pipeline_files=pipeline_files,
        )
        state = {  # no password: the resume takes the tracking URI and the study URL from the user again
            "parent_run_id": parent,
            "tracking_uri": mask_password(store.uri),
            "pipeline": shown,
            "study_storage": mask_password(study[0]) if study[0] else None,
            "name": name,
            "space_sha256": file_sha256(Path(cfg.search.space)),
            "experiments": [name],  # Tune experiments of this search: the first, then one per --extend
            "planned": cfg.search.num_samples,
            "pipeline_files": list(pipeline_files),
        }
        write_search_state(search_dir, state)
        shown_uri = mask_password(store.uri)
        console(f"search {name}: MLflow parent run {parent} in experiment '{cfg.tracking.experiment}' at {shown_uri}")
        _announce(cfg, store, parent, study, console)

        def make_tuner():
            from sati.search.tuner import build_search_tuner

            runs = TrialRuns(store, parent, info.checksum, commit)
            return build_search_tuner(cfg, space, name, runs, (rdb_storage(study[0]), name))

        return _fit(cfg, space, store, parent, search_dir, state, console, make_tuner)


def _resumed(target: SearchTarget, overrides: dict, allowed: set[str], verb: str) -> tuple[PipelineConfig, str | None]:
    """The pipeline a resumed or extended search runs (its own, ``overrides`` of ``allowed`` keys applied)
    and its study URL (``resumed_study_url``: given again, with its password, when it has one)."""
    state, name = target.state, target.state["name"]
    changed = sorted(k for k in overrides if k not in allowed)
    if changed:
        raise ConfigError(
            f"{verb} goes on with search {name}'s own pipeline: only {', '.join(sorted(allowed))} may be set; "
            f"{', '.join(changed)} cannot change (start a new search for that)"
        )
    given = overrides.get("search.study_storage") or os.environ.get(STUDY_ENV) or None
    url = resumed_study_url(state.get("study_storage"), given, name)
    cfg = from_dict(state["pipeline"], f"{target.search_dir}/{STATE_FILE}")
    settings = {k: v for k, v in overrides.items() if k != "search.study_storage"}
    return cfg.replace({**settings, "search.study_storage": url}, source=f"{verb} --set"), url


def resume_search(
    target: str,
    tracking_uri: str | None = None,
    console: Callable[[str], None] = print,
    overrides: dict | None = None,
) -> SearchOutcome:
    """Continue an interrupted search (or its interrupted extension) from its directory or parent run id.
    Everything is checked before Ray starts: where it is (``open_search``), every pickle and state file
    of the experiment it restores (their MACs), and the study storage."""
    found = open_search(target, tracking_uri, find_search)
    store, parent, search_dir, state = found.store, found.parent_run_id, found.search_dir, found.state
    experiment = found.experiments[-1]
    verify_experiment(found.storage_path, experiment)
    cfg, study_url = _resumed(found, overrides or {}, {"search.study_storage"}, "--resume")
    space = load_space(cfg.search.space, cfg)
    rdb_storage(study_url)  # Tune's pickled searcher reconnects to it (its URL was pickled without the password)
    with ray_session(cfg.search.ray_address):
        run_preflight(cfg, embedded=not cfg.search.ray_address, console=console)
        store.reopen_run(parent)
        console(f"resuming search {state['name']} (MLflow parent run {parent}) from {search_dir}")

        def make_tuner():
            from sati.search.tuner import restore_search_tuner

            return restore_search_tuner(found.storage_path, experiment, cfg)

        return _fit(cfg, space, store, parent, search_dir, state, console, make_tuner)


def extend_search(
    target: str,
    overrides: dict,
    tracking_uri: str | None = None,
    console: Callable[[str], None] = print,
) -> SearchOutcome:
    """Add ``search.num_samples`` trials to a finished or interrupted search: the same pipeline and space,
    the same Optuna study (TPE goes on from what it learned), the same MLflow parent run."""
    found = open_search(target, tracking_uri, find_search)
    store, parent, search_dir, state = found.store, found.parent_run_id, found.search_dir, found.state
    allowed = {"search.num_samples", "search.max_concurrent", "search.study_storage"}
    cfg, study_url = _resumed(found, overrides, allowed, "--extend")
    if "search.num_samples" not in overrides:
        raise ConfigError(
            f"--extend adds trials to search {state['name']} with its own pipeline: set search.num_samples "
            f"(and optionally search.max_concurrent)"
        )
    if Path(cfg.search.space).is_file() and file_sha256(Path(cfg.search.space)) != state.get("space_sha256"):
        raise ConfigError(
            f"search.space = {cfg.search.space} changed since search {state['name']} ran (its sha256 differs): "
            "an extension samples the same space; start a new search"
        )
    space = load_space(cfg.search.space, cfg)
    done = len(store.child_runs(parent, f"tags.`{contract.ROLE}` = '{contract.Role.TRIAL.value}'"))
    experiments = found.experiments
    name = f"{state['name']}-extend{len(experiments)}"
    with ray_session(cfg.search.ray_address):
        run_preflight(cfg, embedded=not cfg.search.ray_address, console=console)
        state = {
            **state,
            "experiments": [*experiments, name],
            "planned": state.get("planned", done) + cfg.search.num_samples,
        }
        write_search_state(search_dir, state)
        store.reopen_run(parent)
        console(f"extending search {state['name']} (MLflow parent run {parent}) by {cfg.search.num_samples} trials")
        study = (study_url, state["name"])
        _announce(cfg, store, parent, study, console)
        info = store.run(parent)
        storage = _extended_study(cfg, space, store, parent, study, console)

        def make_tuner():
            from sati.search.tuner import build_search_tuner

            runs = TrialRuns(store, parent, info.tags.get(contract.DATA_CHECKSUM, ""), git_commit())
            return build_search_tuner(
                cfg,
                space,
                name,
                runs,
                (storage, study[1]),
                first_number=done + 1,
            )

        return _fit(cfg, space, store, parent, search_dir, state, console, make_tuner)


def _extended_study(cfg: PipelineConfig, space: SearchSpace, store: TrackingStore, parent: str, study: tuple, console):
    """The storage an extension's TPE goes on from: the search's RDB study, else (it was kept in memory)
    one seeded with the trials logged under ``parent``."""
    url, name = study
    if url is not None:
        return rdb_storage(url)
    import optuna

    metric = cfg.train.selection_metric
    rows = leaderboard.trial_rows(store, parent, metric, space.keys)
    storage = seeded_memory_storage(name, cfg.train.selection_direction, space, rows, metric)
    seeded = len(optuna.load_study(study_name=name, storage=storage).trials)
    console(
        f"TPE goes on from {seeded} of the {len(rows)} trials logged under the search run (study rebuilt in memory)"
    )
    return storage


def _announce(cfg: PipelineConfig, store: TrackingStore, parent: str, study: tuple[str | None, str], console) -> None:
    """Where to watch the search: the MLflow runs table sorted by the metric, the live Optuna dashboard."""
    experiment = store.run(parent).experiment_id
    store.client.set_experiment_tag(experiment, contract.EXPERIMENT_KIND, contract.MODEL_TRAINING_KIND)
    metric, mode = cfg.train.selection_metric, cfg.train.selection_direction
    link = runs_table_link(ui_address(mask_password(store.uri)), experiment, parent, metric, mode)
    console(f"runs, best first: {link}")
    if study[0] is None:
        console(
            f"live study:       kept in memory (study '{study[1]}'); set search.study_storage or "
            f"${STUDY_ENV} to an RDB URL to watch it with optuna-dashboard"
        )
    else:
        console(f"live study:       optuna-dashboard {mask_password(study[0])}   (study '{study[1]}')")


def _fit(cfg, space, store, parent, search_dir, state, console, make_tuner) -> SearchOutcome:
    """Fit and summarize (Ray is up); a search that dies marks its parent run FAILED."""
    try:
        make_tuner().fit()
        return _finish(cfg, space, store, parent, search_dir, state, console)
    except BaseException:
        store.end_run(parent, "FAILED")
        raise


def _finish(cfg, space, store: TrackingStore, parent, search_dir, state, console) -> SearchOutcome:
    """Close orphans, upload the top trials' weights (``log_checkpoints: top_k``), log the leaderboard,
    plots, description and cost to the parent run, print the best trials. Rows come from the trial
    runs, so a resumed or extended search is summarized whole."""
    started = time.perf_counter()
    metric, mode = cfg.train.selection_metric, cfg.train.selection_direction
    TrialRuns(store, parent).close_orphans()
    rows = leaderboard.trial_rows(store, parent, metric, space.keys)
    ranked = leaderboard.ranked(rows, metric, mode)
    if cfg.search.log_checkpoints == "top_k":
        _upload_top_k(store, ranked[: cfg.search.top_k], console)
    best = None
    if ranked:
        b = ranked[0]
        best = {"run_id": b["mlflow_run_id"], "trial_id": b["trial_id"], "metrics": {metric: b[metric]}}
    cost = summary.search_cost(rows)
    notes = [note] if (note := summary.budget_note(cfg, rows, cost, state.get("planned", len(rows)))) else []
    table = leaderboard.table_rows(rows, metric, mode)
    log_search_summary(store, parent, table, plots.search_plots(rows, metric, mode, space), best)
    log_learning_curves(store, ranked[: leaderboard.TOP], metric)
    store.log_metrics(parent, cost)
    if notes:
        store.set_tags(parent, {contract.STOPPED_REASON: notes[0]})
        console(notes[0])
    leaderboard.publish_final(store, parent, rows, metric, mode, space.keys, notes)
    store.end_run(parent, "FINISHED")
    console(summary.best_table(cfg, ranked[:5], space.keys))
    console(f"\nsummarized {len(rows)} trials in {time.perf_counter() - started:.1f} s")
    console(
        f"\nsearch directory: {search_dir}\nMLflow parent run: {parent}\n"
        f"cost: {cost['cost/cpu_hours']:.3g} CPU-hours, {cost['cost/gpu_hours']:.3g} GPU-hours\n"
        f"see it with: mlflow ui --backend-store-uri {mask_password(store.uri)}"
    )
    return SearchOutcome(parent, store.uri, search_dir, rows, best)


def _upload_top_k(store: TrackingStore, top: list[dict], console: Callable[[str], None]) -> None:
    """``best.pt`` of the ``top`` trials, read from their Tune checkpoints, to their MLflow runs."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sati-top-k-") as tmp:
        for i, row in enumerate(top):
            uri = store.run(row["mlflow_run_id"]).tags.get(contract.CHECKPOINT_URI)
            if uri:
                local = storage.copy_file_to_local(uri, Path(tmp) / str(i) / "best.pt")
                store.client.log_artifact(row["mlflow_run_id"], str(local), artifact_path="checkpoint")
    console(f"uploaded best.pt of the {len(top)} best trial(s) to MLflow (search.log_checkpoints: top_k)")
