"""Every MLflow call after a search: its trials, confirmation runs, the registered model, aliases,
evidence tags, and evaluation runs. (The search's own runs are in ``sati.tracking``.)

Registry conventions: versions carry ``sati.*`` evidence tags; aliases ``champion``,
``previous-champion`` and ``challenger`` (never stages); the registered model's tag
``sati.champion_history`` lists the versions that were champion, oldest first, for ``--rollback``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sati.tracking import PARENT, ROLE, TrackingError, _client, child_runs, experiment_id, markdown_table

CHECKPOINT_ARTIFACT = "checkpoint/best.pt"
HISTORY_TAG = "sati.champion_history"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class RegistryError(TrackingError):
    """A run, model or artifact that promotion, evaluation or prediction needs is missing or unusable."""


@dataclass(frozen=True)
class RunInfo:
    """What promotion needs of an MLflow run: ids, name, status, params, tags, latest metrics."""

    run_id: str
    experiment_id: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]


def _info(run) -> RunInfo:
    return RunInfo(
        run.info.run_id,
        run.info.experiment_id,
        run.info.run_name or run.info.run_id,
        run.info.status,
        dict(run.data.params),
        dict(run.data.tags),
        dict(run.data.metrics),
    )


def find_searches(uri: str, source: str) -> list[RunInfo]:
    """The search parent run ``source`` (a run id), or every finished search in experiment ``source``."""
    client = _client(uri)
    if _RUN_ID.match(source):
        try:
            run = client.get_run(source)
        except Exception:
            raise RegistryError(f"{uri}: no MLflow run {source!r}") from None
        role = run.data.tags.get(ROLE)
        if role != "search":
            hint = f"; its search is run {run.data.tags.get(PARENT)}" if role == "trial" else ""
            raise RegistryError(f"MLflow run {source} is not a sati search (tag {ROLE} = {role!r}){hint}")
        return [_info(run)]
    exp = client.get_experiment_by_name(source)
    if exp is None:
        raise RegistryError(f"{uri}: {source!r} is neither an MLflow run id nor an experiment name")
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.`{ROLE}` = 'search' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )
    if not runs:
        raise RegistryError(f"experiment {source!r} at {uri} has no finished sati search")
    return [_info(r) for r in runs]


def finished_trials(uri: str, parent_ids: list[str]) -> list[RunInfo]:
    """Trial runs of the given parents that ended FINISHED (failed and killed trials excluded)."""
    return [
        _info(r)
        for p in parent_ids
        for r in child_runs(uri, p, f"tags.`{ROLE}` = 'trial' and attributes.status = 'FINISHED'")
    ]


def get_run(uri: str, run_id: str) -> RunInfo:
    try:
        return _info(_client(uri).get_run(run_id))
    except Exception:
        raise RegistryError(f"{uri}: no MLflow run {run_id!r}") from None


def experiment_name(uri: str, run_id: str) -> str:
    client = _client(uri)
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name


def download_checkpoint(uri: str, run_id: str, dst: str | Path) -> Path:
    """The trial's best checkpoint (artifact ``checkpoint/best.pt``) downloaded to ``dst``."""
    from mlflow.artifacts import download_artifacts

    try:
        return Path(
            download_artifacts(run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=str(dst), tracking_uri=uri)
        )
    except Exception as err:
        raise RegistryError(
            f"MLflow run {run_id}: checkpoint artifact '{CHECKPOINT_ARTIFACT}' missing or "
            f"unreadable ({type(err).__name__}: {str(err)[:300]})"
        ) from None


def start_confirm_run(uri: str, search: RunInfo, candidates: list[RunInfo], seeds: list[int], metric: str) -> str:
    """The parent run of a confirmation (reseeded) round, nested under the search."""
    client = _client(uri)
    run = client.create_run(
        search.experiment_id,
        run_name=f"{search.name}-confirm",
        tags={
            ROLE: "confirm",
            PARENT: search.run_id,
            "sati.search_run_id": search.run_id,
            "sati.git_commit": search.tags.get("sati.git_commit", "unknown"),
        },
    )
    from mlflow.entities import Param

    client.log_batch(
        run.info.run_id,
        params=[
            Param("candidates", ",".join(c.run_id for c in candidates)),
            Param("seeds", ",".join(map(str, seeds))),
            Param("metric", metric),
        ],
    )
    return run.info.run_id


def log_confirm_summary(uri: str, run_id: str, rows: list[dict], chosen: str | None) -> None:
    """The confirmation table (Markdown) and the chosen candidate on the confirm run, then end it."""
    client = _client(uri)
    client.log_text(run_id, markdown_table(rows), "confirmation.md")
    if chosen:
        client.set_tag(run_id, "sati.chosen_run_id", chosen)
    client.set_terminated(run_id, status="FINISHED" if chosen else "FAILED")


# --------------------------------------------------------------------------------------------
# The registered model


