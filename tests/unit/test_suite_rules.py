"""The suite's own house rules, checked on its source: what a reviewer would otherwise have to
remember for every new test."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_says_what_it_checks() -> None:
    """Every test function, in every tier, has a docstring (docs/development.md, "Tests")."""
    missing = [
        f"{path.relative_to(TESTS.parent)}:{node.lineno} {node.name}"
        for path in sorted(TESTS.rglob("test_*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
        and not ast.get_docstring(node)
    ]
    assert not missing, "tests without a docstring:\n" + "\n".join(missing)
