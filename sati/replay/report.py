"""What ``sati simulate`` shows: the comparison table (text and Markdown) and the any-time regret curves."""

from __future__ import annotations

import math

import numpy as np

from sati.replay.sweep import Comparison, Run, Strategy, regret_curves

LIMITS = (
    "Replay cannot show: noise between runs of one configuration (the recording holds one run of each); "
    "configurations far from the recorded ones (served by the nearest one, counted as out of support); "
    "the driver's own time (suggest, trial start-up, checkpoints: simulated time holds none of it); "
    "retries of failed trials; and a paused trial's restart cost (HyperBand resumes as from a checkpoint)."
)


def _num(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def _iqr(q: tuple[float, float, float], censored_at: float | None = None) -> str:
    """``median [q25, q75]``; a quantile among censored values reads ``>B`` (B: the largest censoring cost)."""
    cut = f">{censored_at:.3g}" if censored_at is not None else "inf"
    text = [cut if math.isinf(v) else _num(v) for v in q]
    return f"{text[1]} [{text[0]}, {text[2]}]"


def table_rows(comparison: Comparison, unit: str) -> list[dict[str, str]]:
    """One row per strategy, every number with its unit and its spread over seeds (``legend`` says what
    B and y_ref are)."""
    rows = []
    for r in comparison.rows:
        hits, seeds = r["hit_rate"]
        rows.append(
            {
                "strategy": r["strategy"],
                "seeds": str(r["seeds"]),
                "best @¼B": _iqr(r["best_at"][0]),
                "best @½B": _iqr(r["best_at"][1]),
                "best @B": _iqr(r["best_at"][2]),
                f"spent {unit}": _iqr(r["cost_h"]),
                "simulated h": _iqr(r["hours"]),
                f"{unit} to y_ref": _iqr(r["t_hit"], r["censored_at"]),
                "hit": f"{hits}/{seeds}",
                "speedup": "—" if r["speedup"] is None else f"{r['speedup']:.2f}×",
                "trials": f"{r['trials']:g}",
                "epochs": f"{r['epochs']:g}",
                "out of support": f"{100 * r['out_of_support']:.0f} %",
            }
        )
    return rows


def legend(comparison: Comparison, unit: str, metric: str) -> str:
    """What the table's columns mean, with B and y_ref in numbers."""
    return (
        f"best @¼B, @½B, @B: the best {metric} a search reached within a quarter, half and all of "
        f"B = {comparison.budget_h:.3g} {unit}, the reference's ({comparison.reference.label}) median cost; "
        f"{unit} to y_ref: the cost at which a search first reached y_ref = {comparison.target:.4g}, the "
        f"reference's median final best ('>X': not within the search's own cost X, censored; hit: how many "
        f"did); speedup: the reference's median cost to y_ref / this strategy's; out of support: lookups "
        f"farther than d95 from any recorded configuration. Each cell: median [25th, 75th percentile] over "
        f"seeds. Best recorded {metric}: {comparison.best_recorded:.4g}."
    )


def text_table(rows: list[dict[str, str]]) -> str:
    """Rows as aligned columns for the console."""
    keys = list(rows[0])
    widths = [max(len(k), *(len(r[k]) for r in rows)) for k in keys]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(keys), line(["-" * w for w in widths]), *(line([r[k] for k in keys]) for r in rows)])


def regret_figure(
    runs: dict[Strategy, list[Run]], comparison: Comparison, mode: str, unit: str, metric: str, title: str
):
    """Best-so-far regret (distance from the best recorded value) against cost (left) and simulated
    hours (right), log x: the median over seeds and the band between the 25th and 75th percentiles; the
    dashed line is the reference's median final best."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    target_regret = abs(comparison.target - comparison.best_recorded)
    for ax, by, label in ((axes[0], "cost", f"{unit} spent"), (axes[1], "time", "simulated hours")):
        ends = [r.cost_h if by == "cost" else r.time_h for group in runs.values() for r in group]
        positive = np.concatenate([e[e > 0] for e in ends if len(e)]) if ends else np.array([])
        if not len(positive):
            continue
        grid = np.geomspace(positive.min(), positive.max(), 200)
        for strategy, group in runs.items():
            regret = regret_curves(group, grid, comparison.best_recorded, mode, by)
            with np.errstate(all="ignore"):
                low, mid, high = np.nanpercentile(regret, [25, 50, 75], axis=0)
            style = "--" if strategy == comparison.reference else "-"
            (line,) = ax.plot(grid, mid, style, label=strategy.label, lw=1.6, drawstyle="steps-post")
            ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.15, step="post")
        ax.axhline(target_regret, color="grey", ls=":", lw=1, label="reference's median final best")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(f"regret: best-so-far {metric} − best recorded ({comparison.best_recorded:.4g})")
    axes[1].legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig
