"""The MLflow contract: every run tag, version tag and parameter name sati writes or reads.

Runs say what they are in tag ``sati.role`` (``Role``) and nest with MLflow's own
``mlflow.parentRunId``: a search's trials, its confirmation round and its promotions hang under the
search run. Model versions carry their evidence as tags, written and read through ``Evidence``.
No other module spells a ``sati.*`` name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

# MLflow's own tags
EXPERIMENT_KIND = "mlflow.experimentKind"  # experiment tag: which view the UI opens
MODEL_TRAINING_KIND = "custom_model_development"  # the runs table and charts (not the GenAI traces view)
PARENT_RUN = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"


class Role(str, Enum):
    """What a run is (tag ``sati.role``)."""

    SEARCH = "search"
    TRIAL = "trial"
    CONFIRM = "confirm"
    PROMOTION = "promotion"
    EVALUATION = "evaluation"
    REPRODUCTION = "reproduction"  # `sati reproduce`: variants × seeds, the paper's tables
    RERUN = "rerun"  # `sati reproduce --rerun`: one run trained again, nested under it
    SIMULATION = "simulation"  # `sati simulate`: strategies compared on a replayed recording


# Run tags
ROLE = "sati.role"
SEARCH_DIR = "sati.search_dir"  # search: where Tune keeps its experiment state
GIT_COMMIT = "sati.git_commit"
DATA_CHECKSUM = "sati.data_checksum"
DATA_PATH = "sati.data_path"
SELECTION_METRIC = "sati.selection_metric"  # search: the validation metric trials are ranked by
SELECTION_MODE = "sati.selection_mode"  # search: min or max
MODEL_NAME = "sati.model_name"  # search: the pipeline's registry.model_name; promotion: the model
TRIAL_ID = "sati.trial_id"  # trial: Ray Tune's trial id
TRIAL_STATUS = "sati.trial_status"  # trial: finished, stopped or failed
FAILURE_REASON = "sati.failure_reason"
NODE_ID = "sati.node_id"  # trial: the Ray node it ran on last
NODES = "sati.nodes"  # trial: every Ray node it ran on, comma-separated
BEST_TRIAL_RUN = "sati.best_trial_run_id"  # search
BEST = "sati.best"  # trial: "true" on the search's best trial
EPOCHS = "sati.epochs"  # trial: epochs it trained
STOPPED_REASON = "sati.stopped_reason"  # search: why it ran fewer trials than asked (a budget)
PIPELINE_FILES = "sati.pipeline_files"  # search: the pipeline file and the files it extends, in merge order
CHECKPOINT_URI = "sati.checkpoint_uri"  # trial: its best.pt in the search's storage (Tune's checkpoint)
CHECKPOINT_EPOCH = "sati.checkpoint_epoch"  # trial: the epoch of its newest checkpoint Tune holds (resumes after it)
CANDIDATE_RUN = "sati.candidate_run_id"  # confirmation trial: the search trial it retrains
CANDIDATE = "sati.candidate"  # confirmation trial: the candidate's index
SEED = "sati.seed"  # confirmation trial
CHOSEN_RUN = "sati.chosen_run_id"  # confirm run: the seed run that was registered
SEARCH_RUN = "sati.search_run_id"  # confirm run, model version: the search it came from
SPLIT = "sati.split"  # evaluation
MODEL_URIS = "sati.model_uris"  # evaluation
MODEL_VERSION = "sati.model_version"  # evaluation of one registered version
VARIANT = "sati.variant"  # reproduction trial: full, no_til, no_gate, no_adversarial or text_only
REPLAY_SHA256 = "sati.replay_sha256"  # simulation: the recording it replayed
REPRODUCTION_SOURCE = "sati.reproduction_source"  # reproduction: the pipeline, model URI or run it started from
RERUN_OF = "sati.rerun_of"  # rerun: the run it trains again
RERUN_MATCH = "sati.rerun_match"  # rerun: exact, within tolerance, or differs (per-epoch metrics)
RERUN_FORCED_DATA = "sati.rerun_forced.data_checksum"  # rerun with --force: recorded → now
RERUN_FORCED_CODE = "sati.rerun_forced.git_commit"  # rerun with --force: recorded → now
_VERSION_PREFIX = "sati.version."  # search: library versions
_SAMPLED_PREFIX = "sampled."  # search trial: the values Optuna sampled

# Model-version tags besides the evidence
CHECK = "sati.check"  # the reload check's outcome
MANIFEST_SHA256 = "sati.manifest_sha256"  # sha256 of the manifest JSON (sati.tracking.manifest); written last
_MANIFEST_PART_PREFIX = "sati.manifest."  # + 0, 1, ...: the manifest JSON in parts of at most 5000 characters
GATE = "sati.gate"  # the champion gate's decision and reason
ROLLED_BACK = "sati.rolled_back"
_EVALUATION_PREFIX = "sati.evaluation."  # + split: the evaluation run of this version

# Registered-model tag
CHAMPION_HISTORY = "sati.champion_history"  # JSON list of the versions that were champion, oldest first

# Parameters read back from runs
PARAM_SELECTION_METRIC = "train.selection_metric"
PARAM_SELECTION_MODE = "train.selection_mode"
PARAM_MODEL_NAME = "registry.model_name"
_LEGACY_METRIC_PARAMS = ("search.metric", "search.mode")  # searches logged before train.selection_metric
CONFIRM_PARAMS = ("candidates", "seeds", "metric")
EVALUATION_PARAMS = ("models", "noise", "drop", "split", "samples")
REPRODUCTION_PARAMS = ("reproduction.source", "reproduction.variants", "reproduction.seeds", "reproduction.noise")


def version_tag(package: str) -> str:
    """Search tag holding ``package``'s version."""
    return _VERSION_PREFIX + package


