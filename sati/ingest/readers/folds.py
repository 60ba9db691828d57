"""Video-level split lists ("folds"): ``standard`` (CMU-MOSI's SDK folds, bundled) or a JSON file.

JSON: ``{"train": [video ids], "valid" (or "dev"): [...], "test": [...]}``; keys starting with
``_`` are ignored, and the SDK's names ``standard_train_fold`` / ``..._valid_fold`` / ``..._test_fold``
are accepted. All segments of a video share its split.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from sati.data.h5format import DataError
from sati.ingest.readers.common import split_name

BUNDLED = {"standard": "cmu_mosi_std_folds.json"}  # CMU-MultimodalSDK's CMU-MOSI folds (MIT)


def load_folds(spec: str) -> tuple[dict[str, str], str]:
    """``standard`` or a JSON path → ({video id: split}, where the folds came from)."""
    if spec in BUNDLED:
        text = (resources.files("sati.ingest") / "folds" / BUNDLED[spec]).read_text()
        where = f"{spec} (CMU-MOSI SDK folds, bundled)"
    else:
        path = Path(spec)
        if not path.is_file():
            raise DataError(f"--folds {spec}: not 'standard' and not a file")
        text, where = path.read_text(), str(path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not JSON ({err})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object of split name → list of video ids")
    folds: dict[str, str] = {}
    for key, videos in raw.items():
        if key.startswith("_"):
            continue
        name = key.removeprefix("standard_").removesuffix("_fold")
        split = split_name(name, where)
        for video in videos:
            if folds.get(video, split) != split:
                raise DataError(f"{where}: video {video} is in both '{folds[video]}' and '{split}'")
            folds[video] = split
    if not folds:
        raise DataError(f"{where}: no video ids")
    return folds, where
