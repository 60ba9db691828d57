"""Where a search keeps its Optuna study: an RDB storage that ``optuna-dashboard`` reads live.

``search.study_storage`` names it; without one, ``$SATI_STUDY_STORAGE`` (the compose stack sets it,
so a database password never sits in a pipeline file or a command line), else a SQLite file beside
a local MLflow store (``sqlite:///…/mlflow.db`` → ``…/optuna.db``). With none of these (a tracking
server, no study storage named) the study stays in the driver's memory and in Tune's searcher state:
nothing is written to the driver's disk, ``--resume`` restores it with Tune's searcher, and ``--extend``
seeds a new one with the trials logged in MLflow (``seeded_memory_storage``).
The study is named after the search, so ``--resume`` and ``--extend`` find it again (``load_if_exists``).

A study URL may hold a database password. Only the driver gets it: trials run without
``search.study_storage`` (``sati.search.trial_configs``), and everything written down (MLflow params,
``sati_search.json``, Ray's pickled searcher state) holds it masked (``mask_password``). ``--resume``
and ``--extend`` take the URL again from the user (``resumed_study_url``).
"""

from __future__ import annotations

import fcntl
import math
import os
from pathlib import Path
from typing import Any

from sati.config import ConfigError, PipelineConfig
from sati.search.space import SearchSpace

ENV = "SATI_STUDY_STORAGE"


def study_storage_url(cfg: PipelineConfig, tracking_uri: str) -> str | None:
    """The study's storage URL for ``cfg`` and the search's tracking store; None: in memory."""
    if cfg.search.study_storage:
        return cfg.search.study_storage
    if os.environ.get(ENV):
        return os.environ[ENV]
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).with_name('optuna.db')}"
    return None


def mask_password(url: str) -> str:
    """``url`` with any password masked, for logs, MLflow params, state files and the console."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def has_password(url: str) -> bool:
    """Whether ``url`` holds a password (a masked one too)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password is not None
    except Exception:
        return False


def shown_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """The pipeline as sati writes it anywhere (MLflow params, ``pipeline.yaml``, state files): the study
    storage's password masked."""
    shown = cfg.to_dict()
    if cfg.search.study_storage:
        shown["search"]["study_storage"] = mask_password(cfg.search.study_storage)
    return shown


def resumed_study_url(recorded: str | None, given: str | None, search: str) -> str | None:
    """The study URL a resumed or extended search goes on with: ``recorded`` (masked) is where search
    ``search`` kept its study; ``given`` is what the user gives now (``--set search.study_storage`` or
    ``$SATI_STUDY_STORAGE``). A recorded URL with a password needs it given again, the same but for
    the password; one without a password is used as recorded. None: the study was kept in memory."""
    if recorded is None:
        return None
    if given is not None and mask_password(given) != recorded:
        raise ConfigError(
            f"search {search} keeps its Optuna study in {recorded}, but the study storage given now is "
            f"{mask_password(given)} (--set search.study_storage or ${ENV}): give the search's own"
        )
    if given is None and has_password(recorded):
        raise ConfigError(
            f"search {search} keeps its Optuna study in {recorded}: sati never writes its password down, give "
            f"the URL again with it (${ENV}, or --set search.study_storage=URL)"
        )
    return given or recorded


def rdb_storage(url: str | None):
    """The Optuna storage at ``url`` (created on first use; it pickles without its password); None:
    Optuna's in-memory storage.

    Searches started at once against one new SQLite file would race to create its tables (alembic's
    version row is inserted twice); a lock file beside it lets one create them and the others find them."""
    from sati.search.study_rdb import MaskedRDBStorage, remember

    if url is None:
        return None
    remember(url)
    if not url.startswith("sqlite:///"):
        return MaskedRDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    path = Path(url.removeprefix("sqlite:///"))
    with open(path.with_name(f"{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return MaskedRDBStorage(url)


def seeded_memory_storage(name: str, mode: str, space: SearchSpace, rows: list[dict[str, Any]], metric: str):
    """An in-memory study ``name`` holding the trials of ``rows`` (``sati.tracking.leaderboard.trial_rows``):
    finished ones COMPLETE with their best ``metric``, stopped ones PRUNED with it as their last
    intermediate value, failed ones left out. An extension without an RDB study then goes on from them."""
    import optuna

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize" if mode == "min" else "maximize")
    distributions = space.distributions()
    for row in rows:
        value = row.get(metric)
        if row["state"] not in ("finished", "stopped") or not isinstance(value, (int, float)) or math.isnan(value):
            continue
        params = {k: row[k] for k in distributions if row.get(k, "") != ""}  # a conditional key may be absent
        finished = row["state"] == "finished"
        try:
            trial = optuna.trial.create_trial(
                params=params,
                distributions={k: distributions[k] for k in params},
                value=value if finished else None,
                state=optuna.trial.TrialState.COMPLETE if finished else optuna.trial.TrialState.PRUNED,
                intermediate_values={max(int(row.get("epochs") or 1), 1): value},
            )
        except ValueError:  # a logged value outside today's space: TPE cannot use it
            continue
        study.add_trial(trial)
    return storage
