"""CSV imports, the database part. Rows are streamed into a temporary staging table (PostgreSQL
``COPY``; batched INSERTs on SQLite), and everything after is set-based SQL in the import's one
transaction: the leads upserted on the same unique key as every other source (D1-D4, D9), their
routing written from the decisions, and the timeline. Nothing here loops over rows in SQL."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    and_,
    cast,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.base import UTCDateTime
from models.repositories import CLAIMED_COLUMNS, ClaimedActivity
from models.tables import ImportChunk, ImportRejection, Lead, LeadCampaign, SiteActivity, TimelineEvent

_TEMP = MetaData()

STAGE = Table(
    "import_stage",
    _TEMP,
    Column("line", BigInteger, primary_key=True),
    Column("lead_id", Uuid, nullable=False),
    Column("unique_key", String(400), nullable=False),
    Column("email", String(320)),
    Column("email_normalized", String(320)),
    Column("phone", String(20)),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    Column("tags", Text, nullable=False),  # JSON text, cast where it lands
    Column("source", String(500)),
    Column("notes", Text),
    Column("price", BigInteger),
    Column("zip", String(10)),
    prefixes=["TEMPORARY"],
)

# The rows that will make a lead: the first of their unique key in the file, and no lead has it yet.
NEW = Table(
    "import_new",
    _TEMP,
    Column("line", BigInteger, primary_key=True),
    Column("lead_id", Uuid, nullable=False),
    prefixes=["TEMPORARY"],
)

# One row per routed lead, naming one of the few distinct decisions (an agent, a rule, the reasons).
ROUTED = Table(
    "import_routed",
    _TEMP,
    Column("lead_id", Uuid, primary_key=True),
    Column("decision", Integer, nullable=False),
    prefixes=["TEMPORARY"],
)
DECISIONS = Table(
    "import_decisions",
    _TEMP,
    Column("id", Integer, primary_key=True),
    Column("agent_id", Integer),
    Column("in_pond", Boolean, nullable=False),
    Column("campaign", String(200)),
    Column("summary", Text, nullable=False),
    Column("data", Text, nullable=False),
    prefixes=["TEMPORARY"],
)
SQLITE_BATCH = 5_000


class ImportStore:
    """The staging table and the set-based statements of one import, on the unit of work's session."""

    def __init__(self, session: Session, *, account_id: int, import_id: uuid.UUID, source_key: uuid.UUID) -> None:
        self.session = session
        self.account_id = account_id
        self.import_id = import_id
        # The timeline's intake id for this file's events: the same file for the same owner gives
        # the same key, so importing it again adds no event (unique lead, intake, kind).
        self.source_key = source_key
        self.postgres = session.get_bind().dialect.name == "postgresql"

    # --- staging -------------------------------------------------------------------------------

    def create_staging(self) -> None:
        conn = self.session.connection()
        for table in (STAGE, NEW, ROUTED, DECISIONS):
            table.drop(conn, checkfirst=True)
            table.create(conn)

    def drop_staging(self) -> None:
        conn = self.session.connection()
        for table in (STAGE, NEW, ROUTED, DECISIONS):
            table.drop(conn, checkfirst=True)

    @contextmanager
    def writer(self, table: Table) -> Iterator[Callable[[Sequence[Any]], None]]:
        """``write(row)`` for a tuple in the table's column order: COPY on PostgreSQL, INSERTs in
        batches on SQLite. Rows are never all held in memory."""
        names = [c.name for c in table.columns]
        if self.postgres:
            driver = self.session.connection().connection.driver_connection
            assert driver is not None
            with driver.cursor() as cur, cur.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
                yield copy.write_row
            return
        conn = self.session.connection()
        batch: list[dict[str, Any]] = []

        def write(row: Sequence[Any]) -> None:
            batch.append(dict(zip(names, row, strict=True)))
            if len(batch) >= SQLITE_BATCH:
                conn.execute(insert(table), batch)
                batch.clear()

        yield write
        if batch:
            conn.execute(insert(table), batch)

    def index_staging(self) -> None:
        self.session.connection().exec_driver_sql(
            "CREATE INDEX ix_import_stage_unique_key ON import_stage (unique_key)"
        )
        self.analyze(STAGE)

    def analyze(self, *tables: Table) -> None:
        """Statistics for the planner: autovacuum never sees temporary tables."""
        if self.postgres:
            for table in tables:
                self.session.connection().exec_driver_sql(f"ANALYZE {table.name}")

    # --- the set-based steps ---------------------------------------------------------------------

    def _json(self, expr: ColumnElement[Any]) -> ColumnElement[Any]:
        return cast(expr, postgresql.JSONB) if self.postgres else expr

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.postgres else sqlite.insert)(table)

    @property
    def _first_lines(self) -> Any:
        """The first line of each unique key in the file; later ones are duplicates inside the file."""
        return select(func.min(STAGE.c.line)).group_by(STAGE.c.unique_key)

    def counts(self) -> tuple[int, int]:
        """(rows staged, distinct unique leads among them)."""
        row = self.session.execute(select(func.count(), func.count(STAGE.c.unique_key.distinct()))).one()
        return int(row[0]), int(row[1])

    def mark_new(self) -> int:
        """The rows that will make a lead (first of their key in the file, no lead with it yet); how many."""
        known = (
            select(Lead.id).where(Lead.account_id == self.account_id, Lead.unique_key == STAGE.c.unique_key).exists()
        )
        rows = select(STAGE.c.line, STAGE.c.lead_id).where(STAGE.c.line.in_(self._first_lines), ~known)
        self.session.execute(NEW.insert().from_select(["line", "lead_id"], rows))
        self.analyze(NEW)
        return int(self.session.execute(select(func.count()).select_from(NEW)).scalar_one())

    def new_leads(self, after_line: int, limit: int) -> list[tuple[int, uuid.UUID, int | None, str | None]]:
        """The rows that make leads, in file order from ``after_line``: (line, lead id, price, zip)."""
        rows = self.session.execute(
            select(NEW.c.line, NEW.c.lead_id, STAGE.c.price, STAGE.c.zip)
            .join_from(NEW, STAGE, STAGE.c.line == NEW.c.line)
            .where(NEW.c.line > after_line)
            .order_by(NEW.c.line)
            .limit(limit)
        ).all()
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def insert_leads(
        self,
        *,
        owner_id: int,
        assignee_id: int | None,
        routing_entity_id: int | None,
        filename: str,
        at: dt.datetime,
    ) -> int:
        """INSERT ... SELECT ... ON CONFLICT DO NOTHING on (account, unique key), as a single signup
        does, with each lead's assignee already decided; the number of leads made. A key that a
        concurrent signup took since :meth:`mark_new` is skipped, not doubled."""
        now = literal(at, UTCDateTime())
        columns = [
            Lead.id,
            Lead.account_id,
            Lead.owner_entity_id,
            Lead.assigned_agent_id,
            Lead.routed_via_entity_id,
            Lead.in_pond,
            Lead.unique_key,
            Lead.email,
            Lead.email_normalized,
            Lead.phone_e164,
            Lead.first_name,
            Lead.last_name,
            Lead.tags,
            Lead.price_max,
            Lead.zip,
            Lead.source_kind,
            Lead.source_detail,
            Lead.created_by_intake_id,
            Lead.status,
            Lead.email_unsubscribed,
            Lead.sms_unsubscribed,
            Lead.created_at,
            Lead.updated_at,
            Lead.last_activity_at,
        ]
        rows = (
            select(
                STAGE.c.lead_id,
                literal(self.account_id),
                literal(owner_id),
                func.coalesce(DECISIONS.c.agent_id, literal(assignee_id, Integer)),
                literal(routing_entity_id, Integer),
                func.coalesce(DECISIONS.c.in_pond, literal(False)),
                STAGE.c.unique_key,
                STAGE.c.email,
                STAGE.c.email_normalized,
                STAGE.c.phone,
                STAGE.c.first_name,
                STAGE.c.last_name,
                self._json(STAGE.c.tags),
                STAGE.c.price,
                STAGE.c.zip,
                literal("import"),
                func.coalesce(STAGE.c.source, literal(filename[:500])),
                literal(self.import_id, Uuid()),
                literal("active"),
                literal(False),
                literal(False),
                now,
                now,
                now,
            )
            .select_from(
                NEW.join(STAGE, STAGE.c.line == NEW.c.line)
                .outerjoin(ROUTED, ROUTED.c.lead_id == NEW.c.lead_id)
                .outerjoin(DECISIONS, DECISIONS.c.id == ROUTED.c.decision)
            )
            .where(literal(True))  # SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT
            .order_by(NEW.c.line)
        )
        stmt = self._insert(Lead).from_select(columns, rows)
        self.session.execute(stmt.on_conflict_do_nothing(index_elements=["account_id", "unique_key"]))
        made = self.session.execute(select(func.count()).select_from(self._made))
        return int(made.scalar_one())

    @property
    def _made(self) -> Any:
        """The leads this import made (its new rows whose insert was not skipped)."""
        return NEW.join(Lead, Lead.id == NEW.c.lead_id)

    def _timeline(self, rows: Any, *, kind: str, actor: str, at: dt.datetime, new_leads: bool = True) -> Any:
        """INSERT INTO timeline_events ... SELECT over ``rows``, a select of (lead id, summary, data
        as JSON text) with its joins and conditions. Events on leads this import made cannot
        conflict (fresh ids) and skip the costlier ON CONFLICT path; events on existing leads use it."""
        lead_id, summary, data = rows.selected_columns
        src = rows.with_only_columns(
            literal(self.account_id),
            lead_id,
            literal(at, UTCDateTime()),
            literal(kind),
            literal(actor[:64]),
            summary,
            self._json(data),
            literal(self.source_key, Uuid()),
        )
        cols = [
            TimelineEvent.account_id,
            TimelineEvent.lead_id,
            TimelineEvent.at,
            TimelineEvent.kind,
            TimelineEvent.actor,
            TimelineEvent.summary,
            TimelineEvent.data,
            TimelineEvent.intake_id,
        ]
        stmt = self._insert(TimelineEvent).from_select(cols, src)
        if new_leads:
            return stmt
        return stmt.on_conflict_do_nothing(index_elements=["lead_id", "intake_id", "kind"])

    def add_created_events(self, *, summary: str, data: dict[str, Any], actor: str, at: dt.datetime) -> None:
        rows = select(
            NEW.c.lead_id,
            literal(summary) + literal(" (line ") + cast(NEW.c.line, String) + literal(")"),
            literal(json.dumps(data)),
        ).select_from(self._made)
        self.session.execute(self._timeline(rows, kind="created", actor=actor, at=at))

    def add_note_events(self, *, actor: str, at: dt.datetime) -> None:
        rows = (
            select(NEW.c.lead_id, STAGE.c.notes, literal(json.dumps({"from": "import"})))
            .select_from(self._made.join(STAGE, STAGE.c.line == NEW.c.line))
            .where(STAGE.c.notes.is_not(None))
        )
        self.session.execute(self._timeline(rows, kind="note", actor=actor, at=at))

    def existing_leads(self, *, summary: str, actor: str, at: dt.datetime) -> int:
        """D4: a row whose unique lead already exists makes none; it adds one event to that lead,
        unless this same file already put one there. The number of such rows."""
        joined = STAGE.join(Lead, and_(Lead.account_id == self.account_id, Lead.unique_key == STAGE.c.unique_key))
        where = and_(STAGE.c.line.in_(self._first_lines), Lead.id != STAGE.c.lead_id)
        count = self.session.execute(select(func.count()).select_from(joined).where(where)).scalar_one()
        already = exists().where(TimelineEvent.lead_id == Lead.id, TimelineEvent.intake_id == self.source_key)
        rows = (
            select(
                Lead.id,
                literal(summary) + literal(" (line ") + cast(STAGE.c.line, String) + literal(")"),
                literal(json.dumps({"rule": "D4", "import_id": str(self.import_id)})),
            )
            .select_from(joined)
            .where(where, ~already)
        )
        self.session.execute(self._timeline(rows, kind="import", actor=actor, at=at, new_leads=False))
        return int(count)

    def add_routed_events(self, *, at: dt.datetime) -> None:
        """One ``routed`` event per routed lead (A7) and the campaigns their rules start, set-based."""
        made = ROUTED.join(DECISIONS, DECISIONS.c.id == ROUTED.c.decision).join(Lead, Lead.id == ROUTED.c.lead_id)
        campaigns = (
            select(ROUTED.c.lead_id, DECISIONS.c.campaign, literal(at, UTCDateTime()))
            .select_from(made)
            .where(DECISIONS.c.campaign.is_not(None))
        )
        self.session.execute(
            self._insert(LeadCampaign)
            .from_select([LeadCampaign.lead_id, LeadCampaign.name, LeadCampaign.started_at], campaigns)
            .on_conflict_do_nothing()
        )
        rows = select(ROUTED.c.lead_id, DECISIONS.c.summary, DECISIONS.c.data).select_from(made)
        self.session.execute(self._timeline(rows, kind="routed", actor="system", at=at))

    def add_owner_routed_events(self, *, summary: str, data: dict[str, Any], at: dt.datetime) -> None:
        """The agent-owned import's ``routed`` events: the owner is the assignee (no rule ran)."""
        rows = select(NEW.c.lead_id, literal(summary), literal(json.dumps(data))).select_from(self._made)
        self.session.execute(self._timeline(rows, kind="routed", actor="system", at=at))

    def claim_site_activity(self, *, owner_id: int | None) -> list[tuple[uuid.UUID, ClaimedActivity]]:
        """D7: kept anonymous activity of the new leads' emails (under ``owner_id``; under any owner
        when None, duplication off) joins those leads, in one UPDATE ... RETURNING; the rows claimed."""
        stmt = (
            update(SiteActivity)
            .where(
                SiteActivity.account_id == self.account_id,
                SiteActivity.lead_id.is_(None),
                SiteActivity.email_normalized == Lead.email_normalized,
                Lead.id == NEW.c.lead_id,
            )
            .values(lead_id=Lead.id)
            .returning(SiteActivity.lead_id, *CLAIMED_COLUMNS)
            .execution_options(synchronize_session=False)
        )
        if owner_id is not None:
            stmt = stmt.where(SiteActivity.owner_entity_id == owner_id)
        return [(row[0], ClaimedActivity(*row[1:])) for row in self.session.execute(stmt).all()]

    # --- the import row ------------------------------------------------------------------------

    def save_rejections(self, rejections: Sequence[tuple[int, str]]) -> None:
        if rejections:
            self.session.execute(
                insert(ImportRejection),
                [{"import_id": self.import_id, "line": line, "reason": reason} for line, reason in rejections],
            )


def read_chunks(session: Session, import_id: uuid.UUID) -> Iterator[bytes]:
    """An uploaded file, one stored piece at a time."""
    seq = 0
    while True:
        data = session.execute(
            select(ImportChunk.data).where(ImportChunk.import_id == import_id, ImportChunk.seq == seq)
        ).scalar_one_or_none()
        if data is None:
            return
        yield data
        seq += 1


def import_rejections(session: Session, import_id: uuid.UUID, limit: int) -> list[tuple[int, str]]:
    rows = session.execute(
        select(ImportRejection.line, ImportRejection.reason)
        .where(ImportRejection.import_id == import_id)
        .order_by(ImportRejection.line)
        .limit(limit)
    ).all()
    return [(int(line), reason) for line, reason in rows]


__all__ = ["DECISIONS", "NEW", "ROUTED", "STAGE", "ImportStore", "import_rejections", "read_chunks"]
