"""``sati data inspect``: what a dataset file holds, and whether its checksums still match.

The file is read with every check ``sati.data.h5safe`` makes (a file that reaches outside itself is
refused with a ``DataError``); a checksum that does not match is reported, not refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sati.data.h5format import (
    MODALITIES,
    SPLITS,
    content_checksum,
    list_tokens,
    read_info,
    read_split,
    read_tokens,
    recorded_split_checksum,
    split_checksum,
)

BINS = np.arange(-3, 4)  # 7 classes: labels clipped to [-3, 3] and rounded (as Acc-7)


def inspect_dataset(path: str | Path) -> tuple[list[str], bool]:
    """Report lines, and True when every recomputed checksum (contents, each split, stored tokens) matches."""
    info = read_info(path)
    splits = {s: read_split(path, s, verify=False) for s in SPLITS}
    src = info.provenance
    lines = [
        f"file      {path}",
        f"name      {info.name}",
        f"source    {src.get('format', src.get('source', '?'))}" + (f": {src['input']}" if "input" in src else ""),
        f"features  audio {info.audio_dim}-d, video {info.video_dim}-d, text features "
        + (f"{info.text_feature_dim}-d" if info.text_feature_dim else "none"),
    ]
    if info.missing_modalities:
        lines.append(f"missing   {', '.join(info.missing_modalities)} (zeros in the file; models see no signal there)")
    absent = np.concatenate([~s.present for s in splits.values()]).sum(0)  # [3] samples without each modality
    partial = [f"{m} in {n} of {sum(map(len, splits.values()))} samples" for m, n in zip(MODALITIES, absent) if n]
    partial = [p for p in partial if p.split()[0] not in info.missing_modalities]
    if partial:
        lines.append(f"absent    {', '.join(partial)} (marked per sample; the model shuts those streams)")
    lines += ["", f"{'split':<6} {'samples':>7}  {'A/V steps min/med/max':>22}  {'words min/med/max':>18}"]
    for name, s in splits.items():
        words = np.array([len(t.split()) for t in s.text])
        lines.append(f"{name:<6} {len(s):>7}  {_mmm(s.lengths):>22}  {_mmm(words):>18}")
    lines += [
        "",
        "labels, rounded to 7 classes (Acc-7 bins)",
        f"{'split':<6} " + " ".join(f"{b:>+5d}" if b else f"{b:>5d}" for b in BINS) + f"  {'mean':>6}",
    ]
    for name, s in splits.items():
        counts = [(np.round(np.clip(s.labels, -3, 3)) == b).sum() for b in BINS]
        lines.append(f"{name:<6} " + " ".join(f"{c:>5d}" for c in counts) + f"  {s.labels.mean():>+6.3f}")

    ok = True
    tokens = [t for s in SPLITS for t in list_tokens(path, s)]
    lines += ["", "stored tokens" if tokens else "stored tokens: none (the loader tokenizes at load)"]
    for t in tokens:
        stored = read_tokens(path, t, verify=False)
        good = stored.checksum() == t.checksum
        ok &= good
        lengths = stored.lengths
        lines.append(
            f"  {t.split:<6} {t.tokenizer}: max_length {t.max_length}, lengths {_mmm(lengths)}, "
            f"{t.truncated} truncated, checksum {'OK' if good else 'MISMATCH'}"
        )
    states = []
    for name, s in splits.items():
        recorded = recorded_split_checksum(path, name)
        good = recorded is None or split_checksum(name, s) == recorded
        ok &= good
        states.append(f"{name} " + ("none recorded" if recorded is None else "OK" if good else "MISMATCH"))
    actual = content_checksum(splits)
    good = actual == info.checksum
    ok &= good
    lines += [
        "",
        f"splits    {', '.join(states)} (each split's own sha256)",
        f"checksum  sha256 {info.checksum} "
        + ("OK (recomputed from the contents)" if good else f"MISMATCH: the contents hash to {actual}"),
    ]
    return lines, ok


def _mmm(x: np.ndarray) -> str:
    return f"{int(np.min(x))} / {float(np.median(x)):g} / {int(np.max(x))}"
