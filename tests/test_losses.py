"""The vectorized losses of ``sati.losses`` against the loop forms in ``sati/testing/reference_losses.py``,
gradient reversal, the weighted total and its ablation switches, gradient flow through a tiny
SATI model, and padding invariance of its predictions."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `tests.*` imports without a conftest
    sys.path.insert(0, str(ROOT))

from sati import losses  # noqa: E402
from sati.config import AblationConfig, LossConfig, ModelConfig  # noqa: E402
from sati.model.layers import reverse_grad  # noqa: E402
from sati.model.sati import SATI, SATIOutput  # noqa: E402
from sati.testing import reference_losses as ref  # noqa: E402

F64 = torch.float64


def close(actual, expected, rtol: float = 1e-5, atol: float = 1e-8) -> None:
    """|actual − expected| ≤ atol + rtol·|expected|; relative, because the JSD is ~1e-4."""
    a, e = float(actual), float(expected)
    assert math.isfinite(a) and math.isfinite(e), (a, e)
    assert abs(a - e) <= atol + rtol * abs(e), f"vectorized {a!r} vs loop {e!r} (diff {a - e:.3g})"


def prefix_mask(lengths: list[int], steps: int) -> torch.Tensor:
    return torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]


def random_lengths(gen: torch.Generator, batch: int, low: int, high: int) -> list[int]:
    return torch.randint(low, high + 1, (batch,), generator=gen).tolist()


def random_output(
    seed: int,
    batch: int = 6,
    steps: int = 7,
    hidden: int = 8,
    *,
    dtype=F64,
    av_lengths: list[int] | None = None,
    text_lengths: list[int] | None = None,
    code_spread: float = 1.0,
) -> SATIOutput:
    """A SATIOutput of random tensors with the documented shapes (no model involved).

    By default the lengths are ≤ steps − 2, so the last two steps are padding for every sample.
    Codes are sigmoid outputs (in (0, 1)) as in the model; ``code_spread`` scales the video codes'
    pre-activation so the JSD is not tiny.
    """
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)
    av_lengths = av_lengths or random_lengths(g, batch, 1, max(1, steps - 2))
    text_lengths = text_lengths or random_lengths(g, batch, 1, max(1, steps - 2))
    av, tx = prefix_mask(av_lengths, steps), prefix_mask(text_lengths, steps)
    return SATIOutput(
        prediction=rnd(batch),
        shared_means=torch.sigmoid(rnd(3, batch, hidden)),
        private_means=torch.sigmoid(rnd(3, batch, hidden)),
        video_codes=torch.sigmoid(code_spread * rnd(batch, steps, 2 * hidden)),
        video_mask=av,
        projections=rnd(3, batch, steps, hidden),
        projection_masks=torch.stack([tx, av, av]),
        reconstructions=rnd(3, batch, hidden),
        gates=torch.rand(2, batch, steps, generator=g, dtype=dtype),
        domain_features=torch.relu(rnd(6, batch, hidden)) + 0.05,
        domain_labels=torch.arange(6) % 3,
        domain_classes=rnd(3, hidden),
    )


# ------------------------------------------------------------------------------------------------
# CMD / consistency


@pytest.mark.parametrize("seed,batch,hidden,moments", [(0, 5, 4, 5), (1, 9, 16, 5), (2, 3, 7, 3), (3, 2, 5, 1)])
def test_cmd_matches_loop(seed, batch, hidden, moments):
    g = torch.Generator().manual_seed(seed)
    x = torch.sigmoid(torch.randn(batch, hidden, generator=g, dtype=F64))
    y = torch.sigmoid(2 * torch.randn(batch, hidden, generator=g, dtype=F64))
    close(losses.cmd(x, y, moments), ref.cmd(x, y, moments))
    close(losses.cmd(x, x, moments), 0.0, atol=1e-5)  # identical inputs: only the eps


def test_cmd_batched_leading_dims_match_loop():
    g = torch.Generator().manual_seed(4)
    x = torch.sigmoid(torch.randn(3, 6, 5, generator=g, dtype=F64))
    y = torch.sigmoid(torch.randn(3, 6, 5, generator=g, dtype=F64))
    got = losses.cmd(x, y)
    assert got.shape == (3,)
    for i in range(3):
        close(got[i], ref.cmd(x[i], y[i]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_consistency_matches_loop(seed):
    out = random_output(seed, batch=7, hidden=12)
    close(losses.consistency_loss(out.shared_means), ref.consistency_loss(out.shared_means))


def test_consistency_uses_the_three_pairs():
    """Text equal to audio: only CMD(t,v) and CMD(a,v) remain, and they are equal."""
    g = torch.Generator().manual_seed(5)
    t = torch.sigmoid(torch.randn(6, 8, generator=g, dtype=F64))
    v = torch.sigmoid(torch.randn(6, 8, generator=g, dtype=F64))
    got = losses.consistency_loss(torch.stack([t, t, v]))
    close(got, 2 * ref.cmd(t, v) / 3, atol=2e-6)


# ------------------------------------------------------------------------------------------------
# temporal JSD


@pytest.mark.parametrize("seed,spread", [(0, 1.0), (1, 1.0), (2, 4.0), (3, 4.0)])
def test_temporal_jsd_matches_loop(seed, spread):
    out = random_output(seed, batch=6, steps=9, hidden=5, code_spread=spread)
    assert not out.video_mask[:, -1].any()  # fully padded tail steps
    got = losses.temporal_jsd(out.video_codes, out.video_mask)
    want = ref.temporal_jsd(out.video_codes, out.video_mask)
    assert want > 0
    close(got, want)


def test_temporal_jsd_all_valid_matches_unmasked_reference():
    """With no padding, the masked loss is the reference code's formula on seq-first codes."""
    g = torch.Generator().manual_seed(6)
    codes = torch.sigmoid(3 * torch.randn(5, 8, 6, generator=g, dtype=F64))  # [B, T, C]
    mask = torch.ones(5, 8, dtype=torch.bool)
    want = ref.temporal_jsd_unmasked(codes.transpose(0, 1))  # [T, B, C]
    close(ref.temporal_jsd(codes, mask), want, rtol=1e-12)
    close(losses.temporal_jsd(codes, mask), want)


