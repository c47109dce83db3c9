"""Credentials that are published (the demo org's keys and tokens, the example Flower password of
.env.example) are refused where they would protect something: ``leadrelay dev`` does not run in
production, and ``leadrelay flower`` takes no example password. (``org apply`` refusing demo
credentials in production needs a database: tests/integration/test_org_apply.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from leadrelay.cli import EXAMPLE_FLOWER_PASSWORDS
from models.secrets import generate_key
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def leadrelay(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LEADRELAY_", "FLOWER_"))}
    clean |= {"PYTHONPATH": str(ROOT), "COLUMNS": "200", **env}
    return subprocess.run(
        [sys.executable, "-m", "leadrelay", *args],
        env=clean,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def production(tmp_path: Path) -> dict[str, str]:
    return {
        "LEADRELAY_ENV": "production",
        "LEADRELAY_DATA_DIR": str(tmp_path / "data"),
        "LEADRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'production.db'}",
        "LEADRELAY_BROKER_URL": "redis://127.0.0.1:6379/15",
        "LEADRELAY_SECRET_KEY": generate_key(),
        "LEADRELAY_METRICS_TOKEN": "metrics-t0ken",
    }


def test_leadrelay_dev_refuses_to_run_in_production_and_touches_nothing(tmp_path: Path) -> None:
    env = production(tmp_path) | {"LEADRELAY_BROKER_URL": "filesystem://"}
    result = leadrelay("dev", "--port", str(free_port()), "--exit-after-demo", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "does not run with LEADRELAY_ENV=production" in result.stdout
    assert not (tmp_path / "production.db").exists()  # the demo org was not applied


def test_the_example_flower_password_is_the_one_env_example_shows() -> None:
    example = (ROOT / ".env.example").read_text()
    (line,) = [line for line in example.splitlines() if "LEADRELAY_FLOWER_BASIC_AUTH=" in line]
    value = re.split(r"\s", line.split("=", 1)[1], maxsplit=1)[0]
    passwords = {pair.partition(":")[2] for pair in value.split(",")}
    assert passwords <= EXAMPLE_FLOWER_PASSWORDS


def test_flower_refuses_the_example_password_of_env_example_in_production_and_elsewhere(tmp_path: Path) -> None:
    for env in (production(tmp_path), {"LEADRELAY_BROKER_URL": "redis://127.0.0.1:6379/15"}):
        for auth in ("ops:change-me", "ops:a-real-password-1f3a,ops2:change-me"):
            result = leadrelay(
                "flower", "--port", str(free_port()), env=env | {"LEADRELAY_FLOWER_BASIC_AUTH": auth}, cwd=tmp_path
            )
            assert result.returncode == 2, result.stdout + result.stderr
            assert "uses the example password of .env.example" in result.stdout
            assert "change-me" not in result.stdout  # the message names the rule, not the password
