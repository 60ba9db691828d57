"""The end of a search: one row per trial, the best trials as a table, and the study's plots."""

from __future__ import annotations

import math
from typing import Any

from sati.config import PipelineConfig
from sati.search.space import SearchSpace
from sati.search.trainable import FINISHED
from sati.tracking.store import RunInfo


def trial_rows(cfg: PipelineConfig, results, runs_by_trial: dict[str, RunInfo], tune_metric: str) -> list[dict]:
    """One row per Tune result: trial id, state, epochs, best validation value, sampled values, run id."""
    metric = cfg.train.selection_metric
    rows = []
    for result in results:
        m = result.metrics or {}
        trial_id = m.get("trial_id", "?")
        run = runs_by_trial.get(trial_id)
        state = "error" if result.error else ("finished" if m.get(FINISHED) else "stopped")
        rows.append(
            {
                "trial_id": trial_id,
                "state": state,
                "epochs": m.get("epoch", m.get("training_iteration", 0)),
                metric: m.get(tune_metric, float("nan")),
                "seconds": float(m.get("time_total_s", 0.0)),
                **{k: v for k, v in (result.config or {}).items() if "." in k},
                "mlflow_run_id": run.run_id if run else "",
            }
        )
    return rows


def search_cost(cfg: PipelineConfig, rows: list[dict]) -> dict[str, float]:
    """The search's total CPU- and GPU-hours: each trial's wall time × the resources it held."""
    seconds = sum(r.get("seconds", 0.0) for r in rows)
    r = cfg.search.resources
    return {"cost/cpu_hours": seconds / 3600 * r.cpu, "cost/gpu_hours": seconds / 3600 * r.gpu}


def budget_note(cfg: PipelineConfig, rows: list[dict], cost: dict[str, float]) -> str | None:
    """Why the search ran fewer trials than ``search.num_samples``, when a budget stopped it."""
    s = cfg.search
    if len(rows) >= s.num_samples:
        return None
    for kind, budget in (("gpu", s.budget_gpu_hours), ("cpu", s.budget_cpu_hours)):
        spent = cost[f"cost/{kind}_hours"]
        if budget is not None and spent >= budget:
            return (
                f"stopped for the budget: the trials used {spent:.3g} {kind.upper()}-hours of "
                f"search.budget_{kind}_hours = {budget:g}; {len(rows)} of {s.num_samples} trials ran"
            )
    return None


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def ranked_rows(cfg: PipelineConfig, rows: list[dict]) -> list[dict]:
    """Rows that did not fail and have a finite value, best first."""
    metric = cfg.train.selection_metric
    usable = [r for r in rows if r["state"] != "error" and finite(r[metric])]
    return sorted(usable, key=lambda r: r[metric], reverse=cfg.train.selection_direction == "max")


def best_table(cfg: PipelineConfig, ranked: list[dict]) -> str:
    """The top rows as a Markdown table for the console."""
    metric = cfg.train.selection_metric
    if not ranked:
        return "no trial finished with a finite validation metric"
    keys = [k for k in ranked[0] if "." in k]
    head = f"| rank | trial | state | epochs | {metric} | " + " | ".join(keys) + " | MLflow run |"
    lines = ["\nbest trials (validation):", head, "|" + "---|" * (6 + len(keys))]
    for i, r in enumerate(ranked, 1):
        vals = " | ".join(f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys)
        lines.append(
            f"| {i} | {r['trial_id']} | {r['state']} | {r['epochs']} | {r[metric]:.4f} | {vals} | "
            f"{r['mlflow_run_id']} |"
        )
    return "\n".join(lines)


def study_plots(cfg: PipelineConfig, space: SearchSpace, rows: list[dict]) -> dict:
    """Optimization history, parameter importances, parallel coordinates (matplotlib figures)."""
    import warnings

    import optuna
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric = cfg.train.selection_metric
    dists = {}
    for p in space.params:
        if p.kind == "choice":
            dists[p.key] = optuna.distributions.CategoricalDistribution(list(p.args))
        elif p.kind == "int":
            dists[p.key] = optuna.distributions.IntDistribution(*p.args, log=p.log, step=p.step or 1)
        else:
            dists[p.key] = optuna.distributions.FloatDistribution(*p.args, log=p.kind == "loguniform")
    study = optuna.create_study(direction="maximize" if cfg.train.selection_direction == "max" else "minimize")
    for r in rows:
        params = {k: r[k] for k in dists if k in r}
        value = r[metric]
        used = {k: dists[k] for k in params}
        if r["state"] == "finished" and finite(value):
            study.add_trial(optuna.trial.create_trial(params=params, distributions=used, value=value))
        elif r["state"] == "stopped":
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=used, state=optuna.trial.TrialState.PRUNED)
            )
    figures = {}
    for name, plot in (
        ("optimization_history", ovm.plot_optimization_history),
        ("param_importances", ovm.plot_param_importances),
        ("parallel_coordinate", ovm.plot_parallel_coordinate),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            figures[name] = (ax[0] if hasattr(ax, "__len__") else ax).figure
        except Exception:  # e.g. importances need two finished trials: skip that plot
            continue
    return figures
