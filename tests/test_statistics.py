"""``sati.statistics``: the resampled metrics against ``sati.metrics``, the VC-t and Holm arithmetic by hand,
the cells that have no test, and the calibration of the whole table on simulated runs.

Calibration (``test_the_table_marks_no_more_than_alpha_under_no_difference``): tables simulated by
``sati.testing.ablation_tables`` (a MOSI-like test set of 686 items, 5 variants × 3 or 5 seeds, an item
difficulty shared by every run, a seed quality factor and run noise), run through ``compare_table``
exactly as ``sati reproduce`` runs it (with fewer bootstrap replicates). Run with ``-s`` to see the
rates and the power it prints.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sati.metrics import PAPER_METRICS, regression_metrics
from sati.statistics import (
    compare_table,
    holm,
    item_counts,
    probability_of_improvement,
    vc_t,
    weighted_metrics,
)
from sati.testing.ablation_tables import SEED_SD_SCALE, simulate_table

# --------------------------------------------------------------------------------------------
# The fast path is sati.metrics


def _reference(preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.array([[regression_metrics(p, labels)[m] for m in PAPER_METRICS] for p in preds])


def test_weighted_metrics_at_unit_weights_are_sati_metrics():
    rng = np.random.default_rng(0)
    labels = np.clip(np.round(3 * rng.normal(0, 1.4, 300)) / 3, -3, 3)
    preds = labels + rng.normal(0, 1, (6, 300))
    preds[1, :40] = 0.0  # predictions of exactly 0 (non-negative for has0, negative for non0)
    preds[2] = np.round(preds[2] * 2) / 2  # halves: Acc-7 and Acc-5 round them to even
    preds[3] = 0.7  # constant: Pearson r undefined (nan in both)
    preds[4] = -preds[4]  # mostly wrong signs
    fast = weighted_metrics(preds, labels, np.ones((1, 300)))[0]
    ref = _reference(preds, labels)
    assert (np.isnan(fast) == np.isnan(ref)).all() and np.isnan(ref).sum() == 1
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12, equal_nan=True)
    # the hand-worked case of tests/test_metrics.py (zero labels and a prediction of exactly 0)
    pred, label = np.array([-0.5, 0.0, 1.0, -1.0, 0.5, 0.0]), np.array([-1.0, 0.0, 2.0, 0.0, -2.0, 1.0])
    case = weighted_metrics(pred[None], label, np.ones((1, 6)))[0, 0].tolist()
    corr = np.corrcoef(pred, label)[0, 1]
    assert case == pytest.approx([1.0, corr, 4 / 6, 2 / 4, 4 / 6, 0.5, 1 / 6, 1 / 6], abs=1e-12)


def test_item_counts_are_a_resample_and_weighting_by_them_is_recomputing_on_it():
    rng = np.random.default_rng(1)
    labels = np.clip(np.round(3 * rng.normal(0, 1.4, 200)) / 3, -3, 3)
    preds = labels + rng.normal(0, 1, (3, 200))
    counts = item_counts(np.random.default_rng(2), 4, 200)
    assert counts.shape == (4, 200) and (counts.sum(axis=1) == 200).all() and (counts >= 0).all()
    assert (counts == 0).any(axis=1).all()  # with replacement: some items are left out of each
    fast = weighted_metrics(preds, labels, counts)
    for b, w in enumerate(counts):  # the metrics of the sample that repeats item i w[i] times
        resampled = _reference(np.repeat(preds, w, axis=1), np.repeat(labels, w))
        np.testing.assert_allclose(fast[b], resampled, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# VC-t, Holm, P(improvement) by hand


def test_vc_t_by_hand():
    # S = 2 seeds with differences 1 and 3: Δ = 2, var(D)/S = 2/2 = 1.
    # Three item draws: rows [0, 2], [2, 4], [1, 3]: seed means 1, 3, 2 → v_item = 1; each seed's
    # column varies 0, 2, 1 → u = 1. Shared item term (S·v_item − u)/(S − 1) = 1; se = √2.
    # t with 1 degree of freedom is Cauchy: p = 2·(1/2 − atan(2/√2)/π) = 1 − 2·atan(√2)/π.
    se, p, flat = vc_t(np.array([[1.0], [3.0]]), np.array([[[0.0], [2.0]], [[2.0], [4.0]], [[1.0], [3.0]]]))
    assert se[0] == pytest.approx(math.sqrt(2)) and p[0] == pytest.approx(1 - 2 * math.atan(math.sqrt(2)) / math.pi)
    assert not flat[0]
    # the same seeds without an item effect shared by them (the seeds' resamples move oppositely): the
    # shared term is 0 and VC-t is the paired t over seeds, se = sd(D)/√S = 1
    se, _, _ = vc_t(np.array([[1.0], [3.0]]), np.array([[[0.0], [4.0]], [[2.0], [2.0]], [[1.0], [3.0]]]))
    assert se[0] == pytest.approx(1.0)
    # no spread over seeds: the seed term falls back to u/S, and the cell says so
    se, _, flat = vc_t(np.array([[2.0], [2.0]]), np.array([[[1.0], [1.0]], [[3.0], [3.0]], [[2.0], [2.0]]]))
    assert flat[0] and se[0] == pytest.approx(math.sqrt(1 / 2 + 1))


def test_vc_t_carries_the_seed_and_the_test_set_variance():
    """Per-item MAE differences d[s, i] = a_s + b_i (a seed effect and an item effect): the standard error
    must include the item term var(b)/n that a paired t over seeds leaves out."""
    rng = np.random.default_rng(3)
    n, seeds = 686, 5
    labels = rng.normal(0, 1.4, n)
    a, b = rng.normal(0, 0.01, seeds), rng.normal(0, 0.5, n)
    full = dict.fromkeys(range(seeds), labels + 1.0)  # |error| = 1 everywhere
    variant = {s: labels + 2.0 + a[s] + b for s in range(seeds)}  # |error| = 1 + (1 + a_s + b_i)
    table = compare_table({"full": full, "v": variant}, labels, metrics=["mae"], resamples=4000, seed=0)
    cell = table.cell("v", "mae")
    expected_se = math.sqrt(a.var(ddof=1) / seeds + b.var() / n)
    paired_t_se = a.std(ddof=1) / math.sqrt(seeds)
    se = (cell.ci_high - cell.ci_low) / 2 / 2.7764451051977987  # t_{4, 0.975}
    assert cell.estimate == pytest.approx(1 + a.mean() + b.mean(), abs=1e-12)
    assert se == pytest.approx(expected_se, rel=0.05) and se > 3 * paired_t_se
    assert cell.boot_low < cell.estimate < cell.boot_high


def test_holm_by_hand():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    assert holm([]).size == 0


def test_probability_of_improvement_by_hand():
    # higher is better: 3 beats both 2s, 1 beats neither, a 2 against a 2 is a tie (½): (2 + 0 + ½ + ½)/4 = 3/4
    assert probability_of_improvement(np.array([[3.0], [1.0]]), np.array([[2.0], [2.0]]), np.array([True])) == [0.5]
    assert probability_of_improvement(np.array([[3.0], [2.0]]), np.array([[2.0], [2.0]]), np.array([True])) == [0.75]
    # lower is better (MAE): the same numbers the other way round
    assert probability_of_improvement(np.array([[3.0], [2.0]]), np.array([[2.0], [2.0]]), np.array([False])) == [0.25]


# --------------------------------------------------------------------------------------------
# Cells without a test, pairing, repeatability


def _runs(rng, labels, seeds, scale=1.0):
    return {s: labels + scale * rng.normal(0, 1, len(labels)) for s in seeds}


def test_identical_undefined_and_unpaired_cells():
    rng = np.random.default_rng(4)
    labels = np.clip(np.round(3 * rng.normal(0, 1.4, 400)) / 3, -3, 3)
    full = _runs(rng, labels, [11, 12, 13])
    collapsed = _runs(rng, labels, [11, 12, 13])
    collapsed[12] = np.full(400, 0.25)  # one run predicts a constant: Pearson r undefined
    preds = {
        "full": full,
        "same": {s: p.copy() for s, p in full.items()},  # byte-identical predictions
        "collapsed": collapsed,
        "short": _runs(rng, labels, [11, 13, 99]),  # seed 12 missing; seed 99 has no partner in full
    }
    table = compare_table(preds, labels, resamples=500, seed=1)
    assert all(table.cell("same", m).note == "identical predictions" for m in PAPER_METRICS)
    assert all(not table.cell("same", m).marked and math.isnan(table.cell("same", m).p_value) for m in PAPER_METRICS)
    corr = table.cell("collapsed", "corr")
    assert corr.note == "n/a (1/3 seed pairs)" and math.isnan(corr.ci_low) and not corr.marked
    assert table.cell("collapsed", "mae").tested and table.cell("short", "mae").seeds == 2
    # the family: every cell with a test, i.e. all but the 8 identical ones and the undefined r
    assert table.family == 3 * len(PAPER_METRICS) - len(PAPER_METRICS) - 1
    assert sorted(c.p_holm for c in table.cells if c.tested) == pytest.approx(
        sorted(holm([c.p_value for c in table.cells if c.tested]))
    )
    delta = np.mean(
        [
            regression_metrics(preds["short"][s], labels)["mae"] - regression_metrics(full[s], labels)["mae"]
            for s in (11, 13)
        ]
    )
    assert table.cell("short", "mae").estimate == pytest.approx(delta, abs=1e-12)
    # repeatable from its seed
    assert repr(compare_table(preds, labels, resamples=500, seed=1)) == repr(table)


# --------------------------------------------------------------------------------------------
# Calibration on simulated tables


TABLES = 500  # Monte Carlo SE of a 5 % rate ≈ 1 point; accept up to 5 % + 1.645 SE = 6.6 %
POWER_TABLES = 300
RESAMPLES = 200  # enough for VC-t's variance terms (the reproduction uses 10,000)


def _simulate(tables: int, scale=None, seeds: int = 5, seed: int = 20261206):
    rng = np.random.default_rng(seed)
    out = []
    for t in range(tables):
        preds, labels = simulate_table(rng, seeds=seeds, scale=scale)
        out.append(compare_table(preds, labels, resamples=RESAMPLES, seed=t))
    return out


@pytest.mark.parametrize("seeds", [3, 5])
def test_the_table_marks_no_more_than_alpha_under_no_difference(seeds):
    """No true difference (scenario A of the notes: 5 identical variants, σ_seed ≈ 0.03 MAE), 500 tables
    of 4 variants × 8 metrics (m = 32): the share of tables with any marked cell stays ≤ 6.6 %."""
    tables = _simulate(TABLES, seeds=seeds)
    any_mark = np.mean([any(c.marked for c in t.cells) for t in tables])
    raw = np.mean([c.p_value < 0.05 for t in tables for c in t.cells])
    covered = np.mean([c.ci_low <= 0 <= c.ci_high for t in tables for c in t.cells])
    print(
        f"\nS = {seeds}, {TABLES} null tables, m = {tables[0].family}: tables with any Holm mark "
        f"{100 * any_mark:.1f} %, cells with uncorrected p < 0.05 {100 * raw:.1f} %, 95 % intervals covering 0 "
        f"{100 * covered:.1f} %"
    )
    assert all(t.family == 4 * len(PAPER_METRICS) for t in tables)
    assert any_mark <= 0.066
    assert raw <= 0.066 and covered >= 0.934  # each cell's interval is calibrated too


def test_the_power_at_one_seed_sd_is_reported():
    """One variant's errors 3.75 % larger (MAE +0.03 ≈ 1 sd of seed noise): how often it is marked."""
    tables = _simulate(POWER_TABLES, scale=[1, SEED_SD_SCALE, 1, 1, 1], seed=7)
    cells = [t.cell("v1", "mae") for t in tables]
    holm_rate = np.mean([c.marked for c in cells])
    raw_rate = np.mean([c.p_value < 0.05 for c in cells])
    false = np.mean([any(c.marked for c in t.cells if c.variant != "v1") for t in tables])
    print(
        f"\npower at +1 seed sd of MAE, S = 5, {POWER_TABLES} tables: MAE cell marked after Holm (m = 32) "
        f"{100 * holm_rate:.1f} %, uncorrected p < 0.05 {100 * raw_rate:.1f} %; "
        f"other variants marked {100 * false:.1f} %"
    )
    assert np.mean([c.estimate for c in cells]) == pytest.approx(0.03, abs=0.005)  # the effect is there
    assert raw_rate > 0.05  # the test sees it more often than under no difference
