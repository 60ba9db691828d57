"""What ``sati reproduce`` writes: Tables I–III, the differences against ``full``, their footnotes, the
seeds plot and the MLflow description, from every run's test metrics and per-sample predictions.

The comparison is ``sati.statistics.compare_table`` on the clean test predictions: every variant
against ``full`` on every column of the paper's table, paired by seed, with a 95 % interval that
carries seed and test-set variability, P(improvement) and Holm's correction over the whole table.
A run on the source configuration's own seed (a reproduction started before its seeds left that seed
out) is shown on its own line and left out of every mean, spread and test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sati.evaluation import Condition, summarize
from sati.statistics import ALPHA, CONFIDENCE, METHOD, Cell, TableComparison, compare_table
from sati.tables import PAPER_COLUMNS, paper_latex, paper_markdown, rows_csv, rows_latex, rows_markdown

REFERENCE = "full"
SPLIT = "test"
PLOTTED = (("MAE", "mae", 1), ("Corr", "corr", 1), ("Acc-2 has0", "acc2_has0", 100))
PLOTTED += (("Acc-2 non0", "acc2_non0", 100), ("Acc-7", "acc7", 100))  # (title, metric, scale): % points
MARK = "*"
TABLES = {  # file (Markdown; a .tex twin beside it) → title
    "table1.md": "Table I: SATI and the text-only baseline (test, clean)",
    "table2.md": "Table II: ablations (test, clean)",
    "table3.md": "Table III: robustness (test; Gaussian noise on audio and video, each modality dropped)",
    "differences.md": "Differences against full (test, clean)",
}
_TITLES = {key: (title, scale) for title, key, scale in PAPER_COLUMNS}

Results = dict[str, dict[int, dict[Condition, dict[str, float]]]]  # variant → seed → condition → metrics
Predictions = dict[str, dict[int, dict[Condition, np.ndarray]]]  # variant → seed → condition → [n]


@dataclass
class Report:
    texts: dict[str, str]  # file name → Markdown, LaTeX, CSV or JSON
    metrics: dict[str, float]  # ``<variant>/test/<metric>`` (mean over the tested seeds) and ``…_std``
    figure: Any  # the seeds dot plot (matplotlib)
    comparison: TableComparison | None  # None without ``full`` and another variant


@dataclass(frozen=True)
class TestSet:
    """What the numbers were computed on, for the captions and footnotes."""

    name: str  # e.g. "mosi_text test"
    n: int  # samples


def build_report(
    results: Results,
    predictions: Predictions,
    labels: np.ndarray,
    conditions: list[Condition],
    test_set: TestSet,
    source_seed: int,
    resamples: int,
) -> Report:
    """Tables I–III (Markdown and LaTeX, each with its footnote), the differences (Markdown, LaTeX, CSV,
    JSON) and the plot. Runs on ``source_seed`` are shown apart and left out of the rest; the bootstrap
    draws from ``default_rng(source_seed)``."""
    clean = conditions[0]
    tested = {v: {s: m for s, m in by_seed.items() if s != source_seed} for v, by_seed in results.items()}
    present = [v for v, by_seed in tested.items() if by_seed]
    held_out = {v: [by_seed[source_seed][clean]] for v, by_seed in results.items() if source_seed in by_seed}
    comparison = None
    if REFERENCE in present and len(present) > 1:
        clean_preds = {v: {s: predictions[v][s][clean] for s in tested[v]} for v in present}
        comparison = compare_table(clean_preds, labels, reference=REFERENCE, resamples=resamples, seed=source_seed)
    marks = _marks(comparison)
    seeds = sorted({len(by_seed) for by_seed in tested.values() if by_seed})
    spread = seeds_note(seeds, test_set, comparison is not None and comparison.family > 0)
    tables = {
        "table1": {v: _per_seed(tested, v, clean) for v in (REFERENCE, "text_only") if v in present},
        "table2": {v: _per_seed(tested, v, clean) for v in present},
        "table3": {f"{v}, {c.label}": _per_seed(tested, v, c) for v in present for c in conditions},
    }
    first = {"table1": "model", "table2": "variant", "table3": "variant, condition"}
    texts = {}
    for key, rows in tables.items():
        if not rows:
            texts[f"{key}.md"] = "(no finished runs)\n"
            continue
        apart = {} if key == "table3" else {v: r for v, r in held_out.items() if v in rows}
        shown = rows | {f"{v}, seed {source_seed} (source's own seed: not in the test)": r for v, r in apart.items()}
        note = spread if key != "table3" else seeds_note(seeds, test_set, False)
        if apart:
            note += (
                f" The seed {source_seed} lines are runs on the source configuration's own seed, on which its "
                "hyperparameters were chosen: shown apart, in no mean, spread or test."
            )
        caption = f"{TABLES[f'{key}.md']}, {test_set.name}"
        texts[f"{key}.md"] = paper_markdown(shown, SPLIT, first[key], marks) + "\n" + note + "\n"
        texts[f"{key}.tex"] = paper_latex(shown, SPLIT, caption, first[key], marks, note)
    texts |= differences_texts(comparison, test_set, source_seed)
    metrics = {}
    for v in present:
        by_cond = {c: _per_seed(tested, v, c) for c in conditions}
        metrics |= {f"{v}/{k}": value for k, value in summarize(by_cond, SPLIT).items()}
    return Report(texts, metrics, seeds_plot(tested, present, clean), comparison)


def _per_seed(results: Results, variant: str, cond: Condition) -> list[dict[str, float]]:
    return [by_cond[cond] for _, by_cond in sorted(results[variant].items())]


def _marks(comparison: TableComparison | None) -> dict[str, dict[str, str]]:
    marks: dict[str, dict[str, str]] = {}
    for cell in comparison.cells if comparison else []:
        if cell.marked:
            marks.setdefault(cell.variant, {})[cell.metric] = MARK
    return marks


def _seeds_text(seeds: list[int]) -> str:
    return " to ".join(map(str, seeds)) if seeds else "0"


def seeds_note(seeds: list[int], test_set: TestSet, marked: bool) -> str:
    """The footnote of Tables I–III: what a cell is, and (``marked``) what ``*`` means."""
    note = (
        f"Each cell: mean ± sample standard deviation over S = {_seeds_text(seeds)} seeds (the spread of single "
        f"runs, not a confidence interval) on the {test_set.name} set (n = {test_set.n}); MAE and Corr in their "
        "units, accuracies and F1 in %."
    )
    if marked:
        note += (
            f" `{MARK}`: differs from `{REFERENCE}` after {METHOD} over every variant × metric of the differences "
            f"table (familywise α = {ALPHA:g}); Δ and its 95 % interval are there."
        )
    return note


# --------------------------------------------------------------------------------------------
# The differences


def _number(value: float, scale: int) -> str:
    return f"{scale * value:+.{3 if scale == 1 else 2}f}"


def _p(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2g}" if value >= 0.001 else "< 0.001"


def _shown(cell: Cell) -> dict[str, Any]:
    """One row of the differences table, in the table's units."""
    title, scale = _TITLES[cell.metric]
    interval = cell.note or f"[{_number(cell.ci_low, scale)}, {_number(cell.ci_high, scale)}]"
    better = f"{cell.seeds_better}/{cell.seeds}" + (f" ({cell.seeds_tied} tied)" if cell.seeds_tied else "")
    return {
        "variant": cell.variant,
        "metric": title,
        "S": cell.seeds,
        "Δ (variant − full)": "n/a" if math.isnan(cell.estimate) else _number(cell.estimate, scale),
        "95 % CI": interval,
        "P(better)": "–" if math.isnan(cell.p_improvement) else f"{cell.p_improvement:.2f}",
        "seeds better": better,
        "p": _p(cell.p_value),
        "p (Holm)": _p(cell.p_holm),
        "sig.": MARK if cell.marked else "",
    }


