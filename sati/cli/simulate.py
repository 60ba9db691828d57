"""``sati simulate PIPELINE --replay curves.parquet``: search strategies compared on a recording, in minutes."""

from __future__ import annotations

import argparse
import os
import textwrap
import time
from pathlib import Path

from sati.cli.options import add_overrides, add_tracking_uri
from sati.config import ConfigError, PipelineConfig, flatten, load_pipeline

# Keys that may differ between the recorded pipeline and the simulated one without changing the problem.
_SAME_PROBLEM_IGNORED = ("name", "seed", "search.", "tracking.", "registry.", "train.out_dir", "train.epochs")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="compare search strategies (random/TPE × FIFO/ASHA/HyperBand, grace, reduction, trials, "
        "concurrency) over many seeds by replaying recorded learning curves",
    )
    p.add_argument("pipeline", help="pipeline YAML: its space, metric, epochs and search settings")
    p.add_argument("--replay", required=True, metavar="FILE", help="a recording (`sati search export` writes one)")
    add_overrides(p)
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="replayed searches per strategy (default 20)")
    p.add_argument("--sampler", nargs="+", help="samplers to compare (default: random tpe)")
    p.add_argument("--scheduler", nargs="+", help="schedulers (default: fifo and the pipeline's)")
    p.add_argument("--grace", nargs="+", type=int, dest="grace_period", help="ASHA grace periods (epochs)")
    p.add_argument("--reduction", nargs="+", type=int, dest="reduction_factor", help="reduction factors")
    p.add_argument("--num-samples", nargs="+", type=int, help="trials per search")
    p.add_argument("--max-concurrent", nargs="+", type=int, help="trials at once")
    p.add_argument("--grid", metavar="YAML", help="the same as a file: {sampler: [...], scheduler: [...], …, seeds: N}")
    p.add_argument(
        "--space",
        choices=("pipeline", "recording"),
        default="pipeline",
        help="sample the pipeline's search.space (default) or the space the recording was made with",
    )
    p.add_argument("--out", metavar="DIR", help="where the plot and table go (default: runs/simulate/<name>-<time>)")
    add_tracking_uri(
        p,
        "log the simulation as one MLflow run here (default: $MLFLOW_TRACKING_URI, else tracking.uri; else none)",
    )
    p.set_defaults(run=_simulate)


def _grid(args) -> tuple[dict[str, list], int]:
    from sati.replay.sweep import GRID_KEYS, load_grid

    grid = load_grid(args.grid) if args.grid else {}
    for key in GRID_KEYS:
        if getattr(args, key, None):
            grid[key] = getattr(args, key)
    seeds = args.seeds if args.seeds is not None else grid.pop("seeds", 20)
    grid.pop("seeds", None)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds = {seeds!r}: expected a whole number >= 1")
    return grid, seeds


