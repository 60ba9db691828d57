"""The MLflow Model Registry: registering a checkpoint as a pyfunc model, versions, aliases, loading.

Conventions: versions carry ``Evidence`` tags; aliases ``champion``, ``previous-champion`` and
``challenger`` (never stages); the registered model's tag ``sati.champion_history`` lists the versions
that were champion, oldest first, for ``--rollback``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sati.tracking import contract as c
from sati.tracking.store import RunInfo, TrackingError, TrackingStore

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous-champion", "challenger"


class RegistryError(TrackingError):
    """A run, model or artifact that promotion, evaluation or prediction needs is missing or unusable."""


def log_and_register(
    store: TrackingStore,
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

    mlflow.set_tracking_uri(store.uri)
    mlflow.set_registry_uri(store.uri)
    created = not model_exists(store, model_name)
    package = Path(sati.__file__).parent
    artifacts = {"checkpoint": str(checkpoint), "config": str(config)}
    if text_encoder is not None:
        artifacts["text_encoder"] = str(text_encoder)
    tags = {c.ROLE: c.Role.PROMOTION.value, c.PARENT_RUN: search.run_id, c.MODEL_NAME: model_name}
    with mlflow.start_run(experiment_id=search.experiment_id, run_name=run_name, tags=tags):
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


def model_exists(store: TrackingStore, name: str) -> bool:
    try:
        store.client.get_registered_model(name)
        return True
    except Exception:
        return False


def require_model(store: TrackingStore, name: str):
    try:
        return store.client.get_registered_model(name)
    except Exception:
        raise RegistryError(f"{store.uri}: no registered model named {name!r}") from None


def version_by_alias(store: TrackingStore, name: str, alias: str):
    """The version that ``alias`` points at, or None."""
    if alias not in require_model(store, name).aliases:
        return None
    return store.client.get_model_version_by_alias(name, alias)


def version_of_run(store: TrackingStore, name: str, trial_run_id: str):
    """The version of ``name`` registered from trial run ``trial_run_id``, or None."""
    if not model_exists(store, name):
        return None
    found = [
        v
        for v in store.client.search_model_versions(f"name = '{name}'")
        if c.Evidence.from_tags(dict(v.tags)).trial_run_id == trial_run_id
    ]
    return max(found, key=lambda v: int(v.version)) if found else None


def get_version(store: TrackingStore, name: str, version: str | int):
    return store.client.get_model_version(name, str(version))


def set_alias(store: TrackingStore, name: str, alias: str, version: str | int | None) -> None:
    """Point ``alias`` at ``version``; None removes the alias."""
    if version is None:
        if alias in store.client.get_registered_model(name).aliases:
            store.client.delete_registered_model_alias(name, alias)
    else:
        store.client.set_registered_model_alias(name, alias, str(version))


def set_version_tags(store: TrackingStore, name: str, version: str | int, tags: dict[str, str]) -> None:
    for k, v in tags.items():
        store.client.set_model_version_tag(name, str(version), k, str(v)[:5000])


def champion_history(store: TrackingStore, name: str) -> list[str]:
    raw = require_model(store, name).tags.get(c.CHAMPION_HISTORY)
    return json.loads(raw) if raw else []


def set_champion_history(store: TrackingStore, name: str, history: list[str]) -> None:
    store.client.set_registered_model_tag(name, c.CHAMPION_HISTORY, json.dumps(history))


def delete_version(store: TrackingStore, name: str, version: str | int, drop_model: bool) -> None:
    """Undo a registration: the version, and the registered model too when this call created it."""
    store.client.delete_model_version(name, str(version))
    if drop_model and not store.client.search_model_versions(f"name = '{name}'"):
        store.client.delete_registered_model(name)


def load_registered(store: TrackingStore, model_uri: str):
    """The ``SATIPredictor`` inside an MLflow model logged by ``sati promote`` (any model URI)."""
    import mlflow

    mlflow.set_tracking_uri(store.uri)
    mlflow.set_registry_uri(store.uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as err:
        raise RegistryError(
            f"{model_uri}: cannot load the model from {store.uri} ({type(err).__name__}: {str(err)[:400]})"
        ) from None
    predictor = getattr(model.unwrap_python_model(), "predictor", None)
    if predictor is None:
        raise RegistryError(f"{model_uri}: not a SATI model logged by `sati promote`")
    return predictor


def describe_model_uri(store: TrackingStore, model_uri: str) -> dict[str, Any]:
    """For ``models:/name/version`` or ``models:/name@alias``: name, version, model id, source run and
    the version's evidence; {} for other URIs."""
    m = re.match(r"^models:/([^/@]+)(?:/(\d+)|@([\w-]+))$", model_uri)
    if not m:
        return {}
    name, version, alias = m.groups()
    mv = version_by_alias(store, name, alias) if alias else get_version(store, name, version)
    if mv is None:
        raise RegistryError(f"{model_uri}: registered model {name!r} has no alias {alias!r}")
    return {
        "name": name,
        "version": str(mv.version),
        "model_id": getattr(mv, "model_id", None) or "",
        "run_id": mv.run_id or "",
        "evidence": c.Evidence.from_tags(dict(mv.tags)),
    }
