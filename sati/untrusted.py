"""Caps on what one input file may make sati allocate, expand or nest, and bounded quoting of its values.

A dataset or config file comes from elsewhere (a download, a shared folder, a colleague), so the bytes
it stores must bound what reading it costs. Readers check what a file *declares* against these caps
before they allocate, and refuse with a ``DataError`` / ``ConfigError`` naming the file:

- ``array_bytes``: the declared size of one array (an HDF5 dataset, a pickled numpy array). Default
  16 GiB; MOSEI's largest (BERT text features [16326, 50, 768] float32 in MMSA's pickle) is 2.5 GB.
- ``expansion``: how many bytes one stored byte may become: an HDF5 dataset's declared size over the
  bytes it occupies (compression, unwritten fill values), a pickle's decoded size (shared references
  counted as often as they are used) over the file's size, a YAML file's size with its aliases
  expanded. Default 16, on top of a fixed allowance (``PICKLE_ALLOWANCE``, ``H5_ALLOWANCE``,
  ``YAML_ALLOWANCE``) so small files are never refused for it.
- ``depth``: the nesting of containers in a pickle or a YAML file. Default 100; dataset pickles nest
  5 deep, pipeline files 4.
- ``config_bytes``: the size of a pipeline or search-space YAML file. Default 1 MiB (shipped ones are
  under 10 KiB).

Each can be raised with an environment variable when a real file needs more: ``SATI_MAX_ARRAY_MIB``,
``SATI_MAX_EXPANSION``, ``SATI_MAX_DEPTH``, ``SATI_MAX_CONFIG_KIB``.
"""

from __future__ import annotations

import os
import reprlib
from dataclasses import dataclass
from typing import Any

MIB = 1 << 20
PICKLE_ALLOWANCE = 64 * MIB  # decoded bytes any pickle may use, whatever its size
H5_ALLOWANCE = 1 * MIB  # declared bytes any HDF5 dataset may have, whatever it stores
YAML_ALLOWANCE = 64 * 1024  # characters any YAML file may expand to, whatever its size

_DEFAULTS = {  # field: (environment variable, default in the variable's unit, bytes per unit)
    "array_bytes": ("SATI_MAX_ARRAY_MIB", 16 * 1024, MIB),
    "expansion": ("SATI_MAX_EXPANSION", 16, 1),
    "depth": ("SATI_MAX_DEPTH", 100, 1),
    "config_bytes": ("SATI_MAX_CONFIG_KIB", 1024, 1024),
}


@dataclass(frozen=True)
class Limits:
    """The caps in force (bytes, a factor, a depth): defaults, or the environment's values."""

    array_bytes: int
    expansion: int
    depth: int
    config_bytes: int

    def expanded_bytes(self, stored: int, allowance: int) -> int:
        """What ``stored`` bytes may become: ``allowance + expansion × stored``."""
        return allowance + self.expansion * stored


def limits() -> Limits:
    """The caps, read from the environment at each call (a ``ValueError`` names a malformed variable)."""
    values = {}
    for name, (variable, default, unit) in _DEFAULTS.items():
        text = os.environ.get(variable, "").strip()
        if not text:
            values[name] = default * unit
            continue
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{variable}={short(text)}: expected a positive whole number")
        values[name] = int(text) * unit
    return Limits(**values)


def cap_hint(name: str) -> str:
    """``raise it with SATI_MAX_…=N`` for a field of ``Limits``: what a refusal tells the user."""
    variable, _, unit = _DEFAULTS[name]
    now = getattr(limits(), name) // unit
    return f"{variable} (now {now}) raises this cap if the file is genuine"


class _ShortRepr(reprlib.Repr):
    """``repr`` for messages about a file's contents: bounded however large or deep they are."""

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 200, 200

    def repr_bytes(self, obj: bytes, level: int) -> str:
        return repr(obj[: self.maxstring]) + ("..." if len(obj) > self.maxstring else "")

    def repr_bytearray(self, obj: bytearray, level: int) -> str:
        return f"bytearray({self.repr_bytes(bytes(obj[: self.maxstring + 1]), level)})"


def short(obj: Any, limit: int = 240) -> str:
    """A ``repr`` of ``obj`` of at most ``limit`` characters, built without walking all of ``obj``."""
    try:
        text = _ShortRepr().repr(obj)
    except (RecursionError, MemoryError, ValueError):  # a repr that cannot be built within bounds
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_text(text: str, limit: int = 2000) -> str:
    """``text`` cut to ``limit`` characters (a message that quotes a file may be long)."""
    return text if len(text) <= limit else text[: limit - 30] + f"... ({len(text)} characters)"
