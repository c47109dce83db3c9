"""docker-compose.yml, checked by its parts (no Docker engine runs here): every command it runs
exists, its settings validate, and the Dockerfile copies every package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from leadrelay.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def app_services() -> list[tuple[str, dict[str, Any]]]:
    return [(name, svc) for name, svc in COMPOSE["services"].items() if "build" in svc]


@pytest.mark.parametrize(("name", "service"), app_services())
def test_every_app_command_exists(name: str, service: dict[str, Any]) -> None:
    command = service["command"]
    if command[0] == "leadrelay":
        argv = [sys.executable, "-m", "leadrelay", *[a for a in command[1:] if not a.startswith("--")][:2], "--help"]
    else:
        assert command[:3] == ["celery", "-A", "workers"], name
        argv = [sys.executable, "-m", "celery", "-A", "workers", command[3], "--help"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("name", "service"), app_services())
def test_every_app_service_has_valid_production_settings(name: str, service: dict[str, Any]) -> None:
    env = {
        k.removeprefix("LEADRELAY_").lower(): v
        for k, v in service["environment"].items()
        if k.startswith("LEADRELAY_") and "${" not in str(v)
    }
    settings = Settings(_env_file=None, **env)  # type: ignore[call-arg]
    assert settings.env == "production"
    assert settings.effective_database_url.startswith("postgresql+psycopg://")
    assert settings.effective_broker_url.startswith("redis://")


def test_production_refuses_the_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LEADRELAY_DATABASE_URL", "LEADRELAY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="must be set in production"):
        Settings(_env_file=None, env="production")  # type: ignore[call-arg]


def test_the_broker_keeps_messages_and_never_evicts() -> None:
    command = COMPOSE["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_the_image_copies_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("leadrelay", "intake", "rules", "models", "workers"):
        assert f"COPY {package} {package}" in dockerfile
