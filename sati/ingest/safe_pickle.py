"""Load pickles without running their code: only numpy arrays, dtypes and plain containers.

A pickle can name any importable callable (``os.system``, ``builtins.eval``) and have it called
while loading. ``load_pickle`` resolves only the globals listed in ``ALLOWED``: numpy's array,
dtype and scalar reconstruction (old ``numpy.core`` and new ``numpy._core`` names, protocols 2–5)
and builtin containers and scalars. Anything else is refused with ``UnsafePickleError``.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

from sati.data.h5format import DataError

_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_BUILTIN_NAMES = {
    "list",
    "dict",
    "tuple",
    "set",
    "frozenset",
    "str",
    "bytes",
    "bytearray",
    "int",
    "float",
    "complex",
    "bool",
}
ALLOWED = (
    _NUMPY
    | {(m, n) for m in ("builtins", "__builtin__") for n in _BUILTIN_NAMES}
    | {
        ("_codecs", "encode"),  # protocol <= 2 writes bytes (array buffers) as _codecs.encode(str, "latin1")
    }
)


class UnsafePickleError(DataError):
    """A pickle names a global outside ``ALLOWED``."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 numpy pickles
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise UnsafePickleError(
                f"{self.path}: refused to load global '{module}.{name}': this reader admits only numpy "
                "arrays, dtypes and plain containers (the file is not a dataset pickle, or was tampered with)"
            )
        if module == "__builtin__":
            module = "builtins"
        if module.startswith("numpy.core"):  # numpy 2 keeps these under numpy._core
            try:
                return getattr(importlib.import_module(module.replace("numpy.core", "numpy._core", 1)), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` with the restricted unpickler; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            KeyError,
            MemoryError,
        ) as err:
            raise DataError(
                f"{path}: not a readable pickle ({type(err).__name__}: {err}); is it truncated or of another format?"
            ) from None