def test_temporal_jsd_single_step_is_zero():
    codes = torch.randn(4, 1, 6, dtype=F64)
    mask = torch.ones(4, 1, dtype=torch.bool)
    assert ref.temporal_jsd(codes, mask) == 0.0
    got = losses.temporal_jsd(codes, mask)
    assert torch.isfinite(got) and float(got) == 0.0


def test_temporal_jsd_without_overlapping_pairs_is_zero():
    """Every sample has one real step: no pair (t, t+1) is real in any sample."""
    codes = torch.randn(3, 5, 4, dtype=F64)
    mask = prefix_mask([1, 1, 1], 5)
    assert ref.temporal_jsd(codes, mask) == 0.0
    assert float(losses.temporal_jsd(codes, mask)) == 0.0


def test_temporal_jsd_ignores_padding():
    out = random_output(7, batch=5, steps=8, hidden=4, code_spread=3.0)
    codes, mask = out.video_codes, out.video_mask
    base = losses.temporal_jsd(codes, mask)
    assert float(base) > 0
    # (1) extra padded steps with arbitrary values appended at the end
    extra = 100 * torch.randn(5, 6, codes.shape[-1], dtype=F64)
    longer = losses.temporal_jsd(
        torch.cat([codes, extra], 1), torch.cat([mask, torch.zeros(5, 6, dtype=torch.bool)], 1)
    )
    close(longer, base, rtol=1e-12)
    # (2) the existing padded positions overwritten with garbage
    garbage = torch.where(mask[..., None], codes, 50 * torch.randn_like(codes))
    close(losses.temporal_jsd(garbage, mask), base, rtol=1e-12)
    # and the garbage does change the value when it is treated as real: the test can fail
    assert abs(float(losses.temporal_jsd(garbage, torch.ones_like(mask))) - float(base)) > 1e-3


# ------------------------------------------------------------------------------------------------
# angular-margin domain loss


