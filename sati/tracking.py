"""Every MLflow call of the search: the parent run, one child run per trial, artifacts and plots.

Runs are found again by tags, so a restored search keeps one run per trial:
``sati.role`` = search | trial, ``sati.trial_id`` (Ray's trial id), ``mlflow.parentRunId``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from sati.config import flatten

ROLE, TRIAL_ID, SEARCH_DIR = "sati.role", "sati.trial_id", "sati.search_dir"
PARENT = "mlflow.parentRunId"


class TrackingError(RuntimeError):
    """The tracking server or store cannot be used."""


def default_uri() -> str:
    """Embedded default: a SQLite store in the working directory."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def resolve_uri(uri: str | None) -> str:
    """The URI given, else ``$MLFLOW_TRACKING_URI``, else the embedded default."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client, name: str) -> str:
    """The id of experiment ``name``, created if it does not exist."""
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def markdown_table(rows: list[dict]) -> str:
    """Rows of dicts (keys in first-seen order) as a Markdown table; floats to 4 significant digits."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return (
        "| "
        + " | ".join(keys)
        + " |\n|"
        + "---|" * len(keys)
        + "\n"
        + "".join("| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |\n" for r in rows)
    )


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, naming the URI, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s)
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(
            f"tracking.uri = {uri}: MLflow server not reachable ({err}); start it or fix tracking.uri before searching"
        ) from None


def git_commit() -> str:
    try:
        repo = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def start_search_run(
    uri: str,
    experiment: str,
    *,
    name: str,
    pipeline: dict,
    space_path: str | None,
    data_checksum: str,
    search_dir: str,
    versions: dict[str, str],
) -> str:
    """Create the search's parent run with the resolved pipeline, the space file and provenance."""
    client = _client(uri)
    exp_id = experiment_id(client, experiment)
    tags = {
        ROLE: "search",
        SEARCH_DIR: search_dir,
        "sati.git_commit": git_commit(),
        "sati.data_checksum": data_checksum,
        "mlflow.runName": name,
        **{f"sati.version.{k}": v for k, v in versions.items()},
    }
    run = client.create_run(exp_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    _log_params(client, run_id, flatten(pipeline))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        client.log_artifact(run_id, str(Path(d) / "pipeline.yaml"))
    if space_path:
        client.log_artifact(run_id, space_path)
    return run_id


def find_search(uri: str, run_id: str) -> dict[str, str]:
    """The tags of a search's parent run (to resume it by run id)."""
    try:
        run = _client(uri).get_run(run_id)
    except Exception as err:
        raise TrackingError(f"{uri}: no MLflow run {run_id!r} ({err})") from None
    if run.data.tags.get(ROLE) != "search":
        raise TrackingError(f"MLflow run {run_id} is not a sati search run (tag {ROLE} != search)")
    return dict(run.data.tags)


def reopen_search_run(uri: str, run_id: str) -> None:
    _client(uri).update_run(run_id, status="RUNNING")


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status=status)


