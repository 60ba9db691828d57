"""``sati.metrics`` against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sati.metrics import PAPER_METRICS, is_improvement, regression_metrics, weighted_f1


def approx(x: float) -> pytest.approx:
    return pytest.approx(x, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# Case A: zero labels and a prediction of exactly 0
#
#   i        0     1     2     3     4     5
#   label  -1.0   0.0   2.0   0.0  -2.0   1.0
#   pred   -0.5   0.0   1.0  -1.0   0.5   0.0
#
# has0 (all samples, ">= 0"):
#   label>=0   F  T  T  T  F  T
#   pred>=0    F  T  T  F  T  T        (pred 0.0 at i=1, 5 counts as non-negative)
#   equal      ✓  ✓  ✓  ✗  ✗  ✓   → acc2_has0 = 4/6
#   F1: class T: tp = {1,2,5} = 3, support 4, predicted 4 → F1 = 2·3/(4+4) = 0.75
#       class F: tp = {0} = 1,     support 2, predicted 2 → F1 = 2·1/(2+2) = 0.5
#       weighted = (4·0.75 + 2·0.5)/6 = 4/6
# non0 (labels 0 dropped → i = 0, 2, 4, 5; "> 0"):
#   label>0    F  T  F  T
#   pred>0     F  T  T  F              (pred 0.0 at i=5 counts as negative)
#   equal      ✓  ✓  ✗  ✗         → acc2_non0 = 2/4   (3/4 if 0 counted as non-negative)
#   F1: class T: tp 1, support 2, predicted 2 → 0.5; class F: tp 1, support 2, predicted 2 → 0.5
#       weighted = 0.5
# MAE = (0.5 + 0 + 1 + 1 + 2.5 + 1)/6 = 1.0
# acc7: round(clip(label)) = -1 0 2 0 -2 1; round(clip(pred)) = -0 0 1 -1 0 0 (−0.5→−0, 0.5→0)
#       equal only at i=1 → 1/6
# acc5: same roundings (nothing beyond ±2) → 1/6

LABEL_A = np.array([-1.0, 0.0, 2.0, 0.0, -2.0, 1.0])
PRED_A = np.array([-0.5, 0.0, 1.0, -1.0, 0.5, 0.0])


def test_zero_labels_and_zero_prediction():
    m = regression_metrics(PRED_A, LABEL_A)
    assert m["acc2_has0"] == approx(4 / 6)
    assert m["f1_has0"] == approx(4 / 6)
    assert m["acc2_non0"] == approx(2 / 4)
    assert m["f1_non0"] == approx(0.5)
    assert m["mae"] == approx(1.0)
    assert m["acc7"] == approx(1 / 6)
    assert m["acc5"] == approx(1 / 6)


def test_all_zero_labels_leave_non0_undefined():
    m = regression_metrics(np.array([0.3, -0.2, 0.0]), np.zeros(3))
    assert math.isnan(m["acc2_non0"]) and math.isnan(m["f1_non0"])
    # has0: labels all non-negative; preds >= 0 at i=0, 2 → 2/3
    assert m["acc2_has0"] == approx(2 / 3)
    # F1 has0: only class T is present in y_true: tp 2, support 3, predicted 2 → 4/5, weight 1
    assert m["f1_has0"] == approx(0.8)


# ------------------------------------------------------------------------------------------------
# Case B: rounding ties and clipping
#
#   i        0     1     2     3     4     5
#   label   0.0   2.0   2.0   3.0  -2.0   0.0
#   pred    0.5   1.5   2.5   3.4  -2.7  -0.5
#
# acc7 (clip to [-3, 3], round half-to-even):
#   pred → 0 (0.5→0), 2 (1.5→2), 2 (2.5→2), 3 (3.4→3), -3 (-2.7→-3), -0 (-0.5→-0 = 0)
#   label→ 0, 2, 2, 3, -2, 0     equal at all but i=4 → 5/6
#   (half-away-from-zero would give 1, 2, 3, 3, -3, -1 → 2/6)
# acc5 (clip to [-2, 2] first):
#   pred → 0, 2, 2 (2.5→2), 2 (3.4→2), -2 (-2.7→-2), 0;  label → 0, 2, 2, 2 (3→2), -2, 0  → 6/6
#   (without clipping: 3.4→3 vs 2 and -2.7→-3 vs -2 would miss → 4/6)


def test_rounding_ties_and_clipping():
    label = np.array([0.0, 2.0, 2.0, 3.0, -2.0, 0.0])
    pred = np.array([0.5, 1.5, 2.5, 3.4, -2.7, -0.5])
    m = regression_metrics(pred, label)
    assert m["acc7"] == approx(5 / 6)
    assert m["acc5"] == approx(1.0)


def test_clipping_of_labels_and_predictions_beyond_range():
    # acc7: pred 3.6 → clip 3 = label 3 ✓; pred -4 → -3 vs label -3 ✓; pred 2.5 → 2 vs label 3 ✗ → 2/3
    # acc5: 3.6 → 2 vs 3 → 2 ✓; -4 → -2 vs -3 → -2 ✓; 2.5 → 2 vs 3 → 2 ✓ → 3/3
    m = regression_metrics(np.array([3.6, -4.0, 2.5]), np.array([3.0, -3.0, 3.0]))
    assert m["acc7"] == approx(2 / 3)
    assert m["acc5"] == approx(1.0)


# ------------------------------------------------------------------------------------------------
# Case C: weighted F1 with imbalanced classes (and its asymmetry)
#
#   y_true  1 1 1 1 1 1 0 0        support: class 1 → 6, class 0 → 2
#   y_pred  1 1 1 1 0 0 1 0        predicted: class 1 → 5, class 0 → 3
#   class 1: tp = 4, precision 4/5, recall 4/6 → F1 = 2·(4/5)(4/6)/((4/5)+(4/6)) = 8/11
#   class 0: tp = 1, precision 1/3, recall 1/2 → F1 = 2·(1/3)(1/2)/((1/3)+(1/2)) = 2/5
#   weighted by y_true support: (6·8/11 + 2·2/5)/8 = (48/11 + 4/5)/8 = 284/440 = 71/110 ≈ 0.64545
#   arguments swapped (weights 5 and 3): (5·8/11 + 3·2/5)/8 = (40/11 + 6/5)/8 = 266/440 ≈ 0.60455

Y_TRUE_C = np.array([1, 1, 1, 1, 1, 1, 0, 0])
Y_PRED_C = np.array([1, 1, 1, 1, 0, 0, 1, 0])


def test_weighted_f1_imbalanced_by_hand():
    assert weighted_f1(Y_TRUE_C, Y_PRED_C) == approx(71 / 110)
    assert weighted_f1(Y_PRED_C, Y_TRUE_C) == approx(266 / 440)  # not symmetric


def test_regression_f1_uses_labels_as_y_true():
    # Case C as scores: label >= 0 ⇔ y_true = 1 (i=3 has label exactly 0), pred >= 0 ⇔ y_pred = 1
    label = np.array([1.2, 0.4, 2.0, 0.0, 0.6, 1.8, -1.0, -2.2])
    pred = np.array([0.8, 1.0, 0.2, 2.6, -0.4, -1.2, 0.6, -0.2])
    m = regression_metrics(pred, label, prefix="test")
    assert m["test/f1_has0"] == approx(71 / 110)  # not 266/440 (swapped order)
    assert m["test/acc2_has0"] == approx(5 / 8)  # 4 + 1 correct
    # non0 drops i=3: y_true 1 1 1 1 1 0 0 (5 vs 2), y_pred 1 1 1 0 0 1 0 (4 vs 3)
    #   class 1: tp 3 → F1 = 2·3/(5+4) = 2/3; class 0: tp 1 → F1 = 2·1/(2+3) = 2/5
    #   weighted = (5·2/3 + 2·2/5)/7 = (10/3 + 4/5)/7 = 62/105
    assert m["test/f1_non0"] == approx(62 / 105)
    assert m["test/acc2_non0"] == approx(4 / 7)


def test_weighted_f1_multiclass_with_unseen_and_unpredicted_classes():
    # y_true 0 0 1 2 2 2, y_pred 0 1 1 1 2 3 (class 3 only predicted, never true → weight 0)
    #   class 0: tp 1, support 2, predicted 1 → 2/3
    #   class 1: tp 1, support 1, predicted 3 → 2/4 = 1/2
    #   class 2: tp 1, support 3, predicted 1 → 2/4 = 1/2
    #   weighted = (2·2/3 + 1·1/2 + 3·1/2)/6 = (4/3 + 2)/6 = 5/9
    assert weighted_f1(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 1, 2, 3])) == approx(5 / 9)


def _f1_by_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Per-class F1 = harmonic mean of precision and recall, read off a confusion matrix built with
    np.add.at, weighted by each class's share of y_true."""
    labels = np.union1d(y_true, y_pred)
    index = {c: i for i, c in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)))
    np.add.at(cm, ([index[c] for c in y_true], [index[c] for c in y_pred]), 1)
    total = 0.0
    for i in range(len(labels)):
        tp, support, predicted = cm[i, i], cm[i, :].sum(), cm[:, i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        total += f1 * support
    return total / len(y_true)


@pytest.mark.parametrize("seed", range(6))
def test_weighted_f1_matches_confusion_matrix_formula(seed):
    rng = np.random.default_rng(seed)
    n, k = rng.integers(5, 60), rng.integers(2, 6)
    y_true = rng.choice(k, size=n, p=rng.dirichlet(np.ones(k)))
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k + 1, size=n))
    assert weighted_f1(y_true, y_pred) == pytest.approx(_f1_by_confusion_matrix(y_true, y_pred), abs=1e-12)
    b_true, b_pred = y_true > 0, y_pred > 0
    assert weighted_f1(b_true, b_pred) == pytest.approx(_f1_by_confusion_matrix(b_true, b_pred), abs=1e-12)


