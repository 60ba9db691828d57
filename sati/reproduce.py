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
video (Table III), and with each modality dropped. The tables (Markdown and LaTeX, mean ± std over
seeds), the paired per-seed differences of every variant against ``full`` with a bootstrap interval and
a Wilcoxon p-value (``sati.statistics``), and a dot plot of the seeds go to a local folder and to the
reproduction's run; each trial's test metrics go to its own run.

Seeds: the configuration's own seed first, then seeds derived from it, so with ``--seeds N`` the
``full`` trial of the first seed trains exactly what the source configuration trained.
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
from sati.evaluation import Condition, conditions, evaluate_models, perturb, summarize
from sati.seeding import derive_seed
from sati.statistics import ALPHA, RESAMPLES, compare, smallest_p
from sati.tables import paper_latex, paper_markdown, rows_csv, rows_markdown
from sati.tracking.store import RunInfo, TrackingError, TrackingStore

REFERENCE = "full"
_ALL_ON = {"ablation.til": True, "ablation.gate": True, "ablation.adversarial": True, "ablation.text_only": False}
VARIANTS: dict[str, dict[str, Any]] = {  # name → config overrides; every variant sets all four switches
    "full": _ALL_ON,
    "no_til": {**_ALL_ON, "ablation.til": False},
    "no_gate": {**_ALL_ON, "ablation.gate": False},
    "no_adversarial": {**_ALL_ON, "ablation.adversarial": False},
    "text_only": {**_ALL_ON, "ablation.text_only": True},
}
DROPPED = ("text", "audio", "video")  # Table III drops each modality in turn
COMPARED = (("MAE", "mae", 1), ("Corr", "corr", 1), ("Acc-2 has0", "acc2_has0", 100))
COMPARED += (("Acc-2 non0", "acc2_non0", 100), ("Acc-7", "acc7", 100))  # (title, metric, scale): % points
SPLIT = "test"
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
        raise ReproductionError(f"--seeds {seeds}: need at least 1 seed (5 for the paper's tables, 6+ for p < 0.05)")
    noise = [0.5] if noise is None else noise
    for sigma in noise:
        if not sigma >= 0:
            raise ReproductionError(f"--noise {sigma}: a noise standard deviation cannot be below 0")
    conds = conditions([s for s in noise if s > 0], list(DROPPED))
    ordered = [REFERENCE] + [v for v in VARIANTS if v in names and v != REFERENCE]
    return Request(ordered, seeds, conds)


def reproduction_seeds(base: int, n: int) -> list[int]:
    """The configuration's own seed, then ``n - 1`` seeds derived from it."""
    return [base] + [derive_seed(base, "reproduce", j) for j in range(1, n)]


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
    results: dict[str, dict[int, dict[Condition, dict[str, float]]]]  # variant → seed → condition → metrics
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
    """Evaluate every finished trial's checkpoint on test, then write and log the tables, the paired
    differences, the plot and the description."""
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
    results: dict[str, dict[int, dict[Condition, dict[str, float]]]] = {v: {} for v in request.variants}
    for variant, seed in expected:
        if (variant, seed) not in runs:
            continue
        run = runs[(variant, seed)]
        by_condition = _evaluate_run(store, run, arrays, request.conditions)
        log_test_metrics(store, run.run_id, summarize({c: [m] for c, m in by_condition.items()}, SPLIT))
        results[variant][seed] = by_condition

    data_name = read_info(cfg.data.path).name
    report = build_report(results, request, seeds, f"{data_name} {SPLIT} ({len(arrays)} samples)", cfg.seed)
    note = description(cfg.name, report, request, seeds, missing)
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
    return ReproductionOutcome(parent, store.uri, out_dir, report.texts, results, missing)


