"""What a pickle may cost to load: its decoded size and nesting, counted as the unpickler goes.

A pickle can refer to one object many times (its memo: ``GET``), so a few hundred bytes can stand
for a billion-element tuple (each level ten references to the one below), and 1,500 references to
one 1 MB string read back as 1.5 GB wherever the data is copied (written to a dataset file, joined,
tokenized). A tuple nested 10^6 deep crashes the interpreter (SIGSEGV) when it is hashed as a dict
key. ``DecodeBudget`` counts every reference by the size it stands for and refuses, naming the file:

- ``spend``: the decoded bytes so far (each array's declared size, each memo reference's full
  size, each builtin call's result) may not exceed ``sati.untrusted.PICKLE_ALLOWANCE`` +
  ``expansion`` × the file's size;
- ``measure``: an object's nesting depth (containers inside containers) may not exceed ``depth``,
  checked before anything hashes it or hands it out, without recursion (a deep object is refused
  after ``depth`` steps).

Sizes are what the object would take as separate Python objects (``sys.getsizeof`` of strings and
numbers, 8 bytes per container slot, arrays by their declared shape with empty axes counted as 1).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from sati.untrusted import PICKLE_ALLOWANCE, cap_hint, limits

_CONTAINERS = (tuple, list, dict, set, frozenset)
_SLOT = 8  # bytes per reference held by a container
_OTHER = 64  # a dtype, a numpy scalar, a global (callable)


def declared_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """An array's size as its shape declares it, an empty axis counted as 1 (so it cannot hide the rest)."""
    return max(itemsize, 1) * math.prod(max(n, 1) for n in shape)


def _is_container(obj: Any) -> bool:
    return isinstance(obj, _CONTAINERS) or (isinstance(obj, np.ndarray) and obj.dtype.hasobject)


def _children(obj: Any) -> Iterable[Any]:
    if isinstance(obj, dict):
        yield from obj.keys()
        yield from obj.values()
    elif isinstance(obj, np.ndarray):
        yield from obj.flat
    else:
        yield from obj


def _own_bytes(obj: Any) -> int:
    """The bytes of ``obj`` itself, without what its items hold."""
    if isinstance(obj, np.ndarray):
        return 112 + declared_bytes(obj.shape, obj.dtype.itemsize)
    if isinstance(obj, _CONTAINERS):
        return 56 + _SLOT * len(obj)
    if isinstance(obj, (str, bytes, bytearray, int, float, complex)):
        return sys.getsizeof(obj)
    return _OTHER


class DecodeBudget:
    """The decoded bytes and depth one pickle of ``size`` bytes may reach; ``refuse(what)`` makes the error."""

    def __init__(self, size: int, refuse: Callable[[str], Exception]):
        caps = limits()
        self.depth = caps.depth
        self.total = caps.expanded_bytes(size, PICKLE_ALLOWANCE)
        self.size = size
        self.spent = 0
        self._refuse = refuse
        self._measured: dict[int, tuple[Any, int, int]] = {}  # id -> (the object, kept alive; depth; bytes)

    def spend(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` more decoded bytes (``what`` made them); refuse past the total."""
        self.spent += nbytes
        if self.spent > self.total:
            raise self._refuse(
                f"{what} brings the decoded data to over {self.spent} bytes, more than {self.total} for a file of "
                f"{self.size} bytes (shared references count as often as they are used); {cap_hint('expansion')}"
            )

    def measure(self, obj: Any, *, remember: bool = True) -> tuple[int, int]:
        """(depth, bytes) of ``obj`` with every shared reference expanded; refuses a depth over the cap or
        bytes over the total. ``remember`` keeps the result (and the object alive) for later references:
        right for objects that can no longer change (those handed out by the memo, keys, arguments)."""
        known = self._known(obj)
        if known is not None:
            return known
        if not _is_container(obj):
            return 0, _own_bytes(obj)
        local: dict[int, tuple[Any, int, int]] = {}
        stack = [(obj, iter(_children(obj)), [0, _own_bytes(obj)])]  # node, its items, [deepest item, bytes]
        while stack:
            node, items, acc = stack[-1]
            for item in items:
                known = self._known(item) or (local[id(item)][1:] if id(item) in local else None)
                if known is None and _is_container(item):
                    if len(stack) >= self.depth:
                        raise self._refuse(
                            f"containers nested over {self.depth} deep (dataset pickles nest a few levels); "
                            f"{cap_hint('depth')}"
                        )
                    stack.append((item, iter(_children(item)), [0, _own_bytes(item)]))
                    break
                depth, nbytes = known if known is not None else (0, _own_bytes(item))
                self._add(acc, depth, nbytes)
            else:
                stack.pop()
                result = (node, acc[0] + 1, acc[1])
                (self._measured if remember else local)[id(node)] = result
                if stack:
                    self._add(stack[-1][2], result[1], result[2])
        found = self._known(obj) or local[id(obj)][1:]
        return found

    def _known(self, obj: Any) -> tuple[int, int] | None:
        entry = self._measured.get(id(obj))
        return entry[1:] if entry is not None and entry[0] is obj else None

    def _add(self, acc: list[int], depth: int, nbytes: int) -> None:
        acc[0] = max(acc[0], depth)
        acc[1] += nbytes
        if acc[1] > self.total:
            raise self._refuse(
                f"an object that expands to over {acc[1]} bytes, more than {self.total} for a file of {self.size} "
                f"bytes (shared references count as often as they are used); {cap_hint('expansion')}"
            )
