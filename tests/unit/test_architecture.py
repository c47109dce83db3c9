"""The shape of the house (layers, pure rules), checked by tools rather than by reviewers."""

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


def lint_imports() -> subprocess.CompletedProcess[str]:
    """import-linter with the contracts of pyproject.toml ([tool.importlinter]), as ``make lint`` runs it."""
    command = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--no-logo"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_no_lower_layer_imports_a_higher_one() -> None:
    result = lint_imports()
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("probes", "broken"),
    [
        # models is below workers and intake (the org spec it reads lives in models).
        ({"models/_probe_a.py": "import workers.tasks\n"}, "models is not allowed to import workers"),
        ({"models/_probe_a.py": "import intake.orgfile\n"}, "models is not allowed to import intake"),
        # Settings reach a lower layer as values or through leadrelay.settings, never through the root.
        ({"workers/_probe_a.py": "import leadrelay.cli\n"}, "workers is not allowed to import leadrelay.cli"),
        # A new module of the leadrelay package must be placed: the root or the foundation.
        ({"leadrelay/_probe_a.py": "import models.secrets\n"}, "leadrelay._probe_a"),
        # Two modules of one package that import each other.
        (
            {"workers/_probe_a.py": "import workers._probe_b\n", "workers/_probe_b.py": "import workers._probe_a\n"},
            "No cycles are allowed in workers",
        ),
    ],
)
def test_the_contracts_fail_on_an_import_against_the_layers(probes: dict[str, str], broken: str) -> None:
    # Probe modules inside the packages must break a contract, so the check above cannot pass vacuously.
    written = [ROOT / path for path in probes]
    try:
        for path, source in zip(written, probes.values(), strict=True):
            path.write_text(source)
        result = lint_imports()
    finally:
        for path in written:
            path.unlink(missing_ok=True)
    assert result.returncode == 1
    assert broken in result.stdout
