"""Layers point down: ``udfs`` imports only ``udfs``; ``connectors`` imports ``udfs`` and
``connectors``, never ``jobs``; ``jobs`` may import anything. Every import counts, also the
ones inside functions (which is how an upward import usually hides)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("udfs", "connectors", "jobs")
ALLOWED = {"udfs": {"udfs"}, "connectors": {"udfs", "connectors"}}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level project package) of every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in PROJECT_PACKAGES:
                found.append((node.lineno, top))
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_import_points_up(layer: str) -> None:
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {package}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for line, package in imported_packages(path)
        if package not in ALLOWED[layer]
    ]
    assert upward == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from jobs.config import JobSettings\n")
    assert imported_packages(module) == [(2, "jobs")]
