"""CMU-MultimodalSDK folders: label ``.csd`` plus optional words / audio / video ``.csd`` files.

Segments come from the label file: row i of video V is segment ``V_<i+1>``, label = column 0
(``CMU_MOSEI_Labels`` has 7 columns; 0 is sentiment). Text comes from ``text_csv`` (MMSA
``label.csv``) or else from the words file (the words overlapping the segment, ``sp`` dropped).
Splits come from ``folds`` (by video) or else from the ``label.csv`` ``mode`` column.

Audio/video time axis: with a words file, one step per word (the mean of the frames that overlap
the word, as MISA aligns); without one, the segment's frames average-pooled into as many windows
as its text has words. An absent audio or video file gives zeros of ``audio_dim``/``video_dim``
(listed in ``missing_modalities``); with both absent every sample has one zero step. A video the
audio or video file has no entry for (CMU-MOSEI's feature files skip a few) gives its segments zeros
there, marked absent per sample (``SplitArrays.present``); a file with no entry for any video is refused.
The longest segment sets the padded length of all: padding beyond the ``array_bytes`` cap is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sati.data.h5format import MODALITIES, SPLITS, DataError, SplitArrays
from sati.ingest.readers.common import (
    DEFAULT_AUDIO_DIM,
    DEFAULT_VIDEO_DIM,
    TEXT_ONLY_NOTE,
    Source,
    pad_stack,
    pool_to_length,
    sanitize,
    text_only_split,
    zeros_modality,
)
from sati.ingest.readers.csd import Csd, find_csd_files
from sati.ingest.readers.folds import load_folds
from sati.ingest.readers.label_csv import read_label_csv
from sati.untrusted import short_text


class MissingTextError(DataError):
    """Some segments have no text."""


@dataclass
class Segment:
    id: str
    video: str
    label: float
    interval: tuple[float, float]
    text: str | None = None
    words: np.ndarray | None = None  # [L, 2] word intervals (with a words file)


def read_sdk(
    path: str | Path,
    *,
    text_csv: str | Path | None = None,
    folds: str | None = None,
    audio_dim: int = DEFAULT_AUDIO_DIM,
    video_dim: int = DEFAULT_VIDEO_DIM,
    drop_missing_text: bool = False,
) -> Source:
    """Read an SDK folder (or its label ``.csd``) into canonical splits."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found (expected an SDK folder of .csd files, or its label .csd)")
    files = find_csd_files(path.parent if path.is_file() else path)
    if path.is_file():
        files["labels"] = path
    if "labels" not in files:
        raise DataError(f"{path}: no label .csd (e.g. CMU_MOSI_Opinion_Labels.csd) in the folder")
    notes: list[str] = []
    with Csd(files["labels"]) as labels_csd:
        segments = label_segments(labels_csd)
        name = str(labels_csd.metadata.get("dataset name") or labels_csd.root)
    notes.append(f"{len(segments)} segments from {files['labels'].name} (label column 0)")

    csv_rows = read_label_csv(text_csv) if text_csv else None
    segments = _attach_text(segments, csv_rows, files.get("words"), text_csv, drop_missing_text, notes)
    split_of = _splits(segments, csv_rows, folds, text_csv, notes)

    missing = tuple(m for m in ("audio", "video") if m not in files)
    features = {}
    for m in ("audio", "video"):
        if m in files:
            with Csd(files[m]) as csd:
                features[m] = _align(csd, segments)
            lacking = [s.id for s in segments if s.id not in features[m]]
            if lacking:
                notes.append(
                    f"{m} absent for {len(lacking)} segments ({files[m].name} has no entry for their videos, "
                    f"e.g. {', '.join(lacking[:5])}): zeros, marked absent per sample"
                )
    splits = {}
    for split in SPLITS:
        idx = [i for i, s in enumerate(segments) if split_of[s.id] == split]
        if idx:
            splits[split] = _split(segments, idx, features, audio_dim, video_dim)
    if missing == ("audio", "video"):
        notes.append(TEXT_ONLY_NOTE.format(audio_dim=audio_dim, video_dim=video_dim))
    elif missing:
        notes.append(f"{missing[0]} absent: zeros of dim {audio_dim if missing[0] == 'audio' else video_dim}")
    provenance = {
        "format": "sdk",
        "files": {k: str(v) for k, v in files.items()},
        "text": str(text_csv) if text_csv else ("words .csd" if "words" in files else None),
        "folds": folds,
        "label_column": 0,
    }
    inputs = list(files.values()) + ([Path(text_csv)] if text_csv else [])
    return Source(
        splits=splits, name=name, provenance=provenance, missing_modalities=missing, notes=notes, inputs=inputs
    )


