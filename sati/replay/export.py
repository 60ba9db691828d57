"""``sati search export``: a search's trials as a recording (``sati.replay.recording``).

The source is what Ray Tune keeps in the search directory, the most complete record of a trial's
epochs: each experiment's newest ``experiment_state-*.json`` (every trial's id, number, config and
status) and each trial's ``result.json`` (every report, with Tune's ``time_this_iter_s``; an epoch a
restored trial ran again is taken from its last run). MLflow holds the same metrics but not Tune's
epoch times, and rebuilding curves from it costs one request per trial and metric; it is read only for
the search run's provenance tags (git commit, data checksum, versions), and only when it answers.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs

from sati import storage
from sati.config import PipelineConfig, from_dict
from sati.provenance import file_sha256
from sati.replay.recording import HP_PREFIX, config_id, space_to_meta, write_recording
from sati.search.space import SearchSpace, load_space
from sati.search.state import STATE_FILE, as_search_dir, read_search_state
from sati.search.strategy import TIME_ATTR
from sati.search.trainable import FINISHED
from sati.tracking import contract
from sati.tracking.searches import find_search
from sati.tracking.store import TrackingError, TrackingStore

# Pipeline keys that may hold a machine path, credentials or an address: kept as a file name, or dropped.
_PATH_KEYS = ("data.path", "model.text_encoder", "search.space", "search.storage_path", "train.out_dir")
_PRIVATE_KEYS = ("search.study_storage", "search.ray_address", "tracking.uri")


@dataclass
class ExportSummary:
    out: Path
    sidecar: Path
    trials: int
    rows: int
    statuses: dict[str, int]


def export_search(
    target: str,
    out: str | Path,
    tracking_uri: str | None = None,
    command: str | None = None,
    device: str | None = None,
) -> ExportSummary:
    """Write the search ``target`` (its directory or MLflow parent run id) to ``out`` as a recording;
    ``command`` and ``device`` (how and where it was recorded) go into its metadata."""
    search_dir = _search_dir(target, tracking_uri)
    state = read_search_state(search_dir)
    cfg = from_dict(state["pipeline"], f"{search_dir}/{STATE_FILE}")
    space = _recorded_space(cfg, state, search_dir)
    rows, statuses, offset = [], {}, 0
    for experiment in state.get("experiments", [state["name"]]):
        trials = _experiment_trials(storage.join(cfg.search.storage_path, experiment))
        for trial in trials:
            trial_rows = _trial_rows(trial, offset, cfg, space, state["name"], experiment)
            rows += trial_rows
            status = trial_rows[0]["final_status"]
            statuses[status] = statuses.get(status, 0) + 1
        offset += len(trials)
    if not rows:
        raise TrackingError(f"{search_dir}: the search has no trials to export")
    start = min(r["t_report_wall"] for r in rows if r["t_report_wall"] is not None)
    for r in rows:
        r["t_report_wall"] = None if r["t_report_wall"] is None else r["t_report_wall"] - start
    meta = _metadata(cfg, space, state, command, device)
    sidecar = write_recording(out, rows, meta)
    return ExportSummary(Path(out), sidecar, offset, len(rows), statuses)


def _search_dir(target: str, tracking_uri: str | None) -> str:
    """The search directory ``target`` names: itself, or the directory its MLflow parent run records."""
    if (search_dir := as_search_dir(target)) is not None:
        return search_dir
    run = find_search(TrackingStore.open(tracking_uri), target)
    return run.tags[contract.SEARCH_DIR]


def _recorded_space(cfg: PipelineConfig, state: dict, search_dir: str) -> SearchSpace:
    """The space the search sampled: its file, if unchanged since (sha256), else the copy its MLflow
    parent run holds."""
    path = Path(cfg.search.space or "")
    if path.is_file() and file_sha256(path) == state.get("space_sha256"):
        return load_space(path, cfg)
    try:
        store = TrackingStore.open(state["tracking_uri"])
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            copy = store.client.download_artifacts(state["parent_run_id"], path.name, d)
            return load_space(copy, cfg)
    except Exception as err:
        raise TrackingError(
            f"{search_dir}: its search space {path} is missing or changed since the search ran, and the copy "
            f"logged to MLflow run {state.get('parent_run_id')} cannot be read ({str(err)[:200]})"
        ) from None


def _experiment_trials(experiment_dir: str) -> list[dict[str, Any]]:
    """Every trial of one Tune experiment, in the order Tune created them: id, number, config, status,
    its last result and its reports (``result.json``)."""
    fs, root = storage.filesystem(experiment_dir)
    entries = fs.get_file_info(pyarrow.fs.FileSelector(root))
    states = sorted(
        e.path
        for e in entries
        if posixpath.basename(e.path).startswith("experiment_state-") and e.path.endswith(".json")  # not .mac
    )
    if not states:
        raise TrackingError(f"{experiment_dir}: no Ray Tune experiment state (experiment_state-*.json) here")
    dirs = [e.path for e in entries if e.type == pyarrow.fs.FileType.Directory]
    try:
        with fs.open_input_stream(states[-1]) as f:
            data = json.loads(f.read())
        trials = []
        for trial_json, runtime_json in data["trial_data"]:
            trial, runtime = json.loads(trial_json), json.loads(runtime_json)
            trial_dir = next((d for d in dirs if f"_{trial['trial_id']}_" in posixpath.basename(d)), None)
            trials.append(
                {
                    "trial_id": trial["trial_id"],
                    "number": int(str(trial["experiment_tag"]).split("_", 1)[0]),
                    "config": trial["config"],
                    "status": trial["status"],
                    "last_result": runtime.get("last_result") or {},
                    "reports": _reports(fs, trial_dir),
                }
            )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TrackingError(f"{states[-1]}: cannot read the Tune experiment state ({err})") from None
    return sorted(trials, key=lambda t: t["number"])


def _reports(fs, trial_dir: str | None) -> list[dict[str, Any]]:
    """A trial's reports, one per epoch (the last report of an epoch a restored trial ran again)."""
    path = posixpath.join(trial_dir, "result.json") if trial_dir else None
    if path is None or fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return []
    with fs.open_input_stream(path) as f:
        lines = f.read().decode().splitlines()
    by_epoch = {}
    for line in lines:
        if line.strip():
            report = json.loads(line)
            if TIME_ATTR in report:
                by_epoch[int(report[TIME_ATTR])] = report
    return [by_epoch[e] for e in sorted(by_epoch)]


