"""False marks and power of `sati reproduce`'s differences table, against the base's, on simulated tables.

    .venv/bin/python benchmarks/bench_significance.py --base ../sati-base    # a few minutes on 2 cores

Tables with known truth from ``sati.testing.ablation_tables`` (686 test items, 5 variants, a seed sd of
about 0.03 MAE, nothing shared between the variants of a seed), at each of ``--seeds``:

- **this tree**: ``sati.statistics.compare_table`` on the per-sample predictions (paired two-level
  bootstrap with ``--resamples`` replicates, VC-t interval and p, Holm over all 4 × 8 = 32 cells);
- **the base** (``--base``, its ``sati/statistics.py`` loaded from that tree): ``compare`` on the per-seed
  metrics of the five metrics it compared (seed-only percentile bootstrap, exact Wilcoxon); a cell is
  marked when the Wilcoxon p < 0.05 (`*`) or only its interval excludes 0 (`†`), with no correction.

Prints, per seed count: the share of null tables (all variants identical) with any mark, the share of
null MAE cells marked, and the power: how often a variant whose errors are 3.75 % larger (MAE + ~0.03,
one seed sd) is marked on MAE.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE_METRICS = ("mae", "corr", "acc2_has0", "acc2_non0", "acc7")  # what the base compared


def load_base_statistics(base: Path):
    spec = importlib.util.spec_from_file_location("base_statistics", base / "sati" / "statistics.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def base_marks(base, preds: dict, labels: np.ndarray) -> dict[tuple[str, str], bool]:
    """(variant, metric) → marked by the base's procedure (`*` or `†`)."""
    from sati.metrics import regression_metrics

    metrics = {v: {s: regression_metrics(p, labels) for s, p in by_seed.items()} for v, by_seed in preds.items()}
    out = {}
    for v in preds:
        if v == "full":
            continue
        for key in BASE_METRICS:
            c = base.compare(
                {s: m[key] for s, m in metrics[v].items()}, {s: m[key] for s, m in metrics["full"].items()}
            )
            out[(v, key)] = c.significant or c.interval_excludes_zero
    return out


def pct(flags: list[bool]) -> str:
    return f"{100 * np.mean(flags):.1f} %"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="../sati-base", help="a worktree of the main to compare with")
    ap.add_argument("--seeds", default="3,5,10")
    ap.add_argument("--tables", type=int, default=500, help="null tables per seed count")
    ap.add_argument("--power-tables", type=int, default=300)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    from sati.statistics import compare_table
    from sati.testing.ablation_tables import SEED_SD_SCALE, simulate_table

    base = load_base_statistics(Path(args.base).resolve())
    print(
        "| S | null tables with any mark: base / this tree | null MAE cells marked: base / this | "
        "power, MAE +1 seed sd: base / this tree (Holm) / this tree (uncorrected) |"
    )
    print("|---|---|---|---|")
    started = time.perf_counter()
    for seeds in map(int, args.seeds.split(",")):
        rng = np.random.default_rng(1000 + seeds)
        null_base, null_new, cell_base, cell_new = [], [], [], []
        for t in range(args.tables):
            preds, labels = simulate_table(rng, seeds=seeds)
            old = base_marks(base, preds, labels)
            new = compare_table(preds, labels, resamples=args.resamples, seed=t)
            null_base.append(any(old.values()))
            null_new.append(any(c.marked for c in new.cells))
            cell_base += [old[(v, "mae")] for v in ("v1", "v2", "v3", "v4")]
            cell_new += [new.cell(v, "mae").marked for v in ("v1", "v2", "v3", "v4")]
        power_base, power_new, power_raw = [], [], []
        for t in range(args.power_tables):
            preds, labels = simulate_table(rng, seeds=seeds, scale=[1, SEED_SD_SCALE, 1, 1, 1])
            cell = compare_table(preds, labels, resamples=args.resamples, seed=t).cell("v1", "mae")
            power_base.append(base_marks(base, preds, labels)[("v1", "mae")])
            power_new.append(cell.marked)
            power_raw.append(cell.p_value < 0.05)
        print(
            f"| {seeds} | {pct(null_base)} / {pct(null_new)} | {pct(cell_base)} / {pct(cell_new)} | "
            f"{pct(power_base)} / {pct(power_new)} / {pct(power_raw)} |",
            flush=True,
        )
    print(
        f"\n{args.tables} null and {args.power_tables} power tables per S, B = {args.resamples}; "
        f"{time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