def label_segments(csd: Csd) -> list[Segment]:
    """One segment per label row: id ``<video>_<row + 1>``, label = column 0, interval."""
    out = []
    for video in csd.entries:
        if video.endswith("]"):
            raise DataError(f"{csd.path}: entry '{video}' is an aligned segment; pass the SDK's unaligned files")
        feats, ivals = csd.entry(video)
        labels = np.asarray(feats, dtype=np.float64)[:, 0]
        out += [
            Segment(f"{video}_{i + 1}", video, float(y), (float(a), float(b)))
            for i, (y, (a, b)) in enumerate(zip(labels, ivals))
        ]
    return out


def _attach_text(segments, csv_rows, words_path, text_csv, drop: bool, notes: list[str]) -> list[Segment]:
    if csv_rows is not None:
        for s in segments:
            row = csv_rows.get(s.id)
            s.text = row.text if row and row.text else None
        shared = [s for s in segments if s.id in csv_rows]
        diff = max((abs(csv_rows[s.id].label - s.label) for s in shared), default=0.0)
        notes.append(
            f"text from {Path(text_csv).name}: {len(shared)} of {len(segments)} ids; "
            f"largest label difference to the .csd {diff:.2g} (the .csd labels are used)"
        )
    if words_path is not None:
        with Csd(words_path) as words:
            for video, group in _by_video(segments).items():
                if video not in words.entries:
                    continue
                tokens, ivals = words.entry(video)
                tokens = np.array([t.decode() if isinstance(t, bytes) else str(t) for t in tokens[:, 0]])
                real = tokens != "sp"
                tokens, ivals = tokens[real], ivals[real]
                for s in group:
                    hit = (ivals[:, 0] < s.interval[1]) & (ivals[:, 1] > s.interval[0])
                    s.words = ivals[hit]
                    if s.text is None and csv_rows is None and hit.any():
                        s.text = " ".join(tokens[hit])
    elif csv_rows is None:
        raise DataError("no text: pass --text label.csv, or put the words .csd (…TimestampedWords.csd) in the folder")
    absent = [s.id for s in segments if not s.text]
    if absent and not drop:
        shown = ", ".join(short_text(i, 60) for i in absent[:10]) + (", …" if len(absent) > 10 else "")
        raise MissingTextError(
            f"{text_csv or words_path}: text missing for {len(absent)} of {len(segments)} "
            f"segments: {shown}. Pass --drop-missing-text to leave them out of the dataset"
        )
    if absent:
        notes.append(
            f"dropped {len(absent)} segments without text: {', '.join(short_text(i, 60) for i in absent[:10])}"
            + (", …" if len(absent) > 10 else "")
        )
    return [s for s in segments if s.text]


