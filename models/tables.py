"""The tables of the whole product: organisation, credentials, routing, leads and their history, intakes.

Entity and user ids in the API are slugs unique within an account; rows are joined on integer keys.
Leads, intakes and timeline events have UUIDs because they are handed to outsiders.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as the value in a VARCHAR with a CHECK, so adding a member is a small migration on every backend.
    return Enum(cls, name=name, native_enum=False, values_callable=lambda e: [m.value for m in e], length=20)


class EntityKind(enum.StrEnum):
    COMPANY = "company"
    OFFICE = "office"
    TEAM = "team"
    AGENT = "agent"


class LeadStatus(enum.StrEnum):
    ACTIVE = "active"
    ARCHIVED = "archived"
    MERGED = "merged"
    DELETED = "deleted"


class IntakeStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    PROCESSING = "processing"
    DONE = "done"
    REJECTED = "rejected"
    DEAD = "dead"


class IntakeSource(enum.StrEnum):
    REGISTRATION = "registration"
    PROVIDER = "provider"
    SMS = "sms"
    ACTIVITY = "activity"
    IMPORT = "import"
    EVENTS = "events"


class ImportStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # D1 when true, D3 when false. Fixed once the account has leads (keys would change meaning).
    duplication: Mapped[bool] = mapped_column(Boolean, default=True)
    sms_provider: Mapped[str | None] = mapped_column(String(20))
    sms_account_sid: Mapped[str | None] = mapped_column(String(64))
    # Twilio auth tokens must be usable in clear to check HMAC signatures, so they cannot be hashed: the
    # org file's literal auth_tokens are kept encrypted (Fernet tokens, models.secrets, in the file's
    # order), and auth_tokens_env keeps the names of environment variables that hold more of them.
    sms_auth_token_envs: Mapped[list[str]] = mapped_column(default=list)
    sms_auth_tokens_encrypted: Mapped[list[str]] = mapped_column(default=list)
    # One more with every write to what a worker keeps of the organisation (models.orgsnapshot):
    # entities, domains, connections, memberships, admin roles, routing rules and their members.
    org_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Entity(Base):
    __tablename__ = "entities"
    __table_args__ = (UniqueConstraint("account_id", "slug"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(64))
    kind: Mapped[EntityKind] = mapped_column(_enum(EntityKind, "entity_kind"))
    name: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("entities.id"))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(20))
    # Agents only: routing skips inactive and paused agents (A2) and V1 honours privacy.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    hide_from_team: Mapped[bool] = mapped_column(Boolean, default=False)
    # The cursor of the entity's implicit default rule (round robin over connected agents).
    default_cursor: Mapped[int] = mapped_column(BigInteger, default=0)


class Membership(Base):
    """An agent connected to an office, team or company."""

    __tablename__ = "memberships"

    agent_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"), primary_key=True)
    joined_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index(None, "group_id"),)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("account_id", "slug"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    # Set when the user is an agent (an agent is a user with the agent's id).
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("entities.id", ondelete="SET NULL"), unique=True)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class AdminRole(Base):
    __tablename__ = "admin_roles"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"), primary_key=True)


class SiteDomain(Base):
    """A host that produces leads for an entity; one account only (a domain belongs to one account: docs/org-file.md)."""

    __tablename__ = "site_domains"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(String(253), unique=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"))


class SmartNumber(Base):
    __tablename__ = "smart_numbers"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    e164: Mapped[str] = mapped_column(String(20), unique=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"))


class ApiConnection(Base):
    __tablename__ = "api_connections"
    __table_args__ = (UniqueConstraint("account_id", "slug"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[dt.datetime | None]


class IntakeKey(Base):
    __tablename__ = "intake_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[dt.datetime | None]


class RoutingRule(Base):
    """One ordered routing rule of an entity (A2). ``cursor`` is the round-robin position; it moves
    in the transaction that inserts the lead, so a rolled-back task never skips an agent."""

    __tablename__ = "routing_rules"
    __table_args__ = (UniqueConstraint("entity_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    conditions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    strategy: Mapped[str] = mapped_column(String(20), default="round_robin")
    # True: every active agent connected to the entity ("agents: connected"); else the members below.
    all_connected: Mapped[bool] = mapped_column(Boolean, default=False)
    campaign: Mapped[str | None] = mapped_column(String(200))
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)


class RoutingRuleMember(Base):
    __tablename__ = "routing_rule_members"

    rule_id: Mapped[int] = mapped_column(ForeignKey("routing_rules.id", ondelete="CASCADE"), primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    weight: Mapped[int] = mapped_column(Integer, default=1)


class Lead(Base):
    __tablename__ = "leads"
    __table_args__ = (
        # D1/D3/D9: the rule computes the key (rules.uniqueness.unique_key); the database enforces it.
        # NULL (a merged or deleted lead) frees the key for the next signup.
        UniqueConstraint("account_id", "unique_key"),
        Index(None, "account_id", "email_normalized"),
        Index(None, "account_id", "phone_e164"),
        Index(None, "assigned_agent_id"),
        Index(None, "owner_entity_id", "created_at"),
        Index(None, "account_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # Not a foreign key: the owner entity ties the lead to its account, and the check per inserted lead was
    # a tenth of an import's lead insert (migration 0012).
    account_id: Mapped[int] = mapped_column(Integer)
    owner_entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id"))
    assigned_agent_id: Mapped[int | None] = mapped_column(ForeignKey("entities.id"))
    # The entity whose routing rules assigned the lead: an office for an office site (V1).
    routed_via_entity_id: Mapped[int | None] = mapped_column(ForeignKey("entities.id"))
    unique_key: Mapped[str | None] = mapped_column(String(400))
    status: Mapped[LeadStatus] = mapped_column(_enum(LeadStatus, "lead_status"), default=LeadStatus.ACTIVE)
    in_pond: Mapped[bool] = mapped_column(Boolean, default=False)
    email: Mapped[str | None] = mapped_column(String(320))
    email_normalized: Mapped[str | None] = mapped_column(String(320))
    phone_e164: Mapped[str | None] = mapped_column(String(20))
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    tags: Mapped[list[str]] = mapped_column(default=list)
    lead_type: Mapped[str | None] = mapped_column(String(20))
    price_min: Mapped[int | None] = mapped_column(BigInteger)
    price_max: Mapped[int | None] = mapped_column(BigInteger)
    zip: Mapped[str | None] = mapped_column(String(10))
    source_kind: Mapped[str] = mapped_column(String(20))
    source_detail: Mapped[str | None] = mapped_column(String(500))
    merged_into_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("leads.id"))
    email_unsubscribed: Mapped[bool] = mapped_column(Boolean, default=False)
    sms_unsubscribed: Mapped[bool] = mapped_column(Boolean, default=False)
    # X4: a deleted lead keeps a tombstone.
    deleted_at: Mapped[dt.datetime | None]
    deleted_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_by_intake_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_activity_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LeadShare(Base):
    __tablename__ = "lead_shares"

    lead_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    permission: Mapped[str] = mapped_column(String(10))
    shared_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index(None, "user_id"),)


class LeadCampaign(Base):
    __tablename__ = "lead_campaigns"

    lead_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TimelineEvent(Base):
    __tablename__ = "timeline_events"
    __table_args__ = (
        Index(None, "lead_id", "at", "id"),
        # One event of a kind per intake and lead: running an intake again adds nothing.
        UniqueConstraint("lead_id", "intake_id", "kind"),
    )

    # Assigned by the database in insert order: events with the same ``at`` keep the order they were written in.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    # Not a foreign key: the lead ties the event to its account (migration 0012).
    account_id: Mapped[int] = mapped_column(Integer)
    # Deferrable: an import writes its new leads' events as it reads the file, and the leads at its end.
    lead_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("leads.id", ondelete="CASCADE", deferrable=True, initially="IMMEDIATE")
    )
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(64), default="system")
    summary: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    intake_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)


class Message(Base):
    """A text to or from a lead. Outbound rows are what S1 reads ("who texted this phone last")."""

    __tablename__ = "messages"
    __table_args__ = (
        Index(None, "account_id", "lead_phone", "direction", "created_at"),
        Index(None, "lead_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    lead_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("leads.id", ondelete="SET NULL"))
    direction: Mapped[str] = mapped_column(String(10))
    lead_phone: Mapped[str] = mapped_column(String(20))
    smart_number: Mapped[str | None] = mapped_column(String(20))
    body: Mapped[str] = mapped_column(Text)
    # The agent the text counts for (S1) and, for a shared user's text, who really sent it (SH4).
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("entities.id"))
    sent_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    provider_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    # SH4: the name an outbound text went out as (the owner's), whoever really sent it.
    sent_as: Mapped[str | None] = mapped_column(String(200))
    # An inbound text: the intake that kept the webhook.
    intake_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # When the relay last sent its task again (the row was not done a while after it was stored).
    relayed_at: Mapped[dt.datetime | None]
    # How many times the relay sent it again (GET /metrics: leadrelay_relay_resends_total).
    relays: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


WAITING_SIGNUPS = "status = 'accepted' AND attempts = 0 AND source IN ('registration', 'provider')"
WAITING_TEXTS = "status = 'accepted' AND attempts = 0 AND source IN ('sms')"


class Intake(Base):
    """A request accepted at the edge, kept verbatim. It is the system of record; the broker only carries its id."""

    __tablename__ = "intakes"
    __table_args__ = (
        UniqueConstraint("account_id", "source", "idempotency_key"),
        Index(None, "status", "updated_at"),
        # The signups waiting for their first try, per account, oldest first: what a batch's claim takes
        # (``models.signups``), found without reading the other waiting work (a backlog of texts, retries).
        Index(
            "ix_intakes_waiting_signups",
            "account_id",
            "created_at",
            postgresql_where=text(WAITING_SIGNUPS),
            sqlite_where=text(WAITING_SIGNUPS),
        ),
        # The same for inbound texts: what a batch of texts takes (``workers.texts``).
        Index(
            "ix_intakes_waiting_texts",
            "account_id",
            "created_at",
            postgresql_where=text(WAITING_TEXTS),
            sqlite_where=text(WAITING_TEXTS),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    source: Mapped[IntakeSource] = mapped_column(_enum(IntakeSource, "intake_source"))
    intake_key_id: Mapped[int | None] = mapped_column(ForeignKey("intake_keys.id"))
    api_connection_id: Mapped[int | None] = mapped_column(ForeignKey("api_connections.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(100))
    raw_body: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[IntakeStatus] = mapped_column(_enum(IntakeStatus, "intake_status"), default=IntakeStatus.ACCEPTED)
    reason: Mapped[str | None] = mapped_column(Text)
    lead_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("leads.id", ondelete="SET NULL"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # When the relay last sent its task again (the row was not done a while after it was stored).
    relayed_at: Mapped[dt.datetime | None]
    # How many times the relay sent it again (GET /metrics: leadrelay_relay_resends_total).
    relays: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    processed_at: Mapped[dt.datetime | None]


class SiteActivity(Base):
    """D7: a page view, property view or save by an email that has no lead under the site's owner.
    It is kept, not turned into a lead; ``lead_id`` is set when a signup later makes that lead."""

    __tablename__ = "site_activity"
    __table_args__ = (Index(None, "owner_entity_id", "email_normalized"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    owner_entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"))
    email_normalized: Mapped[str | None] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(20))
    page_url: Mapped[str] = mapped_column(Text)
    listing: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # One row per intake: a redelivered activity task records it once.
    intake_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    lead_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("leads.id", ondelete="SET NULL"))


class Import(Base):
    """A CSV import: who ran it for which owner (O1), its progress and its summary."""

    __tablename__ = "imports"
    __table_args__ = (Index(None, "account_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    owner_entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id"))
    by_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    filename: Mapped[str] = mapped_column(String(255))
    file_sha256: Mapped[str | None] = mapped_column(String(64))
    # Extra header -> field mapping given with --map (the usual spellings are known already).
    mapping: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[ImportStatus] = mapped_column(_enum(ImportStatus, "import_status"), default=ImportStatus.QUEUED)
    phase: Mapped[str | None] = mapped_column(String(20))
    rows_read: Mapped[int] = mapped_column(BigInteger, default=0)
    created: Mapped[int] = mapped_column(BigInteger, default=0)
    existing: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicates: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # When the relay last sent its task again (the row was not done a while after it was stored).
    relayed_at: Mapped[dt.datetime | None]
    # How many times the relay sent it again (GET /metrics: leadrelay_relay_resends_total).
    relays: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


class ImportChunk(Base):
    """An uploaded file, kept in the database in pieces until its import is done (accepted means kept)."""

    __tablename__ = "import_chunks"

    import_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("imports.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ImportRejection(Base):
    """A row an import did not take, with its line number and why."""

    __tablename__ = "import_rejections"

    import_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("imports.id", ondelete="CASCADE"), primary_key=True)
    line: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    reason: Mapped[str] = mapped_column(Text)


class MessageStatusCallback(Base):
    """A delivery status the gateway reported for an outbound text, kept once per (sid, status):
    callbacks are redelivered and arrive out of order, and may come before the send call returns."""

    __tablename__ = "message_status_callbacks"
    __table_args__ = (UniqueConstraint("provider_sid", "status"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    provider_sid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(20))
    raw: Mapped[dict[str, Any]] = mapped_column(default=dict)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Outbox(Base):
    """Mail to send (agent notifications), written in the transaction that decides it and sent by a
    task, so a decision and its notification commit together and a send failure loses nothing."""

    __tablename__ = "outbox"
    __table_args__ = (Index(None, "status", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20), default="email")
    # One notification per cause (e.g. "assigned:<lead id>"), so a redelivered task writes one row.
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # When the relay last sent its task again (the row was not done a while after it was stored).
    relayed_at: Mapped[dt.datetime | None]
    # How many times the relay sent it again (GET /metrics: leadrelay_relay_resends_total).
    relays: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    sent_at: Mapped[dt.datetime | None]
    # Until when a flush holds it (it claimed it with others and sends them in turn); another flush leaves it
    # alone until then, and takes it after (a flush killed mid-batch).
    claimed_until: Mapped[dt.datetime | None]
    # The correlation id (an intake's id) of the work that queued it: one flush sends the mail of many
    # intakes, and each mail's log lines name its own.
    correlation_id: Mapped[str | None] = mapped_column(String(64))


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Job(Base):
    """A bulk action (SH7, T4) on many leads, run by a task in chunks: each lead gets the same rule as
    one at a time; what the rule refuses is kept in ``job_failures`` with the reason."""

    __tablename__ = "jobs"
    __table_args__ = (Index(None, "account_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(20))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lead_ids: Mapped[list[str]] = mapped_column(default=list)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"), default=JobStatus.QUEUED)
    total: Mapped[int] = mapped_column(Integer, default=0)
    # Leads decided so far (changed or refused), committed with each chunk: a redelivered task resumes here.
    done: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # When the relay last sent its task again (the row was not done a while after it was stored).
    relayed_at: Mapped[dt.datetime | None]
    # How many times the relay sent it again (GET /metrics: leadrelay_relay_resends_total).
    relays: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


class JobFailure(Base):
    """A lead a bulk job did not change, and the rule that refused it."""

    __tablename__ = "job_failures"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    # Not a foreign key: the id may name no lead of the account (reported as not found).
    lead_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    reason: Mapped[str] = mapped_column(Text)


class WebhookEndpoint(Base):
    """An outbound webhook of an account (the org file's ``webhooks``). Its signing secrets must be used in
    clear (an HMAC key), so the literal ones are kept encrypted (:mod:`models.secrets`) and the ones given
    as ``secrets_env`` by the environment variables' names only."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (UniqueConstraint("account_id", "slug"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(default=list)
    secret_envs: Mapped[list[str]] = mapped_column(default=list)
    secrets_encrypted: Mapped[list[str]] = mapped_column(default=list)
    # The file's ``active``; an endpoint missing from the file is made inactive (its deliveries stay).
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Set when the receiver answered 410 Gone: nothing is sent until the org file is applied again.
    disabled_at: Mapped[dt.datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint, written in the transaction of the change it reports and sent by the
    ``webhooks.deliver`` task. ``seq`` is given by the database in insert order: the event's ``version``."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index(None, "endpoint_id", "seq"),
        Index(None, "status", "next_attempt_at"),
    )

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    # The ``webhook-id`` (``msg_<hex>``), the same on every attempt; tasks carry it.
    id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(40))
    lead_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    occurred_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # pending -> delivered | failed (retries spent) | dropped (the endpoint is gone or inactive)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When a pending delivery that failed is due again (the relay sends it past the task's countdown).
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Each try: {"at", "status" (HTTP) or "error", "excerpt"}; the last ones only.
    attempt_log: Mapped[list[Any]] = mapped_column(default=list)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # When the relay last sent its task again (the row was not done a while after it was stored).
    relayed_at: Mapped[dt.datetime | None]
    # How many times the relay sent it again (GET /metrics: leadrelay_relay_resends_total).
    relays: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
