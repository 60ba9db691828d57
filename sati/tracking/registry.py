"""The MLflow Model Registry: registering a checkpoint as a pyfunc model, versions, aliases, loading.

Conventions: versions carry ``Evidence`` tags; aliases ``champion``, ``previous-champion`` and
``challenger`` (never stages); the registered model's tag ``sati.champion_history`` lists the versions
that were champion, oldest first, for ``--rollback``.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sati.tracking import contract as c
from sati.tracking.manifest import (
    Manifest,
    build_manifest,
    check_text_encoder,
    no_bytecode_written,
    verify_files,
)
from sati.tracking.store import RunInfo, TrackingError, TrackingStore

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous-champion", "challenger"


class RegistryError(TrackingError):
    """A run, model or artifact that promotion, evaluation or prediction needs is missing or unusable."""


def log_and_register(
    store: TrackingStore,
    *,
    search: RunInfo,
    trial: RunInfo,
    run_name: str,
    checkpoint: Path,
    config: Path,
    text_encoder: Path | None,
    input_example,
    signature,
    pip_requirements: list[str],
    model_name: str,
    evidence: c.Evidence,
):
    """Log the checkpoint as an MLflow pyfunc model (as code) in a promotion run nested under the trial,
    with its validation metrics on the logged model, and register it as a new version of
    ``model_name`` whose source run is the trial and whose description links the runs it came from.
    Returns (model version, created?)."""
    import mlflow

    import sati

    mlflow.set_tracking_uri(store.uri)
    mlflow.set_registry_uri(store.uri)
    created = not model_exists(store, model_name)
    package = Path(sati.__file__).parent
    artifacts = {"checkpoint": str(checkpoint), "config": str(config)}
    if text_encoder is not None:
        artifacts["text_encoder"] = str(text_encoder)
    tags = {c.ROLE: c.Role.PROMOTION.value, c.PARENT_RUN: trial.run_id, c.MODEL_NAME: model_name}
    # MLflow loads the model once to check the input example: from source, leaving no bytecode in it
    with mlflow.start_run(experiment_id=search.experiment_id, run_name=run_name, tags=tags), no_bytecode_written():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package / "serving_model.py"),
            artifacts=artifacts,
            code_paths=[str(package)],
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements,
        )
        mlflow.log_metrics(evidence.valid_metrics, model_id=info.model_id)
    if created:
        store.client.create_registered_model(model_name)
    version = store.client.create_model_version(
        model_name,
        source=info.model_uri,
        run_id=trial.run_id,
        tags=evidence.to_tags(),
        description=version_description(store, evidence, search.experiment_id),
        model_id=info.model_id,
    )
    return version, created


def version_description(store: TrackingStore, e: c.Evidence, experiment_id: str, extra: list[str] = ()) -> str:
    """A model version's Markdown description: where it was trained and selected, how well, and links."""
    from sati.tracking.leaderboard import run_link

    trial = store.run(e.trial_run_id).name if e.trial_run_id else "?"
    lines = [
        f"Trial [{trial}]({run_link(experiment_id, e.trial_run_id)}) of search "
        f"[{e.search_name}]({run_link(experiment_id, e.search_run_id)}), selected on the validation split: "
        f"`{e.metric}` = {e.value:.4f} at epoch {e.epoch}.",
        "",
        "| " + " | ".join(e.valid_metrics) + " |",
        "|---" * len(e.valid_metrics) + "|",
        "| " + " | ".join(f"{v:.4f}" for v in e.valid_metrics.values()) + " |",
        "",
        f"Data `{e.data_name}` (checksum `{e.data_checksum[:12]}…`), text encoder `{e.text_encoder}`, "
        f"code `{e.git_commit[:12]}`, torch {e.torch}.",
    ]
    if e.confirmation:
        cf = e.confirmation
        lines += [
            "",
            f"Retrained with {cf.seeds} fresh seeds ([confirmation]({run_link(experiment_id, cf.confirm_run_id)})): "
            f"{cf.mean:.4f} ± {cf.std:.4f}; this is its best seed.",
        ]
    return "\n".join([*lines, *extra]) + "\n"