def _splits(segments, csv_rows, folds, text_csv, notes: list[str]) -> dict[str, str]:
    if folds:
        by_video, where = load_folds(folds)
        outside = sorted({s.video for s in segments} - set(by_video))
        if outside:
            raise DataError(
                f"{where}: {len(outside)} videos of the labels are in no fold (e.g. "
                f"{', '.join(short_text(v, 60) for v in outside[:5])}); for another dataset pass --folds FILE "
                "with its folds"
            )
        notes.append(f"splits from the folds {where}")
        return {s.id: by_video[s.video] for s in segments}
    if csv_rows is not None and all(csv_rows[s.id].split for s in segments):
        notes.append(f"splits from the 'mode' column of {Path(text_csv).name}")
        return {s.id: csv_rows[s.id].split for s in segments}
    raise DataError("no splits: pass --folds standard (CMU-MOSI) or --folds FILE.json")


def _by_video(segments) -> dict[str, list[Segment]]:
    out: dict[str, list[Segment]] = {}
    for s in segments:
        out.setdefault(s.video, []).append(s)
    return out


def _align(csd: Csd, segments) -> dict[str, np.ndarray]:
    """Segment id → [L, D]: per-word frame means (words known) or the segment's frames pooled; segments of
    videos the file has no entry for are left out (absent), but a file with none of the videos is refused."""
    out, dims = {}, set()
    by_video = _by_video(segments)
    if by_video and not set(by_video) & set(csd.entries):
        video, group = next(iter(by_video.items()))
        raise DataError(
            f"{csd.path}: no entry for any video of the labels (e.g. {video}, {len(group)} segments); "
            "is it the features file of another dataset?"
        )
    for video, group in by_video.items():
        if video not in csd.entries:
            continue
        feats, ivals = csd.entry(video)
        order = np.argsort(ivals[:, 0], kind="stable")
        feats, ivals = sanitize(feats[order]), ivals[order]
        dims.add(feats.shape[1])
        starts, ends = ivals[:, 0], np.maximum.accumulate(ivals[:, 1])
        csum = np.concatenate([np.zeros((1, feats.shape[1])), np.cumsum(feats, 0, dtype=np.float64)])
        for s in group:
            if s.words is not None and len(s.words):
                lo = np.searchsorted(ends, s.words[:, 0], side="right")  # first frame ending after the word starts
                hi = np.searchsorted(starts, s.words[:, 1], side="left")  # frames starting before it ends
                hi = np.maximum(hi, lo)
                out[s.id] = ((csum[hi] - csum[lo]) / np.maximum(hi - lo, 1)[:, None]).astype(np.float32)
            else:
                lo = np.searchsorted(ends, s.interval[0], side="right")
                hi = max(lo, np.searchsorted(starts, s.interval[1], side="left"))
                out[s.id] = pool_to_length(feats[lo:hi], max(1, len(s.text.split())))
    if len(dims) > 1:
        raise DataError(f"{csd.path}: feature dims differ between videos: {sorted(dims)}")
    return out


def _split(segments, idx: list[int], features: dict, audio_dim: int, video_dim: int) -> SplitArrays:
    segs = [segments[i] for i in idx]
    ids, text = [s.id for s in segs], [s.text for s in segs]
    labels = np.array([s.label for s in segs], dtype=np.float32)
    if not features:
        return text_only_split(ids, text, labels, audio_dim, video_dim)
    held = np.array([[i in features.get(m, ()) for m in MODALITIES[1:]] for i in ids]).reshape(len(ids), 2)
    lengths = np.array([max([1] + [len(f[i]) for f in features.values() if i in f]) for i in ids], dtype=np.int32)
    t = int(lengths.max())
    arrays = {}
    for m, dim in (("audio", audio_dim), ("video", video_dim)):
        if m in features:
            dim = next(iter(features[m].values())).shape[1]
            seqs = [features[m].get(i, np.zeros((0, dim), np.float32)) for i in ids]
            arrays[m] = pad_stack(seqs, dim, t, what=f"{m} features of {len(ids)} segments")
        else:
            arrays[m] = zeros_modality(len(ids), t, dim)
    present = np.concatenate([np.ones((len(ids), 1), bool), held], 1)  # text, audio, video
    return SplitArrays(ids=ids, text=text, labels=labels, lengths=lengths, present=present, **arrays)
