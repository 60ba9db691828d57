"""`sati promote`: from a finished search to a checked, registered model version with aliases.

Each step finishes before the next one writes to the registry:

1. rank the search's finished trials by its validation metric (``best/<metric>``; never test);
2. optionally retrain the top ``top_k`` configurations with ``seeds`` fresh seeds each (Ray trials
   under a "confirm" run) and keep the one with the best pessimistic score, mean − std (mean + std
   for metrics that are minimized), so that a lucky seed does not win;
3. download the checkpoint and check that the data file is the one the search validated on;
4. log it as an MLflow pyfunc model and register a new version with the evidence as tags;
5. load that version back from the registry: it must reproduce the logged validation metric, or the
   version is deleted again and nothing is promoted;
6. gate: ``champion`` moves to the new version only if it beats the current champion by
   ``min_delta`` (the old one becomes ``previous-champion``); otherwise it becomes ``challenger``.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from sati import registry
from sati.registry import RegistryError, RunInfo

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous-champion", "challenger"


class PromotionError(RegistryError):
    """Promotion stopped; the registry is as it was before."""


@dataclass
class PromotionResult:
    model_name: str
    version: str
    alias: str  # champion | challenger
    reason: str
    tags: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Decisions (pure)


def better(new: float, old: float, mode: str, min_delta: float = 0.0) -> bool:
    """``new`` beats ``old`` by more than ``min_delta`` in direction ``mode`` (ties never win)."""
    return new < old - min_delta if mode == "min" else new > old + min_delta


def pessimistic_score(values: list[float], mode: str) -> tuple[float, float, float]:
    """(mean, sample std, score): score = mean − std when maximizing, mean + std when minimizing."""
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return mean, std, mean + std if mode == "min" else mean - std


def rank_trials(trials: list[RunInfo], metric: str, mode: str) -> list[tuple[RunInfo, float]]:
    """Trials with a finite ``best/<metric>``, best first."""
    scored = [(t, t.metrics.get(f"best/{metric}", float("nan"))) for t in trials]
    scored = [(t, v) for t, v in scored if math.isfinite(v)]
    return sorted(scored, key=lambda tv: tv[1], reverse=mode == "max")


def gate(
    new_tags: dict[str, str], champion_tags: dict[str, str] | None, champion_version: str | None, min_delta: float
) -> tuple[bool, str]:
    """Whether the new version becomes champion, and why (or why not)."""
    metric, mode, value = (
        new_tags["sati.valid_metric"],
        new_tags["sati.valid_mode"],
        float(new_tags["sati.valid_value"]),
    )
    if champion_tags is None:
        return True, "no champion yet"
    old = champion_tags.get("sati.valid_value")
    if champion_tags.get("sati.valid_metric") != metric or old is None:
        return False, (
            f"champion v{champion_version} was not selected on {metric} "
            f"(its tag sati.valid_metric = {champion_tags.get('sati.valid_metric')!r}): not comparable"
        )
    if champion_tags.get("sati.data_checksum") != new_tags["sati.data_checksum"]:
        return (
            False,
            f"champion v{champion_version} was validated on other data (data checksum differs): not comparable",
        )
    if better(value, float(old), mode, min_delta):
        return (
            True,
            f"{metric} {value:.4f} beats champion v{champion_version}'s {float(old):.4f} (min-delta {min_delta:g})",
        )
    return False, (
        f"{metric} {value:.4f} does not beat champion v{champion_version}'s {float(old):.4f} "
        f"by more than min-delta {min_delta:g} ({'lower' if mode == 'min' else 'higher'} is better)"
    )


# --------------------------------------------------------------------------------------------
# Promotion


def _objective(searches: list[RunInfo]) -> tuple[str, str]:
    pairs = {(s.params.get("search.metric"), s.params.get("search.mode")) for s in searches}
    if len(pairs) != 1 or None in next(iter(pairs)):
        raise PromotionError(
            "the searches do not share one validation metric and mode: "
            + ", ".join(f"{s.name}: {s.params.get('search.metric')} ({s.params.get('search.mode')})" for s in searches)
            + "; promote one search by its run id"
        )
    return next(iter(pairs))


def promote(
    source: str,
    model_name: str | None,
    *,
    uri: str,
    top_k: int = 1,
    seeds: int = 0,
    min_delta: float = 0.0,
    tolerance: float = 1e-3,
    data: str | None = None,
    address: str | None = None,
    console: Callable[[str], None] = print,
) -> PromotionResult:
    """Promote the best trial of ``source`` (a search run id or an experiment name); module docstring."""
    if top_k < 1 or seeds < 0:
        raise PromotionError(f"--top-k must be >= 1 and --seeds >= 0, got {top_k} and {seeds}")
    if top_k > 1 and seeds == 0:
        raise PromotionError("--top-k K compares K configurations by retraining them: give --seeds N too")
    searches = registry.find_searches(uri, source)
    metric, mode = _objective(searches)
    model_name = model_name or searches[0].params.get("registry.model_name")
    if not model_name or model_name == "None":
        raise PromotionError("give --model-name (the search's pipeline sets no registry.model_name)")
    ranked = rank_trials(registry.finished_trials(uri, [s.run_id for s in searches]), metric, mode)
    if not ranked:
        raise PromotionError(
            f"no finished trial with a finite {metric} in "
            + ", ".join(f"search {s.name} ({s.run_id})" for s in searches)
        )
    by_id = {s.run_id: s for s in searches}
    with tempfile.TemporaryDirectory(prefix="sati-promote-") as tmp:
        tmp = Path(tmp)
        evidence: dict[str, str] = {}
        chosen, value = ranked[0]
        if seeds:
            chosen, value, evidence = _confirm(uri, by_id, ranked[:top_k], seeds, metric, mode, address, tmp, console)
        search = _search_of(uri, chosen, by_id)
        console(f"candidate: trial run {chosen.run_id} ({chosen.name}), {metric} = {value:.4f}")
        existing = registry.version_of_run(uri, model_name, chosen.run_id)
        if existing is not None:  # registered before: do not register it twice, only gate it again
            if CHAMPION in existing.aliases:
                console(f"trial run {chosen.run_id} is already {model_name} v{existing.version}, the champion")
                return PromotionResult(
                    model_name, str(existing.version), CHAMPION, "already champion", dict(existing.tags)
                )
            console(f"trial run {chosen.run_id} is already {model_name} v{existing.version}; gating that version")
            return _apply_gate(uri, model_name, str(existing.version), dict(existing.tags), min_delta, console)
        version, tags = _register_checked(
            uri, model_name, search, chosen, metric, mode, evidence, data, tolerance, tmp, console
        )
    return _apply_gate(uri, model_name, version, tags, min_delta, console)


def _search_of(uri: str, trial: RunInfo, searches: dict[str, RunInfo]) -> RunInfo:
    """The search a trial belongs to (for a confirmation trial: its candidate's search)."""
    if trial.tags.get(registry.PARENT) in searches:
        return searches[trial.tags[registry.PARENT]]
    return searches[registry.get_run(uri, trial.tags["sati.candidate_run_id"]).tags[registry.PARENT]]


def _register_checked(
    uri: str,
    model_name: str,
    search: RunInfo,
    chosen: RunInfo,
    metric: str,
    mode: str,
    evidence: dict[str, str],
    data: str | None,
    tolerance: float,
    tmp: Path,
    console: Callable[[str], None],
) -> tuple[str, dict[str, str]]:
    """Steps 3-5 of the module docstring; returns the new version and its tags."""
    from sati.data.h5format import read_info, read_split
    from sati.predictor import SATIPredictor, export_text_encoder

    checkpoint = registry.download_checkpoint(uri, chosen.run_id, tmp / "checkpoint")
    predictor = SATIPredictor(checkpoint, device="cpu")
    data_path = data or predictor.cfg.data.path
    checksum = read_info(data_path).checksum
    if checksum != search.tags.get("sati.data_checksum"):
        raise PromotionError(
            f"{data_path}: data checksum {checksum[:12]}… differs from the one search "
            f"{search.run_id} validated on ({search.tags.get('sati.data_checksum', '?')[:12]}…); "
            "pass --data with the search's dataset file"
        )
    valid = read_split(data_path, "valid")  # promotion reads the validation split only
    logged = {k: float(v) for k, v in predictor.metrics.items() if k.startswith("valid/")}
    if metric not in logged:
        raise PromotionError(f"{checkpoint}: the checkpoint's metrics have no {metric}")
    tags = _evidence(search, chosen, predictor, metric, mode, checksum, evidence)
    example, signature = _signature(predictor, valid)
    text_dir = (
        None if predictor.precomputed else export_text_encoder(predictor.cfg.model.text_encoder, tmp / "text_encoder")
    )
    config = tmp / "config.yaml"  # for people: the model reads the config inside the checkpoint
    config.write_text(yaml.safe_dump(predictor.cfg.to_dict(), sort_keys=False))
    version, created = registry.log_and_register(
        uri,
        search=search,
        run_name=f"promote-{model_name}",
        checkpoint=checkpoint,
        config=config,
        text_encoder=text_dir,
        input_example=example,
        signature=signature,
        pip_requirements=_requirements(),
        model_name=model_name,
        version_tags=tags,
    )
    v = str(version.version)
    try:
        check = _reproduce(uri, f"models:/{model_name}/{v}", valid, logged, metric, tolerance)
    except BaseException:
        registry.delete_version(uri, model_name, v, drop_model=created)
        raise
    registry.set_version_tags(uri, model_name, v, {"sati.check": check})
    console(f"registered {model_name} version {v}; reload check: {check}")
    return v, tags


def _evidence(
    search: RunInfo, chosen: RunInfo, predictor, metric: str, mode: str, checksum: str, extra: dict[str, str]
) -> dict[str, str]:
    from sati.checkpoint import versions

    tags = {
        "sati.search_run_id": search.run_id,
        "sati.search_name": search.name,
        "sati.trial_run_id": chosen.run_id,
        "sati.valid_metric": metric,
        "sati.valid_mode": mode,
        "sati.valid_value": repr(predictor.metrics[metric]),
        "sati.epoch": str(predictor.epoch),
        "sati.data_checksum": checksum,
        "sati.data_name": Path(predictor.cfg.data.path).name,
        "sati.text_encoder": predictor.cfg.model.text_encoder,
        "sati.git_commit": search.tags.get("sati.git_commit", "unknown"),
        "sati.torch": versions()["torch"],
        **extra,
    }
    tags.update({f"sati.{k}": f"{v:.6g}" for k, v in predictor.metrics.items() if k.startswith("valid/")})
    return tags


def _signature(predictor, valid):
    """Two validation samples as the input example, and the signature inferred from them."""
    import warnings

    from mlflow.models import infer_signature

    from sati.predictor import arrays_to_frame

    example = arrays_to_frame(valid, limit=2)
    if predictor.precomputed:
        example = example.drop(columns=["text"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*integer column.*")  # class7 is never missing
        return example, infer_signature(example, predictor.predict_frame(example))


def _requirements() -> list[str]:
    from importlib.metadata import version

    pins = []
    for dist in ("torch", "transformers", "tokenizers", "numpy", "pandas", "h5py", "PyYAML", "mlflow"):
        try:
            pins.append(f"{dist}=={version(dist).split('+')[0]}")
        except Exception:
            pins.append(dist)
    return pins


def _reproduce(uri: str, model_uri: str, valid, logged: dict[str, float], metric: str, tolerance: float) -> str:
    """Reload the registered version and recompute the validation metrics; raise if ``metric`` moved."""
    from sati.metrics import regression_metrics

    predictor = registry.load_registered(uri, model_uri)
    redone = regression_metrics(predictor.predict_arrays(valid), valid.labels, "valid")
    differ = {k: (v, redone[k]) for k, v in logged.items() if k in redone and abs(v - redone[k]) > tolerance}
    if metric in differ:
        detail = ", ".join(f"{k}: logged {a:.6f}, reloaded {b:.6f}" for k, (a, b) in differ.items())
        raise PromotionError(
            f"{model_uri} does not reproduce its validation metrics within {tolerance:g} "
            f"({detail}); nothing was promoted and the version was deleted"
        )
    return f"reproduced {metric} = {redone[metric]:.6f} (logged {logged[metric]:.6f}, tolerance {tolerance:g})"


def _apply_gate(
    uri: str, name: str, version: str, tags: dict[str, str], min_delta: float, console: Callable[[str], None]
) -> PromotionResult:
    champion = registry.version_by_alias(uri, name, CHAMPION)
    wins, reason = gate(
        tags, dict(champion.tags) if champion else None, str(champion.version) if champion else None, min_delta
    )
    if wins:
        history = registry.champion_history(uri, name) or ([str(champion.version)] if champion else [])
        registry.set_champion_history(uri, name, history + [version])
        registry.set_alias(uri, name, PREVIOUS, str(champion.version) if champion else None)
        registry.set_alias(uri, name, CHAMPION, version)
        alias = CHAMPION
    else:
        registry.set_alias(uri, name, CHALLENGER, version)
        alias = CHALLENGER
    registry.set_version_tags(uri, name, version, {"sati.gate": f"{alias}: {reason}"})
    console(f"{name} v{version} is now '{alias}': {reason}")
    return PromotionResult(name, version, alias, reason, tags)


def rollback(model_name: str, *, uri: str, console: Callable[[str], None] = print) -> str:
    """Move ``champion`` back to the version before it; returns the new champion's version."""
    registry.require_model(uri, model_name)
    current = registry.version_by_alias(uri, model_name, CHAMPION)
    history = registry.champion_history(uri, model_name)
    if current is not None and (not history or history[-1] != str(current.version)):
        history = [v for v in history if v != str(current.version)] + [str(current.version)]
    if len(history) < 2:
        previous = registry.version_by_alias(uri, model_name, PREVIOUS)
        if previous is None:
            raise PromotionError(f"registered model {model_name!r} has no previous champion to roll back to")
        history = [str(previous.version)] + history[-1:]
    rolled = history.pop()
    registry.set_champion_history(uri, model_name, history)
    registry.set_alias(uri, model_name, CHAMPION, history[-1])
    registry.set_alias(uri, model_name, PREVIOUS, history[-2] if len(history) > 1 else None)
    registry.set_version_tags(uri, model_name, rolled, {"sati.rolled_back": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    console(f"{model_name}: champion rolled back from v{rolled} to v{history[-1]}")
    return history[-1]


# --------------------------------------------------------------------------------------------
# Confirmation with fresh seeds


def _confirm(
    uri: str,
    searches: dict[str, RunInfo],
    candidates: list[tuple[RunInfo, float]],
    n_seeds: int,
    metric: str,
    mode: str,
    address: str | None,
    tmp: Path,
    console: Callable[[str], None],
):
    """Retrain each candidate with ``n_seeds`` fresh seeds on Ray; pick by the pessimistic score.

    Returns (the chosen configuration's best seed run, its value, evidence tags)."""
    from sati.checkpoint import load_checkpoint
    from sati.config import from_dict
    from sati.search.runner import import_tune
    from sati.seeding import derive_seed
    from sati.tracking import TrialRuns

    bases = []
    for trial, _ in candidates:
        ckpt = registry.download_checkpoint(uri, trial.run_id, tmp / "candidates" / trial.run_id)
        bases.append(load_checkpoint(ckpt)["config"])
    first = from_dict(bases[0], f"candidate {candidates[0][0].run_id}")
    seeds = [derive_seed(first.seed, "confirm", j) for j in range(n_seeds)]
    search = searches[candidates[0][0].tags[registry.PARENT]]
    confirm_id = registry.start_confirm_run(uri, search, [t for t, _ in candidates], seeds, metric)
    console(f"confirming {len(candidates)} configuration(s) × {n_seeds} seed(s) on Ray: MLflow run {confirm_id}")
    sati_tune = import_tune(address or first.search.ray_address)
    started = sati_tune.init_ray(address or first.search.ray_address)
    try:
        sati_tune.build_confirm_tuner(
            first,
            bases,
            [t.run_id for t, _ in candidates],
            seeds,
            f"{search.name}-confirm-{time.strftime('%Y%m%d-%H%M%S')}",
            TrialRuns(uri, confirm_id),
        ).fit()
    except BaseException:
        registry.log_confirm_summary(uri, confirm_id, [], None)
        raise
    finally:
        if started:
            sati_tune.shutdown_ray()
    runs = rank_trials(registry.finished_trials(uri, [confirm_id]), metric, mode)
    rows, best = [], None
    for trial, search_value in candidates:
        own = [(r, v) for r, v in runs if r.tags.get("sati.candidate_run_id") == trial.run_id]
        if not own:
            rows.append(
                {
                    "candidate": trial.run_id,
                    "search_value": search_value,
                    "seeds": 0,
                    "mean": float("nan"),
                    "std": float("nan"),
                    "score": float("nan"),
                }
            )
            continue
        mean, std, score = pessimistic_score([v for _, v in own], mode)
        rows.append(
            {
                "candidate": trial.run_id,
                "search_value": search_value,
                "seeds": len(own),
                "mean": mean,
                "std": std,
                "score": score,
            }
        )
        if best is None or better(score, best[1]["score"], mode):
            best = (own[0], rows[-1])  # own is ranked: its first run is the best seed
    registry.log_confirm_summary(uri, confirm_id, rows, best[0][0].run_id if best else None)
    console(
        "\n".join(
            f"  {r['candidate']}: search {metric} {r['search_value']:.4f}; {r['seeds']} seeds "
            f"{r['mean']:.4f} ± {r['std']:.4f}, score {r['score']:.4f}"
            for r in rows
        )
    )
    if best is None:
        raise PromotionError(f"no confirmation trial finished (MLflow run {confirm_id}); nothing was promoted")
    (run, value), row = best
    seed_runs = " ".join(
        f"runs:/{r.run_id}" for r, _ in runs if r.tags.get("sati.candidate_run_id") == row["candidate"]
    )
    console(
        f"chosen by {'mean + std' if mode == 'min' else 'mean − std'}: configuration of {row['candidate']} "
        f"({row['mean']:.4f} ± {row['std']:.4f}); registering its best seed, run {run.run_id}\n"
        f"all its seeds on the test split: sati evaluate {seed_runs} --split test"
    )
    return (
        run,
        value,
        {
            "sati.confirm_run_id": confirm_id,
            "sati.source_trial_run_id": row["candidate"],
            "sati.valid_mean": f"{row['mean']:.6g}",
            "sati.valid_std": f"{row['std']:.6g}",
            "sati.valid_score": f"{row['score']:.6g}",
            "sati.seeds": str(row["seeds"]),
        },
    )
