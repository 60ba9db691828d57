"""Readers for the dataset files users already have; each returns a ``Source``.

- ``mmsa``: MMSA ``aligned_50.pkl`` / ``unaligned_50.pkl`` (``readers.mmsa``)
- ``misa``: MISA/SATI ``train.pkl``, ``dev.pkl``, ``test.pkl`` folder (``readers.misa``)
- ``sdk``:  CMU-MultimodalSDK ``.csd`` folder (``readers.sdk``), text from ``label.csv`` or words
- ``csv``:  MMSA ``label.csv`` alone: a text-only dataset (``readers.label_csv``)

Pickles are read with ``sati.ingest.safe_pickle`` only.
"""

from __future__ import annotations

from pathlib import Path

from sati.ingest.readers.common import Source

FORMATS = ("mmsa", "misa", "sdk", "csv")


def read_source(kind: str, path: str | Path, **options) -> Source:
    """Read ``path`` as ``kind``; ``options`` go to that reader (see each reader's signature)."""
    if kind == "mmsa":
        from sati.ingest.readers.mmsa import read_mmsa

        return read_mmsa(path, **options)
    if kind == "misa":
        from sati.ingest.readers.misa import read_misa

        return read_misa(path, **options)
    if kind == "sdk":
        from sati.ingest.readers.sdk import read_sdk

        return read_sdk(path, **options)
    if kind == "csv":
        from sati.ingest.readers.label_csv import read_label_csv_dataset

        return read_label_csv_dataset(path, **options)
    raise ValueError(f"unknown source format {kind!r}; expected one of {', '.join(FORMATS)}")
