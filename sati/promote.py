"""``sati promote``: from a finished search to a checked, registered model version with aliases.

Each step finishes before the next one writes to the registry:

1. ``select``: rank the search's finished trials by its validation metric (``best/<metric>``; never
   test). Retraining the top ones with fresh seeds is ``sati.search.retrain`` (the CLI runs it
   between the two steps); this module starts no Ray;
2. ``promote``: download the chosen checkpoint and check that the data file is the one the search
   validated on; log it as an MLflow pyfunc model and register a new version with its ``Evidence``;
3. record the version's file manifest (``sati.tracking.manifest``) and load the version back from the
   registry, verified against it: it must reproduce the logged validation metric, or the version is
   deleted again and nothing is promoted;
4. ``gate``: ``champion`` moves to the new version only if it beats the current champion by
   ``min_delta`` (the old one becomes ``previous-champion``); otherwise it becomes ``challenger``. A
   version registered before, gated again, and the version a rollback makes champion have their files
   verified first.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from sati.selection import better, rank_trials
from sati.tracking import contract, registry
from sati.tracking.contract import Confirmation, Evidence
from sati.tracking.registry import CHALLENGER, CHAMPION, PREVIOUS, RegistryError
from sati.tracking.searches import download_checkpoint, find_searches, finished_trials
from sati.tracking.store import RunInfo, TrackingStore


class PromotionError(RegistryError):
    """Promotion stopped; the registry is as it was before."""


@dataclass(frozen=True)
class Selection:
    """The searches promotion draws from, their shared objective and their ranked finished trials."""

    searches: dict[str, RunInfo]  # by run id
    metric: str
    mode: str
    model_name: str
    ranked: list[tuple[RunInfo, float]]  # (trial, best/<metric>), best first

    def search_of(self, store: TrackingStore, trial: RunInfo) -> RunInfo:
        """The search a trial belongs to (for a confirmation trial: its candidate's search)."""
        parent = trial.tags.get(contract.PARENT_RUN)
        if parent in self.searches:
            return self.searches[parent]
        candidate = store.run(trial.tags[contract.CANDIDATE_RUN])
        return self.searches[candidate.tags[contract.PARENT_RUN]]


@dataclass
class PromotionResult:
    model_name: str
    version: str
    alias: str  # champion | challenger
    reason: str
    evidence: Evidence


# --------------------------------------------------------------------------------------------
# Decisions (pure)


def gate(new: Evidence, champion: Evidence | None, champion_version: str | None, min_delta: float) -> tuple[bool, str]:
    """Whether the new version becomes champion, and why (or why not)."""
    metric, mode, value = new.metric, new.mode, new.value
    if champion is None:
        return True, "no champion yet"
    if champion.metric != metric or champion.value != champion.value:
        return False, (
            f"champion v{champion_version} was not selected on {metric} "
            f"(its evidence names {champion.metric or 'no metric'!r}): not comparable"
        )
    if champion.data_checksum != new.data_checksum:
        return (
            False,
            f"champion v{champion_version} was validated on other data (data checksum differs): not comparable",
        )
    old = champion.value
    if better(value, old, mode, min_delta):
        return True, f"{metric} {value:.4f} beats champion v{champion_version}'s {old:.4f} (min-delta {min_delta:g})"
    return False, (
        f"{metric} {value:.4f} does not beat champion v{champion_version}'s {old:.4f} "
        f"by more than min-delta {min_delta:g} ({'lower' if mode == 'min' else 'higher'} is better)"
    )


def _objective(searches: list[RunInfo]) -> tuple[str, str]:
    pairs = {contract.selection_objective(s.tags, s.params) for s in searches}
    if len(pairs) != 1 or None in next(iter(pairs)):
        described = ", ".join(f"{s.name}: {contract.selection_objective(s.tags, s.params)}" for s in searches)
        raise PromotionError(
            f"the searches do not share one validation metric and mode: {described}; promote one search by its run id"
        )
    return next(iter(pairs))


# --------------------------------------------------------------------------------------------
# Promotion


def select(store: TrackingStore, source: str, model_name: str | None = None) -> Selection:
    """The finished trials of ``source`` (a search run id, or an experiment name: every finished
    search in it), ranked by the searches' shared validation metric."""
    searches = find_searches(store, source)
    metric, mode = _objective(searches)
    model_name = model_name or contract.search_model_name(searches[0].tags, searches[0].params)
    if not model_name:
        raise PromotionError("give --model-name (the search's pipeline sets no registry.model_name)")
    trials = finished_trials(store, [s.run_id for s in searches])
    ranked = rank_trials(trials, metric, mode)
    if not ranked:
        raise PromotionError(
            f"no finished trial with a finite {metric} in "
            + ", ".join(f"search {s.name} ({s.run_id})" for s in searches)
        )
    return Selection({s.run_id: s for s in searches}, metric, mode, model_name, ranked)


def promote(
    store: TrackingStore,
    selection: Selection,
    *,
    chosen: tuple[RunInfo, float] | None = None,
    confirmation: Confirmation | None = None,
    min_delta: float = 0.0,
    tolerance: float = 1e-3,
    data: str | None = None,
    console: Callable[[str], None] = print,
) -> PromotionResult:
    """Register and gate ``chosen`` (default: the best-ranked trial); module docstring, steps 2-4."""
    trial, value = chosen or selection.ranked[0]
    name, metric = selection.model_name, selection.metric
    search = selection.search_of(store, trial)
    console(f"candidate: trial run {trial.run_id} ({trial.name}), {metric} = {value:.4f}")
    existing = registry.version_of_run(store, name, trial.run_id)
    if existing is not None and contract.MANIFEST_SHA256 not in existing.tags:
        console(
            f"{name} v{existing.version} has no file manifest (registered before sati recorded one): registering again"
        )
        existing = None
    if existing is not None:  # registered before: do not register it twice, only gate it again
        evidence = Evidence.from_tags(dict(existing.tags))
        if CHAMPION in existing.aliases:
            console(f"trial run {trial.run_id} is already {name} v{existing.version}, the champion")
            return PromotionResult(name, str(existing.version), CHAMPION, "already champion", evidence)
        console(f"trial run {trial.run_id} is already {name} v{existing.version}; gating that version")
        registry.verify_version(store, name, str(existing.version))  # its files are still as registered
        return _apply_gate(store, name, str(existing.version), evidence, min_delta, console)
    with tempfile.TemporaryDirectory(prefix="sati-promote-") as tmp:
        version, evidence = _register_checked(
            store, selection, search, trial, confirmation, data, tolerance, Path(tmp), console
        )
    return _apply_gate(store, name, version, evidence, min_delta, console)


def _register_checked(
    store: TrackingStore,
    selection: Selection,
    search: RunInfo,
    trial: RunInfo,
    confirmation: Confirmation | None,
    data: str | None,
    tolerance: float,
    tmp: Path,
    console: Callable[[str], None],
) -> tuple[str, Evidence]:
    """Steps 2-3 of the module docstring; returns the new version and its evidence."""
    from sati.data.h5format import read_split, verify_checksum
    from sati.predictor import SATIPredictor, export_text_encoder
    from sati.provenance import versions

    name, metric = selection.model_name, selection.metric
    checkpoint = download_checkpoint(store, trial.run_id, tmp / "checkpoint")
    predictor = SATIPredictor(checkpoint, device="cpu")
    data_path = data or predictor.cfg.data.path
    checksum = verify_checksum(data_path)  # recomputed from the contents: an edited file is caught here
    searched_on = search.tags.get(contract.DATA_CHECKSUM, "?")
    if checksum != searched_on:
        raise PromotionError(
            f"{data_path}: data checksum {checksum[:12]}… differs from the one search "
            f"{search.run_id} validated on ({searched_on[:12]}…); pass --data with the search's dataset file"
        )
    valid = read_split(data_path, "valid")  # promotion reads the validation split only
    logged = {k: float(v) for k, v in predictor.metrics.items() if k.startswith("valid/")}
    if metric not in logged:
        raise PromotionError(f"{checkpoint}: the checkpoint's metrics have no {metric}")
    evidence = Evidence(
        search_run_id=search.run_id,
        search_name=search.name,
        trial_run_id=trial.run_id,
        metric=metric,
        mode=selection.mode,
        value=logged[metric],
        epoch=predictor.epoch,
        data_checksum=checksum,
        data_name=Path(predictor.cfg.data.path).name,
        text_encoder=predictor.cfg.model.text_encoder,
        git_commit=search.tags.get(contract.GIT_COMMIT, "unknown"),
        torch=versions()["torch"],
        valid_metrics=logged,
        confirmation=confirmation,
    )
    example, signature = _signature(predictor, valid)
    text_dir = None
    if not predictor.precomputed:
        # a frozen encoder the checkpoint leaves out travels with the model, unless a pinned package ships it
        encoder = predictor.cfg.model.text_encoder
        text_dir = export_text_encoder(
            encoder, tmp / "text_encoder", weights=predictor.frozen is not None and not encoder.startswith("package:")
        )
    config = tmp / "config.yaml"  # for people: the model reads the config inside the checkpoint
    config.write_text(yaml.safe_dump(predictor.cfg.to_dict(), sort_keys=False))
    version, created = registry.log_and_register(
        store,
        search=search,
        trial=trial,
        run_name=f"promote-{name}",
        checkpoint=checkpoint,
        config=config,
        text_encoder=text_dir,
        input_example=example,
        signature=signature,
        pip_requirements=_requirements(predictor.cfg.model.text_encoder),
        model_name=name,
        evidence=evidence,
    )
    v = str(version.version)
    try:
        # every file of the version as the artifact store holds it: verified before every load
        registry.record_manifest(store, name, v, predictor.cfg.model.text_encoder)
        check = _reproduce(store, f"models:/{name}/{v}", valid, logged, metric, tolerance, predictor.precision)
    except BaseException:
        registry.delete_version(store, name, v, drop_model=created)
        raise
    registry.set_version_tags(store, name, v, {contract.CHECK: check})
    registry.add_to_description(store, name, v, f"Reload check: {check}.")
    console(f"registered {name} version {v}; reload check: {check}")
    return v, evidence


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


def _requirements(text_encoder: str) -> list[str]:
    """Pinned requirements of the registered model; a ``package:`` text encoder's distribution too."""
    from importlib.metadata import packages_distributions, version

    dists = ["torch", "transformers", "tokenizers", "numpy", "pandas", "h5py", "PyYAML", "mlflow"]
    if text_encoder.startswith("package:"):
        dists += packages_distributions().get(text_encoder.split(":", 1)[1].split(".")[0], [])[:1]
    pins = []
    for dist in dists:
        try:
            pins.append(f"{dist}=={version(dist).split('+')[0]}")
        except Exception:
            pins.append(dist)
    return pins


# bf16 keeps 8 significant bits (relative step 2^-8 ≈ 0.004); over the encoder and fusion layers a
# prediction can move by a few times that, and the validation metrics with it.
BF16_METRIC_TOLERANCE = 0.02


def reload_tolerance(trained: str | None, reloaded: str, tolerance: float) -> tuple[float, str]:
    """The tolerance for a model trained in ``trained`` precision and checked in ``reloaded``, and a
    sentence saying how it was checked."""
    if trained in (None, reloaded):
        return tolerance, f"checked in {reloaded}, as trained"
    if trained == "bf16":
        derived = max(tolerance, BF16_METRIC_TOLERANCE)
        return derived, f"trained in bf16, checked in {reloaded} (no such device here): tolerance {derived:g}"
    return tolerance, f"trained in {trained}, checked in {reloaded}"


def _reproduce(
    store: TrackingStore,
    model_uri: str,
    valid,
    logged: dict[str, float],
    metric: str,
    tolerance: float,
    trained_precision: str | None,
) -> str:
    """Reload the registered version and recompute the validation metrics; raise if ``metric`` moved.
    It runs where the registered model loads (CUDA when there is one: the same precision as training)."""
    from sati.devices import effective_precision
    from sati.metrics import regression_metrics

    predictor = registry.load_registered(store, model_uri)
    reloaded = effective_precision(predictor.device, predictor.cfg.train.precision)
    tolerance, how = reload_tolerance(trained_precision, reloaded, tolerance)
    redone = regression_metrics(predictor.predict_arrays(valid), valid.labels, "valid")
    differ = {k: (v, redone[k]) for k, v in logged.items() if k in redone and abs(v - redone[k]) > tolerance}
    if metric in differ:
        detail = ", ".join(f"{k}: logged {a:.6f}, reloaded {b:.6f}" for k, (a, b) in differ.items())
        raise PromotionError(
            f"{model_uri} does not reproduce its validation metrics within {tolerance:g} "
            f"({detail}; {how}); nothing was promoted and the version was deleted"
        )
    return f"reproduced {metric} = {redone[metric]:.6f} (logged {logged[metric]:.6f}, tolerance {tolerance:g}; {how})"


def _apply_gate(
    store: TrackingStore, name: str, version: str, evidence: Evidence, min_delta: float, console: Callable[[str], None]
) -> PromotionResult:
    champion = registry.version_by_alias(store, name, CHAMPION)
    champion_evidence = Evidence.from_tags(dict(champion.tags)) if champion else None
    wins, reason = gate(evidence, champion_evidence, str(champion.version) if champion else None, min_delta)
    if wins:
        history = registry.champion_history(store, name) or ([str(champion.version)] if champion else [])
        registry.set_champion_history(store, name, [*history, version])
        registry.set_alias(store, name, PREVIOUS, str(champion.version) if champion else None)
        registry.set_alias(store, name, CHAMPION, version)
        alias = CHAMPION
    else:
        registry.set_alias(store, name, CHALLENGER, version)
        alias = CHALLENGER
    registry.set_version_tags(store, name, version, {contract.GATE: f"{alias}: {reason}"})
    registry.add_to_description(store, name, version, f"Gate: **{alias}**, {reason}.")
    console(f"{name} v{version} is now '{alias}': {reason}")
    return PromotionResult(name, version, alias, reason, evidence)


def rollback(store: TrackingStore, model_name: str, console: Callable[[str], None] = print) -> str:
    """Move ``champion`` back to the version before it; returns the new champion's version."""
    registry.require_model(store, model_name)
    current = registry.version_by_alias(store, model_name, CHAMPION)
    history = registry.champion_history(store, model_name)
    if current is not None and (not history or history[-1] != str(current.version)):
        history = [v for v in history if v != str(current.version)] + [str(current.version)]
    if len(history) < 2:
        previous = registry.version_by_alias(store, model_name, PREVIOUS)
        if previous is None:
            raise PromotionError(f"registered model {model_name!r} has no previous champion to roll back to")
        history = [str(previous.version)] + history[-1:]
    rolled = history.pop()
    registry.verify_version(store, model_name, history[-1])  # the champion-to-be's files are as registered
    registry.set_champion_history(store, model_name, history)
    registry.set_alias(store, model_name, CHAMPION, history[-1])
    registry.set_alias(store, model_name, PREVIOUS, history[-2] if len(history) > 1 else None)
    registry.set_version_tags(store, model_name, rolled, {contract.ROLLED_BACK: time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    console(f"{model_name}: champion rolled back from v{rolled} to v{history[-1]}")
    return history[-1]
