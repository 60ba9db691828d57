"""One split in memory, and padding with masks into the ``Batch`` the model reads.

The time axis is shared by all modalities (the FBP gate is position-wise). A sample's text and
audio/video may differ in length; its sequence is as long as the longer of the two, and the
model masks every position past that (``Batch.mask``), past the text (``text_mask``) and past
the audio/video (``av_mask``). Text is tokenized once per split, never per batch.
"""

from __future__ import annotations

import numpy as np
import torch

from sati.batch import Batch
from sati.data.h5format import SplitArrays
from sati.data.tokens import Tokens


class SplitDataset:
    """One split ready to batch: arrays from the dataset file plus token ids.

    Args:
        arrays: the split as read from the file.
        tokens: the split's texts tokenized (``tokenize``), or None to use ``text_features``.
    """

    def __init__(self, arrays: SplitArrays, tokens: Tokens | None):
        if tokens is None and arrays.text_features is None:
            raise ValueError("need tokens or precomputed text features")
        self.arrays = arrays
        self.tokens = tokens
        self.text_lengths = tokens.lengths if tokens is not None else arrays.text_lengths
        self.seq_lengths = np.maximum(self.text_lengths, arrays.lengths)  # [N]

    def __len__(self) -> int:
        return len(self.arrays)

    def collate(self, indices: list[int], pad_to: int | None = None) -> Batch:
        """Gather samples ``indices`` into a Batch padded to the longest (or to ``pad_to``) steps."""
        idx = np.asarray(indices)
        a = self.arrays
        t = int(self.seq_lengths[idx].max())
        t = max(t, pad_to or 0)
        steps = np.arange(t)[None, :]
        av_len, text_len = a.lengths[idx], self.text_lengths[idx]

        def pad_features(x: np.ndarray, length: np.ndarray) -> torch.Tensor:  # [b, T0, D] -> [b, t, D]
            out = np.zeros((len(idx), t, x.shape[-1]), dtype=np.float32)
            n = min(t, x.shape[1])
            out[:, :n] = x[idx, :n]
            out *= (steps < length[:, None])[..., None]
            return torch.from_numpy(out)

        batch = dict(
            audio=pad_features(a.audio, av_len),
            video=pad_features(a.video, av_len),
            av_mask=torch.from_numpy(steps < av_len[:, None]),
            text_mask=torch.from_numpy(steps < text_len[:, None]),
            labels=torch.from_numpy(a.labels[idx].astype(np.float32)),
            ids=[a.ids[i] for i in idx],
            present=torch.from_numpy(np.ascontiguousarray(a.present[idx], dtype=bool)),
        )
        batch["mask"] = batch["av_mask"] | batch["text_mask"]
        if self.tokens is not None:
            ids = np.full((len(idx), t), self.tokens.pad_id, dtype=np.int64)
            n = min(t, self.tokens.ids.shape[1])
            ids[:, :n] = self.tokens.ids[idx, :n]
            batch["text_ids"] = torch.from_numpy(ids)
        else:
            batch["text_features"] = pad_features(a.text_features, text_len)
        return Batch(**batch)
