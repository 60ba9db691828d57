"""The paper's regression metrics (as in MISA/MMSA/SATI, with F1 arguments in the correct order).

Keys (prefixed ``<split>/``):
- ``mae``, ``corr`` (Pearson);
- ``acc2_has0``, ``f1_has0``: negative (<0) vs non-negative (>=0), all samples;
- ``acc2_non0``, ``f1_non0``: negative vs positive, samples with label 0 excluded (a prediction of
  exactly 0 counts as negative);
- ``acc7``: both clipped to [-3, 3] and rounded half-to-even; ``acc5``: clipped to [-2, 2].
F1 is weighted by the support of the true classes.
"""

from __future__ import annotations

import numpy as np

PAPER_METRICS = ("mae", "corr", "acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7", "acc5")
# The direction in which each metric improves.
HIGHER_IS_BETTER = {
    "mae": False,
    "corr": True,
    "acc2_has0": True,
    "acc2_non0": True,
    "f1_has0": True,
    "f1_non0": True,
    "acc7": True,
    "acc5": True,
}


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Support-weighted F1 over the classes present in ``y_true`` (binary or multi-class labels)."""
    classes, support = np.unique(y_true, return_counts=True)
    if len(classes) == 0:
        return float("nan")
    tp = np.array([np.sum((y_true == c) & (y_pred == c)) for c in classes], dtype=float)
    pred_pos = np.array([np.sum(y_pred == c) for c in classes], dtype=float)
    denom = support + pred_pos
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(np.sum(f1 * support) / support.sum())


def _acc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b)) if len(a) else float("nan")


def regression_metrics(pred: np.ndarray, label: np.ndarray, prefix: str = "") -> dict[str, float]:
    """pred, label: [N] sentiment scores → the paper's metrics under ``<prefix>/<name>`` keys."""
    pred = np.asarray(pred, dtype=np.float64).ravel()
    label = np.asarray(label, dtype=np.float64).ravel()
    if pred.shape != label.shape or len(pred) == 0:
        raise ValueError(f"need equal, non-empty prediction and label arrays, got {pred.shape} and {label.shape}")
    nz = label != 0
    corr = float("nan")  # undefined for a constant prediction or label (whatever round-off np.corrcoef leaves)
    if np.ptp(pred) > 0 and np.ptp(label) > 0:
        corr = float(np.corrcoef(pred, label)[0, 1])
    values = {
        "mae": float(np.mean(np.abs(pred - label))),
        "corr": corr,
        "acc2_has0": _acc(label >= 0, pred >= 0),
        "f1_has0": weighted_f1(label >= 0, pred >= 0),
        "acc2_non0": _acc(label[nz] > 0, pred[nz] > 0),
        "f1_non0": weighted_f1(label[nz] > 0, pred[nz] > 0),
        "acc7": _acc(np.round(np.clip(label, -3, 3)), np.round(np.clip(pred, -3, 3))),
        "acc5": _acc(np.round(np.clip(label, -2, 2)), np.round(np.clip(pred, -2, 2))),
    }
    p = f"{prefix}/" if prefix else ""
    return {p + k: v for k, v in values.items()}


def is_improvement(new: float, best: float | None, mode: str) -> bool:
    """True when ``new`` beats ``best`` in ``mode`` ('min' or 'max'); ties do not count."""
    if best is None or np.isnan(best):
        return not np.isnan(new)
    return new < best if mode == "min" else new > best


def format_table(metrics: dict[str, float], splits: list[str]) -> str:
    """A Markdown table: one row per split, the paper's metrics as columns (accuracies in %)."""
    head = "| split | MAE | Corr | Acc-2 (has0/non0) | F1 (has0/non0) | Acc-7 | Acc-5 |"
    rows = [head, "|" + "---|" * 7]
    for s in splits:
        g = lambda k, s=s: metrics.get(f"{s}/{k}", float("nan"))
        rows.append(
            f"| {s} | {g('mae'):.3f} | {g('corr'):.3f} | {100 * g('acc2_has0'):.2f}/{100 * g('acc2_non0'):.2f} "
            f"| {100 * g('f1_has0'):.2f}/{100 * g('f1_non0'):.2f} | {100 * g('acc7'):.2f} | {100 * g('acc5'):.2f} |"
        )
    return "\n".join(rows)
