"""From ``cfg.data`` to batches: open the dataset file once, tokenize each split at most once.

Text tokenized by ``sati data prepare --tokenizer`` is read from the file when it matches the
model's tokenizer and ``data.max_text_tokens`` (``sati.data.tokens``); otherwise each split is
tokenized here, once. The trainer asks for ``("train", "valid")``; only evaluation asks for ``"test"``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sati.config import PipelineConfig
from sati.data.dataset import SplitDataset
from sati.data.h5format import DataError, DatasetInfo, check_feature_dims, read_info, read_split
from sati.data.tokens import stored_tokens, tokenize, tokenizer_fingerprint
from sati.pretrained import PRECOMPUTED, load_tokenizer


def ensure_dataset(cfg: PipelineConfig) -> Path:
    """The dataset path; generated first when absent and ``data.generate`` names a preset."""
    path = Path(cfg.data.path)
    if not path.exists() and cfg.data.generate:
        from sati.data.synth import write_synthetic

        print(f"generating a synthetic {cfg.data.generate} dataset at {path} (data.generate)", file=sys.stderr)
        write_synthetic(path, cfg.data.generate, seed=0, scale=cfg.data.generate_scale)
    return path


def load_split_datasets(
    cfg: PipelineConfig, splits: Iterable[str], tokenizer=None
) -> tuple[dict[str, SplitDataset], DatasetInfo]:
    """Read ``splits`` from the dataset file; tokens from the file when they fit, else tokenized once."""
    path = ensure_dataset(cfg)
    info = read_info(path)
    check_feature_dims(
        str(path), info.audio_dim, info.video_dim, audio_heads=cfg.model.audio_heads, video_heads=cfg.model.video_heads
    )
    if info.missing_modalities:
        print(
            f"data {path}: {' and '.join(info.missing_modalities)} absent (zeros in the file); "
            "the model learns nothing from them",
            file=sys.stderr,
        )
    precomputed = cfg.model.text_encoder == PRECOMPUTED
    if precomputed and not info.text_feature_dim:
        raise DataError(f"{path}: model.text_encoder = 'precomputed' but the file has no text_features")
    if not precomputed and tokenizer is None:
        tokenizer = load_tokenizer(cfg.model.text_encoder)
    fingerprint = None if precomputed else tokenizer_fingerprint(tokenizer)
    out = {}
    for split in splits:
        arrays = read_split(path, split)
        tokens = None
        if not precomputed:
            tokens = stored_tokens(path, split, fingerprint, cfg.data.max_text_tokens) or tokenize(
                tokenizer, arrays.text, cfg.data.max_text_tokens
            )
        out[split] = SplitDataset(arrays, tokens)
    return out, info


def make_loader(
    dataset: SplitDataset, batch_size: int, *, shuffle: bool, seed: int | None = None, num_workers: int = 0
) -> DataLoader:
    """Batches of ``dataset``; a shuffled loader draws its order from ``seed`` only."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        range(len(dataset)),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=dataset.collate,
        num_workers=num_workers,
        drop_last=False,
    )
