"""An Optuna RDB storage that never pickles its password.

Ray Tune pickles the searcher, and with it the study's storage, into ``tuner.pkl`` and
``searcher-state-*.pkl`` in the search's shared storage; Optuna's ``RDBStorage`` pickles its URL as
given. ``MaskedRDBStorage`` pickles it masked, and on unpickling takes the full URL from those this
process opened (``remember``, called by ``sati.search.study.rdb_storage``): a resumed driver must have
been given the URL again.
"""

from __future__ import annotations

from typing import Any

import optuna

from sati.config import ConfigError
from sati.search.study import ENV, has_password, mask_password

_OPENED: dict[str, str] = {}  # masked URL → full URL, for the study storages this process opened


def remember(url: str) -> None:
    """Let a ``MaskedRDBStorage`` unpickled in this process reconnect to ``url``."""
    _OPENED[mask_password(url)] = url


class MaskedRDBStorage(optuna.storages.RDBStorage):
    """``RDBStorage`` whose pickled state holds its URL with the password masked."""

    def __getstate__(self) -> dict[Any, Any]:
        return {**super().__getstate__(), "url": mask_password(self.url)}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        masked = state["url"]
        url = _OPENED.get(masked)
        if url is None and has_password(masked):
            raise ConfigError(
                f"the search's Optuna study is in {masked}: give its URL with the password "
                f"(${ENV}, or --set search.study_storage=URL)"
            )
        super().__setstate__({**state, "url": url or masked})