def versions_from_tags(tags: dict[str, str]) -> dict[str, str]:
    """``{package: version}`` from a search run's version tags (``version_tag``)."""
    return {k.removeprefix(_VERSION_PREFIX): v for k, v in tags.items() if k.startswith(_VERSION_PREFIX)}


def sampled_tag(key: str) -> str:
    """Search-trial tag holding the sampled value of config key ``key``."""
    return _SAMPLED_PREFIX + key


def manifest_part_tag(index: int) -> str:
    """Model-version tag holding part ``index`` (0, 1, ...) of the version's manifest JSON."""
    return f"{_MANIFEST_PART_PREFIX}{index}"


def evaluation_tag(split: str) -> str:
    """Model-version tag holding the run id of its evaluation on ``split``."""
    return _EVALUATION_PREFIX + split


def selection_objective(tags: dict[str, str], params: dict[str, str]) -> tuple[str | None, str | None]:
    """(metric, mode) a search ranked its trials by: its tags, else its logged parameters (older
    searches logged ``search.metric`` and ``search.mode``)."""
    if tags.get(SELECTION_METRIC):
        return tags[SELECTION_METRIC], tags.get(SELECTION_MODE)
    metric = params.get(PARAM_SELECTION_METRIC) or params.get(_LEGACY_METRIC_PARAMS[0])
    mode = params.get(PARAM_SELECTION_MODE) or params.get(_LEGACY_METRIC_PARAMS[1])
    return metric, mode


def search_model_name(tags: dict[str, str], params: dict[str, str]) -> str | None:
    """The registered-model name a search's pipeline names, or None."""
    name = tags.get(MODEL_NAME) or params.get(PARAM_MODEL_NAME)
    return None if name in (None, "", "None") else name


@dataclass(frozen=True)
class Confirmation:
    """How a configuration fared when retrained with fresh seeds (``sati promote --seeds``)."""

    confirm_run_id: str
    source_trial_run_id: str  # the search trial whose configuration was retrained
    mean: float
    std: float
    score: float  # mean + std (minimized metric) or mean − std (maximized)
    seeds: int


