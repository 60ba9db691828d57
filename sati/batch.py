"""The ``Batch`` the model reads: B samples padded to T steps, with masks.

It lives below both ``sati.data`` (which builds batches) and ``sati.model`` (which reads them), so
neither package imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    """B samples padded to T steps."""

    audio: torch.Tensor  # [B, T, D_a] float, zero past av_mask
    video: torch.Tensor  # [B, T, D_v] float, zero past av_mask
    av_mask: torch.Tensor  # [B, T] bool, True for real audio/video steps
    text_mask: torch.Tensor  # [B, T] bool, True for real text tokens / feature rows
    mask: torch.Tensor  # [B, T] bool, text_mask | av_mask
    labels: torch.Tensor  # [B] float
    ids: list[str]
    present: torch.Tensor  # [B, 3] bool, the modalities (text, audio, video) each sample has, from the data file
    text_ids: torch.Tensor | None = None  # [B, T] long, pad id past text_mask
    text_features: torch.Tensor | None = None  # [B, T, D_t] float, zero past text_mask

    def to(self, device: torch.device | str) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device, non_blocking=True)
        return Batch(**moved)

    def __len__(self) -> int:
        return len(self.labels)
