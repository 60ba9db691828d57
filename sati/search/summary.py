"""The end of a search as the console shows it: the best trials, the search's cost, and why a
budget stopped it. Rows are the leaderboard's (``sati.tracking.leaderboard.trial_rows``)."""

from __future__ import annotations

from sati.config import PipelineConfig


def best_table(cfg: PipelineConfig, ranked: list[dict], keys: list[str]) -> str:
    """The top rows as a Markdown table for the console."""
    metric = cfg.train.selection_metric
    if not ranked:
        return "no trial finished with a finite validation metric"
    head = f"| rank | trial | state | epochs | {metric} | " + " | ".join(keys) + " | MLflow run |"
    lines = ["\nbest trials (validation):", head, "|" + "---|" * (6 + len(keys))]
    for r in ranked:
        vals = " | ".join(f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys)
        lines.append(
            f"| {r['rank']} | {r['trial']} | {r['state']} | {r['epochs']} | {r[metric]:.4f} | {vals} | "
            f"{r['mlflow_run_id']} |"
        )
    return "\n".join(lines)


def search_cost(rows: list[dict]) -> dict[str, float]:
    """The search's total CPU- and GPU-hours: the sum of what each trial held × its wall time."""
    return {
        "cost/cpu_hours": sum(r.get("cpu_hours", 0.0) for r in rows),
        "cost/gpu_hours": sum(r.get("gpu_hours", 0.0) for r in rows),
    }


def budget_note(cfg: PipelineConfig, rows: list[dict], cost: dict[str, float], planned: int) -> str | None:
    """Why the search ran fewer than ``planned`` trials, when a budget stopped it."""
    s = cfg.search
    if len(rows) >= planned:
        return None
    for kind, budget in (("gpu", s.budget_gpu_hours), ("cpu", s.budget_cpu_hours)):
        spent = cost[f"cost/{kind}_hours"]
        if budget is not None and spent >= budget:
            return (
                f"stopped for the budget: the trials used {spent:.3g} {kind.upper()}-hours of "
                f"search.budget_{kind}_hours = {budget:g}; {len(rows)} of {planned} trials ran"
            )
    return None