class TrialRuns:
    """One child run per Ray trial under the search's parent run, found again after a restore."""

    def __init__(self, uri: str, parent_run_id: str):
        self.uri, self.parent = uri, parent_run_id
        self.runs: dict[str, str] = {}  # trial id → run id
        self.history: dict[str, list[dict]] = {}
        self.nodes: dict[str, list[str]] = {}  # trial id → Ray nodes it ran on

    def __getstate__(self):  # Ray pickles callbacks with the experiment state
        return {"uri": self.uri, "parent": self.parent, "runs": self.runs, "history": self.history, "nodes": self.nodes}

    def __setstate__(self, state):
        self.__dict__.update({"history": {}, "nodes": {}, **state})

    @property
    def client(self):
        return _client(self.uri)

    def _existing(self, trial_id: str) -> str | None:
        parent = self.client.get_run(self.parent)
        found = self.client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{PARENT}` = '{self.parent}' and tags.`{TRIAL_ID}` = '{trial_id}'",
        )
        return found[0].info.run_id if found else None

    def start(self, trial_id: str, trial_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """Create the trial's run (all resolved params; ``tags`` such as the sampled values), or
        reopen the one a previous, interrupted driver made."""
        run_id = self.runs.get(trial_id) or self._existing(trial_id)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            exp_id = self.client.get_run(self.parent).info.experiment_id
            run = self.client.create_run(
                exp_id, run_name=trial_name, tags={PARENT: self.parent, ROLE: "trial", TRIAL_ID: trial_id, **tags}
            )
            run_id = run.info.run_id
            _log_params(self.client, run_id, params)
        self.runs[trial_id] = run_id
        self.history.setdefault(trial_id, [])
        return run_id

    def log_epoch(self, trial_id: str, metrics: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        run_id = self.runs[trial_id]
        step = int(metrics.get("epoch", 0))
        now = int(time.time() * 1000)
        numeric = {
            k: float(v)
            for k, v in metrics.items()  # ours (split/name keys), not Tune's bookkeeping
            if ("/" in k or k == "epoch")
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and v == v
            and abs(v) != float("inf")
        }
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in numeric.items()])
        self.history[trial_id] = [h for h in self.history[trial_id] if h.get("epoch") != step] + [numeric]

    def record_node(self, trial_id: str, node_id: str) -> None:
        """Tag the Ray node a trial (re)started on: ``sati.node_id`` (last), ``sati.nodes`` (all)."""
        self.nodes.setdefault(trial_id, [])
        if node_id not in self.nodes[trial_id]:
            self.nodes[trial_id].append(node_id)
        self.client.set_tag(self.runs[trial_id], "sati.node_id", node_id)
        self.client.set_tag(self.runs[trial_id], "sati.nodes", ",".join(self.nodes[trial_id]))

    def log_checkpoint(self, trial_id: str, checkpoint_file: str | Path) -> None:
        self.client.log_artifact(self.runs[trial_id], str(checkpoint_file), artifact_path="checkpoint")

    def finish(self, trial_id: str, status: str, reason: str | None, metric: str) -> None:
        """End the trial's run with a learning-curve plot and, for failures, the reason."""
        run_id = self.runs.get(trial_id)
        if run_id is None:
            return
        history = sorted(self.history.get(trial_id, []), key=lambda h: h.get("epoch", 0))
        if history:
            self.client.log_figure(run_id, learning_curve(history, metric), "learning_curve.png")
        if reason:
            self.client.set_tag(run_id, "sati.failure_reason", reason[:5000])
        self.client.set_tag(run_id, "sati.trial_status", status)
        self.client.set_terminated(run_id, status="FINISHED" if status in ("finished", "stopped") else "FAILED")

    def close_orphans(self) -> int:
        """Mark child runs still RUNNING (their driver died) as KILLED; returns how many."""
        stale = child_runs(self.uri, self.parent, "attributes.status = 'RUNNING'")
        for run in stale:
            self.client.set_terminated(run.info.run_id, status="KILLED")
        return len(stale)


def learning_curve(history: list[dict], metric: str):
    """Train loss and the validation metric per epoch, as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h.get("train/task", float("nan")) for h in history], "o-", label="train/task (MSE)")
    ax.set_xlabel("epoch")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h.get(metric, float("nan")) for h in history], "s-", color="tab:orange", label=metric)
    ax.set_ylabel("train/task")
    ax2.set_ylabel(metric)
    fig.legend(loc="upper right")
    fig.tight_layout()
    plt.close(fig)
    return fig


def log_search_summary(
    uri: str, parent_run_id: str, rows: list[dict], figures: dict[str, Any], best: dict | None
) -> None:
    """The parent run's trials table (CSV, Markdown), plots, and best-trial metrics."""
    client = _client(uri)
    with tempfile.TemporaryDirectory() as d:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        csv = Path(d) / "trials.csv"
        csv.write_text(",".join(keys) + "\n" + "".join(",".join(str(r.get(k, "")) for k in keys) + "\n" for r in rows))
        md = Path(d) / "trials.md"
        md.write_text(markdown_table(rows))
        client.log_artifact(parent_run_id, str(csv))
        client.log_artifact(parent_run_id, str(md))
    for name, fig in figures.items():
        client.log_figure(parent_run_id, fig, f"plots/{name}.png")
    if best:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        client.log_batch(
            parent_run_id,
            metrics=[
                Metric(f"best_trial/{k}", float(v), now, 0)
                for k, v in best["metrics"].items()
                if isinstance(v, (int, float)) and v == v
            ],
        )
        client.set_tag(parent_run_id, "sati.best_trial_run_id", best["run_id"])


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def child_runs(uri: str, parent_run_id: str, where: str = "") -> list:
    """The runs nested under ``parent_run_id`` (trials, confirm and promotion runs), optionally
    narrowed by an MLflow filter clause ``where``."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    query = f"tags.`{PARENT}` = '{parent_run_id}'" + (f" and {where}" if where else "")
    return client.search_runs([parent.info.experiment_id], filter_string=query, max_results=10000)
