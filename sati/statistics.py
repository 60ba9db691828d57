"""Is a variant better or worse than ``full``, beyond seed noise *and* test-set sampling?

``compare_table(preds, labels)`` takes every run's per-sample test predictions (variant → seed →
[n]) and compares each variant with the reference (``full``) on every metric, paired by seed. A claim
such as "removing the gate hurts Acc-7" is about the method, so it has to hold for a new training
seed *and* for a new test set from the same distribution. Both sources of variance are carried:

- **Paired crossed two-level bootstrap** (Owen's pigeonhole bootstrap): each replicate draws the n
  test items with replacement once, shared by every run, and the S seeds with replacement once,
  shared by every variant; every metric is recomputed from the resampled (prediction, label) pairs
  exactly as ``sati.metrics`` computes it. Resampling is done with count matrices: replicate b gives
  item i the weight w[b, i] (its multiplicity), and every metric is a closed-form function of a few
  weighted sums, so all replicates × runs are one matrix product (``weighted_metrics``).
- **Variance-components t (VC-t)**, from the same item draws: with D_s the per-seed difference on the
  whole test set and Db[b, s] the same under item draw b, se² = var(D)/S + max(0, (S·v_item − u)/(S−1)),
  where v_item = var_b(mean_s Db) and u = mean_s var_b(Db). The second term is the item effect
  shared by all seeds, which a paired t over seeds leaves out. p = 2·t_{S−1}.sf(|Δ|/se) and the 95 %
  interval Δ ± t_{S−1, 0.975}·se: the t quantiles with S − 1 degrees of freedom keep the test
  calibrated with 3–5 seeds, where a percentile bootstrap over seeds is not (it excluded 0 in 25 %
  of no-difference cases at 3 seeds). The two-level percentile interval is kept beside it.
- **Holm–Bonferroni** over every (variant, metric) cell with a test: familywise error ≤ α under any
  dependence between the cells.
- **P(improvement)** (Agarwal et al. 2021): the share of (variant run, full run) pairs in which the
  variant's run is better (ties ½), and how many seed pairs the variant wins: descriptive effect
  sizes, not tests.

A cell has no test (not in the Holm family, ``note`` says why) when the variant's predictions are
byte-identical to ``full``'s on every seed (usually a wiring error, not "no effect"), when a run's
metric is not finite (e.g. Pearson r of a constant prediction), or with fewer than 2 seed pairs.

Pure functions of numbers; nothing here knows about runs or models. References: Bouthillier et al.,
MLSys 2021; Dror et al., ACL 2018; Agarwal et al., NeurIPS 2021; Holm, Scand. J. Statist. 1979;
Owen, AOAS 2007.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sati.metrics import HIGHER_IS_BETTER, PAPER_METRICS

ALPHA = 0.05  # familywise error rate of the Holm step-down procedure
CONFIDENCE = 0.95  # of every interval
RESAMPLES = 10_000  # bootstrap replicates (B)
METHOD = "Holm–Bonferroni"
NONFINITE_FLAG = 0.001  # a cell whose share of non-finite replicates exceeds this is flagged
_BLOCK = 1_000  # replicates per matrix product (MOSEI: 1,000 × 4,659 weights is 37 MB)


# --------------------------------------------------------------------------------------------
# Metrics under item weights


def item_counts(rng: np.random.Generator, replicates: int, n: int) -> np.ndarray:
    """[replicates, n] int64: how often each of n items is drawn in each resample of n with replacement."""
    flat = rng.integers(0, n, size=(replicates, n)) + n * np.arange(replicates)[:, None]
    return np.bincount(flat.ravel(), minlength=replicates * n).reshape(replicates, n)


def _item_columns(preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The per-item columns whose weighted sums give every metric: [n, R·12 + 6] float64.

    Per run (12, run-major): |p − y|; centred p, p², p·y (Pearson); for has0 (≥ 0) and non0 (> 0, label
    0 left out) the true positives of each class and the predicted positives; Acc-7 and Acc-5 hits.
    Shared (6): 1, centred y, y², has0 positives, non-zero labels, non0 positives."""
    y = labels[:, None]  # [n, 1]
    p = preds.T  # [n, R]
    # centred (for precision); a constant stays exactly 0, so its Pearson r is nan as in sati.metrics
    yc = (y - y.mean()) * (np.ptp(y) > 0)
    pc = (p - p.mean(axis=0)) * (np.ptp(p, axis=0) > 0)
    nonzero, pos, neg = y != 0, y > 0, y < 0
    per_run = [
        np.abs(p - y),
        pc,
        pc * pc,
        pc * yc,
        (y >= 0) & (p >= 0),
        (y < 0) & (p < 0),
        p >= 0,
        pos & (p > 0),
        neg & (p <= 0),
        nonzero & (p > 0),
        np.round(np.clip(p, -3, 3)) == np.round(np.clip(y, -3, 3)),
        np.round(np.clip(p, -2, 2)) == np.round(np.clip(y, -2, 2)),
    ]
    shared = [1.0, yc, yc * yc, y >= 0, nonzero, pos]
    n, runs = p.shape
    columns = np.empty((n, runs * 12 + len(shared)))
    by_run = columns[:, : runs * 12].reshape(n, runs, 12)
    for j, column in enumerate(per_run):
        by_run[:, :, j] = column
    for j, column in enumerate(shared):
        columns[:, runs * 12 + j] = column[:, 0] if isinstance(column, np.ndarray) else column
    return columns


