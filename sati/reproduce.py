"""``sati reproduce``: the paper's Tables I–III from one configuration, over seeds, with significance.

From a configuration (a pipeline file, a registered model's or a trial run's resolved config) every
**variant** is trained with the same **seeds** as Ray trials under one MLflow run (``sati.role`` =
reproduction; ``sati.search.reproduction``):

- ``full``: SATI as configured, every component on;
- ``no_til``: without temporal-invariance learning (β = 0), ``no_gate``: both streams ungated,
  ``no_adversarial``: no discriminator and no γ term (the paper's Table II);
- ``text_only``: the same text encoder, fusion Transformer and head with audio and video removed.

Each trial selects its checkpoint on the validation split (``train.selection_metric``); that checkpoint
is then evaluated once on the test split: clean, with Gaussian noise of each ``--noise`` σ on audio and
video (Table III), and with each modality dropped. Each trial's per-sample test predictions
(``predictions/test.csv``) and test metrics go to its own run; the tables (Markdown and LaTeX, mean ±
std over seeds, each with a footnote), the differences of every variant against ``full`` on every
column (``sati.statistics.compare_table``: a 95 % interval carrying seed and test-set variability,
P(improvement) and Holm's correction over the table), and a dot plot of the seeds go to a local folder
and to the reproduction's run (``sati.reproduce_report``). A resumed reproduction reads the predictions
already stored instead of evaluating those checkpoints again.

Seeds: ``--seeds N`` seeds derived from the configuration's own seed, never that seed itself: the
source's hyperparameters were chosen on a run of it, which would favour ``full``.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sati.config import ConfigError, PipelineConfig, flatten, from_dict, load_pipeline, parse_overrides
from sati.data.h5format import SplitArrays
from sati.evaluation import Condition, conditions, perturb, summarize
from sati.metrics import regression_metrics
from sati.reproduce_report import REFERENCE, SPLIT, TABLES, Predictions, Results, TestSet, build_report, description
from sati.seeding import derive_seed
from sati.statistics import RESAMPLES
from sati.tracking.store import RunInfo, TrackingError, TrackingStore

_ALL_ON = {"ablation.til": True, "ablation.gate": True, "ablation.adversarial": True, "ablation.text_only": False}
VARIANTS: dict[str, dict[str, Any]] = {  # name → config overrides; every variant sets all four switches
    "full": _ALL_ON,
    "no_til": {**_ALL_ON, "ablation.til": False},
    "no_gate": {**_ALL_ON, "ablation.gate": False},
    "no_adversarial": {**_ALL_ON, "ablation.adversarial": False},
    "text_only": {**_ALL_ON, "ablation.text_only": True},
}
DROPPED = ("text", "audio", "video")  # Table III drops each modality in turn
RUN_ID = re.compile(r"[0-9a-f]{32}")


class ReproductionError(ConfigError):
    """A request that cannot be reproduced as asked (a variant, seed count, noise level or source)."""


class ReproductionInterrupted(RuntimeError):
    """Training stopped before every trial ended (Ctrl-C); Tune saved its state for ``--resume``."""


@dataclass(frozen=True)
class Request:
    """What to reproduce: variants (``full`` first), how many seeds, and the test conditions."""

    variants: list[str]
    seeds: int
    conditions: list[Condition]

    @property
    def noise(self) -> list[float]:
        return [c.noise for c in self.conditions if c.noise]


def parse_request(variants: str | None, seeds: int, noise: list[float] | None) -> Request:
    """Check the request before anything is read or started; ``variants`` is comma-separated (None: all).
    ``full`` is always trained: every other variant is compared with it."""
    names = [v.strip() for v in (variants or ",".join(VARIANTS)).split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise ReproductionError(
            f"--variants {variants!r}: unknown variant {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"expected a comma-separated subset of {', '.join(VARIANTS)}"
        )
    if seeds < 1:
        raise ReproductionError(f"--seeds {seeds}: need at least 1 seed (2+ for a test, 5 for the paper's tables)")
    noise = [0.5] if noise is None else noise
    for sigma in noise:
        if not sigma >= 0:
            raise ReproductionError(f"--noise {sigma}: a noise standard deviation cannot be below 0")
    conds = conditions([s for s in noise if s > 0], list(DROPPED))
    ordered = [REFERENCE] + [v for v in VARIANTS if v in names and v != REFERENCE]
    return Request(ordered, seeds, conds)


def reproduction_seeds(base: int, n: int) -> list[int]:
    """``n`` distinct seeds derived from the configuration's own seed ``base``, none equal to it: the
    source's hyperparameters were chosen on a run of that seed, so a run on it would favour ``full``."""
    seeds: list[int] = []
    j = 0
    while len(seeds) < n:
        j += 1
        seed = derive_seed(base, "reproduce", j)
        if seed != base and seed not in seeds:
            seeds.append(seed)
    return seeds


