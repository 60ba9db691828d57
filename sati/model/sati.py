"""The SATI model: one forward pass that returns everything the losses and metrics need.

Data flow (batch-first, H = hidden_size, o = fbp_hidden):

    text/audio/video encoders → U_m = LN(ReLU(Linear(X_m)))                       [B, T, H]
    private S_m = σ(P_m U_m), shared I_m = σ(P_s U_m) (one P_s for all three)      [B, T, H]
    reconstruction r_m = R_m(mean_t(S_m + I_m))                                    [B, H]
    discriminator d(GRL(ī_m)), d(GRL(s̄_m)) against class weights W                [6, B, H], [3, H]
    T̃ = S_t + PE, Ã = S_a + PE, Ṽ = S_v + PE
    F_ta = CA(T̃, Ã), F_tv = CA(T̃, Ṽ); gates g_a = G(FBP(I_a, I_t)), g_v = G(FBP(I_v, I_t))
    Z = [LN(F_ta·g_a + T̃) ; LN(F_tv·g_v + T̃)] → Transformer → masked mean → MLP → ŷ   [B]

``ablation.text_only`` removes audio and video: Z = [LN(T̃) ; LN(T̃)] (the full Z with both gates at 0)
→ the same Transformer, masked mean over the text and head; the aux losses' inputs are then absent.

Absence (``model.absent_modalities``): with ``file`` (the default) a modality the batch's presence mask
(from the dataset file) marks absent for a sample has its stream shut for that sample (g = 0, so its half
of Z is LN(T̃)), and ``present`` tells the losses which pieces to leave out; ``fuse`` ignores absence;
``zeros`` (format 1's ``skip``) shuts a stream whose values are all zero and tells the losses which
modalities the whole batch lacks (``present_in_batch``).

The masked mean over Z and the head run in float32 outside autocast, so under bf16 autocast the
prediction the metrics see is never rounded to bf16.

Every time mean and attention is masked, so predictions do not depend on how far a batch is padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sati.batch import Batch
from sati.config import AblationConfig, ModelConfig
from sati.model.layers import CrossAttention, FBPGate, GateHead, PositionalEncoding, reverse_grad
from sati.model.text import HFTextEncoder, PrecomputedText
from sati.pretrained import PRECOMPUTED

MODALITIES = ("text", "audio", "video")  # discriminator labels 0, 1, 2


@dataclass
class SATIOutput:
    """Everything one forward pass produces. Modality order is text, audio, video."""

    prediction: torch.Tensor  # [B] sentiment score
    # The codes below are None with ablation.text_only (no audio or video to compare the text with).
    shared_means: torch.Tensor | None  # [3, B, H] ī_m: masked time means of the shared codes
    private_means: torch.Tensor | None  # [3, B, H] s̄_m
    video_codes: torch.Tensor | None  # [B, T, 2H] [S_v ; I_v], input of the temporal JSD
    video_mask: torch.Tensor | None  # [B, T] bool, real video steps
    projections: torch.Tensor | None  # [3, B, T, H] U_m, reconstruction targets
    projection_masks: torch.Tensor | None  # [3, B, T] bool, each modality's real steps
    reconstructions: torch.Tensor | None  # [3, B, H] r_m
    gates: torch.Tensor  # [2, B, T] audio- and video-stream gate values (0 with ablation.text_only)
    domain_features: torch.Tensor | None = None  # [6, B, H] d(ī_t, ī_a, ī_v, s̄_t, s̄_a, s̄_v)
    domain_labels: torch.Tensor | None = None  # [6] long: 0, 1, 2, 0, 1, 2
    domain_classes: torch.Tensor | None = None  # [3, H] class weights W
    present: torch.Tensor | None = None  # [B, 3] bool: the t, a, v each sample has (None: all, or absence ignored)
    present_in_batch: torch.Tensor | None = None  # [3] bool: t, a, v in any sample (model.absent_modalities zeros)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x: [..., T, D], mask: [..., T] bool → [..., D], averaging only real steps."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(-2) / m.sum(-2).clamp_min(1.0)


def _av_encoder(dim: int, heads: int, cfg: ModelConfig, key: str) -> nn.TransformerEncoder:
    if dim % heads:
        divisors = [d for d in range(1, min(dim, 8) + 1) if dim % d == 0]
        raise ValueError(f"model.{key} = {heads} does not divide the feature dim {dim}; choose one of {divisors}")
    layer = nn.TransformerEncoderLayer(dim, heads, cfg.encoder_feedforward, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, cfg.encoder_layers, enable_nested_tensor=False)


def _projection(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.LayerNorm(hidden))


class SATI(nn.Module):
    """SATI for regression on [-3, 3].

    Args:
        cfg: model section of the pipeline config.
        ablation: Table II switches (the gate and the discriminator are skipped when off; with
            ``text_only`` the audio/video path is skipped, though its modules are built all the same,
            so a seed initializes the shared parts as in the full model and checkpoints keep one layout).
        audio_dim, video_dim: feature dims of the dataset.
        text_feature_dim: dim of precomputed text features (``text_encoder: precomputed``).
        pretrained_text: load the text encoder's pretrained weights (False: its architecture only,
            for loading a SATI checkpoint).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        ablation: AblationConfig,
        audio_dim: int,
        video_dim: int,
        text_feature_dim: int = 0,
        pretrained_text: bool = True,
    ):
        super().__init__()
        self.cfg, self.ablation = cfg, ablation
        h = cfg.hidden_size
        if cfg.text_encoder == PRECOMPUTED:
            if not text_feature_dim:
                raise ValueError("model.text_encoder = 'precomputed' but the dataset has no text_features")
            self.text_encoder = PrecomputedText(text_feature_dim)
        else:
            self.text_encoder = HFTextEncoder(cfg.text_encoder, cfg.freeze_text_layers, pretrained=pretrained_text)
        self.audio_encoder = _av_encoder(audio_dim, cfg.audio_heads, cfg, "audio_heads")
        self.video_encoder = _av_encoder(video_dim, cfg.video_heads, cfg, "video_heads")
        self.project = nn.ModuleList([_projection(d, h) for d in (self.text_encoder.out_dim, audio_dim, video_dim)])
        self.private = nn.ModuleList([nn.Linear(h, h) for _ in MODALITIES])
        self.shared = nn.Linear(h, h)
        self.reconstruct = nn.ModuleList([nn.Linear(h, h) for _ in MODALITIES])
        self.discriminator = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.domain_classes = nn.Parameter(nn.Linear(h, len(MODALITIES), bias=False).weight.detach().clone())
        self.position = PositionalEncoding(h)
        self.cross_audio = CrossAttention(h, cfg.cross_attention_heads, cfg.cross_attention_dropout)
        self.cross_video = CrossAttention(h, cfg.cross_attention_heads, cfg.cross_attention_dropout)
        self.fbp_audio = FBPGate(h, cfg.fbp_hidden, cfg.fbp_pool, cfg.fbp_dropout)
        self.fbp_video = FBPGate(h, cfg.fbp_hidden, cfg.fbp_pool, cfg.fbp_dropout)
        self.gate_head = GateHead(cfg.fbp_hidden, cfg.gate)  # shared by both streams
        self.norm_audio = nn.LayerNorm(h)
        self.norm_video = nn.LayerNorm(h)
        fusion_layer = nn.TransformerEncoderLayer(
            2 * h, cfg.fusion_heads, cfg.fusion_feedforward, dropout=0.1, batch_first=True
        )
        self.fusion = nn.TransformerEncoder(fusion_layer, 1, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(2 * h, h), nn.Dropout(cfg.dropout), nn.ReLU(), nn.Linear(h, 1))

    def forward(self, batch: Batch) -> SATIOutput:
        av_mask, text_mask, mask = batch.av_mask, batch.text_mask, batch.mask
        av_keep = av_mask.unsqueeze(-1)
        if batch.text_ids is not None:
            text = self.text_encoder(batch.text_ids, text_mask)
        else:
            text = self.text_encoder(batch.text_features, text_mask)
        text = text.float() * text_mask.unsqueeze(-1)  # [B, T, D_t]
        if self.ablation.text_only:
            return self._forward_text_only(text, text_mask)
        audio = self.audio_encoder(batch.audio, src_key_padding_mask=~av_mask) * av_keep  # [B, T, D_a]
        video = self.video_encoder(batch.video, src_key_padding_mask=~av_mask) * av_keep  # [B, T, D_v]

        u = torch.stack([p(x) for p, x in zip(self.project, (text, audio, video))])  # [3, B, T, H]
        private = torch.stack([torch.sigmoid(p(u[i])) for i, p in enumerate(self.private)])  # S_m
        shared = torch.sigmoid(self.shared(u))  # I_m [3, B, T, H]
        masks = torch.stack([text_mask, av_mask, av_mask])  # [3, B, T]
        private_means = masked_mean(private, masks)  # [3, B, H]
        shared_means = masked_mean(shared, masks)
        summed = masked_mean(private + shared, masks)
        recon = torch.stack([r(summed[i]) for i, r in enumerate(self.reconstruct)])  # [3, B, H]

        domain = {}
        if self.ablation.adversarial:
            codes = torch.cat([shared_means, private_means])  # [6, B, H]
            domain = dict(
                domain_features=self.discriminator(reverse_grad(codes, self.cfg.reverse_grad_weight)),
                domain_labels=torch.arange(6, device=codes.device) % 3,
                domain_classes=self.domain_classes,
            )

        t_pos, a_pos, v_pos = (self.position(private[i]) for i in range(3))  # T̃, Ã, Ṽ
        f_ta = self.cross_audio(t_pos, a_pos, av_mask)  # [B, T, H]
        f_tv = self.cross_video(t_pos, v_pos, av_mask)
        if self.ablation.gate:
            g_a = self.gate_head(self.fbp_audio(shared[1], shared[0]))  # [B, T, 1]
            g_v = self.gate_head(self.fbp_video(shared[2], shared[0]))
        else:
            g_a = g_v = torch.ones_like(f_ta[..., :1])
        present, in_batch = self._presence(batch)
        if present is not None:  # an absent stream is shut: Z's half is LN(T̃), as in text_only
            g_a = g_a * present[:, 1, None, None].to(g_a.dtype)
            g_v = g_v * present[:, 2, None, None].to(g_v.dtype)
        z = torch.cat([self.norm_audio(f_ta * g_a + t_pos), self.norm_video(f_tv * g_v + t_pos)], -1)  # [B, T, 2H]
        z = self.fusion(z, src_key_padding_mask=~mask)
        prediction = self._predict(z, mask)  # [B]

        return SATIOutput(
            prediction=prediction,
            shared_means=shared_means,
            private_means=private_means,
            video_codes=torch.cat([private[2], shared[2]], -1),
            video_mask=av_mask,
            projections=u,
            projection_masks=masks,
            reconstructions=recon,
            gates=torch.stack([g_a.squeeze(-1), g_v.squeeze(-1)]),
            present=None if in_batch is not None else present,  # zeros: the losses see the batch, as it trained
            present_in_batch=in_batch,
            **domain,
        )

    def _presence(self, batch: Batch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(per sample [B, 3] bool or None, per batch [3] bool or None) per ``model.absent_modalities``: file
        reads ``batch.present``; fuse ignores absence; zeros takes a sample whose audio (video) is all zero to
        lack it, and the batch to lack only what no sample has."""
        mode = self.cfg.absent_modalities
        if mode == "fuse":
            return None, None
        if mode == "file":
            return batch.present, None
        held = torch.stack(
            [batch.text_mask.any(1), (batch.audio != 0).flatten(1).any(1), (batch.video != 0).flatten(1).any(1)], 1
        )  # [B, 3]
        return held, held.any(0)

    def _predict(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """z: [B, T, 2H] fused steps, mask: [B, T] bool → ŷ [B] float32: the masked mean and the head in float32
        with autocast off (under bf16 autocast the score would otherwise be rounded to bf16, ~0.008 at 1.4)."""
        with torch.autocast(z.device.type, enabled=False):
            return self.head(masked_mean(z.float(), mask)).squeeze(-1)

    def _forward_text_only(self, text: torch.Tensor, text_mask: torch.Tensor) -> SATIOutput:
        """text: [B, T, D_t] encoded tokens, text_mask: [B, T] bool → the prediction from text alone.

        The full path with audio and video removed: no cross-attention (F = 0), so each stream is
        LN(T̃) and Z = [LN_a(T̃) ; LN_v(T̃)], what the full model computes with both gates at 0; no
        discriminator. Padding is the text's (``text_mask``), not the audio/video's."""
        u = self.project[0](text)  # U_t [B, T, H]
        t_pos = self.position(torch.sigmoid(self.private[0](u)))  # T̃ = S_t + PE [B, T, H]
        z = torch.cat([self.norm_audio(t_pos), self.norm_video(t_pos)], -1)  # [B, T, 2H]
        z = self.fusion(z, src_key_padding_mask=~text_mask)
        prediction = self._predict(z, text_mask)  # [B]
        shut = torch.zeros(2, *text_mask.shape, dtype=z.dtype, device=z.device)  # [2, B, T] both streams off
        return SATIOutput(
            prediction=prediction,
            shared_means=None,
            private_means=None,
            video_codes=None,
            video_mask=None,
            projections=None,
            projection_masks=None,
            reconstructions=None,
            gates=shut,
        )

    def parameter_groups(self, lr: float, text_lr: float | None) -> list[dict]:
        """Adam groups: the text encoder at ``text_lr`` (default ``lr``), the rest at ``lr``."""
        text = [p for p in self.text_encoder.parameters() if p.requires_grad]
        text_ids = {id(p) for p in text}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in text_ids]
        groups = [{"params": rest, "lr": lr}]
        if text:
            groups.append({"params": text, "lr": text_lr or lr})
        return groups
