"""Small pipelines for fast CPU runs: a tiny model on generated data, as a mapping or a YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def small_pipeline(data_path: Path, encoder: Path, /, **sections: Any) -> dict:
    """A pipeline mapping: tiny model, 2 epochs at a high learning rate; ``sections`` update the given
    sections (``train={"epochs": 3}``) or replace a top-level value."""
    raw: dict[str, Any] = {
        "format": 2,
        "name": "test",
        "seed": 7,
        "data": {"path": str(data_path)},
        "model": {
            "text_encoder": str(encoder),
            "hidden_size": 32,
            "encoder_feedforward": 64,
            "fusion_feedforward": 64,
            "fbp_hidden": 8,
            "dropout": 0.1,
            # With so small a model and so few steps, full-strength gradient reversal (λ = 1)
            # drowns the task gradient; 0.1 is the low end of the usual λ range.
            "reverse_grad_weight": 0.1,
        },
        "train": {"epochs": 2, "batch_size": 32, "lr": 2.0e-3, "device": "cpu", "patience": 0},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return raw


def write_search_pipeline(
    path: Path, data: Path, encoder: Path, uri: str, storage: Path, space: dict, **sections: dict[str, Any]
) -> Path:
    """A small search pipeline at ``path`` with its own space file beside it: 4 trials of 3 epochs,
    2 at a time, ASHA, no retries, tracked at ``uri``."""
    space_path = path.with_name(path.stem + "_space.yaml")
    space_path.write_text(yaml.safe_dump(space))
    raw = small_pipeline(
        data,
        encoder,
        name="t",
        train={"epochs": 3},
        search={
            "space": str(space_path),
            "num_samples": 4,
            "max_concurrent": 2,
            "scheduler": "asha",
            "reduction_factor": 2,
            "storage_path": str(storage),
            "max_failures": 0,
        },
        tracking={"uri": uri, "experiment": "test-search"},
    )
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw))
    return path
