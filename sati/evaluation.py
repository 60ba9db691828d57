"""`sati evaluate` and `sati predict`: models on a dataset split, the paper's table, robustness rows.

Conditions (table rows): ``clean``; ``noise σ`` adds N(0, σ²) to every real audio and video step
(the paper's Table III); ``drop m`` removes modality m (audio or video: features zeroed and the modality
marked absent for every sample, as a dataset file without it marks it; text: replaced by empty strings).
The noise is seeded, so a row is repeatable and equal across models. With several models (e.g. one per
seed) each cell is mean ± std over the models.

Metric keys: ``<split>/<metric>`` for the clean row, ``<split>/noise0.5/<metric>``,
``<split>/drop_audio/<metric>`` for the others; ``..._std`` beside each with several models.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sati.data.h5format import MODALITIES, SplitArrays, with_absent
from sati.metrics import PAPER_METRICS, regression_metrics
from sati.predictor import SATIPredictor
from sati.tables import paper_latex, paper_markdown
from sati.tracking.store import TrackingStore


@dataclass(frozen=True)
class Condition:
    """One table row: the clean split, Gaussian noise on audio and video, or one modality removed."""

    noise: float = 0.0
    drop: str | None = None

    @property
    def key(self) -> str:
        return f"noise{self.noise:g}" if self.noise else (f"drop_{self.drop}" if self.drop else "")

    @property
    def label(self) -> str:
        return f"noise σ={self.noise:g}" if self.noise else (f"drop {self.drop}" if self.drop else "clean")


def conditions(noise: list[float], drop: list[str]) -> list[Condition]:
    """The clean row first, then one row per noise level and per dropped modality."""
    for sigma in noise:
        if not sigma > 0:
            raise ValueError(f"--noise {sigma}: the noise standard deviation must be > 0")
    for m in drop:
        if m not in MODALITIES:
            raise ValueError(f"--drop {m}: expected one of {', '.join(MODALITIES)}")
    return [Condition()] + [Condition(noise=s) for s in noise] + [Condition(drop=m) for m in drop]


def perturb(arrays: SplitArrays, condition: Condition, seed: int = 0) -> SplitArrays:
    """The split as ``condition`` sees it (a copy; padding stays zero)."""
    if condition.noise:
        rng = np.random.default_rng(seed)
        real = (np.arange(arrays.audio.shape[1])[None, :] < arrays.lengths[:, None])[..., None]  # [N, T, 1]
        audio = arrays.audio + condition.noise * rng.standard_normal(arrays.audio.shape, dtype=np.float32) * real
        video = arrays.video + condition.noise * rng.standard_normal(arrays.video.shape, dtype=np.float32) * real
        return replace(arrays, audio=audio.astype(np.float32), video=video.astype(np.float32))
    if condition.drop in ("audio", "video"):
        return with_absent(arrays, (condition.drop,))
    if condition.drop == "text":
        feats = None if arrays.text_features is None else np.zeros_like(arrays.text_features)
        return replace(arrays, text=[""] * len(arrays), text_features=feats)
    return arrays


def evaluate_models(
    predictors: list[SATIPredictor], arrays: SplitArrays, split: str, conds: list[Condition]
) -> dict[Condition, list[dict[str, float]]]:
    """Each model's paper metrics under each condition, keyed ``<split>/<metric>``."""
    out = {}
    for cond in conds:
        seen = perturb(arrays, cond)
        out[cond] = [regression_metrics(p.predict_arrays(seen), arrays.labels, split) for p in predictors]
    return out


def summarize(results: dict[Condition, list[dict[str, float]]], split: str) -> dict[str, float]:
    """Flat metrics for MLflow: the mean over models, and ``_std`` with several models."""
    flat = {}
    for cond, per_model in results.items():
        prefix = f"{split}/{cond.key}/" if cond.key else f"{split}/"
        for m in PAPER_METRICS:
            values = np.array([r[f"{split}/{m}"] for r in per_model])
            flat[prefix + m] = float(values.mean())
            if len(values) > 1:
                flat[prefix + m + "_std"] = float(values.std(ddof=1))
    return flat


def conditions_markdown(results: dict[Condition, list[dict[str, float]]], split: str) -> str:
    """The paper's table, one row per condition (accuracies and F1 in %)."""
    return paper_markdown({cond.label: runs for cond, runs in results.items()}, split)


def conditions_latex(results: dict[Condition, list[dict[str, float]]], split: str, caption: str) -> str:
    """The same table as a booktabs LaTeX ``table``."""
    return paper_latex({cond.label: runs for cond, runs in results.items()}, split, caption)


# --------------------------------------------------------------------------------------------
# Loading any model


def load_predictor(store: TrackingStore, model_uri: str) -> SATIPredictor:
    """A model by URI: a registered version (``models:/name@alias``, ``models:/name/3``, or
    ``runs:/<trial run id>/model``: the version registered from that trial), loaded only after its files
    are verified against its manifest; ``runs:/<trial run id>`` (its ``checkpoint/best.pt``); or a ``.pt``
    file. Checkpoints are read with ``weights_only`` and run no code of their own."""
    from sati.tracking.registry import load_registered
    from sati.tracking.searches import download_checkpoint

    if model_uri.endswith(".pt") and Path(model_uri).is_file():
        return SATIPredictor(model_uri)
    m = re.match(r"^runs:/([0-9a-f]{32})/?(checkpoint/best\.pt)?$", model_uri)
    if m:
        with tempfile.TemporaryDirectory(prefix="sati-eval-") as tmp:
            return SATIPredictor(download_checkpoint(store, m.group(1), tmp))
    return load_registered(store, model_uri)
