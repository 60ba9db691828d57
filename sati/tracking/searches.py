"""A search in MLflow: its parent run, one child run per trial, and the summary logged at the end.

Runs are found again by tags, so a restored search keeps one run per trial: ``sati.role`` = search |
trial, ``sati.trial_id`` (Ray's trial id) and ``mlflow.parentRunId`` (``sati.tracking.contract``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from sati.config import flatten
from sati.provenance import rerun_record
from sati.tables import rows_csv, rows_markdown
from sati.tracking import contract as c
from sati.tracking.store import RunInfo, TrackingError, TrackingStore


def start_search_run(
    store: TrackingStore,
    experiment: str,
    *,
    name: str,
    pipeline: dict[str, Any],
    params: dict[str, Any],
    space_path: str | None,
    data_checksum: str,
    search_dir: str,
    metric: str,
    mode: str,
    model_name: str | None,
    git_commit: str,
    versions: dict[str, str],
    pipeline_files: tuple[str, ...] = (),
) -> str:
    """Create the search's parent run with the resolved pipeline (``params`` flattened), the space file
    and provenance (``pipeline_files``: the files the pipeline was composed of); returns its id."""
    tags = {
        c.ROLE: c.Role.SEARCH.value,
        c.SEARCH_DIR: search_dir,
        c.GIT_COMMIT: git_commit,
        c.DATA_CHECKSUM: data_checksum,
        c.SELECTION_METRIC: metric,
        c.SELECTION_MODE: mode,
        **({c.MODEL_NAME: model_name} if model_name else {}),
        **({c.PIPELINE_FILES: ", ".join(pipeline_files)} if pipeline_files else {}),
        **{c.version_tag(k): v for k, v in versions.items()},
    }
    run_id = store.create_run(store.experiment_id(experiment), name, tags)
    store.log_params(run_id, params)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        store.client.log_artifact(run_id, str(Path(d) / "pipeline.yaml"))
    if space_path:
        store.client.log_artifact(run_id, space_path)
    return run_id


def find_search(store: TrackingStore, run_id: str) -> RunInfo:
    """A search's parent run (to resume it by run id); any other run is refused, naming it."""
    run = store.run(run_id)
    if run.tags.get(c.ROLE) != c.Role.SEARCH.value:
        raise TrackingError(f"MLflow run {run_id} is not a sati search run (tag {c.ROLE} != search)")
    return run


def trial_runs_by_id(store: TrackingStore, parent_run_id: str) -> dict[str, RunInfo]:
    """The search's child runs keyed by Ray trial id."""
    return {r.tags.get(c.TRIAL_ID, ""): r for r in store.child_runs(parent_run_id)}


FIGURE_SAVE = {"bbox_inches": "tight", "dpi": 110}  # no clipped labels
RERUN_ARTIFACT = "rerun.json"  # what `sati reproduce --rerun` trains again from (provenance.rerun_record)
STEP_METRIC = "train/loss"  # logged every epoch: its history tells which epochs a run has