def add_to_description(store: TrackingStore, name: str, version: str, line: str) -> None:
    """Append a line (e.g. a link to an evaluation run) to a version's description."""
    current = get_version(store, name, version).description or ""
    store.client.update_model_version(name, version, description=current.rstrip("\n") + "\n\n" + line + "\n")


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


# --------------------------------------------------------------------------------------------
# The manifest: recorded at registration, verified before every load (sati.tracking.manifest)


def record_manifest(store: TrackingStore, name: str, version: str | int, text_encoder: str) -> Manifest:
    """Hash every file of the version's logged model, as the store holds it, into its manifest tags."""
    source = f"{name} v{version}"
    with tempfile.TemporaryDirectory(prefix="sati-manifest-") as tmp:
        local = _download_model(store, f"models:/{name}/{version}", Path(tmp))
        manifest = build_manifest(local, text_encoder, source)
    set_version_tags(store, name, version, manifest.to_tags())
    return manifest


def _download_model(store: TrackingStore, model_uri: str, dst: Path) -> Path:
    import mlflow

    mlflow.set_tracking_uri(store.uri)
    mlflow.set_registry_uri(store.uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    except Exception as err:
        raise RegistryError(
            f"{model_uri}: cannot download the model from {store.uri} ({type(err).__name__}: {str(err)[:400]})"
        ) from None


def resolve_version(store: TrackingStore, model_uri: str):
    """The registered version a model URI names: ``models:/NAME/N``, ``models:/NAME@ALIAS``, or
    ``runs:/<trial run id>/model`` (the version registered from that trial)."""
    named = named_version(store, model_uri)
    if named is not None:
        return named
    m = re.match(r"^runs:/([0-9a-f]{32})/", model_uri)
    found = store.client.search_model_versions(f"run_id = '{m.group(1)}'") if m else []
    if len(found) == 1:
        return found[0]
    if found:
        named = ", ".join(f"models:/{v.name}/{v.version}" for v in found)
        raise RegistryError(f"{model_uri}: several versions were registered from that run ({named}); name one")
    raise RegistryError(
        f"{model_uri}: not a registered model version (expected models:/NAME/VERSION or models:/NAME@ALIAS); "
        "sati loads registered models only, whose files it can verify"
    )


@dataclass(frozen=True)
class VerifiedModel:
    """A registered version downloaded and checked file by file against its manifest."""

    path: Path  # the local model folder
    source: str  # how messages name it: the URI and the version, ``models:/m@champion (m v3)``
    manifest: Manifest

    def artifact(self, key: str) -> str | None:
        """The path in the model of its pyfunc artifact ``key`` (``checkpoint``, ``text_encoder``), from
        its (verified) ``MLmodel``."""
        import yaml

        meta = yaml.safe_load((self.path / "MLmodel").read_text())
        found = meta.get("flavors", {}).get("python_function", {}).get("artifacts", {}).get(key)
        return found["path"] if found else None

    def checkpoint_config(self) -> dict:
        """The resolved config inside the model's checkpoint, once its text encoder is found to be the one
        the manifest covers (``check_text_encoder``)."""
        from sati.checkpoint import read_config

        checkpoint = self.artifact("checkpoint")
        if checkpoint is None:
            raise RegistryError(f"{self.source}: not a SATI model logged by `sati promote` (no checkpoint artifact)")
        config = read_config(self.path / checkpoint)
        encoder = str(config.get("model", {}).get("text_encoder", ""))
        requirements = self.path / "requirements.txt"
        check_text_encoder(
            self.manifest,
            encoder,
            self.artifact("text_encoder"),
            requirements.read_text() if requirements.is_file() else "",
            self.source,
        )
        return config


def download_verified(store: TrackingStore, model_uri: str, dst: Path) -> VerifiedModel:
    """Download the registered version ``model_uri`` names into ``dst`` and verify every file against the
    manifest on the version's tags: a changed, missing or added file (any ``.pyc``) is refused, naming it,
    before anything of the model is read."""
    version = resolve_version(store, model_uri)
    name, number = version.name, str(version.version)
    source = f"{model_uri} ({name} v{number})"
    manifest = Manifest.from_tags(dict(version.tags), source)
    local = _download_model(store, f"models:/{name}/{number}", dst)  # the version's files, whatever the URI
    verify_files(local, manifest, source)
    return VerifiedModel(local, source, manifest)


def load_verified(store: TrackingStore, model_uri: str, dst: Path | None = None):
    """The registered version ``model_uri`` names as MLflow's pyfunc model, loaded only once every file
    was verified (``download_verified``) and the checkpoint's text encoder is the one its manifest covers,
    with its code imported from source (``no_bytecode_written``). The verified copy is kept in ``dst``
    (default: a folder removed when the process ends)."""
    import atexit
    import shutil

    import mlflow

    if dst is None:
        dst = Path(tempfile.mkdtemp(prefix="sati-model-"))
        atexit.register(shutil.rmtree, dst, ignore_errors=True)
    verified = download_verified(store, model_uri, dst)
    verified.checkpoint_config()
    try:
        with no_bytecode_written():
            return mlflow.pyfunc.load_model(str(verified.path))
    except Exception as err:
        raise RegistryError(
            f"{model_uri}: cannot load the model from {store.uri} ({type(err).__name__}: {str(err)[:400]})"
        ) from None


def load_registered(store: TrackingStore, model_uri: str):
    """The ``SATIPredictor`` inside a registered model logged by ``sati promote``, verified first
    (``load_verified``)."""
    model = load_verified(store, model_uri)
    predictor = getattr(model.unwrap_python_model(), "predictor", None)
    if predictor is None:
        raise RegistryError(f"{model_uri}: not a SATI model logged by `sati promote`")
    return predictor


def verified_config(store: TrackingStore, model_uri: str) -> dict:
    """The resolved config of a registered version's checkpoint, read from its verified files."""
    with tempfile.TemporaryDirectory(prefix="sati-config-") as tmp:
        return download_verified(store, model_uri, Path(tmp)).checkpoint_config()


def verify_version(store: TrackingStore, name: str, version: str | int) -> None:
    """Check a version's files against its manifest without loading it (before an alias moves to it)."""
    with tempfile.TemporaryDirectory(prefix="sati-verify-") as tmp:
        download_verified(store, f"models:/{name}/{version}", Path(tmp)).checkpoint_config()


def logged_model_id(version) -> str:
    """The id of the logged model behind a model version (``models:/m-<id>`` sources; the REST API
    does not always fill ``model_id``)."""
    model_id = getattr(version, "model_id", None)
    if model_id:
        return model_id
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else ""


def named_version(store: TrackingStore, model_uri: str):
    """The version ``models:/name/version`` or ``models:/name@alias`` names; None for other URIs. A name,
    version or alias the registry does not hold is a ``RegistryError`` naming it."""
    m = re.match(r"^models:/([^/@]+)(?:/(\d+)|@([\w-]+))$", model_uri)
    if not m:
        return None
    name, version, alias = m.groups()
    if alias:
        mv = version_by_alias(store, name, alias)
        if mv is None:
            raise RegistryError(f"{model_uri}: registered model {name!r} has no alias {alias!r}")
        return mv
    require_model(store, name)
    try:
        return get_version(store, name, version)
    except Exception:
        raise RegistryError(f"{model_uri}: registered model {name!r} has no version {version}") from None


def describe_model_uri(store: TrackingStore, model_uri: str) -> dict[str, Any]:
    """For ``models:/name/version`` or ``models:/name@alias``: name, version, model id, source run and
    the version's evidence; {} for other URIs."""
    mv = named_version(store, model_uri)
    if mv is None:
        return {}
    return {
        "name": mv.name,
        "version": str(mv.version),
        "model_id": logged_model_id(mv),
        "run_id": mv.run_id or "",
        "evidence": c.Evidence.from_tags(dict(mv.tags)),
    }
