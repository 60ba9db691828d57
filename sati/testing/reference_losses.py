"""Loop forms of SATI's losses, written from the reference formulas (SPEC-SATI.md section 2).

These are the ground truth that the vectorized losses in ``sati.losses`` are checked against,
and the slow baseline of ``benchmarks/bench_step.py``. They favour clarity over speed:

- every tensor is turned into nested Python lists of float64 numbers first;
- the code loops over batch elements, time steps, modalities and feature channels in plain
  Python and uses the ``math`` module, so it shares no code path with the vectorized versions;
- the softmax of the margin loss is exp(logit) / Σ exp (no max-subtraction), as the reference
  code computes it; this is exact in float64 for the scales used here.

Layouts follow ``sati.model.sati.SATIOutput`` (batch-first, modality order text, audio, video)
unless a docstring says otherwise. Every function returns a Python float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

EPS = 1e-10  # JSD smoothing constant of the reference code


# ------------------------------------------------------------------------------------------------
# small helpers on Python lists


def _lists(x: torch.Tensor) -> list:
    """A tensor as nested lists of Python floats (float64)."""
    return x.detach().to(torch.float64).cpu().tolist()


def _l2(v: Sequence[float]) -> float:
    """sqrt of the sum of squares."""
    return math.sqrt(sum(a * a for a in v))


def _softmax(v: Sequence[float]) -> list[float]:
    top = max(v)  # subtracting the max does not change the result
    e = [math.exp(a - top) for a in v]
    z = sum(e)
    return [a / z for a in e]


def _kl(a: Sequence[float], b: Sequence[float], eps: float = EPS) -> float:
    """KL(a‖b) = Σ_h (a_h+ε) ln((a_h+ε)/(b_h+ε))."""
    return sum((ah + eps) * math.log((ah + eps) / (bh + eps)) for ah, bh in zip(a, b))


def _jsd(p: Sequence[float], q: Sequence[float], eps: float = EPS) -> float:
    m = [(ph + qh) / 2 for ph, qh in zip(p, q)]  # m is formed before ε is added
    return 0.5 * _kl(p, m, eps) + 0.5 * _kl(q, m, eps)


# ------------------------------------------------------------------------------------------------
# 2.1 task


def task_loss(prediction: torch.Tensor, labels: torch.Tensor) -> float:
    """mean_b (ŷ_b − y_b)²; prediction, labels: [B]."""
    p, y = _lists(prediction.reshape(-1)), _lists(labels.reshape(-1))
    total = 0.0
    for b in range(len(p)):
        total += (p[b] - y[b]) ** 2
    return total / len(p)


# ------------------------------------------------------------------------------------------------
# 2.2 CMD consistency


def cmd(x: torch.Tensor, y: torch.Tensor, moments: int = 5) -> float:
    """CMD(x, y) = ‖μ_x − μ_y‖ + Σ_{k=2..K} ‖mean_b (x−μ_x)^k − mean_b (y−μ_y)^k‖; x, y: [B, H]."""
    xs, ys = _lists(x), _lists(y)
    hidden = len(xs[0])

    def mean_over_batch(rows: list[list[float]], k: int, centre: list[float] | None) -> list[float]:
        out = []
        for h in range(hidden):
            acc = 0.0
            for b in range(len(rows)):
                v = rows[b][h] - (centre[h] if centre is not None else 0.0)
                acc += v**k
            out.append(acc / len(rows))
        return out

    mx, my = mean_over_batch(xs, 1, None), mean_over_batch(ys, 1, None)
    total = _l2([mx[h] - my[h] for h in range(hidden)])
    for k in range(2, moments + 1):
        cx, cy = mean_over_batch(xs, k, mx), mean_over_batch(ys, k, my)
        total += _l2([cx[h] - cy[h] for h in range(hidden)])
    return total


def consistency_loss(shared_means: torch.Tensor, moments: int = 5) -> float:
    """L_con = [CMD(ī_t, ī_v) + CMD(ī_t, ī_a) + CMD(ī_a, ī_v)] / 3; shared_means: [3, B, H] (t, a, v)."""
    text, audio, video = shared_means[0], shared_means[1], shared_means[2]
    return (cmd(text, video, moments) + cmd(text, audio, moments) + cmd(audio, video, moments)) / 3


# ------------------------------------------------------------------------------------------------
# 2.4 temporal-invariance JSD


def temporal_jsd(codes: torch.Tensor, mask: torch.Tensor, eps: float = EPS) -> float:
    """Masked L_ti. codes: [B, T, C] (batch-first), mask: [B, T] bool.

    For each adjacent pair (t, t+1): take the samples real at both steps, average their channel
    softmax at t (P) and at t+1 (Q) separately, JSD(P, Q). Average over the pairs that have at
    least one such sample; 0 if there is none (T = 1 included).
    """
    r, real = _lists(codes), mask.detach().cpu().tolist()
    batch, steps = len(r), len(r[0])
    channels = len(r[0][0]) if steps else 0
    softmax = [[_softmax(r[b][t]) for t in range(steps)] for b in range(batch)]
    values = []
    for t in range(steps - 1):
        members = [b for b in range(batch) if real[b][t] and real[b][t + 1]]
        if not members:
            continue
        p = [sum(softmax[b][t][c] for b in members) / len(members) for c in range(channels)]
        q = [sum(softmax[b][t + 1][c] for b in members) / len(members) for c in range(channels)]
        values.append(_jsd(p, q, eps))
    if not values:
        return 0.0
    return sum(values) / len(values)


def temporal_jsd_unmasked(codes_seq_first: torch.Tensor, eps: float = EPS) -> float:
    """The reference code's L_ti on seq-first [T, B, C] codes: every step and sample counts.

    P_t = mean_b softmax(R[t, b]); L = 1/(T−1) Σ_t JSD(P_t, P_{t+1}). Raises ZeroDivisionError
    when T = 1, as the reference code does.
    """
    r = _lists(codes_seq_first)
    steps, batch, channels = len(r), len(r[0]), len(r[0][0])
    dists = []
    for t in range(steps):
        per_sample = [_softmax(r[t][b]) for b in range(batch)]
        dists.append([sum(per_sample[b][c] for b in range(batch)) / batch for c in range(channels)])
    total = 0.0
    for t in range(steps - 1):
        total += _jsd(dists[t], dists[t + 1], eps)
    return total / (steps - 1)


# ------------------------------------------------------------------------------------------------
# 2.3 angular-margin domain loss


def angular_margin_loss(
    feature: torch.Tensor, label: int, classes: torch.Tensor, *, scale: float, margin: float, form: str, l2: float = 0.0
) -> float:
    """ℓ(f, y) for one sample: f [H], y ∈ {0..C−1}, classes W [C, H].

    cos_c = (f/‖f‖)·(W_c/‖W_c‖); logit_c = s·cos_c for c ≠ y and
    logit_y = s·cos(acos(cos_y) + τ) (arcface) or s·(cos_y − τ) (cosface);
    ℓ = −log softmax(logit)_y + l2·‖W‖²_F (the reference code adds the regulariser in every call).
    """
    f, w = _lists(feature), _lists(classes)
    f_norm = _l2(f)
    cosines = []
    for c in range(len(w)):
        w_norm = _l2(w[c])
        cosines.append(sum((f[h] / f_norm) * (w[c][h] / w_norm) for h in range(len(f))))
    logits = []
    for c, cos_c in enumerate(cosines):
        if c != label:
            logits.append(scale * cos_c)
        elif form == "arcface":
            theta = math.acos(min(1.0, max(-1.0, cos_c)))
            logits.append(scale * math.cos(theta + margin))
        elif form == "cosface":
            logits.append(scale * (cos_c - margin))
        else:
            raise ValueError(form)
    exps = [math.exp(z) for z in logits]
    loss = -math.log(exps[label] / sum(exps))
    return loss + l2 * sum(v * v for row in w for v in row)


def domain_loss(
    features: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    classes: torch.Tensor,
    *,
    scale: float,
    margin: float,
    form: str,
    reduction: str = "mean",
    l2: float = 0.01,
) -> float:
    """L_dom with the reference code's Python loop over the batch.

    features: [2·M, B, H], the shared codes of the M modalities first, then the private ones;
    labels: [2·M] modality ids; classes: [M, H].

    reduction 'mean' (reference code): for each sample, average ℓ (regulariser included) over the
    modalities, then average over the batch:
        L_I = (1/B) Σ_b (1/M) Σ_m ℓ(shared_m,b), L_S likewise, L = L_I + L_S
            = mean CE(shared) + mean CE(private) + 2·l2·‖W‖².
    reduction 'sum' (paper Eq. 5): sum the cross-entropies over the modalities instead of averaging;
    the regulariser still enters once per code type: L = Σ_m mean_b CE + Σ_m mean_b CE + 2·l2·‖W‖².
    """
    labels = [int(v) for v in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)]
    groups, batch = features.shape[0], features.shape[1]
    modalities = groups // 2
    w = _lists(classes)
    w_sq = sum(v * v for row in w for v in row)
    total = 0.0
    for code_type in range(2):  # 0: shared (L_I), 1: private (L_S)
        acc = 0.0
        for b in range(batch):
            per_sample = 0.0
            for m in range(modalities):
                g = code_type * modalities + m
                if reduction == "mean":
                    per_sample += angular_margin_loss(
                        features[g, b], labels[g], classes, scale=scale, margin=margin, form=form, l2=l2
                    )
                elif reduction == "sum":
                    per_sample += angular_margin_loss(
                        features[g, b], labels[g], classes, scale=scale, margin=margin, form=form, l2=0.0
                    )
                else:
                    raise ValueError(reduction)
            acc += per_sample / modalities if reduction == "mean" else per_sample
        total += acc / batch
        if reduction == "sum":
            total += l2 * w_sq
    return total


# ------------------------------------------------------------------------------------------------
# 2.5 reconstruction


def reconstruction_loss(targets: torch.Tensor, masks: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """(1/M) Σ_m [mean over real (b, t) steps and over h of (U_m[b,t,h] − r_m[b,h])²].

    targets U: [M, B, T, H], masks: [M, B, T] bool, reconstructions r: [M, B, H].
    A modality with no real step contributes 0.
    """
    u, r, real = _lists(targets), _lists(reconstructions), masks.detach().cpu().tolist()
    per_modality = []
    for m in range(len(u)):
        total, count = 0.0, 0
        for b in range(len(u[m])):
            for t in range(len(u[m][b])):
                if not real[m][b][t]:
                    continue
                for h in range(len(r[m][b])):
                    total += (u[m][b][t][h] - r[m][b][h]) ** 2
                    count += 1
        per_modality.append(total / count if count else 0.0)
    return sum(per_modality) / len(per_modality)


# ------------------------------------------------------------------------------------------------
# 2.7 total


def total_loss(out, labels: torch.Tensor, cfg, ablation) -> dict[str, float]:
    """Every term (unweighted) and L = L_task + α L_con + β L_ti + γ L_dom + w_rec L_rec.

    ``out`` is a ``SATIOutput``, ``cfg`` a ``LossConfig``, ``ablation`` an ``AblationConfig``;
    an ablated term (til=False, adversarial=False) is 0.
    """
    terms = {
        "task": task_loss(out.prediction, labels),
        "consistency": consistency_loss(out.shared_means, cfg.cmd_moments),
        "temporal": temporal_jsd(out.video_codes, out.video_mask) if ablation.til else 0.0,
        "domain": (
            domain_loss(
                out.domain_features,
                out.domain_labels,
                out.domain_classes,
                scale=cfg.scale,
                margin=cfg.margin,
                form=cfg.margin_form,
                reduction=cfg.domain_reduction,
                l2=cfg.domain_l2,
            )
            if ablation.adversarial and out.domain_features is not None
            else 0.0
        ),
        "reconstruction": reconstruction_loss(out.projections, out.projection_masks, out.reconstructions),
    }
    terms["total"] = (
        terms["task"]
        + cfg.consistency_weight * terms["consistency"]
        + cfg.temporal_weight * terms["temporal"]
        + cfg.domain_weight * terms["domain"]
        + cfg.reconstruction_weight * terms["reconstruction"]
    )
    return terms
