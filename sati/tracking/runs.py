"""Runs besides the search's own: a confirmation round (fresh seeds for the top configurations) and
an evaluation run (the paper's table for one or more models)."""

from __future__ import annotations

from typing import Any

from sati.tables import rows_markdown
from sati.tracking import contract as c
from sati.tracking.store import RunInfo, TrackingStore


def start_confirm_run(
    store: TrackingStore, search: RunInfo, candidates: list[RunInfo], seeds: list[int], metric: str
) -> str:
    """The parent run of a confirmation (reseeded) round, nested under the search."""
    tags = {
        c.ROLE: c.Role.CONFIRM.value,
        c.SEARCH_RUN: search.run_id,
        c.GIT_COMMIT: search.tags.get(c.GIT_COMMIT, "unknown"),
    }
    run_id = store.create_run(search.experiment_id, f"{search.name}-confirm", tags, parent=search.run_id)
    values = (",".join(t.run_id for t in candidates), ",".join(map(str, seeds)), metric)
    store.log_params(run_id, dict(zip(c.CONFIRM_PARAMS, values)))
    return run_id


def log_confirm_summary(store: TrackingStore, run_id: str, rows: list[dict], chosen: str | None) -> None:
    """The confirmation table (Markdown) and the chosen seed run on the confirm run, then end it."""
    store.client.log_text(run_id, rows_markdown(rows), "confirmation.md")
    if chosen:
        store.set_tags(run_id, {c.CHOSEN_RUN: chosen})
    store.end_run(run_id, "FINISHED" if chosen else "FAILED")


def log_evaluation(
    store: TrackingStore,
    *,
    experiment: str,
    run_name: str,
    metrics: dict[str, float],
    texts: dict[str, str],
    tags: dict[str, str],
    params: dict[str, Any],
    models: list[dict[str, Any]],
    split: str,
    parent: str | None = None,
) -> str:
    """An evaluation run (nested under ``parent``, the evaluated model's run): metrics, tables, and
    links both ways to the evaluated model versions (a tag and a line of the version's description)."""
    from sati.tracking.leaderboard import run_link
    from sati.tracking.registry import add_to_description

    experiment_id = store.experiment_id(experiment)
    tags = {c.ROLE: c.Role.EVALUATION.value, **tags}
    run_id = store.create_run(experiment_id, run_name, tags, parent=parent)
    model_id = models[0].get("model_id") if len(models) == 1 else None
    store.log_metrics(run_id, metrics, model_id=model_id or None)
    store.log_params(run_id, params)
    for name, text in texts.items():
        store.client.log_text(run_id, text, name)
    for m in models:
        if m.get("name") and m.get("version"):
            store.client.set_model_version_tag(m["name"], m["version"], c.evaluation_tag(split), run_id)
            mae = metrics.get(f"{split}/mae", float("nan"))
            line = f"Evaluated on `{split}`: [{run_name}]({run_link(experiment_id, run_id)}), MAE {mae:.4f}."
            add_to_description(store, m["name"], m["version"], line)
    store.end_run(run_id)
    return run_id
