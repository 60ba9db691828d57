"""Generated MOSI-/MOSEI-like datasets with a learnable signal in every modality.

Each sample is word-aligned (one audio and one video frame per word, as in MISA's pickles). Its
label combines three cues, so a model has to read all three modalities to do well:

- text: sentiment words with polarities ±1/±2 among neutral filler; cue s_t ∈ [-1, 1];
- audio: a fixed direction u_a scaled by a per-sample intensity a ∈ [-1, 1] in every frame;
- video (temporal): AR(1)-smooth frames, plus an "expression event" v·u_v that is present in one
  contiguous window only (a third of the frames, at a random place). Averaging the frames blurs it,
  and the frames outside the window carry nothing.

label = clip(round5(3 · (0.5 s_t + 0.3 a + 0.3 v) + bias + noise), -3, 3), where round5 rounds to
a 0.2 grid as averaged annotator scores do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sati.data.h5format import SPLITS, SplitArrays, write_dataset


@dataclass(frozen=True)
class Preset:
    sizes: tuple[int, int, int]  # train / valid / test
    audio_dim: int
    video_dim: int
    min_len: int
    max_len: int
    label_bias: float  # MOSEI leans positive


PRESETS = {
    # MOSI (MISA pickles): 1284/229/686 segments, COVAREP 74-d, FACET 4.1 47-d.
    "mosi": Preset((1284, 229, 686), 74, 47, 4, 40, 0.0),
    # MOSEI (MISA pickles): 16326/1871/4659 segments, COVAREP 74-d, FACET 4.2 35-d.
    "mosei": Preset((16326, 1871, 4659), 74, 35, 4, 50, 0.35),
}

POSITIVE = {
    "good": 1,
    "nice": 1,
    "fun": 1,
    "liked": 1,
    "enjoyed": 1,
    "funny": 1,
    "solid": 1,
    "great": 2,
    "loved": 2,
    "amazing": 2,
    "wonderful": 2,
    "brilliant": 2,
    "excellent": 2,
}
NEGATIVE = {
    "bad": -1,
    "boring": -1,
    "dull": -1,
    "weak": -1,
    "slow": -1,
    "silly": -1,
    "messy": -1,
    "terrible": -2,
    "hated": -2,
    "awful": -2,
    "horrible": -2,
    "worst": -2,
    "painful": -2,
}
NEUTRAL = [
    "the",
    "movie",
    "was",
    "i",
    "it",
    "and",
    "a",
    "this",
    "film",
    "plot",
    "actor",
    "story",
    "really",
    "just",
    "so",
    "but",
    "of",
    "to",
    "in",
    "that",
    "my",
    "he",
    "she",
    "they",
    "we",
    "you",
    "um",
    "uh",
    "like",
    "scene",
    "ending",
    "character",
    "music",
    "kind",
    "thought",
    "going",
    "know",
    "there",
    "what",
    "very",
    "pretty",
    "some",
    "lot",
    "time",
    "watched",
    "saw",
    "one",
    "whole",
    "think",
]


def generate(
    preset: str = "mosi", *, seed: int = 0, scale: float = 1.0, text_feature_dim: int = 0
) -> dict[str, SplitArrays]:
    """Generate the three splits in memory. ``scale`` shrinks the preset's split sizes."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    rng = np.random.default_rng(seed)
    # Fixed per-dataset directions and word embeddings (shared by all splits).
    u_a = rng.standard_normal(p.audio_dim)
    u_a /= np.linalg.norm(u_a)
    u_v = rng.standard_normal(p.video_dim)
    u_v /= np.linalg.norm(u_v)
    vocab = list(POSITIVE) + list(NEGATIVE) + NEUTRAL
    polarity = np.array([POSITIVE.get(w, NEGATIVE.get(w, 0)) for w in vocab], dtype=np.float32)
    embed = rng.standard_normal((len(vocab), text_feature_dim)).astype(np.float32) if text_feature_dim else None

    out = {}
    for split, size in zip(SPLITS, p.sizes):
        n = max(8, round(size * scale))
        out[split] = _split(rng, split, n, p, u_a, u_v, vocab, polarity, embed)
    return out


