"""Typed settings, read from ``LEADRELAY_*`` environment variables and a ``.env`` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_BROKER = "filesystem://"


class Settings(BaseSettings):
    # hide_input_in_errors: a refusal prints the reason, never the values (URLs with passwords, keys, tokens).
    model_config = SettingsConfigDict(
        env_prefix="LEADRELAY_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    env: Literal["dev", "test", "production"] = "dev"
    data_dir: Path = Path(".leadrelay")
    # Unset means a SQLite file in data_dir: the embedded default that needs no server.
    database_url: str | None = None
    # Unset means kombu's filesystem transport in data_dir: a broker that needs no server.
    broker_url: str | None = None
    public_base_url: str = "http://127.0.0.1:8000"
    sms_gateway: Literal["log", "twilio"] = "log"
    smtp_url: str | None = None
    # The From of notification mail (LEADRELAY_MAIL_FROM).
    mail_from: str = "leadrelay <leadrelay@localhost>"
    # Mail queued by a commit is sent by one flush this many seconds later, for every mail committed in the
    # meantime (LEADRELAY_MAIL_FLUSH_SECONDS).
    mail_flush_seconds: float = Field(default=1.0, gt=0, le=60)
    # Requests per second per credential, averaged over a window of intake_burst_per_key requests (so a
    # burst of that many is let through at once); 0 turns the limit off. Failed authentications are limited
    # the same way per client address. Shared by the API processes through rate_limit_storage_url.
    intake_rate_per_key: float = Field(default=200.0, ge=0)
    intake_burst_per_key: int = Field(default=1000, ge=1)
    # Unset means the broker's Redis (under the queue prefix), or each process's memory when the broker is not Redis.
    rate_limit_storage_url: str | None = None
    intake_max_body_bytes: int = 256 * 1024
    # CSV uploads to POST /v1/imports have their own limit (kept in the database until imported).
    import_max_bytes: int = 512 * 1024 * 1024
    # POST /v1/leads/bulk: up to 50,000 lead ids (about 2 MB of JSON).
    bulk_max_bytes: int = 4 * 1024 * 1024
    # The relay sends again the task of kept work not done this long after it was stored (or last relayed),
    # every relay_every_seconds (LEADRELAY_RELAY_AFTER_SECONDS, LEADRELAY_RELAY_EVERY_SECONDS).
    relay_after_seconds: float = 120.0
    relay_every_seconds: float = 15.0
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"
    # Queue names are prefixed so several installations (or test runs) can share one Redis.
    queue_prefix: str = ""
    # Retries of a failing intake or outbound text (at most 5), LEADRELAY_RETRY_BACKOFF_SECONDS apart, doubling.
    task_max_retries: int = Field(default=5, ge=0)
    retry_backoff_seconds: float = Field(default=2.0, gt=0)
    db_pool_size: int = Field(default=5, ge=1)
    # A worker's task for one signup also takes up to this many signups waiting beside it and decides them
    # together (one plan, a handful of statements); 1 turns batching off (LEADRELAY_BATCH_SIZE).
    batch_size: int = Field(default=50, ge=1, le=1000)
    # Fernet keys, comma-separated, newest first, that encrypt the secrets kept in clear (Twilio auth tokens
    # of org files); outside production a key is generated once into data_dir (models.secrets).
    secret_key: SecretStr | None = None
    # GET /metrics answers only ``Authorization: Bearer <token>`` when set; production needs it.
    metrics_token: SecretStr | None = None
    # /docs, /redoc and /openapi.json; unset means on, except in production.
    api_docs: bool | None = None

    @model_validator(mode="after")
    def _production_needs_servers(self) -> Settings:
        if self.env == "production" and (self.database_url is None or self.broker_url is None):
            raise ValueError(
                "LEADRELAY_DATABASE_URL and LEADRELAY_BROKER_URL must be set in production; "
                "the embedded SQLite and filesystem broker are for development only"
            )
        return self

    @model_validator(mode="after")
    def _production_needs_a_secret_key(self) -> Settings:
        if self.env == "production" and (self.secret_key is None or not self.secret_key.get_secret_value().strip()):
            raise ValueError(
                "LEADRELAY_SECRET_KEY must be set in production (it encrypts the Twilio auth tokens of org files); "
                "generate one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            )
        return self

    @model_validator(mode="after")
    def _secret_keys_are_fernet_keys(self) -> Settings:
        """A mistyped key stops every process at start, not the first webhook that needs a token."""
        keys = [k.strip() for k in self.secret_key.get_secret_value().split(",")] if self.secret_key else []
        for position, key in enumerate(k for k in keys if k):
            try:
                Fernet(key)
            except (ValueError, TypeError):
                # Never the key itself: the message reaches logs and terminals.
                raise ValueError(
                    f"LEADRELAY_SECRET_KEY: key {position + 1} of {len(keys)} is not a Fernet key "
                    "(32 URL-safe base64-encoded bytes)"
                ) from None
        return self

    @model_validator(mode="after")
    def _production_needs_metrics_token(self) -> Settings:
        if self.env == "production" and (self.metrics_token is None or not self.metrics_token.get_secret_value()):
            raise ValueError("LEADRELAY_METRICS_TOKEN must be set in production: /metrics names every account's agents")
        return self

    @property
    def api_docs_enabled(self) -> bool:
        return self.api_docs if self.api_docs is not None else self.env != "production"

    @property
    def effective_rate_limit_storage_url(self) -> str:
        """A ``limits`` storage URL: the setting, else the broker's Redis, else this process's memory (the
        embedded and AMQP brokers have no Redis to share a count in)."""
        if self.rate_limit_storage_url:
            return self.rate_limit_storage_url
        if self.effective_broker_url.startswith(("redis://", "rediss://")):
            return self.effective_broker_url
        return "memory://"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'leadrelay.db').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or EMBEDDED_BROKER

    @property
    def broker_is_embedded(self) -> bool:
        return self.effective_broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. Tests and ``leadrelay dev`` clear the cache after changing the environment."""
    return Settings()