# ------------------------------------------------------------------------------------------------
# Pearson correlation and MAE


def test_pearson_and_mae_by_hand():
    # pred 1 2 3 4 (mean 2.5), label 2 1 4 3 (mean 2.5)
    # deviations: pred -1.5 -0.5 0.5 1.5; label -0.5 -1.5 1.5 0.5
    # Σ products = 0.75 + 0.75 + 0.75 + 0.75 = 3; Σ squares = 5 and 5 → r = 3/5
    # MAE = (1 + 1 + 1 + 1)/4 = 1
    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 1.0, 4.0, 3.0]))
    assert m["corr"] == approx(0.6)
    assert m["mae"] == approx(1.0)
    # perfectly anti-correlated affine predictions: r = -1, MAE = mean |(-2x + 1) − x| = mean |1 − 3x|
    x = np.array([-1.0, 0.0, 2.0])
    m = regression_metrics(-2 * x + 1, x)
    assert m["corr"] == approx(-1.0)
    assert m["mae"] == approx((4 + 1 + 5) / 3)


def test_constant_prediction_has_undefined_correlation():
    m = regression_metrics(np.full(4, 0.5), np.array([1.0, -1.0, 2.0, 0.0]))
    assert math.isnan(m["corr"])
    # a constant whose mean is not exact in floating point (np.corrcoef alone gives 8.9e-17 here)
    assert math.isnan(regression_metrics(np.full(300, 0.7), np.linspace(-3, 3, 300))["corr"])
    assert math.isnan(regression_metrics(np.linspace(-3, 3, 300), np.full(300, 0.7))["corr"])
    assert m["mae"] == approx((0.5 + 1.5 + 1.5 + 0.5) / 4)