def _trial_rows(
    trial: dict, offset: int, cfg: PipelineConfig, space: SearchSpace, search: str, experiment: str
) -> list[dict[str, Any]]:
    """One row per epoch the trial reported (one row at epoch 0 for a trial that failed before it)."""
    status = _final_status(trial["status"], trial["reports"] or [trial["last_result"]])
    values = {k: trial["config"].get(k) for k in space.keys}
    common = {
        "search_id": search,
        "experiment": experiment,
        "trial_id": trial["trial_id"],
        "trial_seq": offset + trial["number"],
        "config_id": config_id(values),
        **{HP_PREFIX + k: v for k, v in values.items()},
        "train_seed": cfg.seed,
        "cpus": float(cfg.search.resources.cpu),
        "gpus": float(cfg.search.resources.gpu),
        "final_status": status,
        "censored": status in ("sched_stop", "interrupted"),
    }
    rows = []
    for report in trial["reports"]:
        metrics = {k: v for k, v in report.items() if k.startswith(("valid/", "best/valid/"))}
        rows.append(
            {
                **common,
                "epoch": int(report[TIME_ATTR]),
                **{k: (None if v is None else float(v)) for k, v in metrics.items()},
                "epoch_time_s": float(report.get("time_this_iter_s", 0.0)),
                "train_time_s": float(report.get("time/epoch_s", float("nan"))),
                "cum_time_s": float(report.get("time_total_s", 0.0)),
                "t_report_wall": float(report["timestamp"]) if "timestamp" in report else None,
            }
        )
    if not rows:  # failed (or was cut off) before its first report
        rows.append({**common, "epoch": 0, "epoch_time_s": 0.0, "cum_time_s": 0.0, "t_report_wall": None})
    return rows


def _final_status(tune_status: str, reports: list[dict]) -> str:
    if tune_status == "ERROR":
        return "error"
    if tune_status != "TERMINATED":
        return "interrupted"
    return "completed" if reports and reports[-1].get(FINISHED) else "sched_stop"


def _metadata(cfg: PipelineConfig, space: SearchSpace, state: dict, command: str | None, device: str | None) -> dict:
    s = cfg.search
    meta = {
        "search": state["name"],
        "parent_run_id": state.get("parent_run_id"),
        "metric": cfg.train.selection_metric,
        "mode": cfg.train.selection_direction,
        "time_attr": TIME_ATTR,
        "max_t": cfg.train.epochs,
        "patience": cfg.train.patience,
        "space": space_to_meta(space),
        "searcher": {"sampler": s.sampler, "seed": cfg.seed, "first_point": "the pipeline's own values"},
        "scheduler": {
            "scheduler": s.scheduler,
            "grace_period": s.grace_period,
            "reduction_factor": s.reduction_factor,
            "num_samples": state.get("planned", s.num_samples),
            "max_concurrent": s.max_concurrent,
        },
        "resources": {"cpu": s.resources.cpu, "gpu": s.resources.gpu},
        "pipeline": _shareable(cfg),
        "command": command,
        "device": device,
        "exported_with": _versions(),
    }
    return meta | _provenance(state)


def _shareable(cfg: PipelineConfig) -> dict[str, Any]:
    """The pipeline's values, flattened, with paths reduced to file names and addresses left out."""
    from sati.config import flatten

    flat = flatten(cfg.to_dict())
    for key in _PATH_KEYS:
        if isinstance(flat.get(key), str):
            flat[key] = Path(flat[key]).name
    for key in _PRIVATE_KEYS:
        flat.pop(key, None)
    return flat


def _provenance(state: dict) -> dict[str, Any]:
    """Git commit, data checksum and versions from the search's MLflow parent run, when it answers."""
    try:
        tags = TrackingStore.open(state["tracking_uri"]).run(state["parent_run_id"]).tags
    except Exception as err:
        return {"provenance": f"unavailable: the search's MLflow run could not be read ({str(err)[:200]})"}
    return {
        "git_commit": tags.get(contract.GIT_COMMIT),
        "data_checksum": tags.get(contract.DATA_CHECKSUM),
        "versions": contract.versions_from_tags(tags),
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("sati", "ray", "optuna", "mlflow", "pyarrow")}
