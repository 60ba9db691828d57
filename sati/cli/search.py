"""``sati search``: a new search, or ``--resume`` an interrupted one."""

from __future__ import annotations

import argparse

from sati.cli.options import add_overrides, add_tracking_uri
from sati.config import ConfigError, load_pipeline, parse_overrides


def add_parsers(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="hyperparameter search: Ray Tune trials, Optuna sampling, MLflow runs")
    search.add_argument("pipeline", nargs="?", help="pipeline YAML with a search section")
    add_overrides(search)
    search.add_argument("--address", default=None, help="Ray cluster address (overrides search.ray_address)")
    search.add_argument(
        "--resume",
        metavar="SEARCH_DIR_OR_RUN_ID",
        default=None,
        help="continue an interrupted search (its directory or MLflow parent run id); a study database "
        "password is given again with $SATI_STUDY_STORAGE or --set search.study_storage=URL",
    )
    search.add_argument(
        "--extend",
        metavar="SEARCH_DIR_OR_RUN_ID",
        default=None,
        help="add --set search.num_samples=N trials to a finished or interrupted search (same space, study, run)",
    )
    search.add_argument(
        "--check",
        action="store_true",
        help="run the pre-flight only (resources, data and storage on every node, text encoder) and exit 0 or 2",
    )
    add_tracking_uri(
        search,
        "with --resume/--extend: your MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db); "
        "the search's own must be the same",
    )
    search.set_defaults(run=_search)


def _search(args) -> int:
    from sati.search.runner import resume_search, run_search

    if args.resume:
        outcome = resume_search(args.resume, tracking_uri=args.tracking_uri, overrides=parse_overrides(args.overrides))
    elif args.extend:
        from sati.search.runner import extend_search

        outcome = extend_search(args.extend, parse_overrides(args.overrides), tracking_uri=args.tracking_uri)
    else:
        if not args.pipeline:
            raise ConfigError("sati search: give a pipeline YAML, or --resume SEARCH_DIR_OR_RUN_ID")
        overrides = list(args.overrides) + ([f"search.ray_address={args.address}"] if args.address else [])
        outcome = run_search(load_pipeline(args.pipeline, overrides), check_only=args.check)
        if args.check:
            return 0
    return 0 if outcome.best else 1
