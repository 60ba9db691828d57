"""A reproduction and a re-run in MLflow.

A reproduction is one run (``sati.role`` = reproduction) with one child run per variant × seed (the Ray
trials, logged by ``TrialRuns`` like a search's, with ``sati.variant`` and ``sati.seed``); their test
metrics and per-sample test predictions (``predictions/test.csv``: id, label and one column per test
condition) are added to them once they are evaluated, and the tables, a plot and a description go on
the reproduction run. A re-run (``sati.role`` = rerun) is nested under the run it trains again.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sati.tracking import contract as c
from sati.tracking.searches import FIGURE_SAVE, RERUN_ARTIFACT, finished_trials
from sati.tracking.store import RunInfo, TrackingError, TrackingStore


def start_reproduction_run(
    store: TrackingStore,
    experiment: str,
    *,
    name: str,
    source: str,
    pipeline: dict[str, Any],
    params: dict[str, Any],
    variants: list[str],
    seeds: list[int],
    noise: list[float],
    data_checksum: str,
    directory: str,
    metric: str,
    mode: str,
    git_commit: str,
    versions: dict[str, str],
) -> str:
    """The reproduction's run, with the base pipeline (``params`` flattened, ``pipeline.yaml``), what it
    trains (variants, seeds, noise levels) and provenance; returns its id."""
    tags = {
        c.ROLE: c.Role.REPRODUCTION.value,
        c.REPRODUCTION_SOURCE: source,
        c.SEARCH_DIR: directory,  # where its Tune experiment is, as a search's
        c.GIT_COMMIT: git_commit,
        c.DATA_CHECKSUM: data_checksum,
        c.SELECTION_METRIC: metric,
        c.SELECTION_MODE: mode,
        **{c.version_tag(k): v for k, v in versions.items()},
    }
    run_id = store.create_run(store.experiment_id(experiment), name, tags)
    values = (source, ",".join(variants), ",".join(map(str, seeds)), ",".join(f"{s:g}" for s in noise))
    store.log_params(run_id, {**params, **dict(zip(c.REPRODUCTION_PARAMS, values))})
    store.client.log_text(run_id, yaml.safe_dump(pipeline, sort_keys=False), "pipeline.yaml")
    return run_id


def find_reproduction(store: TrackingStore, run_id: str) -> RunInfo:
    """A reproduction's run (to resume it by run id); any other run is refused, naming it."""
    run = store.run(run_id)
    if run.tags.get(c.ROLE) != c.Role.REPRODUCTION.value:
        raise TrackingError(f"MLflow run {run_id} is not a sati reproduction (tag {c.ROLE} = {run.tags.get(c.ROLE)!r})")
    return run


def variant_runs(store: TrackingStore, parent: str) -> dict[tuple[str, int], RunInfo]:
    """The reproduction's finished trial runs keyed by (variant, seed)."""
    runs = {}
    for run in finished_trials(store, [parent]):
        runs[(run.tags.get(c.VARIANT, ""), int(run.tags.get(c.SEED, "0")))] = run
    return runs


def log_test_metrics(store: TrackingStore, run_id: str, metrics: dict[str, float]) -> None:
    """A trial's test metrics (``test/…`` keys, every condition) on its run, once it is evaluated."""
    store.log_metrics(run_id, metrics)


PREDICTIONS_ARTIFACT = "predictions/test.csv"  # a reproduction trial's per-sample test predictions


def log_test_predictions(store: TrackingStore, run_id: str, frame: pd.DataFrame) -> None:
    """A trial's per-sample test predictions (id, label, one column per condition) on its run, as CSV
    whose numbers read back exactly (``read_test_predictions``): pandas writes the shortest repr."""
    store.client.log_text(run_id, frame.to_csv(index=False, na_rep="nan"), PREDICTIONS_ARTIFACT)


def read_test_predictions(store: TrackingStore, run_id: str) -> pd.DataFrame | None:
    """The frame ``log_test_predictions`` logged on the run, or None when it has none."""
    with tempfile.TemporaryDirectory(prefix="sati-predictions-") as tmp:
        try:
            path = store.client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, tmp)
        except Exception:
            return None
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # numbers parsed by float(): exact
    return frame.astype({column: float for column in frame.columns if column != "id"})


def log_reproduction_summary(
    store: TrackingStore,
    run_id: str,
    *,
    texts: dict[str, str],
    figures: dict[str, Any],
    metrics: dict[str, float],
    note: str,
    status: str = "FINISHED",
) -> None:
    """Tables (``texts``: artifact name → text), plots, summary metrics and the Markdown description,
    then end the run."""
    for name, text in texts.items():
        store.client.log_text(run_id, text, name)
    for name, fig in figures.items():
        store.client.log_figure(run_id, fig, name, save_kwargs=FIGURE_SAVE)
    store.log_metrics(run_id, metrics)
    store.set_tags(run_id, {c.NOTE: note})
    store.end_run(run_id, status)


# --------------------------------------------------------------------------------------------
# Re-runs


def read_rerun_record(store: TrackingStore, run_id: str) -> dict[str, Any] | None:
    """The run's ``rerun.json`` (``sati.provenance.rerun_record``), or None when it has none."""
    with tempfile.TemporaryDirectory(prefix="sati-rerun-") as tmp:
        try:
            path = store.client.download_artifacts(run_id, RERUN_ARTIFACT, tmp)
        except Exception:
            return None
        return json.loads(Path(path).read_text())


def metric_histories(store: TrackingStore, run: RunInfo, prefixes: tuple[str, ...]) -> dict[str, dict[int, float]]:
    """Every metric of ``run`` whose key starts with one of ``prefixes``: key → {step (epoch): value}; an
    epoch logged twice (a restored trial) keeps its last value."""
    out = {}
    for key in sorted(k for k in run.metrics if k.startswith(prefixes)):
        history = sorted(store.client.get_metric_history(run.run_id, key), key=lambda m: (m.step, m.timestamp))
        out[key] = {int(m.step): float(m.value) for m in history}
    return out


def rerun_tags(original: RunInfo, forced: dict[str, str]) -> dict[str, str]:
    """Tags of a re-run of ``original``: its role, what it re-runs, and the differences ``--force``
    accepted (``forced``: "data" and/or "code" → "recorded → now")."""
    tags = {c.ROLE: c.Role.RERUN.value, c.RERUN_OF: original.run_id}
    names = {"data": c.RERUN_FORCED_DATA, "code": c.RERUN_FORCED_CODE}
    return tags | {names[k]: v for k, v in forced.items()}


def log_rerun_outcome(store: TrackingStore, run_id: str, match: str, texts: dict[str, str]) -> None:
    """The comparison with the original's per-epoch metrics (``match``: exact, within tolerance, differs)."""
    for name, text in texts.items():
        store.client.log_text(run_id, text, name)
    store.set_tags(run_id, {c.RERUN_MATCH: match})
