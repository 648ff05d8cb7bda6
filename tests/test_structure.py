"""Rules of docs/ARCHITECTURE.md that a test can hold the code to."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("storage", "pipeline", "workflows")
MAX_LINES = 600


def _modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _ours(module: str | None) -> bool:
    return (module or "").split(".")[0] in PACKAGES


def test_modules_import_no_private_names_of_each_other():
    """A name one module of storage/, pipeline/ or workflows/ uses from another is public in the
    module that owns it: no ``from x import _name``, no ``x._name`` of a module imported."""
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or _ours(node.module)):
                found += [f"{path.relative_to(ROOT)}: {alias.name}" for alias in node.names if alias.name.startswith("_")]
                modules |= {alias.asname or alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                modules |= {alias.asname or alias.name.split(".")[0] for alias in node.names if _ours(alias.name)}
        found += [f"{path.relative_to(ROOT)}: {ast.unparse(node)}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                  and ast.unparse(node.value).split(".")[0] in modules]
    assert not found


def test_no_module_is_over_600_lines():
    """One home for each concern: a module that grows past this is doing two jobs."""
    lines = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in _modules()}
    assert len(lines) > 50 and not {name: n for name, n in lines.items() if n > MAX_LINES}
