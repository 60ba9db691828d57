"""Simulated ablation tables with known truth, to calibrate ``sati.statistics.compare_table``.

The model of the statistics notes: a MOSI-like test set (labels on the 1/3 grid of [−3, 3], about 9 %
zeros) and, for variant v, seed s and item i,

    p[v, s, i] = y_i + scale_v · (1 + k_vs) · (c_i + h_vi + z_vsi)

c ~ N(0, ρ_c) an item difficulty shared by every run, h ~ N(0, ρ_h) a variant's own item profile
(fixed over seeds), z ~ N(0, 1 − ρ_c − ρ_h) run noise and k ~ N(0, σ_k²) the quality of a seed. The
errors have unit variance (|error| ≈ 0.80 on average, r ≈ 0.81, Acc-2 ≈ 0.80, Acc-7 ≈ 0.40), and
σ_k = 0.03 gives a seed standard deviation of about 0.03 MAE. Nothing is shared between the variants
of one seed, which is the hardest case for a paired comparison. ``scale_v = 1`` for every variant is
"no true difference"; 1.0375 makes a variant's MAE worse by about 0.03, one seed standard deviation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SEED_SD_SCALE = 1.0375  # a variant's error scale that adds about one seed sd (0.03) to its MAE


def simulate_table(
    rng: np.random.Generator,
    n: int = 686,
    variants: int = 5,
    seeds: int = 5,
    sigma_k: float = 0.03,
    rho_c: float = 0.6,
    rho_h: float = 0.0,
    scale: Sequence[float] | None = None,
) -> tuple[dict[str, dict[int, np.ndarray]], np.ndarray]:
    """One table: (variant → seed → [n] predictions, [n] labels); the first variant is ``full``, the
    others ``v1``, ``v2``, ...; ``scale`` gives each variant's error scale (default all 1)."""
    labels = np.clip(np.round(3 * rng.normal(0, 1.4, n)) / 3, -3, 3)
    c = rng.normal(0, math.sqrt(rho_c), n)
    h = rng.normal(0, math.sqrt(rho_h), (variants, 1, n))
    z = rng.normal(0, math.sqrt(1 - rho_c - rho_h), (variants, seeds, n))
    k = rng.normal(0, sigma_k, (variants, seeds, 1))
    factor = np.ones(variants) if scale is None else np.asarray(scale, dtype=np.float64)
    preds = labels + factor[:, None, None] * (1 + k) * (c + h + z)  # [V, S, n]
    names = ["full"] + [f"v{j}" for j in range(1, variants)]
    return {name: dict(enumerate(preds[j])) for j, name in enumerate(names)}, labels
