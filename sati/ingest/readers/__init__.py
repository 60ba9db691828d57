"""Readers for the dataset files users already have; each returns a ``Source``.

- ``mmsa``: MMSA ``aligned_50.pkl`` / ``unaligned_50.pkl`` (``readers.mmsa``)
- ``misa``: MISA/SATI ``train.pkl``, ``dev.pkl``, ``test.pkl`` folder (``readers.misa``)
- ``sdk``:  CMU-MultimodalSDK ``.csd`` folder (``readers.sdk``), text from ``label.csv`` or words
- ``csv``:  MMSA ``label.csv`` alone: a text-only dataset (``readers.label_csv``)

Pickles are read with ``sati.ingest.safe_pickle`` only.
"""

from __future__ import annotations

import csv
from pathlib import Path

from sati.data.h5format import DataError
from sati.ingest.readers.common import Source
from sati.untrusted import short_text

FORMATS = ("mmsa", "misa", "sdk", "csv")
# What a reader raises when a file holds values of another kind than its format says (a dict where an
# array belongs, a ragged list, a string where a number belongs): the file is malformed, not sati.
MALFORMED = (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError, UnicodeError, csv.Error)


def read_source(kind: str, path: str | Path, **options) -> Source:
    """Read ``path`` as ``kind``; ``options`` go to that reader (see each reader's signature).

    Whatever the file holds, the outcome is a ``Source`` or a ``DataError`` naming the file: values of
    the wrong kind, recursion and memory exhaustion included."""
    if kind not in FORMATS:
        raise ValueError(f"unknown source format {kind!r}; expected one of {', '.join(FORMATS)}")
    try:
        return _reader(kind)(path, **options)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: ran out of memory reading it as {kind}; is it a {kind} dataset?") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to read as {kind}; is it a {kind} dataset?") from None
    except MALFORMED as err:
        raise DataError(
            f"{path}: not a well-formed {kind} dataset ({type(err).__name__}: {short_text(str(err), 200)})"
        ) from None


def _reader(kind: str):
    if kind == "mmsa":
        from sati.ingest.readers.mmsa import read_mmsa

        return read_mmsa
    if kind == "misa":
        from sati.ingest.readers.misa import read_misa

        return read_misa
    if kind == "sdk":
        from sati.ingest.readers.sdk import read_sdk

        return read_sdk
    from sati.ingest.readers.label_csv import read_label_csv_dataset

    return read_label_csv_dataset