def _evaluate_run(
    store: TrackingStore, run: RunInfo, arrays: SplitArrays, conds: list[Condition]
) -> dict[Condition, dict[str, float]]:
    """One trial's best checkpoint (chosen on validation) under every test condition. A condition that
    leaves the input as it was (dropping a modality the data lacks: zeros, marked absent already) reuses those
    metrics."""
    from sati.predictor import SATIPredictor
    from sati.tracking.searches import download_checkpoint

    with tempfile.TemporaryDirectory(prefix="sati-reproduce-") as tmp:
        predictor = SATIPredictor(download_checkpoint(store, run.run_id, tmp))
    out: dict[Condition, dict[str, float]] = {}
    seen: list[tuple[SplitArrays, dict[str, float]]] = []
    for cond in conds:
        view = perturb(arrays, cond)
        metrics = next((m for other, m in seen if _same_input(other, view)), None)
        if metrics is None:
            metrics = evaluate_models([predictor], arrays, SPLIT, [cond])[cond][0]
            seen.append((view, metrics))
        out[cond] = metrics
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


# --------------------------------------------------------------------------------------------
# Tables, differences, plot, description

TABLES = {  # file (Markdown; a .tex twin beside it) → title
    "table1.md": "Table I: SATI and the text-only baseline (test, clean)",
    "table2.md": "Table II: ablations (test, clean)",
    "table3.md": "Table III: robustness (test; Gaussian noise on audio and video, each modality dropped)",
    "differences.md": "Paired differences against full (test, clean)",
}


@dataclass
class Report:
    texts: dict[str, str]  # file name → Markdown, LaTeX or CSV
    metrics: dict[str, float]  # ``<variant>/test/<metric>`` (mean over seeds) and ``…_std``
    figure: Any  # the seeds dot plot (matplotlib)
    rows: list[dict[str, Any]]  # the paired differences, raw numbers


def _per_seed(results, variant: str, cond: Condition) -> list[dict[str, float]]:
    return [by_cond[cond] for _, by_cond in sorted(results[variant].items())]


def build_report(results, request: Request, seeds: list[int], caption: str, bootstrap_seed: int) -> Report:
    """Tables I–III (Markdown and LaTeX, mean ± std over seeds), the paired differences and the plot."""
    clean = request.conditions[0]
    present = [v for v in request.variants if results.get(v)]
    n = len(seeds)
    tables = {
        "table1": {v: _per_seed(results, v, clean) for v in (REFERENCE, "text_only") if v in present},
        "table2": {v: _per_seed(results, v, clean) for v in present},
        "table3": {f"{v}, {c.label}": _per_seed(results, v, c) for v in present for c in request.conditions},
    }
    first = {"table1": "model", "table2": "variant", "table3": "variant, condition"}
    texts = {}
    for key, rows in tables.items():
        title = TABLES[f"{key}.md"]
        texts[f"{key}.md"] = paper_markdown(rows, SPLIT, first[key]) if rows else "(no finished runs)\n"
        if rows:
            texts[f"{key}.tex"] = paper_latex(rows, SPLIT, f"{title}, {caption}, mean ± std over {n} seeds", first[key])
    rows = differences(results, present, clean, bootstrap_seed)
    texts["differences.md"] = differences_markdown(rows)
    texts["differences.csv"] = rows_csv(rows) if rows else ""
    metrics = {}
    for v in present:
        by_cond = {c: _per_seed(results, v, c) for c in request.conditions}
        metrics |= {f"{v}/{k}": value for k, value in summarize(by_cond, SPLIT).items()}
    return Report(texts, metrics, seeds_plot(results, present, clean), rows)


def differences(results, variants: list[str], clean: Condition, bootstrap_seed: int) -> list[dict[str, Any]]:
    """Every variant against ``full``, per compared metric, paired by seed (``sati.statistics.compare``)."""
    if REFERENCE not in variants:
        return []
    rows = []
    for v in variants:
        if v == REFERENCE:
            continue
        for title, key, scale in COMPARED:
            values = {s: m[clean][f"{SPLIT}/{key}"] for s, m in results[v].items()}
            ref = {s: m[clean][f"{SPLIT}/{key}"] for s, m in results[REFERENCE].items()}
            c = compare(values, ref, seed=derive_seed(bootstrap_seed, v, key))
            mark = "*" if c.significant else ("†" if c.interval_excludes_zero else "")
            rows.append(
                {
                    "variant": v,
                    "metric": title,
                    "n": c.n,
                    "difference": c.mean_difference * scale,
                    "ci_low": c.ci_low * scale,
                    "ci_high": c.ci_high * scale,
                    "p": c.p_value,
                    "significant": mark,
                }
            )
    return rows


