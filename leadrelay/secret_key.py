"""Where the Fernet keys of :mod:`models.secrets` come from: ``LEADRELAY_SECRET_KEY`` (one or more keys,
comma-separated, newest first) or, outside production, a key generated once into the data directory.

Production refuses to start without ``LEADRELAY_SECRET_KEY`` (``Settings``): a generated key would
live on one host's disk only, and the other hosts, or the next container, could not read what it
encrypted. In development the key file lets ``leadrelay dev`` and the processes it starts agree on
a key without any setup."""

from __future__ import annotations

import contextlib
import os
import uuid
from functools import lru_cache
from pathlib import Path

from leadrelay.settings import Settings, get_settings
from models.secrets import Keyring, SecretKeyError, generate_key, parse_keys

KEY_FILE = "secret.key"


def keyring(settings: Settings | None = None) -> Keyring:
    """The process's keyring, from ``settings`` (the process's own by default)."""
    settings = settings or get_settings()
    configured = settings.secret_key.get_secret_value() if settings.secret_key is not None else ""
    return _keyring(configured, str(settings.data_dir.resolve()))


@lru_cache(maxsize=4)
def _keyring(configured: str, data_dir: str) -> Keyring:
    if configured.strip():
        try:
            return Keyring(parse_keys(configured))
        except SecretKeyError as exc:
            raise SecretKeyError(f"LEADRELAY_SECRET_KEY: {exc}") from None
    path = Path(data_dir) / KEY_FILE
    try:
        return Keyring([data_dir_key(path)])
    except SecretKeyError as exc:
        raise SecretKeyError(f"{path}: {exc} (delete the file to generate another)") from None


def data_dir_key(path: Path) -> str:
    """The key kept in ``path``, generated first if there is none. Several processes starting together
    agree on one key: each writes a complete file of its own and links it to ``path``, which only the
    first link creates (the others find it there), so no process ever reads a half-written key."""
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(generate_key() + "\n")
            out.flush()
            os.fsync(out.fileno())
        # FileExistsError: another process got there first, and its key is the one.
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
    finally:
        draft.unlink(missing_ok=True)
    return path.read_text(encoding="ascii").strip()
