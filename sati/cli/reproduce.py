"""``sati reproduce``: the paper's Tables I–III over seeds and variants, or ``--rerun`` one logged run."""

from __future__ import annotations

import argparse
import sys

from sati.cli.options import add_overrides, add_tracking_uri


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="Tables I–III: every variant × seed trained on Ray, evaluated on test; differences against full "
        "with 95 %% intervals over seeds and test samples, Holm-corrected",
    )
    p.add_argument(
        "source",
        nargs="?",
        help="a pipeline YAML, models:/NAME@ALIAS (or models:/NAME/N), or a trial's MLflow run id",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=5,
        metavar="N",
        help="seeds per variant, derived from the configuration's seed and never that seed itself (default 5)",
    )
    p.add_argument(
        "--variants",
        metavar="LIST",
        help="comma-separated subset of full,no_til,no_gate,no_adversarial,text_only (default: all; "
        "full is always trained)",
    )
    p.add_argument(
        "--noise",
        type=float,
        action="append",
        metavar="SIGMA",
        help="Table III: Gaussian noise of this std on audio and video (repeatable; default 0.5; 0: no noise row)",
    )
    add_overrides(p)
    p.add_argument("--address", help="Ray cluster address (overrides search.ray_address)")
    p.add_argument("--out-dir", help="where the tables go (default: reproductions/<name>)")
    p.add_argument(
        "--resume", metavar="DIR_OR_RUN_ID", help="continue an interrupted reproduction (its directory or MLflow run)"
    )
    p.add_argument("--rerun", metavar="RUN_ID", help="train this logged trial run again from its rerun.json (no Ray)")
    p.add_argument("--force", action="store_true", help="with --rerun: train even on other data or code (recorded)")
    p.add_argument("--data", help="with --rerun: where the run's data file is now, if it moved")
    add_tracking_uri(p)
    p.set_defaults(run=_reproduce)


def _reproduce(args) -> int:
    import os

    from sati.config import ConfigError

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.rerun:
        from sati.rerun import DIFFERS, rerun
        from sati.tracking.store import TrackingStore

        outcome = rerun(TrackingStore.open(args.tracking_uri), args.rerun, force=args.force, data=args.data)
        return 1 if outcome.match == DIFFERS else 0
    from sati.reproduce import ReproductionInterrupted, parse_request, resume_reproduction, run_reproduction

    try:
        if args.resume:
            outcome = resume_reproduction(args.resume, tracking_uri=args.tracking_uri)
        else:
            if not args.source:
                raise ConfigError(
                    "sati reproduce: give a pipeline YAML, a models:/ URI or a run id (or --rerun, --resume)"
                )
            request = parse_request(args.variants, args.seeds, args.noise)
            outcome = run_reproduction(
                args.source,
                request,
                overrides=args.overrides,
                tracking_uri=args.tracking_uri,
                address=args.address,
                out_dir=args.out_dir,
            )
    except ReproductionInterrupted as err:
        print(f"{err}", file=sys.stderr)
        return 130
    return 1 if outcome.missing else 0
