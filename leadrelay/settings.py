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
    """Every setting of leadrelay. Each field is read from ``LEADRELAY_<NAME>``; its docstring is the
    description the configuration reference (docs/configuration.md, ``python -m leadrelay.docgen``) shows."""

    # hide_input_in_errors: a refusal prints the reason, never the values (URLs with passwords, keys, tokens).
    # use_attribute_docstrings: the docstring under a field is its description, in the reference too.
    model_config = SettingsConfigDict(
        env_prefix="LEADRELAY_",
        env_file=".env",
        extra="ignore",
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )

    env: Literal["dev", "test", "production"] = "dev"
    """`production` refuses the embedded database and broker and requires a secret key and a metrics token."""
    data_dir: Path = Path(".leadrelay")
    """Where the embedded SQLite file, the filesystem broker, the generated secret key and `leadrelay dev`'s log
    file live."""
    database_url: str | None = None
    """The database, e.g. `postgresql+psycopg://user@host/db`. Unset: a SQLite file in the data dir, the
    embedded default that needs no server."""
    broker_url: str | None = None
    """The Celery broker: `redis://host:6379/0` or `amqp://user:password@host:5672/vhost`. Unset: kombu's
    filesystem transport in the data dir, a broker that needs no server."""
    public_base_url: str = "http://127.0.0.1:8000"
    """The API's public URL: status URLs and `Location` headers, links in mail and texts, and the URL Twilio's
    signatures are checked over. Never taken from a request's `Host` header."""
    sms_gateway: Literal["log", "twilio"] = "log"
    """How outbound texts go out: `log` writes them to the log and sends nothing; `twilio` sends them through
    Twilio's REST API with the account's credentials."""
    smtp_url: str | None = None
    """Where notification mail goes: `smtp://[user:password@]host[:port]` (`?starttls=true` to require STARTTLS)
    or `smtps://...`, user and password percent-encoded. Unset: mail is written to the log."""
    mail_from: str = "leadrelay <leadrelay@localhost>"
    """The `From` of notification mail."""
    mail_flush_seconds: float = Field(default=1.0, gt=0, le=60)
    """Mail queued by a commit is sent by one flush this many seconds later, with every mail committed in the
    meantime."""
    intake_rate_per_key: float = Field(default=200.0, ge=0)
    """Requests a second per credential, averaged over a window of `LEADRELAY_INTAKE_BURST_PER_KEY` requests; failed
    authentications are limited the same way per client address. `0` turns the limit off."""
    intake_burst_per_key: int = Field(default=1000, ge=1)
    """The rate limit's window, in requests: a burst of this many is let through at once."""
    rate_limit_storage_url: str | None = None
    """Where the API processes share the rate limit's count (a `redis://` URL; keys under the queue prefix).
    Unset: the broker's Redis, or each process's own memory when the broker is not Redis."""
    intake_max_body_bytes: int = 256 * 1024
    """Larger request bodies are refused with 413 (but for CSV uploads and bulk jobs, below)."""
    import_max_bytes: int = 512 * 1024 * 1024
    """The limit of a CSV upload to `POST /v1/imports` (kept in the database until imported)."""
    bulk_max_bytes: int = 4 * 1024 * 1024
    """The limit of `POST /v1/leads/bulk`: up to 50,000 lead ids (about 2 MB of JSON)."""
    relay_after_seconds: float = 120.0
    """The relay sends again the task of kept work not done this long after it was stored or last relayed
    (each further time it waits twice as long)."""
    relay_every_seconds: float = Field(default=15.0, gt=0)
    """Seconds between the relay's passes: every worker's own (below), `leadrelay relay`'s, or `relay.sweep`'s
    under celery beat."""
    worker_relay: bool = True
    """Every worker (`leadrelay worker`, `celery -A workers worker`) runs the relay's pass itself, in its main
    process, every `LEADRELAY_RELAY_EVERY_SECONDS`, so an API and workers are the whole pipeline. `false` (or
    `--no-relay`) leaves it to a `leadrelay relay` apart."""
    log_format: Literal["console", "json"] = "console"
    """`json` for one JSON object a line (production); `console` for people. Emails and phones are masked
    either way."""
    log_level: str = "INFO"
    """The level of the root logger: `DEBUG`, `INFO`, `WARNING`, ..."""
    queue_prefix: str = ""
    """Prefixes queue names and every broker key, so several installations (or test runs) share one Redis."""
    task_max_retries: int = Field(default=5, ge=0)
    """Retries of a failing intake or outbound text (at most 5); past them an intake is `dead`, a text
    `failed`."""
    retry_backoff_seconds: float = Field(default=2.0, gt=0)
    """The first retry's delay, doubling with each retry."""
    db_pool_size: int = Field(default=5, ge=1)
    """Connections each process keeps open to PostgreSQL."""
    batch_size: int = Field(default=50, ge=1, le=1000)
    """A worker's task for one signup (or one inbound text) also takes up to this many signups (or texts) of
    its account waiting beside it and decides them together (one plan, a handful of statements; texts in
    the order they came); `1` processes each alone."""
    secret_key: SecretStr | None = None
    """Fernet keys, comma-separated, newest first, that encrypt the secrets kept in the database (the org
    files' literal Twilio auth tokens). Required in production; elsewhere one is generated once into the data
    dir."""
    metrics_token: SecretStr | None = None
    """When set, `GET /metrics` answers only `Authorization: Bearer <token>`. Required in production: the
    figures name every account's agents."""
    api_docs: bool | None = None
    """Serve `/docs`, `/redoc` and `/openapi.json`. Unset: on, except in production."""
    webhooks_allow_private: bool = False
    """`true` lets outbound webhooks reach private, loopback and link-local addresses, and plain `http://` URLs:
    for development and tests only, never in production. Otherwise a delivery goes only to an `https://` URL
    whose host resolves to public addresses only."""
    webhooks_retry_seconds: str = "5,300,1800,7200,18000,36000,36000"
    """The waits, in seconds and comma-separated, before each retry of a webhook delivery that failed (each
    stretched by up to a fifth at random); past the last one the delivery is `failed`, for a replay."""

    @model_validator(mode="after")
    def _webhook_retries_are_waits(self) -> Settings:
        try:
            waits = self.webhook_retry_waits
        except ValueError:
            raise ValueError(
                "LEADRELAY_WEBHOOKS_RETRY_SECONDS: give positive numbers of seconds, comma-separated"
            ) from None
        if not waits or any(w <= 0 for w in waits):
            raise ValueError("LEADRELAY_WEBHOOKS_RETRY_SECONDS: give positive numbers of seconds, comma-separated")
        return self

    @property
    def webhook_retry_waits(self) -> tuple[float, ...]:
        return tuple(float(part) for part in self.webhooks_retry_seconds.split(",") if part.strip())

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
