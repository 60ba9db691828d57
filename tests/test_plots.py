"""The search's plots draw every trial that has a value, stopped ones included."""

from __future__ import annotations

import math

import matplotlib

from sati.search import plots
from sati.search.space import Param, SearchSpace

matplotlib.use("Agg")
SPACE = SearchSpace(
    "space.yaml",
    (Param("train.lr", "loguniform", (1e-4, 1e-2)), Param("model.fbp_pool", "choice", (1, 2, 4))),
)


def _rows(n: int, stopped: int) -> list[dict]:
    rows = []
    for i in range(n):
        state = "stopped" if i < stopped else "finished"
        values = {"valid/mae": 1.0 - 0.05 * i, "train.lr": 1e-4 * (1.5**i), "model.fbp_pool": [1, 2, 4][i % 3]}
        rows.append({"trial": f"t{i + 1:03d}", "state": state, "epochs": 1 if state == "stopped" else 3, **values})
    rows.append({"trial": "t099", "state": "failed", "epochs": 0, "valid/mae": math.nan, "train.lr": 1e-3,
                 "model.fbp_pool": 2})  # fmt: skip
    return rows


def _texts(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in [*ax.texts, ax.title, ax.xaxis.label, ax.yaxis.label])


def test_history_draws_stopped_trials_with_the_value_they_reached():
    fig = plots.optimization_history(_rows(4, stopped=3), "valid/mae", "min")
    ax = fig.axes[0]
    points = sum(len(c.get_offsets()) for c in ax.collections)
    assert points == 4  # 3 stopped + 1 finished; the failed one is left out and said so
    assert "1 failed" in ax.get_title()
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"finished", "stopped early (best value reached)"}


def test_importance_needs_enough_trials_and_says_so():
    few = plots.param_importances(_rows(3, stopped=2), "valid/mae", "min", SPACE)
    assert "Needs at least 5 trials with a value; this search has 3" in _texts(few)
    enough = plots.param_importances(_rows(8, stopped=5), "valid/mae", "min", SPACE)
    labels = [t.get_text() for t in enough.axes[0].get_yticklabels()]
    assert sorted(labels) == ["model.fbp_pool", "train.lr"]  # full names, not clipped


def test_parallel_coordinates_has_a_line_per_valued_trial():
    fig = plots.parallel_coordinate(_rows(6, stopped=4), "valid/mae", "min", SPACE)
    lines = [ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) == 3]
    assert len(lines) == 6 and sum(ln.get_linestyle() == "--" for ln in lines) == 4
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["train.lr", "model.fbp_pool", "valid/mae"]
