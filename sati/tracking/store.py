"""One MLflow client per command: where the tracking store is, and the run operations everything uses.

``TrackingStore.open(uri)`` resolves the URI (given, else ``$MLFLOW_TRACKING_URI``, else a SQLite file
in the working directory), checks that an HTTP server answers, and keeps one ``MlflowClient`` for
tracking and the registry. It pickles as its URI (Ray ships it to the driver's callbacks).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sati.tracking.contract import PARENT_RUN


class TrackingError(RuntimeError):
    """The tracking server or store cannot be used, or a run it should hold is missing."""


def default_uri() -> str:
    """Embedded default: a SQLite store in the working directory."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def resolve_uri(uri: str | None) -> str:
    """The URI given, else ``$MLFLOW_TRACKING_URI``, else the embedded default."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


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


@dataclass(frozen=True)
class RunInfo:
    """What the pipeline reads of an MLflow run: ids, name, status, params, tags, latest metrics."""

    run_id: str
    experiment_id: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]

    @classmethod
    def of(cls, run) -> RunInfo:
        return cls(
            run.info.run_id,
            run.info.experiment_id,
            run.info.run_name or run.info.run_id,
            run.info.status,
            dict(run.data.params),
            dict(run.data.tags),
            dict(run.data.metrics),
        )


class TrackingStore:
    """An MLflow tracking and registry store, with one client for the whole command."""

    def __init__(self, uri: str):
        self.uri = uri
        self._client = None

    @classmethod
    def open(cls, uri: str | None = None) -> TrackingStore:
        """The store at ``uri`` (resolved as ``resolve_uri``), checked to answer."""
        uri = resolve_uri(uri)
        check_reachable(uri)
        return cls(uri)

    def __getstate__(self) -> dict:
        return {"uri": self.uri}

    def __setstate__(self, state: dict) -> None:
        self.uri, self._client = state["uri"], None

    @property
    def client(self):
        """The ``MlflowClient`` (made on first use)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    # -- experiments and runs --------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created if it does not exist."""
        exp = self.client.get_experiment_by_name(name)
        return exp.experiment_id if exp else self.client.create_experiment(name)

    def experiment_name(self, run_id: str) -> str:
        return self.client.get_experiment(self.client.get_run(run_id).info.experiment_id).name

    def run(self, run_id: str) -> RunInfo:
        """The run ``run_id``; an unknown id is a ``TrackingError`` naming it."""
        try:
            return RunInfo.of(self.client.get_run(run_id))
        except Exception:
            raise TrackingError(f"{self.uri}: no MLflow run {run_id!r}") from None

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str], parent: str | None = None) -> str:
        """A new RUNNING run (nested under ``parent`` if given); returns its id."""
        tags = {**tags, **({PARENT_RUN: parent} if parent else {})}
        return self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    def child_runs(self, parent_run_id: str, where: str = "") -> list[RunInfo]:
        """The runs nested under ``parent_run_id``, optionally narrowed by an MLflow filter clause."""
        experiment = self.client.get_run(parent_run_id).info.experiment_id
        query = f"tags.`{PARENT_RUN}` = '{parent_run_id}'" + (f" and {where}" if where else "")
        return [RunInfo.of(r) for r in self.client.search_runs([experiment], filter_string=query, max_results=10000)]

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Every parameter, in batches of 100 (MLflow's limit), values cut to 6000 characters."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0, model_id: str | None = None) -> None:
        """Finite metrics at ``step`` in one request."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step, model_id=model_id)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(float(v)) != float("inf") and v == v
        ]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def delete_tag_if_present(self, run_id: str, key: str) -> None:
        """Remove tag ``key`` from the run; a run without it (a driver died before writing it) is fine."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_tag(run_id, key)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def reopen_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")
