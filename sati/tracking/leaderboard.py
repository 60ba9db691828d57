"""A search's leaderboard as people read it in the MLflow UI: one row per trial from its MLflow run,
the best trial tagged, the parent run's Markdown description (``mlflow.note.content``: the winner,
its sampled values, a link to it, the top trials), and a link that opens the runs table sorted by
the search metric.

Rows come from the trial runs themselves (tags and latest metrics), so a resumed or extended search
is summarized whole, whatever Tune experiment each trial ran in.
"""

from __future__ import annotations

import math
import re
import sys
import urllib.parse
from typing import Any

from sati.tracking import contract as c
from sati.tracking.store import RunInfo, TrackingStore

TOP = 10  # rows of the description's table
# MLflow 3's UI opens a run in its GenAI view ("Evaluations") unless the link names the model-training view
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def run_link(experiment_id: str, run_id: str) -> str:
    """A link to a run that works inside the MLflow UI (descriptions are rendered there), in its
    model-training view."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def runs_table_link(ui: str, experiment_id: str, parent_run_id: str, metric: str, mode: str) -> str:
    """The runs table of one search's trials, best ``best/<metric>`` first, in the UI's model-training view."""
    query = urllib.parse.urlencode(
        {
            "searchFilter": f"tags.`{c.ROLE}` = '{c.Role.TRIAL.value}' and tags.`{c.PARENT_RUN}` = '{parent_run_id}'",
            "orderByKey": f"metrics.`best/{metric}`",
            "orderByAsc": str(mode == "min").lower(),
        },
        quote_via=urllib.parse.quote,
    )
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}&{MODEL_TRAINING_VIEW}"


def ui_address(tracking_uri: str) -> str:
    """Where the MLflow UI of ``tracking_uri`` is: the server itself, or ``mlflow ui``'s default."""
    return tracking_uri if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def trial_rows(store: TrackingStore, parent: str, metric: str, keys: list[str]) -> list[dict[str, Any]]:
    """One row per trial run under ``parent``, in trial order (t001, t002, …; MLflow returns the newest
    first): name, state, epochs, best value, the searched ``keys``."""
    rows = []
    for run in store.child_runs(parent, f"tags.`{c.ROLE}` = '{c.Role.TRIAL.value}'"):
        state = run.tags.get(c.TRIAL_STATUS) or ("failed" if run.status == "FAILED" else run.status.lower())
        row = {
            "trial": run.name,
            "state": state,
            "epochs": int(float(run.tags.get(c.EPOCHS, "0") or 0)),
            metric: run.metrics.get(f"best/{metric}", math.nan),
        }
        row |= {k: _param(run, k) for k in keys}
        row |= {
            "cpu_hours": run.metrics.get("cost/cpu_hours", 0.0),
            "gpu_hours": run.metrics.get("cost/gpu_hours", 0.0),
            "trial_id": run.tags.get(c.TRIAL_ID, ""),
            "mlflow_run_id": run.run_id,
        }
        rows.append(row)
    return sorted(rows, key=lambda r: trial_number(r["trial"]))


def trial_number(run_name: str) -> int:
    """``t007-fa3a39a8`` → 7 (the trial's number in its search); a name of another form sorts last."""
    match = re.match(r"t(\d+)-", run_name)
    return int(match.group(1)) if match else sys.maxsize


def _param(run: RunInfo, key: str) -> Any:
    value = run.params.get(key, "")
    try:
        return int(value) if value.lstrip("-").isdigit() else float(value)
    except ValueError:
        return value


def ranked(rows: list[dict], metric: str, mode: str) -> list[dict]:
    """Rows that did not fail and have a finite value, best first (``rank`` 1, 2, …)."""
    usable = [r for r in rows if r["state"] != "failed" and isinstance(r[metric], float) and math.isfinite(r[metric])]
    usable.sort(key=lambda r: r[metric], reverse=mode == "max")
    return [{"rank": i, **r} for i, r in enumerate(usable, 1)]


def table_rows(rows: list[dict], metric: str, mode: str) -> list[dict]:
    """Every trial, ranked ones first in rank order, the best marked (★), then the rest."""
    order = ranked(rows, metric, mode)
    seen = {r["mlflow_run_id"] for r in order}
    unranked = [{"rank": "", **r} for r in rows if r["mlflow_run_id"] not in seen]
    out = []
    for r in order + unranked:
        out.append({"": "★" if r["rank"] == 1 else "", **r})
    return out


