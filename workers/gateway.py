"""SMS gateways for outbound texts: ``log`` (the default: nothing leaves the machine, the text is
written to the log with the phone masked) and ``twilio`` (Twilio's REST API, with the account's own
credentials). ``LEADRELAY_SMS_GATEWAY`` chooses one for the whole installation.

An account's Twilio auth tokens are the org file's literal ``auth_tokens``, stored encrypted and
decrypted here with the process's keyring (:func:`decrypt_auth_tokens`, the webhooks use it too),
then the tokens of the environment variables it names in ``auth_tokens_env``."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from leadrelay.settings import Settings
from models.secrets import Keyring, UndecryptableSecret, keyring
from rules.contact import mask_phone

log = structlog.get_logger(__name__)

# One gateway call never takes longer than this (connect and read); a send task's in-flight state is
# stale after a few times that (workers.texts_outbound.STALE_AFTER).
GATEWAY_TIMEOUT_SECONDS = 20.0
STATUS_CALLBACK_PATH = "/v1/intake/sms/twilio/status"

# The twilio package logs every request at INFO (URLs and headers, not bodies); only its warnings matter here.
_twilio_http_log = logging.getLogger("workers.gateway.twilio_http")
_twilio_http_log.setLevel(logging.WARNING)


@dataclass(frozen=True)
class TextToSend:
    """What a gateway needs for one outbound text: values, no rows (the send runs outside any transaction)."""

    message_id: uuid.UUID
    account_id: int
    to: str
    from_: str
    body: str
    sms_provider: str | None
    sms_account_sid: str | None
    sms_auth_token_envs: tuple[str, ...]
    # Fernet tokens, decrypted only by the gateway that needs them; no clear token sits in this value.
    sms_auth_tokens_encrypted: tuple[str, ...] = ()


def decrypt_auth_tokens(encrypted: Sequence[str], keys: Keyring) -> tuple[list[str], int]:
    """The literal auth tokens of an account in clear, in the org file's order, and how many of them no
    key opens (encrypted under a key since dropped from LEADRELAY_SECRET_KEY): those are left out."""
    tokens: list[str] = []
    unreadable = 0
    for value in encrypted:
        try:
            tokens.append(keys.decrypt(value))
        except UndecryptableSecret:
            unreadable += 1
    return tokens, unreadable


class GatewayError(Exception):
    """The gateway did not take the text. ``permanent``: sending it again cannot succeed (a refused number,
    bad credentials), so it fails at once instead of retrying."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Gateway(Protocol):
    name: str

    def send(self, text: TextToSend) -> str:
        """Hand the text to the gateway; its message id (sid). Raises :class:`GatewayError`."""
        ...


class LogGateway:
    """Sends nothing: writes the text to the log (the phone masked) and answers a made-up sid ``LOG...``."""

    name = "log"

    def send(self, text: TextToSend) -> str:
        sid = "LOG" + uuid.uuid4().hex.upper()
        log.info(
            "text.sent",
            gateway=self.name,
            message_id=str(text.message_id),
            sid=sid,
            to=mask_phone(text.to),
            from_number=mask_phone(text.from_),
            chars=len(text.body),
        )
        return sid


class TwilioGateway:
    """Twilio's REST API (``messages.create``) with the account's sid and its current auth token (the first
    literal one, else the first named variable's), asking for status callbacks at the public URL."""

    name = "twilio"

    def __init__(self, public_base_url: str, keys: Keyring) -> None:
        self.status_callback = public_base_url.rstrip("/") + STATUS_CALLBACK_PATH
        self.keys = keys

    def send(self, text: TextToSend) -> str:
        from twilio.base.exceptions import TwilioRestException  # type: ignore[import-untyped,unused-ignore]
        from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped,unused-ignore]
        from twilio.rest import Client  # type: ignore[import-untyped,unused-ignore]

        if text.sms_provider != "twilio" or not text.sms_account_sid:
            raise GatewayError("the account has no Twilio account (sms: in the org file)", permanent=True)
        token = self._current_token(text)
        client = Client(
            text.sms_account_sid,
            token,
            http_client=TwilioHttpClient(timeout=GATEWAY_TIMEOUT_SECONDS, logger=_twilio_http_log),
        )
        try:
            message = client.messages.create(
                to=text.to, from_=text.from_, body=text.body, status_callback=self.status_callback
            )
        except TwilioRestException as exc:
            # 4xx but 429: Twilio refused this text (bad number, unsubscribed recipient, credentials); 429 and 5xx pass.
            permanent = 400 <= int(exc.status) < 500 and int(exc.status) != 429
            raise GatewayError(f"Twilio {exc.status} (error {exc.code}): {exc.msg}", permanent=permanent) from exc
        except Exception as exc:  # the network: refused, reset, timed out, a proxy
            raise GatewayError(f"{type(exc).__name__}: {exc}") from exc
        sid = str(message.sid)
        log.info("text.sent", gateway=self.name, message_id=str(text.message_id), sid=sid, to=mask_phone(text.to))
        return sid

    def _current_token(self, text: TextToSend) -> str:
        # The first token is the current one; the others are only still accepted on inbound webhooks.
        if text.sms_auth_tokens_encrypted:
            tokens, _ = decrypt_auth_tokens(text.sms_auth_tokens_encrypted[:1], self.keys)
            if not tokens:
                # Not permanent: the worker may be restarted with the key back in LEADRELAY_SECRET_KEY.
                raise GatewayError("no key of LEADRELAY_SECRET_KEY decrypts the account's auth token (sms.auth_tokens)")
            return tokens[0]
        if not text.sms_auth_token_envs:
            raise GatewayError("the account has no auth token (sms.auth_tokens or sms.auth_tokens_env)", permanent=True)
        env = text.sms_auth_token_envs[0]
        token = os.environ.get(env, "").strip()
        if not token:
            # Not permanent: the worker may be restarted with the variable set before the retries run out.
            raise GatewayError(f"the auth token variable {env!r} is not set in the worker's environment")
        return token


def gateway_for(settings: Settings) -> Gateway:
    if settings.sms_gateway == "twilio":
        return TwilioGateway(settings.public_base_url, keyring(settings))
    return LogGateway()