@dataclass(frozen=True)
class Evidence:
    """Why a model version exists: where it was trained and selected, on what, and how well.

    It travels as model-version tags (``to_tags``/``from_tags``); the gate compares two of them.
    """

    search_run_id: str
    search_name: str
    trial_run_id: str
    metric: str  # the validation metric it was selected by
    mode: str
    value: float  # that metric at the checkpoint's epoch
    epoch: int
    data_checksum: str
    data_name: str
    text_encoder: str
    git_commit: str
    torch: str
    valid_metrics: dict[str, float] = field(default_factory=dict)  # every valid/* of the checkpoint
    confirmation: Confirmation | None = None

    def to_tags(self) -> dict[str, str]:
        tags = {
            SEARCH_RUN: self.search_run_id,
            "sati.search_name": self.search_name,
            "sati.trial_run_id": self.trial_run_id,
            "sati.valid_metric": self.metric,
            "sati.valid_mode": self.mode,
            "sati.valid_value": repr(float(self.value)),
            "sati.epoch": str(self.epoch),
            DATA_CHECKSUM: self.data_checksum,
            "sati.data_name": self.data_name,
            "sati.text_encoder": self.text_encoder,
            GIT_COMMIT: self.git_commit,
            "sati.torch": self.torch,
        }
        tags.update({f"sati.{k}": f"{v:.6g}" for k, v in self.valid_metrics.items()})
        c = self.confirmation
        if c is not None:
            tags.update(
                {
                    "sati.confirm_run_id": c.confirm_run_id,
                    "sati.source_trial_run_id": c.source_trial_run_id,
                    "sati.valid_mean": f"{c.mean:.6g}",
                    "sati.valid_std": f"{c.std:.6g}",
                    "sati.valid_score": f"{c.score:.6g}",
                    "sati.seeds": str(c.seeds),
                }
            )
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Evidence:
        """The evidence of a version; fields a version lacks are empty (a value of NaN)."""

        def num(key: str) -> float:
            try:
                return float(tags[key])
            except (KeyError, ValueError):
                return math.nan

        confirmation = None
        if tags.get("sati.confirm_run_id"):
            confirmation = Confirmation(
                confirm_run_id=tags["sati.confirm_run_id"],
                source_trial_run_id=tags.get("sati.source_trial_run_id", ""),
                mean=num("sati.valid_mean"),
                std=num("sati.valid_std"),
                score=num("sati.valid_score"),
                seeds=int(num("sati.seeds")) if math.isfinite(num("sati.seeds")) else 0,
            )
        return cls(
            search_run_id=tags.get(SEARCH_RUN, ""),
            search_name=tags.get("sati.search_name", ""),
            trial_run_id=tags.get("sati.trial_run_id", ""),
            metric=tags.get("sati.valid_metric", ""),
            mode=tags.get("sati.valid_mode", ""),
            value=num("sati.valid_value"),
            epoch=int(num("sati.epoch")) if math.isfinite(num("sati.epoch")) else 0,
            data_checksum=tags.get(DATA_CHECKSUM, ""),
            data_name=tags.get("sati.data_name", ""),
            text_encoder=tags.get("sati.text_encoder", ""),
            git_commit=tags.get(GIT_COMMIT, ""),
            torch=tags.get("sati.torch", ""),
            valid_metrics={k[len("sati.") :]: num(k) for k in tags if k.startswith("sati.valid/")},
            confirmation=confirmation,
        )


def evaluation_tags(split: str, data_checksum: str, data_path: str, model_uris: list[str], version: Any) -> dict:
    """Tags of an evaluation run; ``version`` is ``(model name, version)`` for one registered version."""
    tags = {SPLIT: split, DATA_CHECKSUM: data_checksum, DATA_PATH: data_path, MODEL_URIS: " ".join(model_uris)}
    if version is not None:
        tags.update({MODEL_NAME: version[0], MODEL_VERSION: str(version[1])})
    return tags
