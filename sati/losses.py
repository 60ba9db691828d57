"""SATI's losses as pure, vectorized functions (no loop over batch elements or time steps).

Total (paper Eq. 14, plus the reference code's reconstruction term):
    L = L_task + α·L_con + β·L_ti + γ·L_dom + w_rec·L_rec
with α = ``loss.consistency_weight``, β = ``loss.temporal_weight``, γ = ``loss.domain_weight``,
w_rec = ``loss.reconstruction_weight``. Padded steps are excluded everywhere.

Absent modalities (``SATIOutput.present`` [B, 3], from the dataset file): every term leaves out the pieces a
sample lacks and keeps the paper's normalization. L_con compares each modality's batch distribution over the
samples that have it, and stays the mean over the three pairs (a pair with a side no sample has adds 0);
L_dom keeps its three classes, each (code type, modality) cross-entropy averaged over the samples that have
the modality and at least one other (a sample with one modality has nothing to tell apart), and adds 0 for a
group no such sample has (no such sample at all: the term is 0, regulariser included); L_ti and L_rec
average over the samples that have the modality. With every piece present each term is the paper's; with
one sample lacking audio each term equals the term computed on the batch without that sample's audio
pieces (tests/test_losses.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sati.config import AblationConfig, LossConfig
from sati.model.sati import SATIOutput

_PAIRS = (torch.tensor([0, 0, 1]), torch.tensor([2, 1, 2]))  # (t, v), (t, a), (a, v)


def task_loss(prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error; prediction, labels: [B]."""
    return F.mse_loss(prediction, labels)


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((x * x).sum(-1) + 1e-12)  # eps keeps the gradient finite at exact equality


def _batch_moments(x: torch.Tensor, keep: torch.Tensor | None, moments: int) -> list[torch.Tensor]:
    """x: [..., B, H], keep: [..., B] bool or None (all) → [E x, E (x−E x)^2, …, E (x−E x)^K], each [..., H],
    the expectations over the kept samples (none kept: zeros)."""
    if keep is None:
        mean = x.mean(-2, keepdim=True)
        return [mean.squeeze(-2)] + [((x - mean) ** k).mean(-2) for k in range(2, moments + 1)]
    w = keep.unsqueeze(-1).to(x.dtype)  # [..., B, 1]
    n = w.sum(-2).clamp_min(1)  # [..., 1]
    mean = (x * w).sum(-2) / n
    centred = x - mean.unsqueeze(-2)
    return [mean] + [((centred**k) * w).sum(-2) / n for k in range(2, moments + 1)]  # over moments, not data