def _raw(cell: Cell) -> dict[str, Any]:
    """One cell with every number in the metric's own units, for CSV and JSON."""
    return {
        "variant": cell.variant,
        "metric": cell.metric,
        "seeds": cell.seeds,
        "difference": cell.estimate,
        "ci_low": cell.ci_low,
        "ci_high": cell.ci_high,
        "two_level_low": cell.boot_low,
        "two_level_high": cell.boot_high,
        "p": cell.p_value,
        "p_holm": cell.p_holm,
        "significant": cell.marked,
        "p_improvement": cell.p_improvement,
        "seeds_better": cell.seeds_better,
        "seeds_tied": cell.seeds_tied,
        "difference_in_seed_sd": cell.effect_in_seed_sd,
        "note": cell.note,
        "flag": cell.flag,
    }


def differences_note(comparison: TableComparison, test_set: TestSet, source_seed: int) -> str:
    """The footnote of the differences table: every column and mark, with S, n, B, m and α."""
    from scipy.special import stdtrit

    sizes = sorted({c.seeds for c in comparison.cells})
    m = comparison.family
    first_step = (
        f" With S = {sizes[0]} the first Holm step needs |Δ| ≥ {stdtrit(sizes[0] - 1, 1 - ALPHA / (2 * m)):.1f} "
        "standard errors: only large effects can be marked with few seeds."
        if m and sizes[0] > 1
        else ""
    )
    return (
        f"Δ = variant − {comparison.reference}: mean of S = {_seeds_text(sizes)} seed-paired differences of the "
        f"metric on the {test_set.name} set (n = {test_set.n}); MAE and Corr in their units, accuracies and F1 in "
        "percentage points; MAE is better lower, the others higher. Seeds leave out the source configuration's "
        f"own seed ({source_seed}), on which its hyperparameters were chosen. "
        f"95 % CI: variance-components t interval (df = S − 1) that includes seed-to-seed and test-set sampling "
        f"variability, from B = {comparison.resamples:,} paired two-level bootstrap replicates (test items and "
        f"seeds resampled with replacement, each draw shared by every run; random seed {comparison.seed}). "
        f"P(better): share of (variant run, {comparison.reference} run) pairs in which the variant's run is better "
        "(ties ½); seeds better: seed pairs the variant wins; both describe, neither tests. p: two-sided "
        f"VC-t p-value; p (Holm): {METHOD}-adjusted over the m = {m} cells with a test in this table. "
        f"`{MARK}` = significant after {METHOD} (familywise α = {ALPHA:g}): an unmarked cell may still have a "
        f"95 % CI that excludes 0.{first_step} `identical predictions`: the variant's test predictions equal "
        f"{comparison.reference}'s byte for byte on every seed (no test; the variant computes the same function "
        "on this data, or is wired to the same model). n/a (k/S): the metric is undefined for k seed pairs (no "
        "test). Cells without a test are not in the family."
    )