def _binary_f1(tp_pos, tp_neg, pred_pos, support_pos, total):
    """Support-weighted F1 of a two-class split from weighted counts (as ``sati.metrics.weighted_f1``)."""
    support_neg, pred_neg = total - support_pos, total - pred_pos
    f1_pos = np.divide(2 * tp_pos, support_pos + pred_pos, out=np.zeros_like(tp_pos), where=support_pos + pred_pos > 0)
    f1_neg = np.divide(2 * tp_neg, support_neg + pred_neg, out=np.zeros_like(tp_neg), where=support_neg + pred_neg > 0)
    return (f1_pos * support_pos + f1_neg * support_neg) / total


def _metrics_from_sums(sums: np.ndarray, runs: int) -> np.ndarray:
    """[B, R·12 + 6] weighted sums → [B, R, 8] metrics in ``PAPER_METRICS`` order."""
    s = sums[:, : runs * 12].reshape(len(sums), runs, 12)
    total, sy, syy, has0_pos, nonzero, non0_pos = (sums[:, runs * 12 + j, None] for j in range(6))
    ae, sp, spp, spy, tp_has0, tn_has0, pred_has0, tp_non0, tn_non0, pred_non0, hit7, hit5 = np.moveaxis(s, 2, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = total * spy - sp * sy
        corr = cov / np.sqrt((total * spp - sp * sp) * (total * syy - sy * sy))
        return np.stack(
            [
                ae / total,
                np.clip(corr, -1.0, 1.0),
                (tp_has0 + tn_has0) / total,
                (tp_non0 + tn_non0) / nonzero,
                _binary_f1(tp_has0, tn_has0, pred_has0, has0_pos, total),
                _binary_f1(tp_non0, tn_non0, pred_non0, non0_pos, nonzero),
                hit7 / total,
                hit5 / total,
            ],
            axis=-1,
        )


def weighted_metrics(preds: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Every paper metric of every run under every item weighting, as ``sati.metrics`` computes it on
    the sample that repeats item i w[b, i] times.

    preds: [R, n] predictions of R runs on the same n items; labels: [n]; weights: [B, n] non-negative
    item weights (bootstrap counts; all ones gives the observed metrics) → [B, R, 8] float64 in
    ``sati.metrics.PAPER_METRICS`` order. Undefined values (Pearson r of a constant prediction, non0
    metrics without a non-zero label) are nan."""
    preds = np.atleast_2d(np.asarray(preds, dtype=np.float64))
    columns = _item_columns(preds, np.asarray(labels, dtype=np.float64))
    return _metrics_from_sums(np.asarray(weights, dtype=np.float64) @ columns, len(preds))


# --------------------------------------------------------------------------------------------
# One cell: a variant against the reference on one metric


@dataclass(frozen=True)
class Cell:
    """One variant against the reference on one metric, over the seeds both have (differences are
    variant − reference in the metric's own units; lower MAE is better, every other metric higher)."""

    variant: str
    metric: str
    seeds: int  # S: seed pairs
    estimate: float  # Δ: mean over seed pairs of the per-seed metric difference
    ci_low: float  # VC-t interval (the one printed)
    ci_high: float
    boot_low: float  # two-level percentile interval
    boot_high: float
    p_value: float  # VC-t, two-sided; nan when the cell has no test
    p_holm: float  # Holm-adjusted over the table's family; nan when the cell has no test
    p_improvement: float  # share of (variant run, reference run) pairs the variant wins, ties ½
    seeds_better: int  # seed pairs in which the variant is better
    seeds_tied: int
    effect_in_seed_sd: float  # Δ / sd over seeds of the reference's metric
    note: str = ""  # why the cell has no test ("identical predictions", "n/a (1/5 seed pairs)", ...)
    flag: str = ""  # a caveat on a tested cell (non-finite replicates, zero seed spread)

    @property
    def tested(self) -> bool:
        return not self.note

    @property
    def marked(self) -> bool:
        """Significant after Holm's correction over the table (familywise α)."""
        return self.tested and self.p_holm <= ALPHA


@dataclass(frozen=True)
class TableComparison:
    """Every cell of one table, the family Holm corrected over, and how it was computed."""

    cells: list[Cell]
    reference: str
    n: int  # test items
    resamples: int  # B
    seed: int  # of the bootstrap's random generator
    alpha: float = ALPHA
    method: str = METHOD

    @property
    def family(self) -> int:
        """m: the number of tested cells Holm corrected over."""
        return sum(c.tested for c in self.cells)

    def cell(self, variant: str, metric: str) -> Cell:
        return next(c for c in self.cells if c.variant == variant and c.metric == metric)


def vc_t(observed: np.ndarray, replicated: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variance-components t for K cells at once (module docstring).

    observed: [S, K] per-seed differences on the whole test set (S ≥ 2); replicated: [B, S, K] the same
    differences under B item draws shared by the seeds (a replicate with a non-finite value is left out
    of its cell). Returns [K] arrays: the standard error of the mean difference, its two-sided p-value
    (t with S − 1 degrees of freedom), and whether the S differences had no spread, in which case the
    seed term falls back to u/S, the item resamples' own variance of a seed mean."""
    from scipy.special import stdtr

    s = observed.shape[0]
    replicated = np.where(np.isfinite(replicated).all(axis=1, keepdims=True), replicated, np.nan)
    v_seed = observed.var(axis=0, ddof=1) / s
    with warnings.catch_warnings():  # a metric without two finite replicates gives nan
        warnings.simplefilter("ignore", RuntimeWarning)
        v_item = np.nanvar(replicated.mean(axis=1), axis=0, ddof=1)
        u = np.nanvar(replicated, axis=0, ddof=1).mean(axis=0)
    v_shared = np.maximum(0.0, (s * v_item - u) / (s - 1))
    no_spread = v_seed == 0
    se = np.sqrt(np.where(no_spread, u / s, v_seed) + v_shared)
    estimate = observed.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, 2 * stdtr(s - 1, -np.abs(estimate) / se), np.where(estimate == 0, 1.0, 0.0))
    return se, p, no_spread


def probability_of_improvement(variant: np.ndarray, reference: np.ndarray, higher_is_better: np.ndarray) -> np.ndarray:
    """P(a run of the variant beats a run of the reference), per cell: Mann–Whitney U / (S·S'), ties ½.
    variant: [S, K], reference: [S', K], higher_is_better: [K] bool → [K]."""
    sign = np.where(higher_is_better, 1.0, -1.0)
    x, y = sign * variant, sign * reference
    return ((x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])).mean(axis=(0, 1))


def _variant_cells(
    variant: str,
    metrics: Sequence[str],
    observed: np.ndarray,
    reference: np.ndarray,
    replicated: np.ndarray,
    seed_draws: np.ndarray | None,
    identical: bool,
) -> list[dict]:
    """One variant's cells, as ``Cell`` fields without the Holm-adjusted p-value.

    observed, reference: [S, K] the variant's and the reference's metrics per seed pair on the whole test
    set; replicated: [B, S, K] their differences under the item draws; seed_draws: [B, S] the seed
    indices each replicate draws (None without seeds)."""
    from scipy.special import stdtrit

    s, k = observed.shape
    diff = observed - reference
    higher = np.array([HIGHER_IS_BETTER[m] for m in metrics])
    finite = np.isfinite(diff).all(axis=0)  # [K]
    estimate = diff.mean(axis=0) if s else np.full(k, np.nan)
    sd_reference = reference.std(axis=0, ddof=1) if s > 1 else np.full(k, np.nan)
    improvement = probability_of_improvement(observed, reference, higher) if s else np.full(k, np.nan)
    better = (np.where(higher, 1, -1) * diff > 0).sum(axis=0)
    nan = np.full(k, np.nan)
    se, p, no_spread, boot_low, boot_high, bad = nan, nan, np.zeros(k, bool), nan, nan, np.zeros(k)
    if s >= 2:
        se, p, no_spread = vc_t(diff, replicated)
        kept = np.isfinite(replicated).all(axis=1)  # [B, K]
        bad = 1 - kept.mean(axis=0)
        two_level = np.take_along_axis(replicated, seed_draws[:, :, None], axis=1).mean(axis=1)  # [B, K]
        tail = 100 * (1 - CONFIDENCE) / 2
        if kept.all():
            boot_low, boot_high = np.percentile(two_level, [tail, 100 - tail], axis=0)
        else:
            with warnings.catch_warnings():  # a metric without one finite replicate gives nan
                warnings.simplefilter("ignore", RuntimeWarning)
                boot_low, boot_high = np.nanpercentile(np.where(kept, two_level, np.nan), [tail, 100 - tail], axis=0)
    half = stdtrit(max(s - 1, 1), (1 + CONFIDENCE) / 2) * se
    cells = []
    for j, metric in enumerate(metrics):
        note = _untested(identical, s, int(np.isfinite(diff[:, j]).sum()))
        flags = [f"{100 * bad[j]:.1f} % of replicates non-finite"] if bad[j] > NONFINITE_FLAG else []
        flags += ["no spread over seeds: se from the item resamples alone"] if no_spread[j] else []
        tested = not note
        cells.append(
            dict(
                variant=variant,
                metric=metric,
                seeds=s,
                estimate=float(estimate[j]),
                ci_low=float(estimate[j] - half[j]) if tested else np.nan,
                ci_high=float(estimate[j] + half[j]) if tested else np.nan,
                boot_low=float(boot_low[j]) if tested else np.nan,
                boot_high=float(boot_high[j]) if tested else np.nan,
                p_value=float(p[j]) if tested else np.nan,
                p_improvement=float(improvement[j]) if finite[j] else np.nan,
                seeds_better=int(better[j]),
                seeds_tied=int((diff[:, j] == 0).sum()),
                effect_in_seed_sd=float(estimate[j] / sd_reference[j]) if sd_reference[j] > 0 else np.nan,
                note=note,
                flag="; ".join(flags) if tested else "",
            )
        )
    return cells


def _untested(identical: bool, seeds: int, finite: int) -> str:
    """Why a cell has no test ("" when it has one); ``finite``: seed pairs whose difference is finite."""
    if identical and seeds:
        return "identical predictions"
    if finite < seeds or not seeds:
        return f"n/a ({seeds - finite}/{seeds} seed pairs)"
    return "n/a (needs 2+ seed pairs)" if seeds < 2 else ""


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: p̃(k) = max_{j ≤ k} min(1, (m − j + 1)·p(j)), in input order."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


# --------------------------------------------------------------------------------------------
# The table


def compare_table(
    preds: Mapping[str, Mapping[int, np.ndarray]],
    labels: np.ndarray,
    *,
    reference: str = "full",
    metrics: Sequence[str] = PAPER_METRICS,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> TableComparison:
    """Every variant in ``preds`` (variant → seed → [n] test predictions) against ``reference``, on
    each of ``metrics`` (``sati.metrics`` keys), paired by seed (module docstring). A variant is
    compared over the seeds it shares with the reference. Repeatable: one ``default_rng(seed)`` draws
    the item counts, then the seed draws."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    runs = [(v, s) for v in preds for s in sorted(preds[v])]
    index = {run: r for r, run in enumerate(runs)}
    stacked = np.stack([np.asarray(preds[v][s], dtype=np.float64).ravel() for v, s in runs])  # [R, n]
    if stacked.shape[1] != len(labels):
        raise ValueError(f"predictions of {stacked.shape[1]} items for {len(labels)} labels")
    kept = [PAPER_METRICS.index(m) for m in metrics]
    rng = np.random.default_rng(seed)
    columns = _item_columns(stacked, labels)
    # the first row of weights is all ones: the observed metrics, from the same sums as the replicates
    blocks = [np.ones((1, len(labels)))] + [
        item_counts(rng, min(_BLOCK, resamples - start), len(labels)) for start in range(0, resamples, _BLOCK)
    ]
    values = np.concatenate([_metrics_from_sums(w.astype(np.float64) @ columns, len(stacked)) for w in blocks])
    values = values[:, :, kept]
    observed, replicated = values[0], values[1:]  # [R, K], [B, R, K]
    pairs = {v: sorted(set(preds[v]) & set(preds[reference])) for v in preds if v != reference}
    sizes = sorted({len(p) for p in pairs.values()} - {0})
    seed_draws = {s: rng.integers(0, s, size=(resamples, s)) for s in sizes}

    cells = []
    for variant, seeds in pairs.items():
        mine, ref = [index[(variant, s)] for s in seeds], [index[(reference, s)] for s in seeds]
        identical = all(stacked[i].tobytes() == stacked[j].tobytes() for i, j in zip(mine, ref))
        cells += _variant_cells(
            variant,
            metrics,
            observed[mine],
            observed[ref],
            replicated[:, mine] - replicated[:, ref],
            seed_draws.get(len(seeds)),
            identical,
        )
    tested = [i for i, c in enumerate(cells) if not c["note"]]
    adjusted = np.full(len(cells), np.nan)
    adjusted[tested] = holm([cells[i]["p_value"] for i in tested])
    return TableComparison(
        [Cell(**c, p_holm=float(p)) for c, p in zip(cells, adjusted)], reference, len(labels), resamples, seed
    )
