"""Command line: ``sati train | search | promote | evaluate | predict | config | data``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sati.config import ConfigError, load_pipeline
from sati.data.commands import add_data_commands, run_data_command
from sati.model_commands import add_model_commands, run_model_command


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. --set train.lr=3.0e-5 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sati", description="SATI multimodal sentiment: train, search, promote")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one model on the train split, select on validation")
    train.add_argument("pipeline", help="pipeline YAML, e.g. pipelines/quickstart.yaml")
    _add_overrides(train)
    train.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint (default: <train.out_dir>/checkpoints/last.pt)",
    )
    train.add_argument(
        "--eval-test", action="store_true", help="also evaluate the best checkpoint on the test split at the end"
    )

    search = sub.add_parser("search", help="hyperparameter search: Ray Tune trials, Optuna sampling, MLflow runs")
    search.add_argument("pipeline", nargs="?", help="pipeline YAML with a search section")
    _add_overrides(search)
    search.add_argument("--address", default=None, help="Ray cluster address (overrides search.ray_address)")
    search.add_argument(
        "--resume",
        metavar="SEARCH_DIR_OR_RUN_ID",
        default=None,
        help="continue an interrupted search (its directory or MLflow parent run id)",
    )
    search.add_argument(
        "--tracking-uri", default=None, help="with --resume RUN_ID: the MLflow tracking URI (default: the local store)"
    )

    config = sub.add_parser("config", help="validate a pipeline and print it resolved")
    config.add_argument("pipeline")
    _add_overrides(config)

    add_model_commands(sub)
    add_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sati.checkpoint import CheckpointError
    from sati.data.h5format import DataError
    from sati.tracking import TrackingError

    try:
        if args.command == "train":
            return _train(args)
        if args.command == "search":
            return _search(args)
        if args.command == "config":
            import yaml

            print(yaml.safe_dump(load_pipeline(args.pipeline, args.overrides).to_dict(), sort_keys=False), end="")
            return 0
        if args.command == "data":
            return run_data_command(args)
        if args.command in ("promote", "evaluate", "predict"):
            return run_model_command(args)
    except (ConfigError, DataError, CheckpointError, TrackingError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1


def _search(args) -> int:
    from sati.search.runner import resume_search, run_search

    if args.resume:
        outcome = resume_search(args.resume, tracking_uri=args.tracking_uri)
    else:
        if not args.pipeline:
            raise ConfigError("sati search: give a pipeline YAML, or --resume SEARCH_DIR_OR_RUN_ID")
        overrides = list(args.overrides) + ([f"search.ray_address={args.address}"] if args.address else [])
        outcome = run_search(load_pipeline(args.pipeline, overrides))
    return 0 if outcome.best else 1


def _train(args) -> int:
    from sati.checkpoint import load_checkpoint
    from sati.data.loaders import load_split_datasets
    from sati.devices import resolve_device
    from sati.metrics import format_table
    from sati.reporting import ConsoleReporter
    from sati.trainer import NonFiniteLossError, build_model, evaluate, fit

    cfg = load_pipeline(args.pipeline, args.overrides)
    resume = None
    if args.resume is not None:
        resume = Path(cfg.train.out_dir) / "checkpoints" / "last.pt" if args.resume == "last" else Path(args.resume)
    datasets, info = load_split_datasets(cfg, ("train", "valid"))
    print(
        f"data {info.path}: train {len(datasets['train'])}, valid {len(datasets['valid'])} "
        f"(audio {info.audio_dim}-d, video {info.video_dim}-d); device {resolve_device(cfg.train.device)}"
    )
    try:
        result = fit(cfg, ConsoleReporter(cfg.train.epochs), resume=resume, datasets=datasets, info=info)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    device = resolve_device(cfg.train.device)
    model = build_model(cfg, info).to(device)
    model.load_state_dict(load_checkpoint(result.best_checkpoint, map_location=device)["model"])
    splits = ["valid"]
    metrics = evaluate(model, datasets["valid"], "valid", cfg.train.eval_batch_size, device, cfg.train.precision)
    if args.eval_test:
        test, _ = load_split_datasets(cfg, ("test",))
        metrics |= evaluate(model, test["test"], "test", cfg.train.eval_batch_size, device, cfg.train.precision)
        splits.append("test")
    print()
    print(format_table(metrics, splits))
    stop = " (stopped early)" if result.stopped_early else ""
    print(
        f"\nbest checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, "
        f"{cfg.train.selection_metric} {result.best_metrics.get(cfg.train.selection_metric, float('nan')):.4f}){stop}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