# ------------------------------------------------------------------------------------------------
# key naming and input handling


def test_prefixed_keys():
    m = regression_metrics(PRED_A, LABEL_A, prefix="valid")
    assert set(m) == {f"valid/{k}" for k in PAPER_METRICS}
    assert {"valid/mae", "valid/acc2_has0", "valid/acc2_non0", "valid/f1_has0", "valid/acc7"} <= set(m)
    bare = regression_metrics(PRED_A, LABEL_A)
    assert set(bare) == set(PAPER_METRICS)
    assert all(m[f"valid/{k}"] == bare[k] for k in PAPER_METRICS)
    assert all(isinstance(v, float) for v in m.values())


def test_shapes_are_flattened_and_mismatches_refused():
    col = regression_metrics(PRED_A.reshape(-1, 1), LABEL_A.reshape(-1, 1))
    assert col["acc2_non0"] == approx(0.5)
    with pytest.raises(ValueError):
        regression_metrics(PRED_A[:5], LABEL_A)
    with pytest.raises(ValueError):
        regression_metrics(np.array([]), np.array([]))


# ------------------------------------------------------------------------------------------------
# is_improvement


def test_is_improvement_semantics():
    assert is_improvement(0.5, 0.6, "min") and not is_improvement(0.7, 0.6, "min")
    assert is_improvement(0.7, 0.6, "max") and not is_improvement(0.5, 0.6, "max")
    assert not is_improvement(0.6, 0.6, "min") and not is_improvement(0.6, 0.6, "max")  # ties do not count
    assert is_improvement(123.0, None, "min") and is_improvement(-1.0, None, "max")  # first value wins
    assert is_improvement(0.1, float("nan"), "max")  # a NaN best is replaced
    assert not is_improvement(float("nan"), None, "min")  # NaN never improves
    assert not is_improvement(float("nan"), 0.5, "min") and not is_improvement(float("nan"), 0.5, "max")
