"""``sati search``: a new search, or ``--resume`` an interrupted one; ``sati search export``: a search's
trials as a recording for ``sati simulate``."""

from __future__ import annotations

import argparse

from sati.cli.options import add_overrides, add_tracking_uri
from sati.config import ConfigError, load_composed, parse_overrides


def add_parsers(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser(
        "search",
        help="hyperparameter search: Ray Tune trials, Optuna sampling, MLflow runs",
        epilog="sati search export SEARCH_DIR_OR_RUN_ID --out FILE.parquet: write a search's trials, epoch by epoch, "
        "as a recording for `sati simulate` (see `sati search export --help`)",
    )
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
        cfg, files = load_composed(args.pipeline, overrides)
        outcome = run_search(cfg, check_only=args.check, pipeline_files=files)
        if args.check:
            return 0
    return 0 if outcome.best else 1


def export_parser() -> argparse.ArgumentParser:
    """``sati search export``: a verb beside ``sati search PIPELINE`` (dispatched by ``sati.cli.main``)."""
    p = argparse.ArgumentParser(
        prog="sati search export",
        description="Write every trial of a search (resolved parameters, per-epoch validation metrics, epoch "
        "wall times, resources, status) as a Parquet recording that `sati simulate --replay` reads.",
    )
    p.add_argument("target", metavar="SEARCH_DIR_OR_RUN_ID", help="the search directory or its MLflow parent run id")
    p.add_argument(
        "--out", required=True, metavar="FILE.parquet", help="the recording (its metadata also in FILE.parquet.json)"
    )
    add_tracking_uri(p, "with a run id: the MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store)")
    p.set_defaults(run=_export)
    return p


def _export(args) -> int:
    from sati.replay.export import export_search

    summary = export_search(args.target, args.out, tracking_uri=args.tracking_uri)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.statuses.items()))
    size_kb = summary.out.stat().st_size / 1024
    print(f"wrote {summary.trials} trials ({summary.rows} trial-epochs; {counts}) to {summary.out} ({size_kb:.0f} KiB)")
    print(f"its metadata (space, metric, scheduler, versions): {summary.sidecar}")
    return 0