def _split(rng, split, n, p: Preset, u_a, u_v, vocab, polarity, embed) -> SplitArrays:
    t_max = p.max_len
    lengths = rng.integers(p.min_len, p.max_len + 1, size=n)
    steps = np.arange(t_max)[None, :]  # [1, T]
    valid = steps < lengths[:, None]  # [N, T]

    # Text: a sentiment-word rate per sample, then words; cue = mean polarity / 2.
    lean = rng.uniform(-1, 1, size=n)  # speaker's lean
    n_sent = len(POSITIVE) + len(NEGATIVE)
    is_sent = rng.random((n, t_max)) < rng.uniform(0.1, 0.4, size=(n, 1))
    pos_prob = 1 / (1 + np.exp(-3 * lean))[:, None]
    pick_pos = rng.random((n, t_max)) < pos_prob
    sent_idx = np.where(
        pick_pos, rng.integers(0, len(POSITIVE), (n, t_max)), len(POSITIVE) + rng.integers(0, len(NEGATIVE), (n, t_max))
    )
    neutral_idx = n_sent + rng.integers(0, len(NEUTRAL), (n, t_max))
    word_idx = np.where(is_sent, sent_idx, neutral_idx)  # [N, T]
    pol = polarity[word_idx] * valid * is_sent
    count = np.maximum((is_sent & valid).sum(1), 1)
    s_text = np.clip(pol.sum(1) / count / 2, -1, 1)
    text = [" ".join(vocab[i] for i in word_idx[b, : lengths[b]]) for b in range(n)]

    # Audio: an intensity along u_a in every frame.
    a = rng.uniform(-1, 1, size=n)
    audio = rng.standard_normal((n, t_max, p.audio_dim)) + 1.5 * a[:, None, None] * u_a
    # Video: AR(1) noise plus an event v·u_v in one window of a third of the frames.
    v = rng.uniform(-1, 1, size=n)
    noise = rng.standard_normal((n, t_max, p.video_dim))
    video = np.empty_like(noise)
    video[:, 0] = noise[:, 0]
    for t in range(1, t_max):
        video[:, t] = 0.8 * video[:, t - 1] + 0.6 * noise[:, t]
    width = np.maximum(lengths // 3, 1)
    start = (rng.random(n) * (lengths - width + 1)).astype(int)
    window = (steps >= start[:, None]) & (steps < (start + width)[:, None])
    video += 2.5 * (window * v[:, None])[..., None] * u_v

    score = 3 * (0.5 * s_text + 0.3 * a + 0.3 * v) + p.label_bias + rng.normal(0, 0.15, n)
    labels = np.clip(np.round(score * 5) / 5, -3, 3).astype(np.float32)

    audio = (audio * valid[..., None]).astype(np.float32)
    video = (video * valid[..., None]).astype(np.float32)
    text_features = text_lengths = None
    if embed is not None:
        text_features = (embed[word_idx] * valid[..., None]).astype(np.float32)
        text_lengths = lengths.astype(np.int32)
    ids = [f"synth{split}{b // 20:04d}_{b % 20 + 1}" for b in range(n)]  # video_clip, like MOSI ids
    return SplitArrays(
        ids=ids,
        text=text,
        labels=labels,
        lengths=lengths.astype(np.int32),
        audio=audio,
        video=video,
        text_features=text_features,
        text_lengths=text_lengths,
    )


def write_synthetic(
    path: str | Path, preset: str = "mosi", *, seed: int = 0, scale: float = 1.0, text_feature_dim: int = 0
) -> str:
    """Generate and write a dataset file; returns its content checksum."""
    splits = generate(preset, seed=seed, scale=scale, text_feature_dim=text_feature_dim)
    return write_dataset(
        path,
        splits,
        name=f"synthetic-{preset}",
        provenance={
            "source": "sati data synth",
            "preset": preset,
            "seed": seed,
            "scale": scale,
            "text_feature_dim": text_feature_dim,
        },
    )
