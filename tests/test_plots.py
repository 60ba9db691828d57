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


def test_the_summary_reads_the_trials_in_the_order_they_started(tmp_path):
    """MLflow lists the newest run first; the history plot's x axis is the trial number all the same."""
    from mlflow.tracking import MlflowClient

    from sati.tracking.leaderboard import trial_rows
    from sati.tracking.store import TrackingStore

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("order")
    parent = client.create_run(experiment, run_name="search").info.run_id
    for number, value in ((1, 0.9), (2, 0.8), (10, 0.7)):  # started in this order: t010 is the newest
        run = client.create_run(
            experiment,
            run_name=f"t{number:03d}-0000000{number % 10}",
            tags={"mlflow.parentRunId": parent, "sati.role": "trial", "sati.trial_status": "finished"},
        ).info.run_id
        client.log_metric(run, "best/valid/mae", value)
    rows = trial_rows(TrackingStore(uri), parent, "valid/mae", [])
    assert [r["trial"][:4] for r in rows] == ["t001", "t002", "t010"]
    fig = plots.optimization_history(rows, "valid/mae", "min")
    xs, ys = fig.axes[0].collections[0].get_offsets().T
    assert list(xs) == [1, 2, 3] and list(ys) == [0.9, 0.8, 0.7]
