"""MMSA ``label.csv``: per-segment text, label and split.

Columns ``id,text,label,mode`` or ``video_id,clip_id,text,label,mode`` (id = ``video_clip``);
``mode`` is ``train``/``valid``/``dev``/``test`` and may be absent. Extra columns are ignored.
``read_label_csv`` gives the rows by id (for joining text onto another source);
``read_label_csv_dataset`` makes a text-only dataset from the file alone (``--from csv``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sati.data.h5format import SPLITS, DataError
from sati.ingest.readers.common import (
    DEFAULT_AUDIO_DIM,
    DEFAULT_VIDEO_DIM,
    TEXT_ONLY_NOTE,
    Source,
    split_name,
    text_only_split,
)
from sati.untrusted import short


@dataclass(frozen=True)
class LabelRow:
    text: str
    label: float
    split: str | None  # train / valid / test, or None without a mode column


def read_label_csv(path: str | Path) -> dict[str, LabelRow]:
    """Rows of ``label.csv`` keyed by segment id, in file order; a malformed row (a field over csv's
    limit of 128 KiB, text that is not UTF-8) is a ``DataError`` naming its line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        read = [0]  # lines handed to the csv reader: the last is the one it was parsing

        def lines():
            for read[0], line in enumerate(f, start=1):
                yield line

        try:
            return _rows(path, csv.DictReader(lines()))
        except csv.Error as err:
            raise DataError(f"{path}: line {read[0]}: {err}") from None
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason}) after line {read[0]}") from None


def _rows(path: Path, reader: csv.DictReader) -> dict[str, LabelRow]:
    """The rows ``reader`` gives, checked."""
    cols = set(reader.fieldnames or ())
    has_id = "id" in cols or {"video_id", "clip_id"} <= cols
    if not has_id or not {"text", "label"} <= cols:
        raise DataError(
            f"{path}: expected columns id,text,label[,mode] or video_id,clip_id,text,label[,mode]; "
            f"found {', '.join(reader.fieldnames or ()) or 'none'}"
        )
    rows: dict[str, LabelRow] = {}
    for line, r in enumerate(reader, start=2):
        sid = r["id"] if "id" in cols else f"{r['video_id']}_{r['clip_id']}"
        try:
            label = float(r["label"])
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: line {line} (id {short(sid, 60)}): label {short(r['label'], 60)} is not a number"
            ) from None
        if sid in rows:
            raise DataError(f"{path}: line {line}: duplicate id {short(sid, 60)}")
        mode = r.get("mode")
        rows[sid] = LabelRow(
            text=(r["text"] or "").strip(),
            label=label,
            split=split_name(mode, f"{path}: line {line}") if mode else None,
        )
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def read_label_csv_dataset(
    path: str | Path, *, audio_dim: int = DEFAULT_AUDIO_DIM, video_dim: int = DEFAULT_VIDEO_DIM
) -> Source:
    """A text-only dataset from ``label.csv`` alone: splits from ``mode``, A/V absent (zeros)."""
    path = Path(path)
    rows = read_label_csv(path)
    if any(r.split is None for r in rows.values()):
        raise DataError(f"{path}: a text-only dataset from label.csv needs its 'mode' column (train/valid/test)")
    splits = {}
    for split in SPLITS:
        ids = [i for i, r in rows.items() if r.split == split]
        if ids:
            splits[split] = text_only_split(
                ids, [rows[i].text for i in ids], np.array([rows[i].label for i in ids]), audio_dim, video_dim
            )
    return Source(
        splits=splits,
        name=f"{path.parent.name or path.stem} (label.csv, text only)",
        provenance={"format": "label-csv"},
        missing_modalities=("audio", "video"),
        notes=[TEXT_ONLY_NOTE.format(audio_dim=audio_dim, video_dim=video_dim)],
        inputs=[path],
    )
