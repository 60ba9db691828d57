"""SATI building blocks: gradient reversal, positional encoding, masked cross-attention, FBP gate.

All tensors are batch-first: [B, T, ·].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.weight * grad, None


def reverse_grad(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by ``-weight`` (λ)."""
    return _ReverseGrad.apply(x, weight)


class PositionalEncoding(nn.Module):
    """Sinusoidal encoding added to [B, T, H] input (no dropout, no scaling); T ≤ max_len."""

    def __init__(self, hidden: int, max_len: int = 1024):
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, hidden, 2, dtype=torch.float32) * (-math.log(10000.0) / hidden))
        pe = torch.zeros(max_len, hidden)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)  # [max_len, H]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} steps exceeds the positional encoding's {self.pe.shape[0]}")
        return x + self.pe[: x.shape[1]]


class CrossAttention(nn.Module):
    """Multi-head attention of a text query over audio or video keys, padded keys masked.

    q: [B, T, H], kv: [B, T, H], key_mask: [B, T] bool (True = real) → [B, T, H].
    """

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(hidden, hidden, bias=False)
        self.k = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, t, h = q.shape
        split = lambda x: x.view(b, x.shape[1], self.heads, h // self.heads).transpose(1, 2)  # [B, nh, T, hs]
        attn = F.scaled_dot_product_attention(
            split(self.q(q)), split(self.k(kv)), split(self.v(kv)), attn_mask=key_mask[:, None, None, :]
        )
        return self.drop(self.out(attn.transpose(1, 2).reshape(b, t, h)))


class FBPGate(nn.Module):
    """Factorized bilinear pooling of two shared codes into a per-step gate.

    P = Dropout((x W_1) ⊙ (text W_2)) ∈ [B, T, o·k], sum-pooled over groups of k → [B, T, o],
    L2-normalised, then mapped to one gate value per step by ``gate_head`` (shared by the audio
    and video streams, as in the reference code).
    """

    def __init__(self, hidden: int, fbp_hidden: int, pool: int, dropout: float):
        super().__init__()
        self.fbp_hidden, self.pool = fbp_hidden, pool
        self.proj_x = nn.Linear(hidden, fbp_hidden * pool, bias=False)
        self.proj_text = nn.Linear(hidden, fbp_hidden * pool, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x, text: [B, T, H] → F_norm [B, T, o]."""
        p = self.drop(self.proj_x(x) * self.proj_text(text))  # [B, T, o*k]
        pooled = p.view(*p.shape[:-1], self.fbp_hidden, self.pool).sum(-1)  # [B, T, o]
        return F.normalize(pooled, dim=-1, eps=1e-12)


class GateHead(nn.Module):
    """F_norm [B, T, o] → gate [B, T, 1].

    linear (paper Eq. 12): F_norm W; sigmoid: σ(F_norm W + b), bounded and trainable;
    sign (reference code): 1[tanh(F_norm W + b) > 0], whose gradient is zero, so its
    parameters never train (they keep their initial values).
    """

    def __init__(self, fbp_hidden: int, kind: str):
        super().__init__()
        self.kind = kind
        self.linear = nn.Linear(fbp_hidden, 1, bias=kind != "linear")

    def forward(self, f_norm: torch.Tensor) -> torch.Tensor:
        z = self.linear(f_norm)
        if self.kind == "sigmoid":
            return torch.sigmoid(z)
        if self.kind == "sign":
            return (torch.tanh(z) > 0).to(z.dtype)
        return z
