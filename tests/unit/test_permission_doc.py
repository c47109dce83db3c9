"""docs/permissions.md is the permission matrix the tests run. (That every rule is named by a test, the matrix's
rows included, is tests/unit/test_docs.py's.)"""

from __future__ import annotations

from tests.support.permission_matrix import DOC, render_markdown


def test_the_permissions_doc_is_the_matrix_the_tests_run() -> None:
    assert DOC.read_text() == render_markdown(), "run: python -m tests.support.permission_matrix"
