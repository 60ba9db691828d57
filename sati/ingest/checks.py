"""Checks on a whole dataset, with errors that name the file, the key and what was expected.

``check_dataset`` runs before ``sati data prepare`` writes a file. Per-split checks (rows, label range,
lengths, duplicate ids) and feature dims are ``sati.data.h5format.check_split`` and ``check_feature_dims``.
"""

from __future__ import annotations

import numpy as np

from sati.data.h5format import SPLITS, DataError, SplitArrays, check_split
from sati.untrusted import short_text


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
        shown = ", ".join(short_text(c, 80) for c in clashes[:5])
        raise DataError(f"{source}: {len(clashes)} ids are in more than one split, e.g. {shown}")


def _dim(x) -> str:
    return "absent" if x is None else f"{x.shape[-1]}-d"