def cmd(
    x: torch.Tensor,
    y: torch.Tensor,
    moments: int = 5,
    x_keep: torch.Tensor | None = None,
    y_keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Central moment discrepancy over the batch axis.

    x, y: [..., B, H] with values in (0, 1) → [...]:
    ‖E x − E y‖ + Σ_{k=2..K} ‖E (x−E x)^k − E (y−E y)^k‖; with ``x_keep``/``y_keep`` [..., B] bool each side's
    expectations run over its kept samples only (x and y may then be distributions of different samples).
    """
    return sum(_norm(a - b) for a, b in zip(_batch_moments(x, x_keep, moments), _batch_moments(y, y_keep, moments)))


def consistency_loss(shared_means: torch.Tensor, moments: int = 5, present: torch.Tensor | None = None) -> torch.Tensor:
    """L_con (Eq. 2): mean CMD over the pairs of modalities; shared_means: [M, B, H], M >= 2: for the three
    modalities the pairs (t,v), (t,a), (a,v), for fewer every pair. ``present`` [B, 3] bool (M = 3): each
    modality's distribution over the samples that have it; a pair with a side no sample has adds 0 to the
    mean over the three pairs."""
    i, j = _PAIRS if len(shared_means) == 3 else torch.triu_indices(len(shared_means), len(shared_means), 1)
    i, j = i.to(shared_means.device), j.to(shared_means.device)
    if present is None:
        return cmd(shared_means[i], shared_means[j], moments).mean()
    keep = present.t()  # [3, B]
    held = keep.any(1)  # [3]
    pair = cmd(shared_means[i], shared_means[j], moments, keep[i], keep[j])  # [3]
    return (pair * (held[i] & held[j]).to(pair.dtype)).mean()


def _kl(p: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    return ((p + eps) * torch.log((p + eps) / (q + eps))).sum(-1)


def temporal_jsd(codes: torch.Tensor, mask: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """L_ti (Eq. 7): mean JSD between the batch-averaged channel softmax of adjacent steps.

    codes: [B, T, C] video codes [S_v ; I_v]; mask: [B, T] bool. For the step pair (t, t+1), the
    batch average P_t, P_{t+1} runs over samples real at both steps; pairs with none are skipped.
    Returns 0 when no pair exists (T = 1).
    """
    p = torch.softmax(codes, dim=-1)  # [B, T, C]
    pair = (mask[:, :-1] & mask[:, 1:]).to(p.dtype).unsqueeze(-1)  # [B, T-1, 1]
    count = pair.sum(0)  # [T-1, 1]
    p_now = (p[:, :-1] * pair).sum(0) / count.clamp_min(1)  # [T-1, C]
    p_next = (p[:, 1:] * pair).sum(0) / count.clamp_min(1)
    mid = (p_now + p_next) / 2
    jsd = 0.5 * _kl(p_now, mid, eps) + 0.5 * _kl(p_next, mid, eps)  # [T-1]
    used = (count.squeeze(-1) > 0).to(p.dtype)
    return (jsd * used).sum() / used.sum().clamp_min(1)


def angular_margin_logits(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: torch.Tensor,
    scale: float,
    margin: float,
    form: str,
    fold: str = "paper",
) -> torch.Tensor:
    """Scaled cosine logits with an additive angular margin on the true class.

    features: [..., H], labels: [...] long, classes: [C, H] → [..., C].
    arcface (paper Eq. 4): s·cos(θ_y + τ); cosface (reference code): s·(cos θ_y − τ).
    cos(θ + τ) rises again once θ + τ > π (θ > π − τ), so a worse angle would get a larger logit.
    ``fold`` (arcface only): ``paper`` keeps Eq. 4 as written; ``easy`` uses cos θ where cos θ <= 0
    (insightface's ``easy_margin``); ``threshold`` uses cos θ − τ·sin τ where θ > π − τ, which lies
    below cos(θ + τ) = −1 there and keeps decreasing, so the logit falls with θ everywhere
    (insightface's default).
    """
    cos = F.normalize(features, dim=-1) @ F.normalize(classes, dim=-1).t()  # [..., C]
    if form == "cosface":
        target = cos - margin
    else:
        sin = torch.sqrt((1 - cos * cos).clamp_min(1e-12))
        target = cos * math.cos(margin) - sin * math.sin(margin)  # cos(θ + τ), θ ∈ [0, π]
        if fold == "easy":
            target = torch.where(cos > 0, target, cos)
        elif fold == "threshold":
            target = torch.where(cos > math.cos(math.pi - margin), target, cos - margin * math.sin(margin))
    onehot = F.one_hot(labels, classes.shape[0]).bool()
    return scale * torch.where(onehot, target, cos)


def domain_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: torch.Tensor,
    *,
    scale: float,
    margin: float,
    form: str = "arcface",
    reduction: str = "mean",
    l2: float = 0.01,
    fold: str = "paper",
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_dom (Eqs. 4-5) over the shared and the private codes.

    features: [2·M, B, H] discriminator outputs, shared codes of the M modalities first, then the
    private ones; labels: [2·M] modality ids; classes: [M, H]. Per code type, the batch-mean
    cross-entropy is averaged (reference) or summed (paper) over modalities; the two code types
    are added, each with l2·‖W‖² as in the reference. ``present`` [B, M] bool: each group's mean runs
    over the samples that have its modality (none: the group adds 0; the classes stay M).
    """
    g, b, _ = features.shape
    logits = angular_margin_logits(features, labels[:, None].expand(g, b), classes, scale, margin, form, fold)
    ce = F.cross_entropy(logits.reshape(g * b, -1), labels.repeat_interleave(b), reduction="none").view(g, b)
    if present is None:
        per_group = ce.mean(1).view(2, g // 2)  # [code type, modality]
    else:
        keep = present.t()[labels].to(ce.dtype)  # [g, B]
        per_group = ((ce * keep).sum(1) / keep.sum(1).clamp_min(1)).view(2, g // 2)
    per_type = per_group.mean(1) if reduction == "mean" else per_group.sum(1)
    return per_type.sum() + 2 * l2 * classes.pow(2).sum()


def reconstruction_loss(targets: torch.Tensor, masks: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean over modalities of the masked MSE between U_m [3, B, T, H] and r_m [3, B, H] at every real step."""
    err = (targets - reconstructions.unsqueeze(2)).pow(2).mean(-1)  # [3, B, T]
    m = masks.to(err.dtype)
    return ((err * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)).mean()


@dataclass
class LossBreakdown:
    """Each term (unweighted) and the weighted total; all scalars."""

    total: torch.Tensor
    task: torch.Tensor
    consistency: torch.Tensor
    temporal: torch.Tensor
    domain: torch.Tensor
    reconstruction: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self.__dict__.items()}


def total_loss(out: SATIOutput, labels: torch.Tensor, cfg: LossConfig, ablation: AblationConfig) -> LossBreakdown:
    """L = L_task + α L_con + β L_ti + γ L_dom + w_rec L_rec; terms with weight 0, ablated, or whose inputs
    are absent (None: ``ablation.text_only`` has no audio/video codes) are skipped. ``out.present`` [B, 3]
    leaves each sample's absent pieces out of every term (module docstring). ``out.present_in_batch`` [3]
    (``model.absent_modalities = zeros``, format 1's ``skip``) computes the terms as that format trained: a
    modality absent from the whole batch is left out of L_con and L_dom (which then compare the others; one
    left: skipped), and L_ti needs video."""
    zero = out.prediction.new_zeros(()).float()
    task = task_loss(out.prediction.float(), labels.float())
    present = out.present  # [B, 3] or None
    keep = list(range(3))  # the modalities the consistency and domain terms compare
    if out.present_in_batch is not None:
        keep = [m for m, here in enumerate(out.present_in_batch.tolist()) if here]
    con = zero
    if cfg.consistency_weight and out.shared_means is not None and len(keep) > 1:
        con = consistency_loss(out.shared_means[keep].float(), cfg.cmd_moments, present)
    ti = zero
    if ablation.til and cfg.temporal_weight and out.video_codes is not None and 2 in keep:
        video_mask = out.video_mask if present is None else out.video_mask & present[:, 2:]
        ti = temporal_jsd(out.video_codes.float(), video_mask)
    dom = zero
    # the discriminator tells a sample's modalities apart: a sample with one has none to tell apart
    told_apart = None if present is None else present & (present.sum(1, keepdim=True) > 1)  # [B, 3]
    if (
        ablation.adversarial
        and cfg.domain_weight
        and out.domain_features is not None
        and len(keep) > 1
        and (told_apart is None or bool(told_apart.any()))
    ):
        rows = keep + [3 + m for m in keep]  # shared, then private codes of the compared modalities
        dom = domain_loss(
            out.domain_features[rows].float(),
            torch.arange(2 * len(keep), device=out.domain_labels.device) % len(keep),
            out.domain_classes[keep].float(),
            scale=cfg.scale,
            margin=cfg.margin,
            form=cfg.margin_form,
            fold=cfg.margin_fold,
            reduction=cfg.domain_reduction,
            l2=cfg.domain_l2,
            present=told_apart,
        )
    rec = zero
    if cfg.reconstruction_weight and out.projections is not None:
        masks = out.projection_masks if present is None else out.projection_masks & present.t()[:, :, None]
        rec = reconstruction_loss(out.projections.float(), masks, out.reconstructions.float())
    total = (
        task
        + cfg.consistency_weight * con
        + cfg.temporal_weight * ti
        + cfg.domain_weight * dom
        + cfg.reconstruction_weight * rec
    )
    return LossBreakdown(total=total, task=task, consistency=con, temporal=ti, domain=dom, reconstruction=rec)
