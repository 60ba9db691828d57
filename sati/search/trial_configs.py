"""From a Tune trial's config to the pipeline it trains: what a trial *is* differs per round.

Each class maps ``trial_config`` (what Tune hands the trainable) to ``(PipelineConfig, tags)``, the
tags going on the trial's MLflow run. They are plain picklable objects; nothing here imports Ray.
Trials get their pipeline without ``search.study_storage`` (``trial_pipeline``): only the driver holds
the Optuna study, and its URL may carry a database password, which would otherwise be in every
trial's params, ``rerun.json`` and checkpoint.
"""

from __future__ import annotations

from typing import Any

from sati.config import PipelineConfig, from_dict
from sati.tracking import contract


def trial_pipeline(pipeline: dict[str, Any]) -> dict[str, Any]:
    """``pipeline`` as a trial gets it: without the study storage URL (module docstring)."""
    return {**pipeline, "search": {**pipeline.get("search", {}), "study_storage": None}}


class SampledPipelines:
    """Search trials: the base pipeline with the sampled ``{dotted key: value}`` applied."""

    def __init__(self, base: dict[str, Any]):
        self.base = trial_pipeline(base)

    def __call__(self, trial_config: dict[str, Any]) -> tuple[PipelineConfig, dict[str, str]]:
        sampled = {k: v for k, v in trial_config.items() if "." in k}
        cfg = from_dict(self.base, "search pipeline").replace(sampled, source="sampled trial")
        return cfg, {contract.sampled_tag(k): str(v) for k, v in sampled.items()}


class ReseededPipelines:
    """Confirmation trials: candidate ``i``'s resolved pipeline retrained with a fresh seed."""

    def __init__(self, bases: list[dict[str, Any]], source_runs: list[str]):
        self.bases, self.source_runs = [trial_pipeline(b) for b in bases], source_runs

    def __call__(self, trial_config: dict[str, Any]) -> tuple[PipelineConfig, dict[str, str]]:
        i, seed = int(trial_config["candidate"]), int(trial_config["seed"])
        cfg = from_dict(self.bases[i], f"candidate {self.source_runs[i]}").replace({"seed": seed})
        tags = {contract.CANDIDATE_RUN: self.source_runs[i], contract.CANDIDATE: str(i), contract.SEED: str(seed)}
        return cfg, tags


class VariantPipelines:
    """Reproduction trials: the base pipeline with variant ``v``'s overrides (``{dotted key: value}``,
    its ablation switches) and seed ``s``; seed s of every variant is paired with seed s of the others."""

    def __init__(self, base: dict[str, Any], variants: dict[str, dict[str, Any]]):
        self.base, self.variants = trial_pipeline(base), variants

    def __call__(self, trial_config: dict[str, Any]) -> tuple[PipelineConfig, dict[str, str]]:
        variant, seed = str(trial_config["variant"]), int(trial_config["seed"])
        cfg = from_dict(self.base, "reproduction pipeline").replace(
            {**self.variants[variant], "seed": seed}, source=f"variant {variant}"
        )
        return cfg, {contract.VARIANT: variant, contract.SEED: str(seed)}
