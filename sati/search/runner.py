"""`sati search`: validate, open the MLflow parent run, run or restore the Tuner, summarize.

Orchestration only: Ray lives in ``sati.search.tune``, MLflow in ``sati.tracking``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sati import tracking
from sati.checkpoint import atomic_write, versions
from sati.config import ConfigError, PipelineConfig, from_dict
from sati.data.h5format import read_info
from sati.data.loaders import ensure_dataset
from sati.search.space import SearchSpace, load_space


@dataclass
class SearchOutcome:
    parent_run_id: str
    tracking_uri: str
    search_dir: str
    rows: list[dict]
    best: dict | None


def _absolute(cfg: PipelineConfig) -> PipelineConfig:
    """Trials run in their own directories (and maybe on other nodes): make local paths absolute."""
    changes = {"data.path": str(Path(cfg.data.path).resolve())}
    if Path(cfg.model.text_encoder).exists():
        changes["model.text_encoder"] = str(Path(cfg.model.text_encoder).resolve())
    if cfg.search.space:
        changes["search.space"] = str(Path(cfg.search.space).resolve())
    if "://" not in cfg.search.storage_path:
        changes["search.storage_path"] = str(Path(cfg.search.storage_path).resolve())
    return cfg.replace(changes)


def prepare(cfg: PipelineConfig) -> tuple[PipelineConfig, SearchSpace, str]:
    """Every check that can fail before a trial starts: space keys, tracking URI, data."""
    if not cfg.search.space:
        raise ConfigError("search.space is not set: name a search space file, e.g. search_spaces/quickstart.yaml")
    space = load_space(cfg.search.space, cfg)
    uri = tracking.resolve_uri(cfg.tracking.uri)
    tracking.check_reachable(uri)
    ensure_dataset(cfg)
    return _absolute(cfg), space, uri


def import_tune(address: str | None):
    """Import the Ray module; a local Ray (no address) binds to 127.0.0.1 only (read at import)."""
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from sati.search import tune as sati_tune

    return sati_tune


def run_search(cfg: PipelineConfig, console: Callable[[str], None] = print) -> SearchOutcome:
    """Run a new search; the experiment state lives in ``<search.storage_path>/<name>``."""
    cfg, space, uri = prepare(cfg)
    sati_tune = import_tune(cfg.search.ray_address)
    info = read_info(cfg.data.path)
    name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    search_dir = (
        str(Path(cfg.search.storage_path) / name)
        if "://" not in cfg.search.storage_path
        else f"{cfg.search.storage_path.rstrip('/')}/{name}"
    )
    parent = tracking.start_search_run(
        uri,
        cfg.tracking.experiment,
        name=name,
        pipeline=cfg.to_dict(),
        space_path=cfg.search.space,
        data_checksum=info.checksum,
        search_dir=search_dir,
        versions=versions(),
    )
    if "://" not in search_dir:
        write_search_state(
            search_dir, {"parent_run_id": parent, "tracking_uri": uri, "pipeline": cfg.to_dict(), "name": name}
        )
    console(f"search {name}: MLflow parent run {parent} in experiment '{cfg.tracking.experiment}' at {uri}")
    runs = tracking.TrialRuns(uri, parent)
    return _drive(
        sati_tune,
        cfg,
        space,
        uri,
        parent,
        search_dir,
        console,
        lambda: sati_tune.build_tuner(cfg, space, cfg.search.storage_path, name, runs),
    )


def resume_search(
    target: str, tracking_uri: str | None = None, console: Callable[[str], None] = print
) -> SearchOutcome:
    """Continue an interrupted search from its directory or its MLflow parent run id."""
    if Path(target).is_dir():
        search_dir = str(Path(target).resolve())
        state = read_search_state(search_dir)
        uri, parent = state["tracking_uri"], state["parent_run_id"]
    else:
        uri = tracking.resolve_uri(tracking_uri)
        tags = tracking.find_search(uri, target)
        search_dir, parent = tags[tracking.SEARCH_DIR], target
        state = read_search_state(search_dir)
    tracking.check_reachable(uri)
    cfg = from_dict(state["pipeline"], f"{search_dir}/sati_search.json")
    space = load_space(cfg.search.space, cfg)
    sati_tune = import_tune(cfg.search.ray_address)
    tracking.reopen_search_run(uri, parent)
    console(f"resuming search {state['name']} (MLflow parent run {parent}) from {search_dir}")
    return _drive(
        sati_tune, cfg, space, uri, parent, search_dir, console, lambda: sati_tune.restore_tuner(search_dir, cfg)
    )


def _drive(sati_tune, cfg, space, uri, parent, search_dir, console, make_tuner) -> SearchOutcome:
    """Start (or join) Ray, fit, summarize; a search that dies marks its parent run FAILED."""
    started = sati_tune.init_ray(cfg.search.ray_address)
    try:
        return _finish(cfg, space, uri, parent, search_dir, make_tuner().fit(), console)
    except BaseException:
        tracking.end_run(uri, parent, "FAILED")
        raise
    finally:
        if started:
            sati_tune.shutdown_ray()


def _finish(cfg, space, uri, parent, search_dir, results, console) -> SearchOutcome:
    """Close orphans, log the summary to the parent run, print the best trials."""
    from sati.search.tune import FINISHED, tune_metric

    metric = tune_metric(cfg)
    children = {run.data.tags.get(tracking.TRIAL_ID): run for run in tracking.child_runs(uri, parent)}
    rows = []
    for result in results:
        m = result.metrics or {}
        trial_id = m.get("trial_id", "?")
        run = children.get(trial_id)
        state = "error" if result.error else ("finished" if m.get(FINISHED) else "stopped")
        row = {
            "trial_id": trial_id,
            "state": state,
            "epochs": m.get("training_iteration", 0),
            cfg.search.metric: m.get(metric, float("nan")),
            **{k: v for k, v in (result.config or {}).items() if "." in k},
            "mlflow_run_id": run.info.run_id if run else "",
        }
        rows.append(row)
    tracking.TrialRuns(uri, parent).close_orphans()
    reverse = cfg.search.mode == "max"
    ranked = sorted(
        [r for r in rows if r["state"] != "error" and _finite(r[cfg.search.metric])],
        key=lambda r: r[cfg.search.metric],
        reverse=reverse,
    )
    best = None
    if ranked:
        b = ranked[0]
        best = {
            "run_id": b["mlflow_run_id"],
            "trial_id": b["trial_id"],
            "metrics": {cfg.search.metric: b[cfg.search.metric]},
        }
    tracking.log_search_summary(uri, parent, rows, _study_plots(cfg, space, rows), best)
    tracking.end_run(uri, parent, "FINISHED")
    console(_best_table(cfg, ranked[:5]))
    console(
        f"\nsearch directory: {search_dir}\nMLflow parent run: {parent}\n"
        f"see it with: mlflow ui --backend-store-uri {uri}"
    )
    return SearchOutcome(parent, uri, search_dir, rows, best)


def write_search_state(search_dir: str | Path, state: dict) -> None:
    atomic_write(Path(search_dir) / "sati_search.json", lambda f: f.write(json.dumps(state, indent=2).encode()))


def read_search_state(search_dir: str | Path) -> dict:
    path = Path(search_dir) / "sati_search.json"
    if not path.is_file():
        raise tracking.TrackingError(f"{search_dir}: not a sati search directory (no sati_search.json)")
    return json.loads(path.read_text())


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _best_table(cfg: PipelineConfig, ranked: list[dict]) -> str:
    if not ranked:
        return "no trial finished with a finite validation metric"
    keys = [k for k in ranked[0] if "." in k]
    head = f"| rank | trial | state | epochs | {cfg.search.metric} | " + " | ".join(keys) + " | MLflow run |"
    lines = ["\nbest trials (validation):", head, "|" + "---|" * (6 + len(keys))]
    for i, r in enumerate(ranked, 1):
        vals = " | ".join(f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys)
        lines.append(
            f"| {i} | {r['trial_id']} | {r['state']} | {r['epochs']} | {r[cfg.search.metric]:.4f} | "
            f"{vals} | {r['mlflow_run_id']} |"
        )
    return "\n".join(lines)


def _study_plots(cfg: PipelineConfig, space: SearchSpace, rows: list[dict]) -> dict:
    """Optimization history, parameter importances, parallel coordinates (matplotlib figures)."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {}
    for p in space.params:
        if p.kind == "choice":
            dists[p.key] = optuna.distributions.CategoricalDistribution(list(p.args))
        elif p.kind == "int":
            dists[p.key] = optuna.distributions.IntDistribution(*p.args, log=p.log, step=p.step or 1)
        else:
            dists[p.key] = optuna.distributions.FloatDistribution(*p.args, log=p.kind == "loguniform")
    study = optuna.create_study(direction="maximize" if cfg.search.mode == "max" else "minimize")
    for r in rows:
        params = {k: r[k] for k in dists if k in r}
        value = r[cfg.search.metric]
        if r["state"] == "finished" and _finite(value):
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params}, value=value)
            )
        elif r["state"] == "stopped":
            study.add_trial(
                optuna.trial.create_trial(
                    params=params, distributions={k: dists[k] for k in params}, state=optuna.trial.TrialState.PRUNED
                )
            )
    figures = {}
    for name, plot in (
        ("optimization_history", ovm.plot_optimization_history),
        ("param_importances", ovm.plot_param_importances),
        ("parallel_coordinate", ovm.plot_parallel_coordinate),
    ):
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            figures[name] = (ax[0] if hasattr(ax, "__len__") else ax).figure
        except Exception:  # e.g. importances need two finished trials: skip that plot
            continue
    return figures
