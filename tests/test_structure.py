"""The layout's rules, read from the source: one direction of imports between the rooms, and every
``sati.*`` MLflow name spelled in one module (``sati/tracking/contract.py``)."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sati"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _imports_any(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in _imports(path) if n in prefixes or n.startswith(tuple(p + "." for p in prefixes)))


@pytest.mark.parametrize(
    "room, forbidden",
    [
        ("model", ("sati.data", "sati.ingest", "sati.search", "sati.tracking", "sati.trainer")),
        ("data", ("sati.model", "sati.ingest", "sati.search", "sati.tracking", "sati.trainer")),
        ("tracking", ("sati.search", "sati.promote", "sati.cli", "sati.model", "sati.trainer", "ray")),
        ("replay", ("sati.model", "sati.trainer", "sati.data", "sati.cli", "torch")),
    ],
)
def test_rooms_import_in_one_direction(room, forbidden):
    offenders = {str(p.relative_to(PACKAGE)): _imports_any(p, forbidden) for p in (PACKAGE / room).rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_promotion_starts_no_ray():
    assert not _imports_any(PACKAGE / "promote.py", ("ray", "sati.search"))


def _string_constants(tree: ast.AST) -> list[str]:
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name.rstrip(".")) is not None
    except (ImportError, ValueError):
        return False


def test_every_sati_tag_name_is_spelled_in_the_contract_only():
    tag = re.compile(r"^sati\.[\w.\-/]*$")
    spelled = {}
    for path in PACKAGE.rglob("*.py"):
        names = [s for s in _string_constants(ast.parse(path.read_text())) if tag.match(s) and not _is_module(s)]
        if names:
            spelled[str(path.relative_to(PACKAGE))] = sorted(set(names))
    assert set(spelled) == {"tracking/contract.py"}, spelled
