"""Secrets that must be kept usable in clear, encrypted at rest with Fernet (``cryptography``).

Keys and user tokens are stored as digests (:mod:`models.security`), but a Twilio auth token is an
HMAC key: a signature check needs the token itself, so the literal ``sms.auth_tokens`` of an org
file are stored encrypted instead. Fernet is AES-128-CBC with an HMAC-SHA256 over the ciphertext,
so a value altered in the database fails to decrypt rather than decrypting to something else.

A :class:`Keyring` holds one or more Fernet keys, newest first: it encrypts with the newest and
decrypts with any of them (``MultiFernet``), so a key is rotated by putting the new one first,
re-encrypting every stored value (:meth:`Keyring.rotate`, ``leadrelay secrets rotate``) and then
dropping the old one.

The process's keys (:func:`keyring`) come from ``LEADRELAY_SECRET_KEY`` (one or more keys,
comma-separated, newest first) or, outside production, a key generated once into the data directory.
Production refuses to start without ``LEADRELAY_SECRET_KEY`` (``Settings``): a generated key would
live on one host's disk only, and the other hosts, or the next container, could not read what it
encrypted. In development the key file lets ``leadrelay dev`` and the processes it starts agree on
a key without any setup.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from leadrelay.settings import Settings, get_settings

KEY_FILE = "secret.key"


class SecretKeyError(ValueError):
    """A key that is not a Fernet key, or no key at all. The message never contains a key."""


class UndecryptableSecret(ValueError):
    """A stored value that no key of the keyring opens: encrypted under a key since dropped, or altered."""


def generate_key() -> str:
    """A new random Fernet key (32 bytes, URL-safe base64), as ``LEADRELAY_SECRET_KEY`` holds one."""
    return Fernet.generate_key().decode("ascii")


def parse_keys(text: str) -> list[str]:
    """The comma-separated keys of ``LEADRELAY_SECRET_KEY``, newest first; blanks around them are dropped."""
    return [key.strip() for key in text.split(",") if key.strip()]


class Keyring:
    """Fernet keys, newest first: :meth:`encrypt` uses the newest, :meth:`decrypt` tries each."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise SecretKeyError("no secret key given")
        fernets: list[Fernet] = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                # `from None`: the exception chain would carry the key in the traceback's locals and text.
                raise SecretKeyError(
                    f"secret key {position} of {len(keys)} is not a Fernet key (32 URL-safe base64-encoded bytes)"
                ) from None
        self._newest = fernets[0]
        self._any = MultiFernet(fernets)
        self.size = len(fernets)

    def __repr__(self) -> str:
        return f"Keyring({self.size} key{'s' if self.size != 1 else ''})"

    def encrypt(self, secret: str) -> str:
        """``secret`` encrypted under the newest key, as URL-safe text (a Fernet token)."""
        return self._any.encrypt(secret.encode("utf-8")).decode("ascii")

    def decrypt(self, stored: str) -> str:
        """The clear value of ``stored``; :class:`UndecryptableSecret` when no key opens it."""
        try:
            return self._any.decrypt(stored.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise UndecryptableSecret("no secret key opens this value") from None

    def is_current(self, stored: str) -> bool:
        """Whether ``stored`` is encrypted under the newest key already (so rotating it would change nothing)."""
        try:
            self._newest.decrypt(stored.encode("ascii"))
        except (InvalidToken, UnicodeError):
            return False
        return True

    def rotate(self, stored: str) -> str | None:
        """``stored`` encrypted again under the newest key, or None when it is under that key already.
        Raises :class:`UndecryptableSecret` when no key opens it."""
        if self.is_current(stored):
            return None
        try:
            return self._any.rotate(stored.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError):
            raise UndecryptableSecret("no secret key opens this value") from None


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
