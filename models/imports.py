"""CSV imports, the database part. The rows that make leads are streamed into a temporary staging
table (PostgreSQL ``COPY``; batched INSERTs on SQLite) chunk by chunk, each already checked against
the account's leads and routed, and everything after is set-based SQL in the import's one
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
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.base import UTCDateTime
from models.repositories import CLAIMED_COLUMNS, ClaimedActivity
from models.tables import ImportChunk, ImportRejection, Lead, LeadCampaign, SiteActivity, TimelineEvent

_TEMP = MetaData()

# The rows that make a lead: the first row of each unique key in the file whose lead did not exist
# when its chunk was read, with the routing decision it got (None: nothing routed, an agent owner).
STAGE = Table(
    "import_stage",
    _TEMP,
    Column("line", BigInteger, primary_key=True),
    Column("lead_id", Uuid, nullable=False),  # PostgreSQL fills it (gen_random_uuid()); SQLite is given one
    Column("unique_key", String(400), nullable=False),
    Column("decision", Integer),
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
# The columns a staged row is written with, in this order (``lead_id`` first on SQLite only).
STAGE_ROW = (
    "line",
    "unique_key",
    "decision",
    "email",
    "email_normalized",
    "phone",
    "first_name",
    "last_name",
    "tags",
    "source",
    "notes",
    "price",
    "zip",
)

# Every unique key the file has had so far: a later row with one is a duplicate inside the file.
# Kept here rather than in the worker's memory, which then stays the same whatever the file's size.
KEYS = Table(
    "import_keys",
    _TEMP,
    Column("unique_key", String(400), primary_key=True),
    prefixes=["TEMPORARY"],
)

# The first row of each unique key whose lead already exists (D4): it adds an event, not a lead.
KNOWN = Table(
    "import_known",
    _TEMP,
    Column("line", BigInteger, primary_key=True),
    Column("unique_key", String(400), nullable=False),
    prefixes=["TEMPORARY"],
)

# Routing decided again under the cursor lock (the cursors moved while the file was read): line -> decision.
ROUTED = Table(
    "import_routed",
    _TEMP,
    Column("line", BigInteger, primary_key=True),
    Column("decision", Integer, nullable=False),
    prefixes=["TEMPORARY"],
)
# The few distinct decisions (an agent, a rule, the reasons); ``data`` is JSON, parsed once per decision.
DECISIONS = Table(
    "import_decisions",
    _TEMP,
    Column("id", Integer, primary_key=True),
    Column("agent_id", Integer),
    Column("in_pond", Boolean, nullable=False),
    Column("campaign", String(200)),
    Column("summary", Text, nullable=False),
    Column("data", Text().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
    prefixes=["TEMPORARY"],
)
_TABLES = (STAGE, KEYS, KNOWN, ROUTED, DECISIONS)
_FIRST_KEYS = text(
    "INSERT INTO import_keys (unique_key) SELECT jsonb_array_elements_text(CAST(:keys AS jsonb))"
    " ON CONFLICT DO NOTHING RETURNING unique_key"
)
_KNOWN_KEYS = text(
    "SELECT unique_key FROM leads WHERE account_id = :account_id"
    " AND unique_key = ANY(ARRAY(SELECT jsonb_array_elements_text(CAST(:keys AS jsonb))))"
)
_EVENT_COLUMNS = [
    TimelineEvent.account_id,
    TimelineEvent.lead_id,
    TimelineEvent.at,
    TimelineEvent.kind,
    TimelineEvent.actor,
    TimelineEvent.summary,
    TimelineEvent.data,
    TimelineEvent.intake_id,
]
SQLITE_BATCH = 5_000
SQLITE_IN = 500  # keys per IN (...) on SQLite, well under its bound-parameter limit


class ImportStore:
    """The staging tables and the set-based statements of one import, on the unit of work's session."""

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
        for table in _TABLES:
            table.drop(conn, checkfirst=True)
            table.create(conn)
        if self.postgres:
            # A lead id made in the server costs nothing; a uuid4() per row was a tenth of the Python time.
            conn.exec_driver_sql("ALTER TABLE import_stage ALTER COLUMN lead_id SET DEFAULT gen_random_uuid()")

    def drop_staging(self) -> None:
        conn = self.session.connection()
        for table in _TABLES:
            table.drop(conn, checkfirst=True)

    @contextmanager
    def writer(self, table: Table, columns: Sequence[str] | None = None) -> Iterator[Callable[[Sequence[Any]], None]]:
        """``write(row)`` for a tuple of ``columns`` (by default the table's, in order): COPY on
        PostgreSQL, INSERTs in batches on SQLite. Rows are never all held in memory."""
        names = list(columns) if columns is not None else [c.name for c in table.columns]
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

    def stage_new(self, rows: Sequence[Sequence[Any]]) -> None:
        """Rows that make leads, as tuples in :data:`STAGE_ROW` order. SQLite gets each a lead id here."""
        if self.postgres:
            with self.writer(STAGE, STAGE_ROW) as write:
                for row in rows:
                    write(row)
            return
        with self.writer(STAGE, ("lead_id", *STAGE_ROW)) as write:
            for row in rows:
                write((uuid.uuid4(), *row))

    def stage_known(self, rows: Sequence[tuple[int, str]]) -> None:
        """(line, unique key) of rows whose unique lead already exists."""
        with self.writer(KNOWN) as write:
            for row in rows:
                write(row)

    def first_keys(self, keys: Sequence[str]) -> set[str]:
        """Of ``keys`` (distinct, in file order), those the file has not had before; they are now had."""
        if not keys:
            return set()
        if self.postgres:
            found = self.session.execute(_FIRST_KEYS, {"keys": json.dumps(keys)})
            return {str(k) for k in found.scalars()}
        first: set[str] = set()
        for i in range(0, len(keys), SQLITE_IN):
            values = [{"unique_key": k} for k in keys[i : i + SQLITE_IN]]
            stmt = sqlite.insert(KEYS).values(values).on_conflict_do_nothing().returning(KEYS.c.unique_key)
            first.update(str(k) for k in self.session.execute(stmt).scalars())
        return first

    def known_keys(self, keys: Sequence[str]) -> set[str]:
        """The unique keys among ``keys`` that a lead of the account already has (merged and deleted
        leads included: their key still holds), one indexed query per chunk of the file."""
        if not keys:
            return set()
        where = Lead.account_id == self.account_id
        if self.postgres:
            # The keys go as one JSON text (psycopg dumps a list parameter item by item, in Python) and
            # = ANY(ARRAY(...)) makes them one index scan of the unique key, whatever the table's statistics.
            params = {"account_id": self.account_id, "keys": json.dumps(keys)}
            return {str(k) for k in self.session.execute(_KNOWN_KEYS, params).scalars()}
        found: set[str] = set()
        for i in range(0, len(keys), SQLITE_IN):
            stmt = select(Lead.unique_key).where(where, Lead.unique_key.in_(keys[i : i + SQLITE_IN]))
            found.update(k for k in self.session.execute(stmt).scalars() if k is not None)
        return found

    def analyze(self, *tables: Table) -> None:
        """Statistics for the planner: autovacuum never sees temporary tables."""
        if self.postgres:
            for table in tables:
                self.session.connection().exec_driver_sql(f"ANALYZE {table.name}")

    # --- routing again, when the cursors moved while the file was read ---------------------------

    def staged(self, after_line: int, limit: int) -> list[tuple[int, int | None, str | None]]:
        """The rows that make leads, in file order from ``after_line``: (line, price, zip)."""
        rows = self.session.execute(
            select(STAGE.c.line, STAGE.c.price, STAGE.c.zip)
            .where(STAGE.c.line > after_line)
            .order_by(STAGE.c.line)
            .limit(limit)
        ).all()
        return [(int(r[0]), r[1], r[2]) for r in rows]

    def apply_routed(self) -> None:
        """Each staged row's decision from :data:`ROUTED` (written by routing again)."""
        routed = select(ROUTED.c.decision).where(ROUTED.c.line == STAGE.c.line).scalar_subquery()
        self.session.execute(update(STAGE).values(decision=routed))

    # --- the set-based steps ---------------------------------------------------------------------

    def _json(self, expr: ColumnElement[Any]) -> ColumnElement[Any]:
        return cast(expr, postgresql.JSONB) if self.postgres else expr

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.postgres else sqlite.insert)(table)

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
        concurrent signup took since its chunk was checked is skipped, not doubled, and its row
        becomes a row of an existing lead (:meth:`existing_leads`), so the staging table then holds
        exactly the leads this import made."""
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
            .select_from(STAGE.outerjoin(DECISIONS, DECISIONS.c.id == STAGE.c.decision))
            .where(literal(True))  # SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT
            .order_by(STAGE.c.line)
        )
        stmt = self._insert(Lead).from_select(columns, rows)
        stmt = stmt.on_conflict_do_nothing(index_elements=["account_id", "unique_key"])
        result = self.session.execute(stmt.execution_options(preserve_rowcount=True))
        staged = int(self.session.execute(select(func.count()).select_from(STAGE)).scalar_one())
        if result.rowcount == staged:  # type: ignore[attr-defined]
            return staged
        # Some keys were taken meanwhile (or the driver cannot tell): those rows name leads that do not exist.
        skipped = ~exists().where(Lead.id == STAGE.c.lead_id)
        self.session.execute(
            KNOWN.insert().from_select(["line", "unique_key"], select(STAGE.c.line, STAGE.c.unique_key).where(skipped))
        )
        self.session.execute(delete(STAGE).where(skipped))
        return int(self.session.execute(select(func.count()).select_from(STAGE)).scalar_one())

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
            data,
            literal(self.source_key, Uuid()),
        )
        stmt = self._insert(TimelineEvent).from_select(_EVENT_COLUMNS, src)
        if new_leads:
            return stmt
        return stmt.on_conflict_do_nothing(index_elements=["lead_id", "intake_id", "kind"])

    def _line(self, summary: str, line: Any) -> Any:
        return literal(summary) + literal(" (line ") + cast(line, String) + literal(")")

    def existing_leads(self, *, summary: str, actor: str, at: dt.datetime) -> int:
        """D4: a row whose unique lead already exists makes none; it adds one event to that lead,
        unless this same file already put one there. The number of such rows."""
        joined = KNOWN.join(Lead, and_(Lead.account_id == self.account_id, Lead.unique_key == KNOWN.c.unique_key))
        count = int(self.session.execute(select(func.count()).select_from(joined)).scalar_one())
        if count == 0:
            return 0
        already = exists().where(TimelineEvent.lead_id == Lead.id, TimelineEvent.intake_id == self.source_key)
        data = json.dumps({"rule": "D4", "import_id": str(self.import_id)})
        rows = (
            select(Lead.id, self._line(summary, KNOWN.c.line), self._json(literal(data)))
            .select_from(joined)
            .where(~already)
        )
        self.session.execute(self._timeline(rows, kind="import", actor=actor, at=at, new_leads=False))
        return count

    def add_lead_events(
        self,
        *,
        created: tuple[str, dict[str, Any]],
        owner_routed: tuple[str, dict[str, Any]] | None,
        actor: str,
        at: dt.datetime,
    ) -> None:
        """The timeline of each lead this import made, in one INSERT ... SELECT: ``created`` (its
        summary names the line), ``routed`` (A7: the decision's summary and reasons, or
        ``owner_routed`` when the owner is the assignee and no rule ran) and the row's ``note``,
        in that order on each lead. Rows go in lead id order: each lead's index entries and its
        foreign-key check then land next to the previous ones (a fifth less time than file order).
        A rule that starts a campaign starts it here too."""
        summary, data = created
        rows: list[Any] = [
            select(
                STAGE.c.lead_id,
                literal(0).label("seq"),
                literal("created").label("kind"),
                literal(actor[:64]).label("actor"),
                self._line(summary, STAGE.c.line).label("summary"),
                self._json(literal(json.dumps(data))).label("data"),
            )
        ]
        if owner_routed is not None:
            routed, routed_data = owner_routed
            routed_rows = select(
                STAGE.c.lead_id,
                literal(1),
                literal("routed"),
                literal("system"),
                literal(routed),
                self._json(literal(json.dumps(routed_data))),
            )
        else:
            made = STAGE.join(DECISIONS, DECISIONS.c.id == STAGE.c.decision)
            campaigns = (
                select(STAGE.c.lead_id, DECISIONS.c.campaign, literal(at, UTCDateTime()))
                .select_from(made)
                .where(DECISIONS.c.campaign.is_not(None))
            )
            self.session.execute(
                self._insert(LeadCampaign)
                .from_select([LeadCampaign.lead_id, LeadCampaign.name, LeadCampaign.started_at], campaigns)
                .on_conflict_do_nothing()
            )
            routed_rows = select(
                STAGE.c.lead_id, literal(1), literal("routed"), literal("system"), DECISIONS.c.summary, DECISIONS.c.data
            ).select_from(made)
        rows.append(routed_rows)
        rows.append(
            select(
                STAGE.c.lead_id,
                literal(2),
                literal("note"),
                literal(actor[:64]),
                STAGE.c.notes,
                self._json(literal(json.dumps({"from": "import"}))),
            ).where(STAGE.c.notes.is_not(None))
        )
        events = union_all(*rows).subquery("events")
        src = select(
            literal(self.account_id),
            events.c.lead_id,
            literal(at, UTCDateTime()),
            events.c.kind,
            events.c.actor,
            events.c.summary,
            events.c.data,
            literal(self.source_key, Uuid()),
        ).order_by(events.c.lead_id, events.c.seq)
        self.session.execute(self._insert(TimelineEvent).from_select(_EVENT_COLUMNS, src))

    def claim_site_activity(self, *, owner_id: int | None) -> list[tuple[uuid.UUID, ClaimedActivity]]:
        """D7: kept anonymous activity of the new leads' emails (under ``owner_id``; under any owner
        when None, duplication off) joins those leads, in one UPDATE ... RETURNING; the rows claimed."""
        stmt = (
            update(SiteActivity)
            .where(
                SiteActivity.account_id == self.account_id,
                SiteActivity.lead_id.is_(None),
                SiteActivity.email_normalized == STAGE.c.email_normalized,
            )
            .values(lead_id=STAGE.c.lead_id)
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


__all__ = [
    "DECISIONS",
    "KEYS",
    "KNOWN",
    "ROUTED",
    "STAGE",
    "STAGE_ROW",
    "ImportStore",
    "import_rejections",
    "read_chunks",
]