def log_and_register(
    uri: str,
    *,
    search: RunInfo,
    run_name: str,
    checkpoint: Path,
    config: Path,
    text_encoder: Path | None,
    input_example,
    signature,
    pip_requirements: list[str],
    model_name: str,
    version_tags: dict[str, str],
):
    """Log the checkpoint as an MLflow pyfunc model (as code) in a promotion run nested under the
    search, and register it as a new version of ``model_name``. Returns (model version, created?)."""
    import mlflow

    import sati

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    created = not model_exists(uri, model_name)
    package = Path(sati.__file__).parent
    artifacts = {"checkpoint": str(checkpoint), "config": str(config)}
    if text_encoder is not None:
        artifacts["text_encoder"] = str(text_encoder)
    with mlflow.start_run(
        experiment_id=search.experiment_id,
        run_name=run_name,
        tags={ROLE: "promotion", PARENT: search.run_id, "sati.model_name": model_name},
    ):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package / "serving_model.py"),
            artifacts=artifacts,
            code_paths=[str(package)],
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements,
        )
    version = mlflow.register_model(info.model_uri, model_name, tags=version_tags)
    return version, created


def model_exists(uri: str, name: str) -> bool:
    try:
        _client(uri).get_registered_model(name)
        return True
    except Exception:
        return False


def require_model(uri: str, name: str):
    try:
        return _client(uri).get_registered_model(name)
    except Exception:
        raise RegistryError(f"{uri}: no registered model named {name!r}") from None


def version_by_alias(uri: str, name: str, alias: str):
    """The version that ``alias`` points at, or None."""
    if alias not in require_model(uri, name).aliases:
        return None
    return _client(uri).get_model_version_by_alias(name, alias)


def version_of_run(uri: str, name: str, trial_run_id: str):
    """The version of ``name`` registered from trial run ``trial_run_id`` (tag sati.trial_run_id), or None."""
    if not model_exists(uri, name):
        return None
    found = [
        v
        for v in _client(uri).search_model_versions(f"name = '{name}'")
        if v.tags.get("sati.trial_run_id") == trial_run_id
    ]
    return max(found, key=lambda v: int(v.version)) if found else None


def get_version(uri: str, name: str, version: str | int):
    return _client(uri).get_model_version(name, str(version))


def set_alias(uri: str, name: str, alias: str, version: str | int | None) -> None:
    """Point ``alias`` at ``version``; None removes the alias."""
    client = _client(uri)
    if version is None:
        if alias in client.get_registered_model(name).aliases:
            client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(version))


def set_version_tags(uri: str, name: str, version: str | int, tags: dict[str, str]) -> None:
    client = _client(uri)
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, str(v)[:5000])


def champion_history(uri: str, name: str) -> list[str]:
    raw = require_model(uri, name).tags.get(HISTORY_TAG)
    return json.loads(raw) if raw else []


def set_champion_history(uri: str, name: str, history: list[str]) -> None:
    _client(uri).set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))


def delete_version(uri: str, name: str, version: str | int, drop_model: bool) -> None:
    """Undo a registration: the version, and the registered model too when this call created it."""
    client = _client(uri)
    client.delete_model_version(name, str(version))
    if drop_model and not client.search_model_versions(f"name = '{name}'"):
        client.delete_registered_model(name)


def load_registered(uri: str, model_uri: str):
    """The ``SATIPredictor`` inside an MLflow model logged by ``sati promote`` (any model URI)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as err:
        raise RegistryError(
            f"{model_uri}: cannot load the model from {uri} ({type(err).__name__}: {str(err)[:400]})"
        ) from None
    predictor = getattr(model.unwrap_python_model(), "predictor", None)
    if predictor is None:
        raise RegistryError(f"{model_uri}: not a SATI model logged by `sati promote`")
    return predictor


def describe_model_uri(uri: str, model_uri: str) -> dict[str, str]:
    """For ``models:/name/version`` or ``models:/name@alias``: name, version, model id, source run."""
    m = re.match(r"^models:/([^/@]+)(?:/(\d+)|@([\w-]+))$", model_uri)
    if not m:
        return {}
    name, version, alias = m.groups()
    mv = version_by_alias(uri, name, alias) if alias else get_version(uri, name, version)
    if mv is None:
        raise RegistryError(f"{model_uri}: registered model {name!r} has no alias {alias!r}")
    return {
        "name": name,
        "version": str(mv.version),
        "model_id": getattr(mv, "model_id", None) or "",
        "run_id": mv.run_id or "",
        **{k: v for k, v in mv.tags.items() if k.startswith("sati.")},
    }


# --------------------------------------------------------------------------------------------
# Evaluation runs


def log_evaluation(
    uri: str,
    *,
    experiment: str,
    run_name: str,
    metrics: dict[str, float],
    texts: dict[str, str],
    tags: dict[str, str],
    params: dict[str, Any],
    models: list[dict[str, str]],
) -> str:
    """An evaluation run: metrics, tables, and links both ways to the evaluated model versions."""
    from mlflow.entities import Metric, Param

    client = _client(uri)
    run = client.create_run(experiment_id(client, experiment), run_name=run_name, tags={ROLE: "evaluation", **tags})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    model_id = models[0].get("model_id") if len(models) == 1 else None
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0, model_id=model_id or None) for k, v in metrics.items() if v == v],
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
    )
    for name, text in texts.items():
        client.log_text(run_id, text, name)
    split = tags.get("sati.split", "test")
    for m in models:
        if m.get("name") and m.get("version"):
            client.set_model_version_tag(m["name"], m["version"], f"sati.evaluation.{split}", run_id)
    client.set_terminated(run_id, "FINISHED")
    return run_id