def description(
    rows: list[dict], metric: str, mode: str, experiment_id: str, keys: list[str], status: str, notes: list[str]
) -> str:
    """The search run's Markdown description: the winner, its sampled values, the top trials."""
    order = ranked(rows, metric, mode)
    better = "lower" if mode == "min" else "higher"
    counts = {s: sum(r["state"] == s for r in rows) for s in ("finished", "stopped", "failed", "running")}
    lines = [
        f"**{status}**: {len(rows)} trials ({counts['finished']} finished, {counts['stopped']} stopped early, "
        f"{counts['failed']} failed{', ' + str(counts['running']) + ' running' if counts['running'] else ''}); "
        f"ranked by `{metric}` on the validation split ({better} is better).",
        "",
    ]
    if order:
        best = order[0]
        sampled = ", ".join(f"`{k}` = {_fmt(best[k])}" for k in keys)
        lines += [
            f"### Best: [{best['trial']}]({run_link(experiment_id, best['mlflow_run_id'])}) "
            f"`{metric}` = {best[metric]:.4f}",
            "",
            f"{sampled} ({best['state']}, {best['epochs']} epochs)" if sampled else f"({best['state']})",
            "",
            "| rank | trial | state | epochs | " + metric + " | " + " | ".join(keys) + " |",
            "|---" * (5 + len(keys)) + "|",
        ]
        for r in order[:TOP]:
            link = f"[{r['trial']}]({run_link(experiment_id, r['mlflow_run_id'])})"
            values = " | ".join(_fmt(r[k]) for k in keys)
            lines.append(f"| {r['rank']} | {link} | {r['state']} | {r['epochs']} | {r[metric]:.4f} | {values} |")
    else:
        lines.append("No trial has a finite validation value yet.")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class LiveBoard:
    """The leaderboard kept in memory while a search runs, from Tune's results (no MLflow reads), and
    published to the parent run's description and the best trial's tag when the best changes or at
    most every ``every_s`` seconds otherwise. Pickled with Tune's experiment state."""

    def __init__(self, store: TrackingStore, parent: str, metric: str, mode: str, keys: list[str], every_s=30.0):
        self.store, self.parent, self.metric, self.mode, self.keys = store, parent, metric, mode, keys
        self.every_s = every_s
        self.entries: dict[str, dict[str, Any]] = {}  # trial id → row (trial_rows' keys)
        self.best: str | None = None  # run id of the best trial
        self._experiment: str | None = None
        self._published = 0.0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_published": 0.0}

    def add(self, trial_id: str, name: str, run_id: str, sampled: dict[str, Any]) -> None:
        row = self.entries.setdefault(trial_id, {"trial": name, "state": "running", "epochs": 0, self.metric: math.nan})
        row |= {k: sampled.get(k, "") for k in self.keys} | {"trial_id": trial_id, "mlflow_run_id": run_id}

    def result(self, trial_id: str, epoch: int, value: float) -> None:
        if trial_id in self.entries:
            self.entries[trial_id] |= {"epochs": epoch, self.metric: float(value)}
            self.publish()

    def done(self, trial_id: str, state: str) -> None:
        if trial_id in self.entries:
            self.entries[trial_id]["state"] = state
            self.publish()

    def publish(self, force: bool = False, status: str = "running", notes: list[str] | None = None) -> None:
        """Update the description (and move ``sati.best``) if the best changed, time is up, or ``force``."""
        import time

        rows = list(self.entries.values())
        order = ranked(rows, self.metric, self.mode)
        best = order[0]["mlflow_run_id"] if order else None
        now = time.monotonic()
        if not (force or best != self.best or now - self._published >= self.every_s):
            return
        if best != self.best:
            if self.best:
                self.store.delete_tag_if_present(self.best, c.BEST)  # after a resume it may never have been set
            if best:
                self.store.set_tags(best, {c.BEST: "true"})
            self.best = best
        if self._experiment is None:
            self._experiment = self.store.client.get_run(self.parent).info.experiment_id
        text = description(rows, self.metric, self.mode, self._experiment, self.keys, status, notes or [])
        self.store.set_tags(self.parent, {c.NOTE: text})
        self._published = now


def publish_final(
    store: TrackingStore, parent: str, rows: list[dict], metric: str, mode: str, keys: list[str], notes: list[str]
) -> str | None:
    """The search's final description and ``sati.best`` tag, from its trial runs; returns the best run id."""
    order = ranked(rows, metric, mode)
    best = order[0]["mlflow_run_id"] if order else None
    for run in store.child_runs(parent, f"tags.`{c.BEST}` = 'true'"):
        if run.run_id != best:
            store.client.delete_tag(run.run_id, c.BEST)
    if best:
        store.set_tags(best, {c.BEST: "true"})
    experiment = store.client.get_run(parent).info.experiment_id
    store.set_tags(parent, {c.NOTE: description(rows, metric, mode, experiment, keys, "finished", notes)})
    return best