@pytest.mark.parametrize("form", ["arcface", "cosface"])
def test_angular_margin_per_sample_matches_loop(form):
    """Per sample: cross-entropy of the vectorized logits = ℓ(f, y) of the loop form."""
    g = torch.Generator().manual_seed(8)
    hidden = 6
    classes = torch.randn(3, hidden, generator=g, dtype=F64)
    feats = torch.randn(12, hidden, generator=g, dtype=F64)
    labels = torch.arange(12) % 3
    # Two samples nearly opposite their class (θ + τ > π) and one nearly on it (θ ≈ 0).
    feats[0] = -classes[0] + 0.05 * torch.randn(hidden, generator=g, dtype=F64)
    feats[4] = -2 * classes[1] + 0.05 * torch.randn(hidden, generator=g, dtype=F64)
    feats[8] = classes[2] + 0.01 * torch.randn(hidden, generator=g, dtype=F64)
    logits = losses.angular_margin_logits(feats, labels, classes, 30.0, 0.5, form)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    for i in range(12):
        close(ce[i], ref.angular_margin_loss(feats[i], int(labels[i]), classes, scale=30.0, margin=0.5, form=form))


@pytest.mark.parametrize("form", ["arcface", "cosface"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("scale,margin,l2", [(30.0, 0.5, 0.01), (8.0, 0.2, 0.1)])
def test_domain_loss_matches_loop(form, reduction, scale, margin, l2):
    out = random_output(9, batch=7, hidden=10)
    kwargs = dict(scale=scale, margin=margin, form=form, reduction=reduction, l2=l2)
    got = losses.domain_loss(out.domain_features, out.domain_labels, out.domain_classes, **kwargs)
    want = ref.domain_loss(out.domain_features, out.domain_labels, out.domain_classes, **kwargs)
    close(got, want)


def test_domain_loss_forms_and_reductions_differ():
    """Sanity that the switches do something (else the parametrized test above proves little)."""
    out = random_output(10, batch=5, hidden=6)
    val = lambda **k: float(
        losses.domain_loss(
            out.domain_features, out.domain_labels, out.domain_classes, scale=30.0, margin=0.5, l2=0.01, **k
        )
    )
    assert abs(val(form="arcface", reduction="mean") - val(form="cosface", reduction="mean")) > 1e-3
    # sum over modalities = 3 × the mean over modalities, for the cross-entropy part
    w2 = 2 * 0.01 * float(out.domain_classes.pow(2).sum())
    close(val(form="cosface", reduction="sum") - w2, 3 * (val(form="cosface", reduction="mean") - w2), rtol=1e-9)


# ------------------------------------------------------------------------------------------------
# reconstruction and task


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_matches_loop(seed):
    out = random_output(seed, batch=5, steps=6, hidden=4)
    got = losses.reconstruction_loss(out.projections, out.projection_masks, out.reconstructions)
    close(got, ref.reconstruction_loss(out.projections, out.projection_masks, out.reconstructions))


def test_reconstruction_all_valid_is_plain_mse_and_ignores_padding():
    g = torch.Generator().manual_seed(11)
    u = torch.randn(3, 4, 5, 6, generator=g, dtype=F64)
    r = torch.randn(3, 4, 6, generator=g, dtype=F64)
    full = torch.ones(3, 4, 5, dtype=torch.bool)
    plain = ((u - r[:, :, None, :]) ** 2).mean()  # spec 2.5, no padding
    close(losses.reconstruction_loss(u, full, r), plain, rtol=1e-12)
    # padded steps with huge values change nothing
    padded_u = torch.cat([u, 1e3 * torch.randn(3, 4, 3, 6, dtype=F64)], 2)
    padded_m = torch.cat([full, torch.zeros(3, 4, 3, dtype=torch.bool)], 2)
    close(losses.reconstruction_loss(padded_u, padded_m, r), plain, rtol=1e-12)


def test_task_loss_matches_loop():
    g = torch.Generator().manual_seed(12)
    p, y = torch.randn(9, generator=g, dtype=F64), 3 * torch.rand(9, generator=g, dtype=F64)
    close(losses.task_loss(p, y), ref.task_loss(p, y), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# gradient reversal


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_reverse_grad(weight):
    g = torch.Generator().manual_seed(13)
    x = torch.randn(4, 5, generator=g, dtype=F64, requires_grad=True)
    upstream = torch.randn(4, 5, generator=g, dtype=F64)
    y = reverse_grad(x, weight)
    assert torch.equal(y, x)  # identity forward
    (y * upstream).sum().backward()
    torch.testing.assert_close(x.grad, -weight * upstream, rtol=0, atol=1e-15)


def test_reverse_grad_inside_a_graph():
    """d/dx of (2·GRL(x²)).sum() = −w·4x."""
    x = torch.tensor([0.5, -1.5, 2.0], dtype=F64, requires_grad=True)
    (2 * reverse_grad(x**2, 0.3)).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * 4 * x.detach(), rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# total loss, weights and ablations

# Every term on (reconstruction is off by default, as in the paper).
ALL_TERMS = dataclasses.replace(LossConfig(), reconstruction_weight=1.0)
CUSTOM = dataclasses.replace(
    LossConfig(),
    consistency_weight=0.7,
    temporal_weight=2.5,
    domain_weight=0.3,
    reconstruction_weight=0.2,
    margin=0.35,
    scale=16.0,
    domain_l2=0.05,
)


@pytest.mark.parametrize(
    "cfg",
    [ALL_TERMS, CUSTOM, dataclasses.replace(CUSTOM, margin_form="cosface", domain_reduction="sum")],
    ids=["default", "custom", "custom-cosface-sum"],
)
def test_total_loss_matches_loop(cfg):
    out = random_output(14, batch=6, steps=7, hidden=8, code_spread=3.0)
    labels = torch.randn(6, dtype=F64)
    got = losses.total_loss(out, labels, cfg, AblationConfig())
    want = ref.total_loss(out, labels, cfg, AblationConfig())
    for name in ("task", "consistency", "temporal", "domain", "reconstruction", "total"):
        close(getattr(got, name), want[name], rtol=2e-5, atol=1e-6)
    # the weighted sum, from the returned (unweighted) terms
    close(
        got.total,
        got.task
        + cfg.consistency_weight * got.consistency
        + cfg.temporal_weight * got.temporal
        + cfg.domain_weight * got.domain
        + cfg.reconstruction_weight * got.reconstruction,
        rtol=1e-6,
    )
    assert set(got.as_floats()) == {"total", "task", "consistency", "temporal", "domain", "reconstruction"}


def test_total_loss_weights_scale_their_terms():
    out = random_output(15, code_spread=3.0)
    labels = torch.randn(6, dtype=F64)
    base = losses.total_loss(out, labels, ALL_TERMS, AblationConfig())
    for field, term in [
        ("consistency_weight", "consistency"),
        ("temporal_weight", "temporal"),
        ("domain_weight", "domain"),
        ("reconstruction_weight", "reconstruction"),
    ]:
        w = getattr(ALL_TERMS, field)
        bumped = losses.total_loss(out, labels, dataclasses.replace(ALL_TERMS, **{field: w + 1.5}), AblationConfig())
        close(bumped.total - base.total, 1.5 * getattr(base, term), rtol=1e-4, atol=1e-6)
        assert float(getattr(base, term)) > 0


def test_total_loss_ablations_zero_their_terms():
    out = random_output(16, code_spread=3.0)
    labels = torch.randn(6, dtype=F64)
    cfg = CUSTOM
    full = losses.total_loss(out, labels, cfg, AblationConfig())
    assert float(full.temporal) > 0 and float(full.domain) > 0

    no_til = losses.total_loss(out, labels, cfg, AblationConfig(til=False))
    assert float(no_til.temporal) == 0.0
    close(no_til.total, full.total - cfg.temporal_weight * full.temporal, rtol=1e-6)

    no_adv = losses.total_loss(out, labels, cfg, AblationConfig(adversarial=False))
    assert float(no_adv.domain) == 0.0
    close(no_adv.total, full.total - cfg.domain_weight * full.domain, rtol=1e-6)

    want = ref.total_loss(out, labels, cfg, AblationConfig(til=False, adversarial=False))
    both = losses.total_loss(out, labels, cfg, AblationConfig(til=False, adversarial=False))
    close(both.total, want["total"], rtol=2e-5)
    # an output without discriminator features (the model with adversarial=False) has no domain term
    bare = dataclasses.replace(out, domain_features=None, domain_labels=None, domain_classes=None)
    close(losses.total_loss(bare, labels, cfg, AblationConfig()).total, no_adv.total, rtol=1e-7)


# ------------------------------------------------------------------------------------------------
# gradient flow and padding invariance with a tiny model


@pytest.fixture(scope="module")
def tiny_encoder_dir(tiny_encoder):
    return tiny_encoder


@pytest.fixture(scope="module")
def token_split(tiny_encoder_dir):
    from sati.data.dataset import SplitDataset
    from sati.data.synth import generate
    from sati.data.tokens import tokenize
    from sati.pretrained import load_tokenizer

    arrays = generate("mosi", scale=0.03, seed=0)["train"]
    tokens = tokenize(load_tokenizer(str(tiny_encoder_dir)), arrays.text, 50)
    return SplitDataset(arrays, tokens), arrays.audio.shape[-1], arrays.video.shape[-1]


def tiny_model(
    encoder: str,
    ablation: AblationConfig | None = None,
    gate: str = "linear",
    audio_dim: int = 74,
    video_dim: int = 47,
    text_feature_dim: int = 0,
    seed: int = 0,
) -> SATI:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(
        ModelConfig(), text_encoder=encoder, encoder_feedforward=64, fusion_feedforward=64, hidden_size=32, gate=gate
    )
    return SATI(cfg, ablation or AblationConfig(), audio_dim, video_dim, text_feature_dim=text_feature_dim)


def backward_grads(model: SATI, batch) -> dict[str, torch.Tensor | None]:
    model.train()
    torch.manual_seed(1)
    out = model(batch)
    losses.total_loss(out, batch.labels, ALL_TERMS, model.ablation).total.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def has_signal(grad: torch.Tensor | None) -> bool:
    return grad is not None and bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)


def is_dead(grad: torch.Tensor | None) -> bool:
    return grad is None or bool((grad == 0).all())


GATE_PARAMS = ("gate_head.", "fbp_audio.", "fbp_video.")


@pytest.mark.parametrize("gate", ["linear", "sigmoid"])
def test_every_parameter_gets_a_gradient(tiny_encoder_dir, token_split, gate):
    ds, audio_dim, video_dim = token_split
    model = tiny_model(str(tiny_encoder_dir), gate=gate, audio_dim=audio_dim, video_dim=video_dim)
    grads = backward_grads(model, ds.collate(list(range(8))))
    assert any(n.startswith(GATE_PARAMS) for n in grads) and any(n.startswith("text_encoder.") for n in grads)
    missing = [n for n, g in grads.items() if not has_signal(g)]
    assert not missing, f"no (finite, non-zero) gradient for {missing}"


def test_sign_gate_does_not_train(tiny_encoder_dir, token_split):
    ds, audio_dim, video_dim = token_split
    model = tiny_model(str(tiny_encoder_dir), gate="sign", audio_dim=audio_dim, video_dim=video_dim)
    grads = backward_grads(model, ds.collate(list(range(8))))
    gate = {n: g for n, g in grads.items() if n.startswith(GATE_PARAMS)}
    assert len(gate) >= 3
    assert all(is_dead(g) for g in gate.values()), [n for n, g in gate.items() if not is_dead(g)]
    rest = [n for n, g in grads.items() if not n.startswith(GATE_PARAMS) and not has_signal(g)]
    assert not rest, f"only the gate should be dead, also dead: {rest}"


def test_gate_ablation_leaves_gate_untrained(tiny_encoder_dir, token_split):
    ds, audio_dim, video_dim = token_split
    model = tiny_model(str(tiny_encoder_dir), AblationConfig(gate=False), audio_dim=audio_dim, video_dim=video_dim)
    grads = backward_grads(model, ds.collate(list(range(8))))
    gate = {n: g for n, g in grads.items() if n.startswith(GATE_PARAMS)}
    assert gate and all(g is None for g in gate.values())
    assert has_signal(grads["cross_audio.q.weight"]) and has_signal(grads["discriminator.0.weight"])


def test_adversarial_ablation_leaves_discriminator_untrained(tiny_encoder_dir, token_split):
    ds, audio_dim, video_dim = token_split
    model = tiny_model(
        str(tiny_encoder_dir), AblationConfig(adversarial=False), audio_dim=audio_dim, video_dim=video_dim
    )
    grads = backward_grads(model, ds.collate(list(range(8))))
    disc = {n: g for n, g in grads.items() if n.startswith(("discriminator.", "domain_classes"))}
    assert len(disc) == 3 and all(g is None for g in disc.values())
    assert has_signal(grads["gate_head.linear.weight"]) and has_signal(grads["shared.weight"])


def test_discriminator_and_encoders_get_opposite_pressure(tiny_encoder_dir, token_split):
    """The GRL flips the domain gradient for everything upstream of it: with only the domain term,
    the gradient on the shared projection reverses sign when reverse_grad_weight goes 1 → −1."""
    ds, audio_dim, video_dim = token_split
    batch = ds.collate(list(range(8)))
    grads = []
    for weight in (1.0, -1.0):
        model = tiny_model(str(tiny_encoder_dir), audio_dim=audio_dim, video_dim=video_dim)
        model.cfg = dataclasses.replace(model.cfg, reverse_grad_weight=weight)
        model.eval()
        out = model(batch)
        losses.domain_loss(
            out.domain_features, out.domain_labels, out.domain_classes, scale=30.0, margin=0.5
        ).backward()
        grads.append((model.shared.weight.grad.clone(), model.discriminator[0].weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], -grads[1][0])  # upstream: reversed
    torch.testing.assert_close(grads[0][1], grads[1][1])  # discriminator: unchanged
    assert grads[0][0].abs().sum() > 0


def _assert_padding_invariant(model: SATI, ds, idx: list[int]) -> None:
    model.eval()
    short = ds.collate(idx)
    t = short.audio.shape[1]
    long = ds.collate(idx, pad_to=t + 11)
    assert long.audio.shape[1] == t + 11 and short.mask[:, -1].any()
    with torch.no_grad():
        a, b = model(short), model(long)
        la = losses.total_loss(a, short.labels, LossConfig(), model.ablation)
        lb = losses.total_loss(b, long.labels, LossConfig(), model.ablation)
    torch.testing.assert_close(a.prediction, b.prediction, rtol=0, atol=1e-5)
    assert a.prediction.abs().sum() > 0
    for name, v in la.as_floats().items():
        assert abs(v - getattr(lb, name).item()) <= 1e-5 + 1e-5 * abs(v), name


def test_predictions_ignore_padding_tokenized_text(tiny_encoder_dir, token_split):
    ds, audio_dim, video_dim = token_split
    model = tiny_model(str(tiny_encoder_dir), audio_dim=audio_dim, video_dim=video_dim)
    _assert_padding_invariant(model, ds, [3, 0, 5, 1, 7, 2])


def test_predictions_ignore_padding_precomputed_text():
    from sati.data.dataset import SplitDataset
    from sati.data.synth import generate

    arrays = generate("mosi", scale=0.03, seed=0, text_feature_dim=16)["train"]
    ds = SplitDataset(arrays, None)
    model = tiny_model(
        "precomputed", audio_dim=arrays.audio.shape[-1], video_dim=arrays.video.shape[-1], text_feature_dim=16
    )
    _assert_padding_invariant(model, ds, [4, 1, 6, 0, 2])


def _target_logit(theta: torch.Tensor, margin: float, fold: str) -> torch.Tensor:
    """The true-class logit (scale 1) of a 2-d feature at angle θ from its class vector."""
    features = torch.stack([torch.cos(theta), torch.sin(theta)], -1)  # [N, 2]
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=theta.dtype)
    labels = torch.zeros(len(theta), dtype=torch.long)
    return losses.angular_margin_logits(features, labels, classes, 1.0, margin, "arcface", fold)[:, 0]


@pytest.mark.parametrize("margin", [0.3, 0.5, 1.0])
def test_angular_margin_fold_guards_follow_insightface(margin):
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    paper = _target_logit(theta, margin, "paper")
    assert (paper.diff() > 1e-9).any()  # Eq. 4 as written folds over: past π − τ a worse angle scores higher
    assert torch.allclose(paper, torch.cos(theta + margin), atol=1e-6)
    easy, threshold = _target_logit(theta, margin, "easy"), _target_logit(theta, margin, "threshold")
    assert (threshold.diff() <= 1e-9).all()  # never rises as θ grows
    inside = torch.cos(theta) > 0  # insightface easy_margin: the margin only where cos θ > 0
    assert torch.allclose(easy[inside], torch.cos(theta[inside] + margin), atol=1e-6)
    assert torch.allclose(easy[~inside], torch.cos(theta[~inside]), atol=1e-6)
    before, past = theta < math.pi - margin - 1e-6, theta > math.pi - margin + 1e-6  # insightface default
    assert torch.allclose(threshold[before], torch.cos(theta[before] + margin), atol=1e-6)
    assert torch.allclose(threshold[past], torch.cos(theta[past]) - margin * math.sin(margin), atol=1e-6)


def test_margin_fold_is_a_config_option_with_the_paper_form_as_default():
    assert LossConfig().margin_fold == "paper"
    out = random_output(3, batch=5, hidden=8)
    kwargs = {"scale": 30.0, "margin": 0.5, "form": "arcface"}
    paper = losses.domain_loss(out.domain_features, out.domain_labels, out.domain_classes, **kwargs)
    assert torch.allclose(paper, losses.domain_loss(out.domain_features, out.domain_labels, out.domain_classes,
                                                    fold="paper", **kwargs))  # fmt: skip


# ------------------------------------------------------------------------------------------------
# absent modalities: per-sample masks inside every term (SATIOutput.present [B, 3])


def _with_present(out: SATIOutput, present: torch.Tensor) -> SATIOutput:
    return dataclasses.replace(out, present=present)


def test_with_every_modality_present_each_term_is_the_papers():
    """A mask with every piece present gives the unmasked (paper's) terms, and the loop forms, to float precision."""
    out = random_output(20, batch=6, steps=7, hidden=8, code_spread=3.0)
    labels = torch.randn(6, dtype=F64)
    masked = losses.total_loss(
        _with_present(out, torch.ones(6, 3, dtype=torch.bool)), labels, ALL_TERMS, AblationConfig()
    )
    plain = losses.total_loss(out, labels, ALL_TERMS, AblationConfig())
    want = ref.total_loss(out, labels, ALL_TERMS, AblationConfig())
    for name in ("task", "consistency", "temporal", "domain", "reconstruction", "total"):
        close(getattr(masked, name), getattr(plain, name), rtol=1e-12, atol=1e-15)
        close(getattr(masked, name), want[name], rtol=2e-5, atol=1e-6)


def _domain_pieces(out: SATIOutput, keep: list[list[int]], cfg: LossConfig) -> float:
    """Reference L_dom (reduction mean) from its pieces: for each code type and modality m, the mean over the
    samples ``keep[m]`` of the loop-form cross-entropy, a group without samples adding 0; the mean over the
    three modalities, summed over the two code types, plus the regulariser l2·‖W‖² per code type."""
    total = 0.0
    for code_type in range(2):
        groups = []
        for m in range(3):
            ce = [
                ref.angular_margin_loss(
                    out.domain_features[3 * code_type + m, b], m, out.domain_classes,
                    scale=cfg.scale, margin=cfg.margin, form=cfg.margin_form,
                )
                for b in keep[m]
            ]  # fmt: skip
            groups.append(sum(ce) / len(ce) if ce else 0.0)
        total += sum(groups) / 3 + cfg.domain_l2 * float(out.domain_classes.double().pow(2).sum())
    return total


@pytest.mark.parametrize("modality", [1, 2], ids=["audio", "video"])
def test_a_sample_without_a_modality_is_the_batch_without_that_samples_pieces(modality):
    """Sample 2 lacks ``modality``. Each term equals the term on the batch without sample 2's pieces of it:
    L_con: the three pairs' CMD with that modality's distribution over the other 5 samples (the other
    modalities' over all 6), mean over the 3 pairs; L_dom: the (code type, modality) groups of that modality
    averaged over the other 5 samples, 3 classes kept; L_ti (video): the batch without sample 2; L_rec: that
    modality's error averaged over the other samples' steps; L_task: unchanged (the label is real)."""
    out = random_output(21, batch=6, steps=7, hidden=8, code_spread=3.0)
    labels = torch.randn(6, dtype=F64)
    present = torch.ones(6, 3, dtype=torch.bool)
    present[2, modality] = False
    got = losses.total_loss(_with_present(out, present), labels, ALL_TERMS, AblationConfig())

    others = [0, 1, 3, 4, 5]
    keep = [list(range(6)) for _ in range(3)]
    keep[modality] = others
    s = [out.shared_means[m][keep[m]] for m in range(3)]  # each modality's distribution: [n_m, H]
    con = (ref.cmd(s[0], s[2]) + ref.cmd(s[0], s[1]) + ref.cmd(s[1], s[2])) / 3
    close(got.consistency, con)
    close(got.domain, _domain_pieces(out, keep, ALL_TERMS))
    video = keep[2]
    close(got.temporal, ref.temporal_jsd(out.video_codes[video], out.video_mask[video]))
    masks = out.projection_masks.clone()
    masks[modality, 2] = False  # sample 2's steps of that modality are not reconstructed
    close(got.reconstruction, ref.reconstruction_loss(out.projections, masks, out.reconstructions))
    close(got.task, ref.task_loss(out.prediction, labels))
    # and the absent pieces did count before they were masked: the test can fail
    full = losses.total_loss(out, labels, ALL_TERMS, AblationConfig())
    assert abs(float(full.consistency) - float(got.consistency)) > 1e-4
    assert abs(float(full.domain) - float(got.domain)) > 1e-4


def test_a_modality_no_sample_has_keeps_the_papers_normalization():
    """No sample has audio: L_con is the mean over the paper's three pairs with the two audio pairs adding 0
    (not CMD(t, v) alone), and L_dom keeps its three classes, the audio groups adding 0 (not a 2-class
    cross-entropy)."""
    out = random_output(22, batch=6, steps=7, hidden=8, code_spread=3.0)
    labels = torch.randn(6, dtype=F64)
    present = torch.ones(6, 3, dtype=torch.bool)
    present[:, 1] = False
    got = losses.total_loss(_with_present(out, present), labels, ALL_TERMS, AblationConfig())
    close(got.consistency, ref.cmd(out.shared_means[0], out.shared_means[2]) / 3)
    everyone = list(range(6))
    close(got.domain, _domain_pieces(out, [everyone, [], everyone], ALL_TERMS))
    two_class = ref.domain_loss(
        out.domain_features[[0, 2, 3, 5]], [0, 1, 0, 1], out.domain_classes[[0, 2]], scale=30.0, margin=0.5,
        form="arcface",
    )  # fmt: skip
    assert abs(float(got.domain) - two_class) > 1e-3
    close(got.temporal, ref.temporal_jsd(out.video_codes, out.video_mask))  # video is there


def test_masked_terms_stay_vectorized_and_differentiable():
    """Gradients flow through the masked terms to the present pieces only."""
    out = random_output(23, batch=5, steps=6, hidden=4, code_spread=3.0)
    shared = out.shared_means.clone().requires_grad_(True)
    present = torch.ones(5, 3, dtype=torch.bool)
    present[1, 1] = False
    con = losses.consistency_loss(shared, 5, present)
    con.backward()
    assert shared.grad[1, 1].abs().sum() == 0  # sample 1's audio code: absent, no gradient
    assert shared.grad[1, 0].abs().sum() > 0 and shared.grad[1, 2].abs().sum() > 0
