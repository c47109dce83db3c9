"""docs/permissions.md is the permission matrix the tests run, and every rule of the working-the-leads groups is
named by at least one test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support.permission_matrix import CASES, DOC, render_markdown

TESTS = Path(__file__).resolve().parents[1]
# The rule groups of working the leads: V, A3-A6, SH, T, M, X, D8.
ISSUE_5_RULES = (
    [f"V{i}" for i in range(1, 5)]
    + [f"A{i}" for i in range(3, 7)]
    + [f"SH{i}" for i in range(1, 8)]
    + [f"T{i}" for i in range(1, 7)]
    + [f"M{i}" for i in range(1, 8)]
    + [f"X{i}" for i in range(1, 5)]
    + ["D8"]
)


def test_the_permissions_doc_is_the_matrix_the_tests_run() -> None:
    assert DOC.read_text() == render_markdown(), "run: python -m tests.support.permission_matrix"


def _test_names() -> set[str]:
    names = {case.id for case in CASES}
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name.startswith(("test_", "Test")):
                names.add(node.name)
    return names


def test_every_rule_of_the_working_groups_is_named_by_a_test() -> None:
    names = _test_names()
    missing = [rule for rule in ISSUE_5_RULES if not any(re.search(rf"(^|[_-]){rule}([_-]|$)", name) for name in names)]
    assert not missing, f"no test names {missing}"
