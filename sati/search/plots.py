"""The search's plots, from every trial: a trial that a scheduler stopped early enters with the best
value it reached, and is drawn as such (hollow markers, dashed lines). Figures are sized for reading
(labels are never clipped: ``sati.tracking.searches`` saves figures with ``bbox_inches="tight"``).

- ``optimization_history``: each trial's best validation value in trial order, and the best so far;
- ``param_importances``: Optuna's fANOVA importances over the trials with a value, drawn only from
  ``MIN_TRIALS`` such trials on; below that the figure says why it is missing;
- ``parallel_coordinate``: one line per trial across the searched values (log axes for log ranges),
  coloured by its value.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from sati.search.space import SearchSpace

MIN_TRIALS = 5  # fewer trials with a value give importances that mean nothing


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _valued(rows: list[dict], metric: str) -> list[dict]:
    return [
        r
        for r in rows
        if r["state"] in ("finished", "stopped") and isinstance(r[metric], float) and math.isfinite(r[metric])
    ]


def optimization_history(rows: list[dict], metric: str, mode: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    numbered = [(i, r) for i, r in enumerate(rows, 1)]
    for state, style in (("finished", {"marker": "o"}), ("stopped", {"marker": "o", "facecolors": "none"})):
        pts = [(i, r[metric]) for i, r in numbered if r in _valued(rows, metric) and r["state"] == state]
        if pts:
            label = "finished" if state == "finished" else "stopped early (best value reached)"
            ax.scatter(*zip(*pts), s=42, edgecolors="tab:blue", label=label, zorder=3, **style)
    best, curve = None, []
    for i, r in numbered:
        v = r[metric] if r in _valued(rows, metric) else None
        if v is not None and (best is None or (v < best if mode == "min" else v > best)):
            best = v
        curve.append((i, best))
    curve = [(i, b) for i, b in curve if b is not None]
    if curve:
        ax.step(*zip(*curve), where="post", color="tab:red", label="best so far", zorder=2)
    failed = sum(r["state"] == "failed" for r in rows)
    better = "lower" if mode == "min" else "higher"
    ax.set_title(f"Optimization history: {len(rows)} trials" + (f" ({failed} failed, not shown)" if failed else ""))
    ax.set_xlabel("trial (in the order they started)")
    ax.set_ylabel(f"best {metric} ({better} is better)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    plt.close(fig)
    return fig


def _missing(title: str, why: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True, fontsize=12)
    plt.close(fig)
    return fig


def _study(rows: list[dict], metric: str, mode: str, space: SearchSpace):
    """An in-memory Optuna study of the valued trials (value = best reached), for fANOVA."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {}
    for p in space.params:
        if p.kind == "choice":
            dists[p.key] = optuna.distributions.CategoricalDistribution(list(p.args))
        elif p.kind == "int":
            dists[p.key] = optuna.distributions.IntDistribution(*p.args, log=p.log, step=p.step or 1)
        else:
            dists[p.key] = optuna.distributions.FloatDistribution(*p.args, log=p.kind == "loguniform")
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    for r in _valued(rows, metric):
        params = {k: r[k] for k in dists if r.get(k, "") != ""}
        params = {k: v for k, v in params.items() if _fits(dists[k], v)}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params}, value=r[metric])
        )
    return study


def _fits(dist, value: Any) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except Exception:
        return False


def param_importances(rows: list[dict], metric: str, mode: str, space: SearchSpace):
    title = f"Parameter importance for {metric}"
    valued = _valued(rows, metric)
    if len(valued) < MIN_TRIALS:
        return _missing(title, f"Needs at least {MIN_TRIALS} trials with a value; this search has {len(valued)}.")
    import optuna

    study = _study(rows, metric, mode, space)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
            )
    except Exception as err:  # e.g. every trial sampled the same values
        return _missing(title, f"Could not be computed: {err}")
    if not importances:
        return _missing(title, "No searched value varies across the trials.")
    plt = _pyplot()
    names = list(importances)[::-1]
    width = 6 + 0.09 * max(len(n) for n in names)
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.45 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    for y, n in enumerate(names):
        ax.text(importances[n], y, f" {importances[n]:.2f}", va="center")
    ax.set_xlabel(f"fANOVA importance ({len(valued)} trials, stopped ones with their best value)")
    ax.set_title(title)
    ax.set_xlim(0, max(importances.values()) * 1.15 or 1)
    plt.close(fig)
    return fig


def parallel_coordinate(rows: list[dict], metric: str, mode: str, space: SearchSpace):
    title = f"Searched values and {metric}"
    valued = _valued(rows, metric)
    if not valued:
        return _missing(title, "No trial has a value yet.")
    plt = _pyplot()
    import matplotlib
    from matplotlib import cm, colors

    axes = [p.key for p in space.params] + [metric]
    positions = {}
    for p in space.params:
        if p.kind == "choice":
            choices = [str(c) for c in p.args]
            positions[p.key] = (lambda v, choices=choices: choices.index(str(v)) / max(1, len(choices) - 1), choices)
        else:
            low, high = p.args
            log = p.kind == "loguniform" or p.log
            tr = (
                (lambda v, lo=low, hi=high: (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)))
                if log
                else (lambda v, lo=low, hi=high: (v - lo) / (hi - lo))
            )
            positions[p.key] = (tr, [f"{low:.3g}", f"{high:.3g}"] + (["(log)"] if log else []))
    values = [r[metric] for r in valued]
    vmin, vmax = min(values), max(values)
    span = (vmax - vmin) or 1.0
    positions[metric] = (lambda v: (v - vmin) / span, [f"{vmin:.4g}", f"{vmax:.4g}"])
    norm = colors.Normalize(vmin, vmax)
    cmap = matplotlib.colormaps["viridis_r" if mode == "min" else "viridis"]
    fig, ax = plt.subplots(figsize=(max(8.0, 2.4 * len(axes)), 5.5))
    for r in valued:
        ys = []
        for key in axes:
            f, _ = positions[key]
            try:
                ys.append(f(r[key]) if r.get(key, "") != "" else math.nan)
            except (ValueError, TypeError, ZeroDivisionError):
                ys.append(math.nan)
        ax.plot(range(len(axes)), ys, color=cmap(norm(r[metric])), alpha=0.85,
                linestyle="-" if r["state"] == "finished" else "--")  # fmt: skip
    ax.set_xticks(range(len(axes)), axes, rotation=15, ha="right")
    for x, key in enumerate(axes):
        ax.axvline(x, color="0.7", lw=0.8)
        _, ticks = positions[key]
        ax.text(x, -0.08, " – ".join(ticks[:2]) + (f" {ticks[2]}" if len(ticks) > 2 else ""), ha="center", va="top",
                fontsize=8, transform=ax.get_xaxis_transform())  # fmt: skip
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"best {metric}")
    ax.set_title(f"{title} (dashed: stopped early)")
    plt.close(fig)
    return fig


def search_plots(rows: list[dict], metric: str, mode: str, space: SearchSpace) -> dict[str, Any]:
    """The three figures by artifact name; a plot that cannot be drawn says why in its place (the
    search's summary never fails for a figure)."""
    figures = {}
    for name, draw in (
        ("optimization_history", lambda: optimization_history(rows, metric, mode)),
        ("param_importances", lambda: param_importances(rows, metric, mode, space)),
        ("parallel_coordinate", lambda: parallel_coordinate(rows, metric, mode, space)),
    ):
        try:
            figures[name] = draw()
        except Exception as err:
            figures[name] = _missing(name.replace("_", " "), f"Could not be drawn: {type(err).__name__}: {err}")
    return figures
