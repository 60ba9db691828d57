"""MISA/SATI pickles: a folder with ``train.pkl``, ``dev.pkl`` (or ``valid.pkl``) and ``test.pkl``.

Each file is a list of ``((words, visual, acoustic, actual_words), label, segment_id)``:
words [L] GloVe ids (unused), visual [L, D_v], acoustic [L, D_a], actual_words: L str,
label (1, 1) (a wider label row, e.g. MOSEI's 7 columns, gives column 0), segment_id
``"<video>[<i>]"`` with i the 0-based segment index. UR-FUNNY tuples have no segment id.

What the canonical file gets: text = ``" ".join(actual_words)``, one audio/video step per word
(lengths L), NaN/inf → 0, label = ``label[0, 0]``, id ``<video>_<i+1>`` (the SDK / label.csv
convention); an id of another form is kept as it is.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sati.data.h5format import DataError, SplitArrays
from sati.ingest.readers.common import Source, order_splits, pad_stack, sanitize
from sati.ingest.safe_pickle import load_pickle

FILES = {"train": ("train.pkl",), "valid": ("dev.pkl", "valid.pkl"), "test": ("test.pkl",)}
_SEGMENT = re.compile(r"(.*)\[(\d+)\]$")


def read_misa(folder: str | Path) -> Source:
    """Read the three split pickles of a MISA/SATI dataset folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: expected the folder holding train.pkl, dev.pkl and test.pkl")
    splits, inputs = {}, []
    for split, names in FILES.items():
        found = [folder / n for n in names if (folder / n).is_file()]
        if not found:
            raise DataError(f"{folder}: split '{split}' missing: no {' or '.join(names)} in the folder")
        splits[split] = _split(found[0], load_pickle(found[0]))
        inputs.append(found[0])
    return Source(
        splits=order_splits(splits),
        name=f"{folder.name} (MISA pickles)",
        provenance={"format": "misa"},
        notes=["one audio/video step per word; ids <video>[i] → <video>_<i+1>"],
        inputs=inputs,
    )


def _split(path: Path, rows) -> SplitArrays:
    if not isinstance(rows, list) or not rows:
        raise DataError(
            f"{path}: expected a non-empty list of ((words, visual, acoustic, actual_words), "
            f"label, segment_id) tuples, found {type(rows).__name__}"
        )
    ids, text, labels, visual, acoustic = [], [], [], [], []
    for i, row in enumerate(rows):
        try:
            (_, vis, aco, words), label, *rest = row
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: row {i} is not ((words, visual, acoustic, actual_words), label, segment_id)"
            ) from None
        seg = str(rest[0]) if rest else f"{path.stem}_{i + 1}"
        vis, aco = sanitize(vis), sanitize(aco)
        words = [w.decode() if isinstance(w, bytes) else str(w) for w in words]
        if not (len(vis) == len(aco) == len(words)) or vis.ndim != 2 or aco.ndim != 2:
            raise DataError(
                f"{path}: segment {seg}: visual {vis.shape}, acoustic {aco.shape} and "
                f"{len(words)} words disagree; expected [L, D_v], [L, D_a] and L words"
            )
        if not words:
            raise DataError(f"{path}: segment {seg} has no words")
        m = _SEGMENT.match(seg)
        ids.append(f"{m.group(1)}_{int(m.group(2)) + 1}" if m else seg)
        text.append(" ".join(words))
        labels.append(np.asarray(label, dtype=np.float32).reshape(-1)[0])
        visual.append(vis)
        acoustic.append(aco)
    for name, seqs in (("visual", visual), ("acoustic", acoustic)):
        dims = {s.shape[1] for s in seqs}
        if len(dims) > 1:
            raise DataError(f"{path}: {name} feature dims differ between rows: {sorted(dims)}")
    lengths = np.array([len(s) for s in visual], dtype=np.int32)
    return SplitArrays(
        ids=ids,
        text=text,
        labels=np.array(labels, dtype=np.float32),
        lengths=lengths,
        audio=pad_stack(acoustic, acoustic[0].shape[1], what=f"{path}: acoustic"),
        video=pad_stack(visual, visual[0].shape[1], what=f"{path}: visual"),
    )
