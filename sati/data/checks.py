"""Checks on a whole dataset, with errors that name the file, the key and what was expected.

``check_dataset`` runs before ``sati data prepare`` writes a file; ``check_feature_dims`` compares a
file's dims with what a user or a model config expects (the loader calls it with the model's heads).
Per-split checks (rows, label range, lengths, duplicate ids) are ``h5format.check_split``.
"""

from __future__ import annotations

import numpy as np

from sati.data.h5format import SPLITS, DataError, SplitArrays, check_split


def check_dataset(splits: dict[str, SplitArrays], source: str) -> None:
    """All three splits present and sound, same dims everywhere, finite features, no id in two splits."""
    for split in SPLITS:
        if split not in splits:
            raise DataError(
                f"{source}: split '{split}' missing (found: {', '.join(splits) or 'none'}); "
                f"a dataset needs {', '.join(SPLITS)}"
            )
    first = splits["train"]
    for split, s in splits.items():
        check_split(source, split, s)
        for key in ("audio", "video", "text_features"):
            x, ref = getattr(s, key), getattr(first, key)
            if (x is None) != (ref is None) or (x is not None and x.shape[-1] != ref.shape[-1]):
                raise DataError(f"{source}: '{split}/{key}' is {_dim(x)} but 'train/{key}' is {_dim(ref)}")
            if x is not None and not np.isfinite(x).all():
                raise DataError(f"{source}: '{split}/{key}' has NaN or infinite values")
    owner: dict[str, str] = {}
    clashes = []
    for split, s in splits.items():
        for i in s.ids:
            if i in owner and owner[i] != split:
                clashes.append(f"{i} ({owner[i]}, {split})")
            owner.setdefault(i, split)
    if clashes:
        raise DataError(f"{source}: {len(clashes)} ids are in more than one split, e.g. {', '.join(clashes[:5])}")


def _dim(x) -> str:
    return "absent" if x is None else f"{x.shape[-1]}-d"


def check_feature_dims(
    source: str,
    audio_dim: int,
    video_dim: int,
    *,
    expect_audio: int | None = None,
    expect_video: int | None = None,
    audio_heads: int | None = None,
    video_heads: int | None = None,
) -> None:
    """A file's dims against expected dims (``--expect-audio-dim``) and encoder heads that must divide them."""
    for name, have, want, heads in (
        ("audio", audio_dim, expect_audio, audio_heads),
        ("video", video_dim, expect_video, video_heads),
    ):
        if want is not None and have != want:
            raise DataError(f"{source}: {name} features are {have}-d, expected {want}-d")
        if heads is not None and have % heads:
            choices = [d for d in range(1, min(have, 8) + 1) if have % d == 0]
            raise DataError(
                f"{source}: model.{name}_heads = {heads} does not divide the feature dim {have} "
                f"of its {name}; choose one of {choices}"
            )
