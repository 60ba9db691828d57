"""A ``sati simulate`` in MLflow: one run per simulation (no run per simulated trial), holding the
strategies compared, the figures per strategy, the table and the regret plot."""

from __future__ import annotations

import re
from typing import Any

from sati.tables import rows_markdown
from sati.tracking import contract as c
from sati.tracking.searches import FIGURE_SAVE
from sati.tracking.store import TrackingStore


def metric_key(label: str, name: str) -> str:
    """``tpe asha g1 rf2 n64 c8`` + ``t_hit_median`` → ``tpe_asha_g1_rf2_n64_c8/t_hit_median``."""
    return f"{re.sub(r'[^0-9A-Za-z_.-]+', '_', label)}/{name}"


def log_simulation(
    store: TrackingStore,
    experiment: str,
    name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    metrics: dict[str, float],
    rows: list[dict[str, str]],
    figure,
) -> str:
    """Create the simulation's run with ``params``, ``tags``, ``metrics``, the table (``simulation.md``)
    and the figure (``regret.png``); returns its id."""
    run_id = store.create_run(store.experiment_id(experiment), name, {c.ROLE: c.Role.SIMULATION.value, **tags})
    store.log_params(run_id, params)
    store.log_metrics(run_id, metrics)
    store.client.log_text(run_id, rows_markdown(rows), "simulation.md")
    store.client.log_figure(run_id, figure, "regret.png", save_kwargs=FIGURE_SAVE)
    store.end_run(run_id, "FINISHED")
    return run_id
