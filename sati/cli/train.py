"""``sati train`` (one model, selected on validation) and ``sati config`` (the resolved pipeline)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sati.cli.options import add_overrides
from sati.config import load_composed, load_pipeline


def add_parsers(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train one model on the train split, select on validation")
    train.add_argument("pipeline", help="pipeline YAML, e.g. pipelines/quickstart.yaml")
    add_overrides(train)
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
    train.set_defaults(run=_train)

    config = sub.add_parser("config", help="validate a pipeline and print it resolved")
    config.add_argument("pipeline")
    add_overrides(config)
    config.set_defaults(run=_config)


def _config(args) -> int:
    import yaml

    cfg, files = load_composed(args.pipeline, args.overrides)
    if len(files) > 1:
        print(f"# {files[-1]}, merged over the files it extends: {', '.join(files[:-1])}")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _train(args) -> int:
    from sati.checkpoint import load_checkpoint, restore_model
    from sati.data.loaders import load_split_datasets
    from sati.devices import resolve_device
    from sati.metrics import format_table
    from sati.reporting import ConsoleReporter
    from sati.trainer import NonFiniteLossError, build_model, fit, split_metrics

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
    restore_model(model, load_checkpoint(result.best_checkpoint, map_location=device), result.best_checkpoint)
    splits = ["valid"]
    metrics = split_metrics(model, datasets["valid"], "valid", cfg.train.eval_batch_size, device, cfg.train.precision)
    if args.eval_test:
        test, _ = load_split_datasets(cfg, ("test",))
        metrics |= split_metrics(model, test["test"], "test", cfg.train.eval_batch_size, device, cfg.train.precision)
        splits.append("test")
    print()
    print(format_table(metrics, splits))
    stop = " (stopped early)" if result.stopped_early else ""
    print(
        f"\nbest checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, "
        f"{cfg.train.selection_metric} {result.best_metrics.get(cfg.train.selection_metric, float('nan')):.4f}){stop}"
    )
    return 0
