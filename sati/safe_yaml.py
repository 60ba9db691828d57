"""YAML loading that a small file cannot turn into a large one: aliases and nesting are counted.

``yaml.safe_load`` runs no code, but an alias (``*a``) refers to a whole anchored node again: nine
lines of ``&b [*a, *a, *a, ...]`` stand for a billion strings, which is harmless until something walks
them (a copy, a validation, an error message quoting the value: 2.7 GB from an 800-byte file). And
10^5 nested ``[`` overflow the composer's recursion. ``load_yaml`` composes with ``BoundedLoader``:

- every node's size counts its aliased nodes in full (scalars by their length, collections by their
  items), and a node larger than ``sati.untrusted.YAML_ALLOWANCE`` + ``expansion`` × the text's
  length is refused as soon as it is composed;
- nesting deeper than ``depth`` is refused before the composer recurses further, and an alias to a
  node still being composed (a recursive structure) is refused.

Both raise ``UnsafeYamlError`` (a ``yaml.YAMLError``), with no excerpt of the expanded value.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode

from sati.untrusted import YAML_ALLOWANCE, cap_hint, limits


class UnsafeYamlError(yaml.YAMLError):
    """YAML text that expands past the caps, nests too deep, or refers to itself."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose composer counts what each node stands for (see the module docstring)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        caps = limits()
        self._length = len(stream)
        self._max_depth = caps.depth
        self._max_size = caps.expanded_bytes(self._length, YAML_ALLOWANCE)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, for every finished node (all stay alive)

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._sizes:
                raise UnsafeYamlError(
                    f"the alias *{event.anchor} at line {event.start_mark.line + 1} refers to a node that "
                    "contains it (a recursive structure)"
                )
            return super().compose_node(parent, index)  # a finished node, counted where it is used
        if self._depth >= self._max_depth:
            mark = self.peek_event().start_mark
            raise UnsafeYamlError(
                f"nested over {self._max_depth} deep at line {mark.line + 1}, column {mark.column + 1}; "
                f"{cap_hint('depth')}"
            )
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = self._size(node)
        self._sizes[id(node)] = size
        if size > self._max_size:
            raise UnsafeYamlError(
                f"the node at line {node.start_mark.line + 1} expands to over {size} characters with its aliases, "
                f"more than {self._max_size} for a text of {self._length} (an alias bomb?); {cap_hint('expansion')}"
            )
        return node

    def _size(self, node) -> int:
        """1 + the length of a scalar, or 1 + the sizes of a collection's items (aliases in full)."""
        if isinstance(node, ScalarNode):
            return 1 + len(node.value)
        if isinstance(node, MappingNode):
            return 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        return 1 + sum(self._sizes[id(item)] for item in node.value)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` within the caps; ``yaml.YAMLError`` (``UnsafeYamlError`` included) otherwise."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
