"""Options several commands share."""

from __future__ import annotations

import argparse


def add_overrides(p: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. --set train.lr=3.0e-5 (repeatable)",
    )


def add_tracking_uri(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--tracking-uri`` (default: ``$MLFLOW_TRACKING_URI``, else the local ``./mlflow.db``)."""
    p.add_argument(
        "--tracking-uri",
        default=None,
        help=help or "MLflow tracking and registry URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
