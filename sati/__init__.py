"""SATI: semantic-guided multimodal sentiment decoding, with its search and promotion pipeline."""

from __future__ import annotations

__version__ = "0.1.0"


def load_verified(model_uri: str, tracking_uri: str | None = None, dst_path: str | None = None):
    """MLflow's pyfunc model of a version registered by ``sati promote`` (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``), loaded only once every file of it matches the manifest recorded on the
    version at registration: a changed, missing or added file (a planted ``.pyc``) is refused, naming
    it, before anything of the model is imported or unpickled, and its code is imported from source.

    ``tracking_uri``: the MLflow server (default: ``$MLFLOW_TRACKING_URI``). ``dst_path``: a new or empty
    folder to keep the verified copy in, e.g. for ``mlflow models serve -m <dst_path>`` (docs/security.md);
    by default a folder removed when the process ends.

    Raises ``sati.tracking.registry.RegistryError`` (a ``RuntimeError``) naming what is wrong."""
    from pathlib import Path

    from sati.tracking.registry import RegistryError
    from sati.tracking.registry import load_verified as load
    from sati.tracking.store import TrackingStore

    dst = None
    if dst_path is not None:
        dst = Path(dst_path)
        if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
            raise RegistryError(f"dst_path = {dst_path}: expected a new or empty folder for the verified model")
        dst.mkdir(parents=True, exist_ok=True)
    return load(TrackingStore.open(tracking_uri), model_uri, dst)
