"""Secrets kept encrypted at rest (models.secrets) and where their keys come from (models.secrets.keyring):
Fernet round trips, rotation with MultiFernet, wrong keys refused, the development key file, and
production refusing to start without LEADRELAY_SECRET_KEY."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from leadrelay.settings import Settings
from models.secrets import KEY_FILE, Keyring, SecretKeyError, UndecryptableSecret, generate_key, keyring, parse_keys

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "twilio-auth-token-0123456789abcdef"


def test_a_secret_round_trips_and_is_not_stored_in_clear() -> None:
    keys = Keyring([generate_key()])
    stored = keys.encrypt(TOKEN)
    assert TOKEN not in stored
    assert keys.decrypt(stored) == TOKEN
    # A fresh IV each time: equal secrets do not give equal stored values.
    assert keys.encrypt(TOKEN) != stored


def test_a_value_encrypted_under_another_key_is_refused() -> None:
    stored = Keyring([generate_key()]).encrypt(TOKEN)
    with pytest.raises(UndecryptableSecret):
        Keyring([generate_key()]).decrypt(stored)


def test_an_altered_value_is_refused_rather_than_decrypted_to_something_else() -> None:
    keys = Keyring([generate_key()])
    stored = keys.encrypt(TOKEN)
    altered = stored[:20] + ("A" if stored[20] != "A" else "B") + stored[21:]
    with pytest.raises(UndecryptableSecret):
        keys.decrypt(altered)


def test_rotation_the_newest_key_encrypts_every_key_decrypts_and_rotate_moves_values_to_the_newest() -> None:
    old, new = generate_key(), generate_key()
    stored = Keyring([old]).encrypt(TOKEN)
    both = Keyring([new, old])
    assert both.decrypt(stored) == TOKEN
    assert Keyring([new]).decrypt(both.encrypt(TOKEN)) == TOKEN
    assert not both.is_current(stored)
    rotated = both.rotate(stored)
    assert rotated is not None
    assert both.rotate(rotated) is None  # under the newest key already: nothing to do
    assert Keyring([new]).decrypt(rotated) == TOKEN
    with pytest.raises(UndecryptableSecret):
        Keyring([old]).decrypt(rotated)
    with pytest.raises(UndecryptableSecret):
        Keyring([generate_key()]).rotate(stored)


@pytest.mark.parametrize("bad", ["", "not-a-key", "c2hvcnQ=", Fernet.generate_key().decode()[:-4]])
def test_a_key_that_is_not_a_fernet_key_is_refused_without_showing_it(bad: str) -> None:
    keys = [generate_key(), bad] if bad else []
    with pytest.raises(SecretKeyError) as caught:
        Keyring(keys)
    if bad:
        assert bad not in str(caught.value)
        assert "key 2 of 2" in str(caught.value)


def test_the_keyring_never_shows_its_keys() -> None:
    key = generate_key()
    assert key not in repr(Keyring([key]))


def test_the_setting_holds_comma_separated_keys_newest_first() -> None:
    a, b = generate_key(), generate_key()
    assert parse_keys(f" {b} , {a},") == [b, a]
    settings = Settings(_env_file=None, secret_key=f"{b},{a}")  # type: ignore[call-arg]
    stored = Keyring([a]).encrypt(TOKEN)
    assert keyring(settings).decrypt(stored) == TOKEN
    assert Keyring([b]).decrypt(keyring(settings).encrypt(TOKEN)) == TOKEN
    assert a not in repr(settings)
    assert b not in repr(settings)


@pytest.mark.parametrize("configured", ["oops-not-a-key", f"{generate_key()},oops-not-a-key"])
def test_a_bad_configured_key_stops_the_settings_naming_the_variable_not_the_key(configured: str) -> None:
    with pytest.raises(ValidationError, match="LEADRELAY_SECRET_KEY") as caught:
        Settings(_env_file=None, secret_key=configured)  # type: ignore[call-arg]
    assert "oops" not in str(caught.value)
    assert configured.split(",")[0][:8] not in str(caught.value)


def test_outside_production_a_missing_key_is_generated_once_into_the_data_dir_readable_by_its_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEADRELAY_SECRET_KEY", raising=False)
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]
    stored = keyring(settings).encrypt(TOKEN)
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Keyring([path.read_text().strip()]).decrypt(stored) == TOKEN
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no draft left behind


def test_processes_starting_together_on_an_empty_data_dir_agree_on_one_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADRELAY_")}
    env |= {"LEADRELAY_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    code = "from models.secrets import data_dir_key, KEY_FILE; from leadrelay.settings import get_settings; "
    code += "print(data_dir_key(get_settings().data_dir / KEY_FILE))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    keys = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert keys == {(tmp_path / KEY_FILE).read_text().strip()}
    Keyring(list(keys))  # a whole, valid key


def test_production_refuses_to_start_without_a_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADRELAY_SECRET_KEY", raising=False)
    servers = {
        "database_url": "postgresql+psycopg://x@db/x",
        "broker_url": "redis://redis:6379/0",
        "metrics_token": "t0ken",
    }
    with pytest.raises(ValueError, match="LEADRELAY_SECRET_KEY must be set in production"):
        Settings(_env_file=None, env="production", **servers)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="LEADRELAY_SECRET_KEY must be set in production"):
        Settings(_env_file=None, env="production", secret_key=" ", **servers)  # type: ignore[arg-type]
    assert Settings(_env_file=None, env="production", secret_key=generate_key(), **servers).env == "production"  # type: ignore[arg-type]
