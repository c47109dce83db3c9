"""Secrets that must be kept usable in clear, encrypted at rest with Fernet (``cryptography``).

Keys and user tokens are stored as digests (:mod:`models.security`), but a Twilio auth token is an
HMAC key: a signature check needs the token itself, so the literal ``sms.auth_tokens`` of an org
file are stored encrypted instead. Fernet is AES-128-CBC with an HMAC-SHA256 over the ciphertext,
so a value altered in the database fails to decrypt rather than decrypting to something else.

A :class:`Keyring` holds one or more Fernet keys, newest first: it encrypts with the newest and
decrypts with any of them (``MultiFernet``), so a key is rotated by putting the new one first,
re-encrypting every stored value (:meth:`Keyring.rotate`, ``leadrelay secrets rotate``) and then
dropping the old one. The keys are given as values: where they come from (``LEADRELAY_SECRET_KEY``,
or a key file in the data directory) is the settings' business, a layer above this one.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


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
