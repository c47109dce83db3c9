"""The shape STYLE.md asks for, checked by tools rather than by reviewers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_rules_imports_no_io_library_and_none_of_the_other_packages() -> None:
    result = ruff("check", "--no-cache", "--select", "TID251", "rules")
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("module", ["sqlalchemy", "celery", "redis", "fastapi", "httpx", "models.tables", "workers"])
def test_the_ban_fails_on_an_io_import_under_rules(tmp_path: Path, module: str) -> None:
    # A probe file inside rules/ must be refused, so the check above cannot pass vacuously.
    probe = ROOT / "rules" / f"_probe_{tmp_path.name}.py"
    probe.write_text(f"import {module}\n")
    try:
        result = ruff("check", "--no-cache", "--select", "TID251", str(probe))
    finally:
        probe.unlink()
    assert result.returncode == 1
    assert "TID251" in result.stdout


def test_the_other_packages_may_import_io_libraries() -> None:
    result = ruff("check", "--no-cache", "--select", "TID251", "models", "workers", "intake")
    assert result.returncode == 0, result.stdout


def test_the_env_example_sets_nothing_and_holds_no_secret() -> None:
    example = (ROOT / ".env.example").read_text()
    assert all(line.startswith("#") or not line.strip() for line in example.splitlines())
