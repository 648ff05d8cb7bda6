"""Rules of docs/ARCHITECTURE.md that a test can hold the code to."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pipeline_modules_import_no_private_names_of_each_other():
    """A name one module of pipeline/ uses from another is public in the module that owns it."""
    found = []
    for path in sorted((ROOT / "pipeline").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("pipeline")):
                found += [f"{path.name}: {alias.name}" for alias in node.names if alias.name.startswith("_")]
    assert not found
