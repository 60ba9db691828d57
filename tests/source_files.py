"""Small files in the documented structure of each format users bring (spec section 5).

No real MMSA/MISA pickles or feature .csd files are available here, so tests write their own:
``write_mmsa`` (5b), ``write_misa`` (5a), ``write_csd`` (5c). The values are chosen so a test can
predict what the reader must produce.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np


def mmsa_split(
    n: int,
    *,
    t: int = 8,
    d_a: int = 5,
    d_v: int = 20,
    d_t: int = 16,
    unaligned: bool = False,
    seed: int = 0,
    prefix: str = "vid",
) -> dict:
    """One MMSA split: text_bert mask lengths 3..t, -inf in audio, NaN in vision."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, t + 1, size=n)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    text_bert = np.stack([rng.integers(100, 2000, (n, t)) * mask, mask, np.zeros((n, t), np.int64)], 1)
    t_a, t_v = (2 * t + 3, t + 12) if unaligned else (t, t)
    audio = rng.standard_normal((n, t_a, d_a)).astype(np.float32)
    audio[:, 0, 0] = -np.inf
    vision = rng.standard_normal((n, t_v, d_v)).astype(np.float32)
    vision[:, 1, 1] = np.nan
    split = {
        "raw_text": np.array([f"sample {i} was really good" for i in range(n)]),
        "id": np.array([f"{prefix}_{i // 3}$_${i % 3 + 1}" for i in range(n)], dtype=object),
        "text": rng.standard_normal((n, t, d_t)).astype(np.float32),
        "text_bert": text_bert,
        "audio": audio,
        "vision": vision,
        "annotations": np.array(["Positive"] * n),
        "classification_labels": np.ones(n),
        "regression_labels": np.round(rng.uniform(-3, 3, n), 1).astype(np.float32),
    }
    if unaligned:
        split["audio_lengths"] = rng.integers(1, t_a + 1, size=n)
        split["vision_lengths"] = rng.integers(1, t_v + 1, size=n)
    return split


def write_mmsa(path: Path, sizes=(12, 5, 6), *, valid_key: str = "valid", **kw) -> Path:
    data = {
        name: mmsa_split(n, seed=i, prefix=name, **kw)
        for i, (name, n) in enumerate(zip(("train", valid_key, "test"), sizes))
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path


def misa_rows(n: int, *, d_v: int = 47, d_a: int = 74, seed: int = 0, video: str = "v") -> list:
    """((word ids, visual, acoustic, words), label (1, 1), "<video>[i]") tuples, L = 2..6 words."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        length = int(rng.integers(2, 7))
        words = [f"w{j}" for j in range(length)]
        visual = rng.standard_normal((length, d_v)).astype(np.float32)
        acoustic = rng.standard_normal((length, d_a)).astype(np.float32)
        acoustic[0, 0] = np.nan
        label = np.array([[round(float(rng.uniform(-3, 3)), 2)]], dtype=np.float32)
        rows.append(((np.arange(length), visual, acoustic, words), label, f"{video}{i // 4}[{i % 4}]"))
    return rows


def write_misa(folder: Path, sizes=(10, 4, 5)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, n) in enumerate(zip(("train", "dev", "test"), sizes)):
        with open(folder / f"{name}.pkl", "wb") as f:
            pickle.dump(misa_rows(n, seed=i, video=f"{name}_v"), f)
    return folder


def write_csd(
    path: Path, root: str, entries: dict[str, tuple[np.ndarray, np.ndarray]], metadata: dict | None = None
) -> Path:
    """A computational sequence: <root>/data/<video>/{features, intervals}, <root>/metadata/<key>."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group(root)
        data = g.create_group("data")
        for video, (features, intervals) in entries.items():
            e = data.create_group(video)
            e["features"] = features
            e["intervals"] = np.asarray(intervals, dtype=np.float32)
        meta = g.create_group("metadata")
        for key, value in (metadata or {"root name": root}).items():
            meta.create_dataset(
                key, data=np.array([json.dumps(value).encode()], dtype=object), dtype=h5py.string_dtype()
            )
    return path
