"""Paired comparisons over seeds: is a variant better or worse than the full model, beyond seed noise?

A reproduction trains every variant with the same seeds, so seed ``s`` of a variant and seed ``s`` of
``full`` share their data order and the initialization of the parts they have in common: the
comparison is *paired* by seed. For each metric:

- the paired differences d_s = variant_s − reference_s (``paired_differences``), and their mean;
- a seeded percentile bootstrap of the mean difference over seed pairs (``bootstrap_interval``): the
  n pairs are resampled with replacement; the interval is the 2.5th and 97.5th percentile of the
  resampled means (95 %);
- the exact two-sided Wilcoxon signed-rank test of "d is symmetric about 0" (``wilcoxon_p``).

With few seeds the test has little power: its smallest two-sided p-value is 2 / 2^n (0.25 for 3
seeds, 0.0625 for 5), so below 6 seeds no difference can reach p < 0.05 (``smallest_p``). The
bootstrap interval excluding 0 then only says that every seed pair moved the same way.

Pure functions of numbers; nothing here knows about runs or models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHA = 0.05  # two-sided significance level of the Wilcoxon test
CONFIDENCE = 0.95  # of the bootstrap interval
RESAMPLES = 10_000  # bootstrap resamples
_DECIMALS = 12  # differences are rounded to this many decimals so float round-off makes no false ties or zeros


def paired_differences(values: dict[int, float], reference: dict[int, float]) -> np.ndarray:
    """d_s = values[s] − reference[s] for the seeds both have, in seed order: [n] float64."""
    seeds = sorted(set(values) & set(reference))
    return np.array([values[s] - reference[s] for s in seeds], dtype=np.float64)


def bootstrap_interval(
    differences: np.ndarray, seed: int = 0, confidence: float = CONFIDENCE, resamples: int = RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean paired difference.

    ``resamples`` times, n seed pairs are drawn with replacement from the n given (numpy's
    ``default_rng(seed)``, so the interval is repeatable) and their differences averaged; the interval
    is the (1 − confidence)/2 and (1 + confidence)/2 percentiles of those means (numpy's linear
    interpolation). One pair gives the point itself; none gives (nan, nan)."""
    d = np.asarray(differences, dtype=np.float64)
    if len(d) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)  # [resamples]
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test on paired differences.

    Differences are rounded to 12 decimals first, so that round-off in the subtraction neither breaks
    a tie nor hides a zero. Zero differences are dropped (Wilcoxon's convention, scipy's
    ``zero_method="wilcox"``) and n counts the rest; with no nonzero difference the p-value is 1.
    The p-value is then ``scipy.stats.wilcoxon(..., method="auto")``'s: for n ≤ 50 without tied
    magnitudes the exact null distribution (all 2^n sign patterns equally likely), so for n ≤ 5
    always exact, with p = (number of sign patterns whose smaller rank sum is at most the observed
    one, both tails) / 2^n; with tied magnitudes (mid-ranks) and n ≤ 13 the exact permutation
    distribution of those mid-ranks over all 2^n sign patterns; above that the normal approximation."""
    from scipy.stats import wilcoxon

    d = np.round(np.asarray(differences, dtype=np.float64), _DECIMALS)
    d = d[d != 0]
    if len(d) == 0:
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto").pvalue)


def smallest_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon p-value n nonzero paired differences can give: 2 / 2^n (≤ 1)."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


@dataclass(frozen=True)
class PairedComparison:
    """One variant against the reference on one metric, over the seeds both have."""

    n: int  # seed pairs
    mean_difference: float  # mean of variant − reference
    ci_low: float
    ci_high: float
    p_value: float  # exact two-sided Wilcoxon signed-rank

    @property
    def significant(self) -> bool:
        """The Wilcoxon test rejects "no difference" at ``ALPHA``."""
        return self.p_value < ALPHA

    @property
    def interval_excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def compare(values: dict[int, float], reference: dict[int, float], seed: int = 0) -> PairedComparison:
    """``values`` (seed → metric of a variant) against ``reference`` (seed → metric of the full model)."""
    d = paired_differences(values, reference)
    low, high = bootstrap_interval(d, seed=seed)
    mean = float(d.mean()) if len(d) else float("nan")
    return PairedComparison(n=len(d), mean_difference=mean, ci_low=low, ci_high=high, p_value=wilcoxon_p(d))