class TrialRuns:
    """One child run per Ray trial under a parent run (a search or a confirmation round), found again
    after a restore. Used by the driver's Tune callback; pickled with Tune's experiment state."""

    def __init__(self, store: TrackingStore, parent_run_id: str, data_checksum: str = "", commit: str = "unknown"):
        self.store, self.parent = store, parent_run_id
        self.data_checksum, self.commit = data_checksum, commit  # provenance of every trial's rerun record
        self.runs: dict[str, str] = {}  # trial id → run id
        self.logged: dict[str, int] = {}  # trial id → last epoch logged
        self.nodes: dict[str, list[str]] = {}  # trial id → Ray nodes it ran on

    def __getstate__(self) -> dict:
        return {
            "store": self.store,
            "parent": self.parent,
            "runs": self.runs,
            "logged": self.logged,
            "data_checksum": self.data_checksum,
            "commit": self.commit,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"nodes": {}, "logged": {}, "data_checksum": "", "commit": "unknown", **state})
        self.restored = True  # unpickled: a resumed search, whose trials may have runs already

    def _existing(self, trial_id: str) -> str | None:
        found = self.store.child_runs(self.parent, f"tags.`{c.TRIAL_ID}` = '{trial_id}'")
        return found[0].run_id if found else None

    def start(self, trial_id: str, trial_name: str, config: dict[str, Any], tags: dict[str, str]) -> str:
        """Create the trial's run (the resolved ``config`` as params and in ``rerun.json`` with the
        provenance a re-run needs; ``tags`` such as the sampled values), or reopen the one a previous,
        interrupted driver made."""
        # a new search's trials have no run yet: ask MLflow only in a resumed one (one query per trial)
        run_id = self.runs.get(trial_id) or (self._existing(trial_id) if getattr(self, "restored", False) else None)
        if run_id:
            self.store.reopen_run(run_id)
            # a restored trial re-runs the epochs after its last checkpoint: log each epoch once
            history = self.store.client.get_metric_history(run_id, STEP_METRIC)
            self.logged[trial_id] = max((m.step for m in history), default=0)
        else:
            experiment = self.store.client.get_run(self.parent).info.experiment_id
            tags = {c.ROLE: c.Role.TRIAL.value, c.TRIAL_ID: trial_id, c.SEED: str(config.get("seed")), **tags}
            tags |= {c.DATA_CHECKSUM: self.data_checksum, c.GIT_COMMIT: self.commit}
            run_id = self.store.create_run(experiment, trial_name, tags, parent=self.parent)
            self.store.log_params(run_id, flatten(config))
            record = rerun_record(config, self.data_checksum, self.commit)
            self.store.client.log_dict(run_id, record, RERUN_ARTIFACT)
            self.logged[trial_id] = 0
        self.runs[trial_id] = run_id
        return run_id

    def log_epoch(self, trial_id: str, metrics: dict[str, Any]) -> None:
        """One epoch's metrics (``split/name`` keys; not Tune's bookkeeping, not ``trainer/*`` flags) at
        step = epoch; an epoch logged before (a restored trial re-running it) is not logged again."""
        step = int(metrics.get("epoch", 0))
        numeric = {
            k: float(v)
            for k, v in metrics.items()
            if "/" in k and not k.startswith("trainer/") and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if step <= self.logged.get(trial_id, 0):
            return
        self.store.log_metrics(self.runs[trial_id], numeric, step=step)
        self.logged[trial_id] = step

    def record_node(self, trial_id: str, node_id: str) -> None:
        """Tag the Ray node a trial (re)started on: ``sati.node_id`` (last), ``sati.nodes`` (all)."""
        nodes = self.nodes.setdefault(trial_id, [])
        if node_id not in nodes:
            nodes.append(node_id)
        self.store.set_tags(self.runs[trial_id], {c.NODE_ID: node_id, c.NODES: ",".join(nodes)})

    def record_checkpoint_epoch(self, trial_id: str, epoch: int) -> None:
        """The epoch of the newest checkpoint Tune has registered for the trial: a restart (a lost node,
        ``--resume``) goes on after it."""
        if trial_id in self.runs:
            self.store.set_tags(self.runs[trial_id], {c.CHECKPOINT_EPOCH: str(epoch)})

    def record_checkpoint(self, trial_id: str, uri: str) -> None:
        """Where the trial's ``best.pt`` is in the search's storage (its Tune checkpoint)."""
        self.store.set_tags(self.runs[trial_id], {c.CHECKPOINT_URI: uri})

    def log_checkpoint(self, trial_id: str, checkpoint_file: str | Path) -> None:
        self.store.client.log_artifact(self.runs[trial_id], str(checkpoint_file), artifact_path="checkpoint")

    def finish(self, trial_id: str, status: str, reason: str | None, metric: str) -> None:
        """End the trial's run, with the reason for a failure. (No plot here: drawing one costs the driver
        about 0.1 CPU-s per trial; ``log_learning_curves`` draws the top trials' at the end of the search,
        and MLflow charts every trial's epochs itself.)"""
        run_id = self.runs.get(trial_id)
        if run_id is None:
            return
        epochs = self.logged.get(trial_id, 0)
        tags = {c.TRIAL_STATUS: status, c.EPOCHS: str(epochs), **({c.FAILURE_REASON: reason} if reason else {})}
        self.store.set_tags(run_id, tags)
        self.store.end_run(run_id, "FINISHED" if status in ("finished", "stopped") else "FAILED")

    def close_orphans(self) -> int:
        """Mark child runs still RUNNING (their driver died) as KILLED; returns how many."""
        stale = self.store.child_runs(self.parent, "attributes.status = 'RUNNING'")
        for run in stale:
            self.store.end_run(run.run_id, "KILLED")
        return len(stale)


def learning_curve(history: list[dict], metric: str):
    """The training loss and the validation metric per epoch, one panel each, as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    top.plot(epochs, [h.get("train/task", float("nan")) for h in history], "o-", label="train/task (MSE)")
    top.plot(epochs, [h.get("train/loss", float("nan")) for h in history], "s--", label="train/loss (total)")
    top.set_ylabel("training loss")
    top.legend(loc="best")
    bottom.plot(epochs, [h.get(metric, float("nan")) for h in history], "o-", color="tab:orange", label=metric)
    bottom.set_ylabel(metric)
    bottom.set_xlabel("epoch")
    bottom.xaxis.get_major_locator().set_params(integer=True)
    bottom.legend(loc="best")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


LEARNING_CURVE_KEYS = ("train/task", "train/loss")  # drawn above the selection metric


def log_learning_curves(store: TrackingStore, rows: list[dict], metric: str) -> None:
    """``learning_curve.png`` on each trial run of ``rows`` (the top of the leaderboard), from the
    per-epoch metrics MLflow holds, so resumed and extended searches are drawn whole."""
    for row in rows:
        run_id = row["mlflow_run_id"]
        by_epoch: dict[int, dict] = {}
        for key in (*LEARNING_CURVE_KEYS, metric):
            for m in store.client.get_metric_history(run_id, key):
                by_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
        if by_epoch:
            figure = learning_curve([by_epoch[e] for e in sorted(by_epoch)], metric)
            store.client.log_figure(run_id, figure, "learning_curve.png", save_kwargs=FIGURE_SAVE)


def log_search_summary(
    store: TrackingStore, parent_run_id: str, rows: list[dict], figures: dict[str, Any], best: dict | None
) -> None:
    """The parent run's trials table (CSV, Markdown), plots, and best-trial metrics."""
    store.client.log_text(parent_run_id, rows_csv(rows), "trials.csv")
    store.client.log_text(parent_run_id, rows_markdown(rows), "trials.md")
    for name, fig in figures.items():
        store.client.log_figure(parent_run_id, fig, f"plots/{name}.png", save_kwargs=FIGURE_SAVE)
    if best:
        store.log_metrics(parent_run_id, {f"best_trial/{k}": v for k, v in best["metrics"].items()})
        store.set_tags(parent_run_id, {c.BEST_TRIAL_RUN: best["run_id"]})


# --------------------------------------------------------------------------------------------
# After a search: its trials as promotion sees them


def find_searches(store: TrackingStore, source: str) -> list[RunInfo]:
    """The search parent run ``source`` (a run id), or every finished search in experiment ``source``."""
    import re

    if re.fullmatch(r"[0-9a-f]{32}", source):
        run = store.run(source)
        role = run.tags.get(c.ROLE)
        if role != c.Role.SEARCH.value:
            hint = f"; its search is run {run.tags.get(c.PARENT_RUN)}" if role == c.Role.TRIAL.value else ""
            raise TrackingError(f"MLflow run {source} is not a sati search (tag {c.ROLE} = {role!r}){hint}")
        return [run]
    exp = store.client.get_experiment_by_name(source)
    if exp is None:
        raise TrackingError(f"{store.uri}: {source!r} is neither an MLflow run id nor an experiment name")
    runs = store.client.search_runs(
        [exp.experiment_id],
        f"tags.`{c.ROLE}` = '{c.Role.SEARCH.value}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )
    if not runs:
        raise TrackingError(f"experiment {source!r} at {store.uri} has no finished sati search")
    return [RunInfo.of(r) for r in runs]


def finished_trials(store: TrackingStore, parent_ids: list[str]) -> list[RunInfo]:
    """Trial runs of the given parents that ended FINISHED (failed and killed trials excluded)."""
    where = f"tags.`{c.ROLE}` = '{c.Role.TRIAL.value}' and attributes.status = 'FINISHED'"
    return [r for p in parent_ids for r in store.child_runs(p, where)]


CHECKPOINT_ARTIFACT = "checkpoint/best.pt"


def download_checkpoint(store: TrackingStore, run_id: str, dst: str | Path) -> Path:
    """A trial's best checkpoint downloaded to ``dst``: its MLflow artifact ``checkpoint/best.pt``, else
    the Tune checkpoint its run points at (tag ``sati.checkpoint_uri``, for trials that uploaded none)."""
    from mlflow.artifacts import download_artifacts

    from sati import storage

    try:
        path = download_artifacts(
            run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=str(dst), tracking_uri=store.uri
        )
        return Path(path)
    except Exception as err:
        artifact_error = f"{type(err).__name__}: {str(err)[:300]}"
    uri = store.run(run_id).tags.get(c.CHECKPOINT_URI)
    if uri:
        try:
            return storage.copy_file_to_local(uri, Path(dst) / "best.pt")
        except Exception as err:
            raise TrackingError(
                f"MLflow run {run_id}: no checkpoint artifact '{CHECKPOINT_ARTIFACT}', and its Tune checkpoint "
                f"{uri} cannot be read ({type(err).__name__}: {str(err)[:300]})"
            ) from None
    raise TrackingError(
        f"MLflow run {run_id}: checkpoint artifact '{CHECKPOINT_ARTIFACT}' missing or unreadable ({artifact_error})"
    ) from None