def _simulate(args) -> int:
    from sati.replay.recording import read_recording
    from sati.replay.report import LIMITS, legend, regret_figure, table_rows, text_table
    from sati.replay.store import CurveStore
    from sati.replay.sweep import check_grid, compare, lookup_summary, strategy_grid, sweep
    from sati.search.space import load_space
    from sati.tables import rows_markdown

    cfg = load_pipeline(args.pipeline, args.overrides)
    grid, seeds = _grid(args)
    recording = read_recording(args.replay)
    if args.space == "pipeline":
        if not cfg.search.space:
            raise ConfigError(f"{args.pipeline}: search.space is not set (or use --space recording)")
        space = load_space(cfg.search.space, cfg)
    else:
        space = recording.space
    store = CurveStore(recording, cfg)
    tracking = _tracking_store(args, cfg)  # an unreachable server fails here, before any replay
    grid.setdefault("sampler", ["random", "tpe"])
    grid.setdefault("scheduler", list(dict.fromkeys(["fifo", cfg.search.scheduler])))
    strategies = strategy_grid(cfg, grid)
    check_grid(cfg, strategies, "sati simulate")
    metric, mode = cfg.train.selection_metric, cfg.train.selection_direction

    _print_setup(args, cfg, recording, store, space, len(strategies), seeds)
    started = time.perf_counter()
    runs = sweep(cfg, space, store, strategies, seeds, progress=print)
    comparison = compare(runs, strategies[0], mode, store.best_recorded())
    rows = table_rows(comparison, store.unit)
    print()
    print(text_table(rows))
    print()
    print(textwrap.fill(legend(comparison, store.unit, metric), 120))
    print(lookup_summary(runs, store.d95))
    outside = max(r["out_of_support"] for r in comparison.rows)
    if outside > 0.5:
        print(
            f"note: up to {outside:.0%} of lookups fell outside the recording's support: the comparison says little "
            "about this space; record more configurations of it"
            + (" (or simulate the recorded space: --space recording)" if args.space == "pipeline" else "")
        )
    stalled = sum(r["stalled"] for r in comparison.rows)
    if stalled:
        print(f"note: {stalled} replayed searches stalled (trials waiting that nothing would start)")
    print(textwrap.fill(LIMITS, 120))
    print(f"replayed {sum(len(g) for g in runs.values())} searches in {time.perf_counter() - started:.0f} s")

    out = Path(args.out or f"runs/simulate/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    title = f"{Path(args.replay).name}: {seeds} seeds per strategy, {metric} ({mode})"
    figure = regret_figure(runs, comparison, mode, store.unit, metric, title)
    figure.savefig(out / "regret.png", bbox_inches="tight", dpi=110)
    (out / "simulation.md").write_text(rows_markdown(rows))
    print(f"plot: {out / 'regret.png'}\ntable: {out / 'simulation.md'}")
    if tracking is None:
        print("not logged to MLflow (no --tracking-uri, $MLFLOW_TRACKING_URI or tracking.uri)")
    else:
        _log(tracking, args, cfg, comparison, rows, figure, seeds)
    return 0


def _print_setup(args, cfg: PipelineConfig, recording, store, space, strategies: int, seeds: int) -> None:
    """What is replayed, how lookups work, where the problems differ, what is simulated."""
    metric, mode = cfg.train.selection_metric, cfg.train.selection_direction
    print(f"replay: {args.replay}: {recording.describe()}")
    spacing = (
        f"out of support beyond d95 = {store.d95:.3g} (unit-range distance)"
        if store.d95 > 0
        else "no two recorded configurations share their categorical values, so every lookup but an exact one "
        "is out of support"
    )
    left_out = f" ({store.cut_short} cut short before {cfg.train.epochs} epochs left out)" if store.cut_short else ""
    print(
        f"lookup: nearest recorded configuration in the space's own scale (categoricals must match); {spacing}; "
        f"{len(store.curves)} curves serve{left_out}"
    )
    _warn_differences(cfg, recording.meta, space, recording.space.keys)
    print(
        f"simulating {strategies} strategies × {seeds} seeds of {args.pipeline} ({metric}, {mode}, "
        f"{cfg.train.epochs} epochs); cost in {store.unit} (recorded seconds × {store.resource} per trial)"
    )


def _warn_differences(cfg: PipelineConfig, meta: dict, space, recorded_keys: list[str]) -> None:
    """Say where the simulated problem is not the recorded one."""
    recorded = meta.get("pipeline") or {}
    here = flatten(cfg.to_dict())
    searched = set(space.keys) | set(recorded_keys)
    differ = [
        f"{k} (recorded {recorded[k]!r}, here {here[k]!r})"
        for k in sorted(recorded)
        if k in here
        and k not in searched
        and not k.startswith(_SAME_PROBLEM_IGNORED)
        and recorded[k] != here[k]
        and not k.endswith(("path", "text_encoder"))
    ]
    if differ:
        print(f"note: the recording was made with other fixed values: {'; '.join(differ)}; replay answers for those")
    unknown = [k for k in space.keys if k not in recorded_keys]
    if unknown:
        print(f"note: the recording did not vary {', '.join(unknown)}: lookups ignore them")


def _tracking_store(args, cfg: PipelineConfig):
    """The MLflow store the simulation is logged to, checked to answer; None when no URI is set."""
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri
    if not uri:
        return None
    from sati.tracking.store import TrackingStore

    return TrackingStore.open(uri)


def _log(store, args, cfg: PipelineConfig, comparison, rows, figure, seeds: int) -> None:
    """One MLflow run for the whole simulation: the table, the plot, per-strategy metrics."""
    from sati.provenance import file_sha256
    from sati.tracking import contract
    from sati.tracking.simulations import log_simulation, metric_key

    metrics = {"target": comparison.target, "budget_h": comparison.budget_h}
    for r in comparison.rows:
        metrics[metric_key(r["strategy"], "t_hit_median")] = r["t_hit"][1]
        metrics[metric_key(r["strategy"], "hit_rate")] = r["hit_rate"][0] / r["hit_rate"][1]
        metrics[metric_key(r["strategy"], "final_best_median")] = r["best_at"][2][1]
        metrics[metric_key(r["strategy"], "cost_h_median")] = r["cost_h"][1]
    params = {
        "replay": Path(args.replay).name,
        "pipeline": args.pipeline,
        "seeds": seeds,
        "strategies": "; ".join(r["strategy"] for r in comparison.rows),
        "metric": cfg.train.selection_metric,
    }
    tags = {contract.REPLAY_SHA256: file_sha256(Path(args.replay))}
    name = f"simulate-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = log_simulation(store, cfg.tracking.experiment, name, params, tags, metrics, rows, figure)
    print(f"MLflow run {run_id} at {store.uri}")