def differences_markdown(rows: list[dict[str, Any]]) -> str:
    """The paired differences as a Markdown table, with what the marks and units mean."""
    if not rows:
        return f"(no differences: `{REFERENCE}` and at least one other variant need a finished run)\n"
    shown = []
    for r in rows:
        digits = 3 if r["metric"] in ("MAE", "Corr") else 2
        shown.append(
            {
                "variant": r["variant"],
                "metric": r["metric"],
                "seeds": r["n"],
                "Δ (variant − full)": f"{r['difference']:+.{digits}f}",
                "95 % CI": f"[{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]",
                "Wilcoxon p": f"{r['p']:.3g}",
                "sig.": r["significant"],
            }
        )
    n = min(r["n"] for r in rows)
    return rows_markdown(shown) + (
        f"\nΔ: mean over seed pairs of variant − full (MAE and Corr in their units, accuracies in "
        f"percentage points; MAE is better lower, the others higher). 95 % CI: percentile bootstrap over "
        f"seed pairs ({RESAMPLES} resamples, seeded). p: exact two-sided Wilcoxon signed-rank. "
        f"`*` p < {ALPHA}; `†` only the bootstrap interval excludes 0 (every seed moved the same way). "
        f"With {n} seed pair(s) the smallest possible p is {smallest_p(n):.3g}"
        + (": no difference can reach p < 0.05 with fewer than 6 seeds.\n" if smallest_p(n) >= ALPHA else ".\n")
    )


def seeds_plot(results, variants: list[str], clean: Condition):
    """One panel per compared metric: each seed's test value per variant (dots) and their mean (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COMPARED), figsize=(2.6 * len(COMPARED) + 1, 3.8), squeeze=False)
    for ax, (title, key, scale) in zip(axes[0], COMPARED):
        for i, v in enumerate(variants):
            ys = np.array([scale * m[clean][f"{SPLIT}/{key}"] for _, m in sorted(results[v].items())])
            xs = i + (np.linspace(-0.15, 0.15, len(ys)) if len(ys) > 1 else np.zeros(1))
            ax.plot(xs, ys, "o", alpha=0.75, color=f"C{i}")
            ax.hlines(ys.mean(), i - 0.28, i + 0.28, color="black", linewidth=1.5)
        ax.set_xticks(range(len(variants)), variants, rotation=40, ha="right")
        ax.set_title(title + (" (%)" if scale == 100 else ""))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{SPLIT} metrics per seed (dots) and their mean (bar)")
    fig.tight_layout()
    plt.close(fig)
    return fig


def description(name: str, report: Report, request: Request, seeds: list[int], missing) -> str:
    """The reproduction run's Markdown description: what ran, the headline table, the differences."""
    lines = [
        f"## Reproduction of `{name}`: {len(request.variants)} variants × {len(seeds)} seeds",
        "",
        f"Variants: {', '.join(request.variants)}. Seeds: {', '.join(map(str, seeds))}. Each checkpoint is chosen "
        f"on the validation split, then evaluated once on {SPLIT}.",
        "",
        f"### {TABLES['table1.md']}",
        "",
        report.texts["table1.md"],
        f"### {TABLES['differences.md']}",
        "",
        report.texts["differences.md"],
        "Tables II and III (Markdown and LaTeX) are under `tables/`; the seeds per variant in `plots/seeds.png`.",
    ]
    if missing:
        lines += ["", f"Missing (no finished run): {', '.join(f'{v} seed {s}' for v, s in missing)}."]
    return "\n".join(lines) + "\n"