def differences_texts(comparison: TableComparison | None, test_set: TestSet, source_seed: int) -> dict[str, str]:
    """differences.md (with its footnote), .tex, .csv and .json; a line saying why when there is nothing."""
    if comparison is None:
        return {"differences.md": f"(no differences: `{REFERENCE}` and another variant need a finished run)\n"}
    import json

    note = differences_note(comparison, test_set, source_seed)
    flags = [f"{c.variant} {_TITLES[c.metric][0]}: {c.flag}" for c in comparison.cells if c.flag]
    flagged = "\n\nFlagged: " + "; ".join(flags) + "." if flags else ""
    shown = [_shown(c) for c in comparison.cells]
    raw = [_raw(c) for c in comparison.cells]
    summary = {
        "reference": comparison.reference,
        "test": "variance-components t (df = S - 1) on a paired two-level crossed bootstrap",
        "correction": comparison.method,
        "alpha": comparison.alpha,
        "confidence": CONFIDENCE,
        "resamples": comparison.resamples,
        "random_seed": comparison.seed,
        "n": comparison.n,
        "family": comparison.family,
        "cells": [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in raw],
    }
    caption = f"{TABLES['differences.md']}, {test_set.name}"
    return {
        "differences.md": rows_markdown(shown) + "\n" + note + flagged + "\n",
        "differences.tex": rows_latex(shown, caption, note + flagged),
        "differences.csv": rows_csv(raw),
        "differences.json": json.dumps(summary, indent=2),
    }


# --------------------------------------------------------------------------------------------
# Plot and description


def seeds_plot(results: Results, variants: list[str], clean: Condition):
    """One panel per plotted metric: each seed's test value per variant (dots) and their mean (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(2.6 * len(PLOTTED) + 1, 3.8), squeeze=False)
    for ax, (title, key, scale) in zip(axes[0], PLOTTED):
        for i, v in enumerate(variants):
            ys = np.array([scale * m[clean][f"{SPLIT}/{key}"] for _, m in sorted(results[v].items())])
            xs = i + (np.linspace(-0.15, 0.15, len(ys)) if len(ys) > 1 else np.zeros(1))
            ax.plot(xs, ys, "o", alpha=0.75, color=f"C{i}")
            ax.hlines(ys.mean(), i - 0.28, i + 0.28, color="black", linewidth=1.5)
        ax.set_xticks(range(len(variants)), variants, rotation=40, ha="right")
        ax.set_title(title + (" (%)" if scale == 100 else ""))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{SPLIT} metrics per seed (dots) and their mean (bar)")
    fig.tight_layout()
    plt.close(fig)
    return fig


def description(name: str, report: Report, variants: list[str], seeds: list[int], missing) -> str:
    """The reproduction run's Markdown description: what ran, the headline table, the differences, each
    with its footnote."""
    lines = [
        f"## Reproduction of `{name}`: {len(variants)} variants × {len(seeds)} seeds",
        "",
        f"Variants: {', '.join(variants)}. Seeds: {', '.join(map(str, seeds))}. Each checkpoint is chosen "
        f"on the validation split, then evaluated once on {SPLIT}; every run's per-sample test predictions "
        "are on its own run (`predictions/test.csv`).",
        "",
        f"### {TABLES['table1.md']}",
        "",
        report.texts["table1.md"],
        f"### {TABLES['differences.md']}",
        "",
        report.texts["differences.md"],
        "Tables II and III (Markdown and LaTeX) are under `tables/`; the seeds per variant in `plots/seeds.png`.",
    ]
    if missing:
        lines += ["", f"Missing (no finished run): {', '.join(f'{v} seed {s}' for v, s in missing)}."]
    return "\n".join(lines) + "\n"