# --------------------------------------------------------------------------------------------
# Where the configuration comes from


def config_of_run(store: TrackingStore, run_id: str) -> dict[str, Any]:
    """A trained run's resolved config: its ``rerun.json``, else its best checkpoint's."""
    from sati.checkpoint import load_checkpoint
    from sati.tracking.reproductions import read_rerun_record
    from sati.tracking.searches import download_checkpoint

    store.run(run_id)  # an unknown id is refused here, naming it
    record = read_rerun_record(store, run_id)
    if record is not None:
        return record["config"]
    with tempfile.TemporaryDirectory(prefix="sati-reproduce-") as tmp:
        return load_checkpoint(download_checkpoint(store, run_id, tmp))["config"]


def resolve_source(
    source: str, overrides: list[str], tracking_uri: str | None
) -> tuple[PipelineConfig, TrackingStore, str]:
    """(config, tracking store, what it came from) for a pipeline file, ``models:/NAME@ALIAS`` or
    ``models:/NAME/N`` (the config in the version's checkpoint, its files verified), or a trial run id.
    A registered model or run is read from ``tracking_uri`` and the reproduction is logged there too; a
    pipeline's own ``tracking.uri`` holds unless ``tracking_uri`` is given."""
    if source.startswith("models:/"):
        from sati.tracking.registry import describe_model_uri, verified_config

        store = TrackingStore.open(tracking_uri)
        try:
            described = describe_model_uri(store, source)
        except TrackingError:
            raise
        except Exception as err:  # an unknown version number
            raise TrackingError(f"{source}: no such registered model version at {store.uri} ({err})") from None
        if not described:
            raise ReproductionError(f"{source}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        # the config inside the version's own checkpoint, its files verified against the version's manifest
        # (its trial run's artifacts are the search's to write, not the registry's)
        raw = verified_config(store, source)
        what = f"{source} ({described['name']} v{described['version']}, trial run {described['run_id'] or '?'})"
    elif RUN_ID.fullmatch(source) and not Path(source).exists():
        store = TrackingStore.open(tracking_uri)
        raw, what = config_of_run(store, source), f"run {source}"
    else:
        cfg = load_pipeline(source, overrides)
        if tracking_uri:
            cfg = cfg.replace({"tracking.uri": tracking_uri})
        return cfg, TrackingStore.open(cfg.tracking.uri), source
    cfg = from_dict(raw, what).replace({**parse_overrides(overrides), "tracking.uri": store.uri}, f"{what} (--set)")
    return cfg, store, what


def check_data(cfg: PipelineConfig) -> tuple[PipelineConfig, str]:
    """The config with absolute local paths, and its data file's checksum; a file without a test split
    (or without train and valid) is refused, naming it."""
    from sati.data.h5format import list_splits, read_info
    from sati.data.loaders import ensure_dataset
    from sati.search.runner import _absolute

    ensure_dataset(cfg)
    splits = list_splits(cfg.data.path)
    missing = [s for s in ("train", "valid", SPLIT) if s not in splits]
    if missing:
        raise ReproductionError(
            f"data.path = {cfg.data.path}: no {' or '.join(missing)} split (it holds {', '.join(splits) or 'none'}); "
            "a reproduction trains on train, selects on valid and evaluates on test"
        )
    return _absolute(cfg), read_info(cfg.data.path).checksum


# --------------------------------------------------------------------------------------------
# The whole flow


@dataclass
class ReproductionOutcome:
    run_id: str  # the reproduction's MLflow run
    tracking_uri: str
    out_dir: Path
    texts: dict[str, str]  # file name → table text
    results: Results  # variant → seed → condition → metrics
    predictions: Predictions  # variant → seed → condition → [n] test predictions
    labels: np.ndarray  # [n] test labels
    missing: list[tuple[str, int]] = field(default_factory=list)  # (variant, seed) without a finished run


def run_reproduction(
    source: str,
    request: Request,
    *,
    overrides: list[str] | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    out_dir: str | Path | None = None,
    console: Callable[[str], None] = print,
) -> ReproductionOutcome:
    """Train every variant × seed on Ray, evaluate on test, write and log the tables (module docstring).
    Every input is checked before Ray starts."""
    from sati import storage
    from sati.provenance import git_commit, versions
    from sati.search.state import write_search_state
    from sati.search.study import mask_password, shown_pipeline
    from sati.tracking.reproductions import start_reproduction_run
    from sati.tracking.searches import TrialRuns

    cfg, store, what = resolve_source(source, list(overrides or []), tracking_uri)
    if address:
        cfg = cfg.replace({"search.ray_address": address})
    cfg, checksum = check_data(cfg)
    seeds = reproduction_seeds(cfg.seed, request.seeds)
    name = f"{cfg.name}-reproduce-{time.strftime('%Y%m%d-%H%M%S')}"
    directory = storage.join(cfg.search.storage_path, name)
    out = Path(out_dir or Path("reproductions") / name).resolve()
    variants = {v: VARIANTS[v] for v in request.variants}
    console(
        f"reproducing {what}: {len(variants)} variant(s) ({', '.join(variants)}) × {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}) = {len(variants) * len(seeds)} trials"
    )
    commit = git_commit()
    state: dict[str, Any] = {}
    shown = shown_pipeline(cfg)  # no password written anywhere

    def start() -> TrialRuns:
        from sati.tracking import contract

        run_id = start_reproduction_run(
            store,
            cfg.tracking.experiment,
            name=name,
            source=what,
            pipeline=shown,
            params=flatten(shown),
            variants=list(variants),
            seeds=seeds,
            noise=request.noise,
            data_checksum=checksum,
            directory=directory,
            metric=cfg.train.selection_metric,
            mode=cfg.train.selection_direction,
            git_commit=commit,
            versions=versions(),
        )
        state.update(
            kind=contract.Role.REPRODUCTION.value,
            parent_run_id=run_id,
            tracking_uri=mask_password(store.uri),
            pipeline=shown,
            name=name,
            source=what,
            variants=list(variants),
            seeds=seeds,
            noise=request.noise,
            out_dir=str(out),
        )
        write_search_state(directory, state)
        shown_uri = mask_password(store.uri)
        console(f"reproduction {name}: MLflow run {run_id} in experiment '{cfg.tracking.experiment}' at {shown_uri}")
        return TrialRuns(store, run_id, checksum, commit)

    _train(cfg, variants, seeds, name, start, lambda: state.get("parent_run_id"), store, console)
    return finish_reproduction(store, state["parent_run_id"], cfg, request, seeds, out, console)


def resume_reproduction(
    target: str, tracking_uri: str | None = None, console: Callable[[str], None] = print
) -> ReproductionOutcome:
    """Continue an interrupted reproduction from its directory or its MLflow run id: unfinished trials
    train on from their checkpoints, then everything is evaluated and reported. Where it is and every
    pickle and state file of it are checked before Ray starts (``sati.search.target``, MACs)."""
    from sati.search.signed_storage import verify_experiment
    from sati.search.state import STATE_FILE
    from sati.search.target import open_search
    from sati.tracking import contract
    from sati.tracking.reproductions import find_reproduction

    found = open_search(target, tracking_uri, find_reproduction)
    store, state, directory = found.store, found.state, found.search_dir
    if state.get("kind") != contract.Role.REPRODUCTION.value:
        raise ReproductionError(f"{directory}: not a reproduction (its {STATE_FILE} is a search's)")
    verify_experiment(found.storage_path, state["name"])
    cfg = from_dict(state["pipeline"], f"{directory}/{STATE_FILE}").replace({"search.study_storage": None})
    noise = [float(s) for s in state["noise"]]
    request = parse_request(",".join(state["variants"]), len(state["seeds"]), noise)
    parent = found.parent_run_id
    console(f"resuming reproduction {state['name']} (MLflow run {parent}) from {directory}")

    def start() -> None:
        store.reopen_run(parent)

    variants = {v: VARIANTS[v] for v in request.variants}
    _train(cfg, variants, state["seeds"], state["name"], start, lambda: parent, store, console, resume=True)
    return finish_reproduction(store, parent, cfg, request, state["seeds"], Path(state["out_dir"]), console)


def _train(cfg, variants, seeds, name, start, parent_of, store: TrackingStore, console, resume=False) -> None:
    """The Ray part; a reproduction whose training dies marks its run FAILED (``--resume`` reopens it)."""
    from sati import storage
    from sati.search.reproduction import train_variants

    try:
        unfinished = train_variants(
            cfg,
            variants,
            seeds,
            name=name,
            start=start,
            address=cfg.search.ray_address,
            console=console,
            resume=resume,
        )
        if unfinished:
            raise ReproductionInterrupted(
                f"interrupted with {unfinished} trial(s) unfinished; continue with: sati reproduce --resume "
                f"{storage.join(cfg.search.storage_path, name)}"
            )
    except BaseException:
        if parent_of():
            store.end_run(parent_of(), "FAILED")
        raise


def finish_reproduction(
    store: TrackingStore,
    parent: str,
    cfg: PipelineConfig,
    request: Request,
    seeds: list[int],
    out_dir: Path,
    console: Callable[[str], None] = print,
) -> ReproductionOutcome:
    """Evaluate every finished trial's checkpoint on test (or read the predictions an earlier attempt
    stored on its run), then write and log the tables, the differences, the plot and the description."""
    from sati.data.h5format import read_info, read_split
    from sati.search.study import mask_password
    from sati.tracking.reproductions import log_reproduction_summary, log_test_metrics, variant_runs

    runs = variant_runs(store, parent)
    expected = [(v, s) for v in request.variants for s in seeds]
    missing = [key for key in expected if key not in runs]
    arrays = read_split(cfg.data.path, SPLIT)
    console(
        f"evaluating {len(expected) - len(missing)} checkpoint(s) on {cfg.data.path} ({SPLIT}, {len(arrays)} samples)"
    )
    results: Results = {v: {} for v in request.variants}
    predictions: Predictions = {v: {} for v in request.variants}
    for variant, seed in expected:
        if (variant, seed) not in runs:
            continue
        run = runs[(variant, seed)]
        by_condition = predict_test_split(store, run, arrays, request.conditions)
        metrics = {c: regression_metrics(p, arrays.labels, SPLIT) for c, p in by_condition.items()}
        log_test_metrics(store, run.run_id, summarize({c: [m] for c, m in metrics.items()}, SPLIT))
        results[variant][seed], predictions[variant][seed] = metrics, by_condition

    test_set = TestSet(f"{read_info(cfg.data.path).name} {SPLIT}", len(arrays))
    report = build_report(results, predictions, arrays.labels, request.conditions, test_set, cfg.seed, RESAMPLES)
    note = description(cfg.name, report, request.variants, seeds, missing)
    out_dir.mkdir(parents=True, exist_ok=True)
    for file, text in report.texts.items():
        (out_dir / file).write_text(text)
    (out_dir / "metrics.json").write_text(json.dumps(report.metrics, indent=2))
    report.figure.savefig(out_dir / "seeds.png", bbox_inches="tight", dpi=110)
    log_reproduction_summary(
        store,
        parent,
        texts={f"tables/{f}": t for f, t in report.texts.items()},
        figures={"plots/seeds.png": report.figure},
        metrics=report.metrics,
        note=note,
        status="FINISHED" if len(missing) < len(expected) else "FAILED",
    )
    console("\n".join(f"{title}\n\n{report.texts[f]}" for f, title in TABLES.items() if f in report.texts))
    if missing:
        console(f"note: no finished run for {', '.join(f'{v} seed {s}' for v, s in missing)}; left out of the tables")
    console(f"tables: {out_dir}/\nMLflow run: {parent} at {mask_password(store.uri)}")
    return ReproductionOutcome(parent, store.uri, out_dir, report.texts, results, predictions, arrays.labels, missing)


def _column(cond: Condition) -> str:
    """A condition's column in ``predictions/test.csv``."""
    return cond.key or "clean"


def predict_test_split(
    store: TrackingStore, run: RunInfo, arrays: SplitArrays, conds: list[Condition]
) -> dict[Condition, np.ndarray]:
    """One trial's best checkpoint (chosen on validation) under every test condition: [n] float64 per
    condition, logged on its run (``predictions/test.csv``). Predictions already stored there for these
    samples, labels and conditions (an earlier, interrupted evaluation) are read instead. A condition that
    leaves the input as it was (dropping a modality the data lacks: zeros, marked absent already) reuses
    the predictions."""
    import pandas as pd

    from sati.predictor import SATIPredictor
    from sati.tracking.reproductions import log_test_predictions, read_test_predictions
    from sati.tracking.searches import download_checkpoint

    labels = np.asarray(arrays.labels, dtype=np.float64)
    stored = read_test_predictions(store, run.run_id)
    if (
        stored is not None
        and {_column(c) for c in conds} <= set(stored.columns)
        and stored["id"].tolist() == [str(i) for i in arrays.ids]
        and np.array_equal(stored["label"].to_numpy(), labels)
    ):
        return {c: stored[_column(c)].to_numpy() for c in conds}
    with tempfile.TemporaryDirectory(prefix="sati-reproduce-") as tmp:
        predictor = SATIPredictor(download_checkpoint(store, run.run_id, tmp))
    out: dict[Condition, np.ndarray] = {}
    seen: list[tuple[SplitArrays, np.ndarray]] = []
    for cond in conds:
        view = perturb(arrays, cond)
        pred = next((p for other, p in seen if _same_input(other, view)), None)
        if pred is None:
            pred = np.asarray(predictor.predict_arrays(view), dtype=np.float64)
            seen.append((view, pred))
        out[cond] = pred
    frame = pd.DataFrame({"id": [str(i) for i in arrays.ids], "label": labels} | {_column(c): out[c] for c in conds})
    log_test_predictions(store, run.run_id, frame)
    return out


def _same_input(a: SplitArrays, b: SplitArrays) -> bool:
    def same(x, y) -> bool:
        return (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))

    return (
        a.text == b.text
        and same(a.audio, b.audio)
        and same(a.video, b.video)
        and same(a.text_features, b.text_features)
        and same(a.present, b.present)
    )
