"""CSV imports: a file streamed through the row rules into a staging table, then set-based SQL, in
one transaction, so an import is whole or not at all and a retry starts clean.

``leadrelay import`` runs it in-process with a progress bar; ``POST /v1/imports`` keeps the upload
in the database and the ``imports.run`` task runs the same function on the imports queue."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import hashlib
import io
import json
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import delete, select, text, update

from models.db import get_engine
from models.imports import DECISIONS, ROUTED, ImportStore, import_rejections, read_chunks
from models.repositories import Caller, to_ref
from models.tables import Import, ImportChunk, ImportStatus, User
from models.uow import UnitOfWork
from rules.entities import EntityRef, Kind
from rules.events import LeadSignup
from rules.imports import FIELDS, ImportRow, MappingError, RowParser, map_header, may_import
from rules.ownership import Ownership, decide_import_owner
from rules.routing import Decision, Rule, route_many
from rules.uniqueness import unique_key
from workers.services import claimed_activity_events

log = structlog.get_logger(__name__)

Progress = Callable[[str, int, int | None], None]  # phase, done, total (None: unknown)

CHUNK_BYTES = 1 << 20
ROUTING_BATCH = 10_000
STAGE_CHUNK = 10_000  # first rows per existence check, routing step and COPY
PROGRESS_EVERY = 20_000
LISTED_REJECTIONS = 10_000  # past this, rejections are counted but not each listed
_SOURCE_KEYS = uuid.UUID("6f1d1c1e-1e0b-4e53-9b39-5c7a1a6a0c11")


class ImportRefused(Exception):
    """A rule refuses the import (403, naming the rule)."""


class ImportInvalid(ValueError):
    """The request cannot be imported as given (422, naming the field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class ImportSummary:
    import_id: uuid.UUID
    status: str
    rows: int = 0
    created: int = 0
    existing: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None
    ignored_columns: tuple[str, ...] = ()


def parse_map(pairs: Iterable[str]) -> dict[str, str]:
    """``--map 'Contact E=email'`` (repeatable): header -> field; ``'Fax='`` skips a column."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        header, sep, target = pair.partition("=")
        if not sep or not header.strip():
            raise ImportInvalid("map", f"{pair!r} is not 'Header=field'")
        target = target.strip()
        if target and target not in FIELDS:
            raise ImportInvalid("map", f"{target!r} is not a field; the fields are {', '.join(FIELDS)}")
        mapping[header.strip()] = target
    return mapping


def create_import(
    uow: UnitOfWork, *, caller: Caller, owner_slug: str, filename: str, mapping: dict[str, str]
) -> uuid.UUID:
    """The import row, once the caller may import for that owner (O1). The caller commits."""
    owner = uow.orgs.entity_by_slug(caller.account_id, owner_slug)
    if owner is None:
        raise ImportInvalid("owner", f"no entity {owner_slug!r} in this account")
    refusal = may_import(user=caller.slug, agent_id=caller.agent_id, admin_of=caller.admin_of, owner=to_ref(owner))
    if refusal is not None:
        raise ImportRefused(refusal)
    row = Import(
        account_id=caller.account_id,
        owner_entity_id=owner.id,
        by_user_id=caller.user_id,
        filename=filename[:255] or "import.csv",
        mapping=mapping,
        status=ImportStatus.QUEUED,
    )
    uow.session.add(row)
    uow.session.flush()
    return row.id


def store_upload(uow: UnitOfWork, import_id: uuid.UUID, chunks: Iterable[bytes]) -> int:
    """Keep an uploaded file in the database, piece by piece; its size."""
    size = 0
    for seq, data in enumerate(chunks):
        uow.session.add(ImportChunk(import_id=import_id, seq=seq, data=data))
        uow.session.flush()
        size += len(data)
    return size


def check_header(first_bytes: bytes, mapping: dict[str, str]) -> None:
    """Refuse a file whose header cannot be imported before keeping it (422 naming ``file``)."""
    first_line = first_bytes.decode("utf-8-sig", errors="replace").splitlines()[:1]
    if not first_line or not first_line[0].strip():
        raise ImportInvalid("file", "empty: the first line must be the header")
    header = next(csv.reader(first_line, delimiter=_delimiter(first_line[0])))
    try:
        map_header(header, mapping)
    except MappingError as exc:
        raise ImportInvalid("file", str(exc)) from exc


def file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(CHUNK_BYTES):
            yield data


@contextlib.contextmanager
def spooled_upload(import_id: uuid.UUID) -> Iterator[str]:
    """An uploaded file, copied from the database to a temporary file before the import's transaction
    begins: the import then streams it without a second connection (PostgreSQL's is busy with COPY,
    and SQLite lets one transaction write at a time). The path; the file is removed afterwards."""
    with tempfile.NamedTemporaryFile(prefix="leadrelay-import-", suffix=".csv") as spool:
        with UnitOfWork() as uow:
            for data in read_chunks(uow.session, import_id):
                spool.write(data)
        spool.flush()
        yield spool.name


def run_import(import_id: uuid.UUID, chunks: Iterable[bytes], *, progress: Progress | None = None) -> ImportSummary:
    """Import a stored import's file. A finished import is not run again (a redelivered task)."""
    report = progress or (lambda _phase, _done, _total: None)
    with UnitOfWork() as uow:
        if uow.session.get_bind().dialect.name == "postgresql":
            # One run at a time per import: a second (a redelivery while the first still runs) waits here.
            uow.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"import:{import_id}"})
        row = uow.session.execute(select(Import).where(Import.id == import_id)).scalar_one_or_none()
        if row is None:
            raise ImportInvalid("import_id", "no such import")
        if row.status in (ImportStatus.DONE, ImportStatus.FAILED):
            return summary_of(uow, row)
        run = _Run(uow, row, report)
        try:
            summary = run.execute(chunks)
        except MappingError as exc:
            uow.session.rollback()
            return _fail(import_id, str(exc))
        uow.commit()
    log.info(
        "import.done",
        import_id=str(import_id),
        rows=summary.rows,
        created=summary.created,
        existing=summary.existing,
        duplicates=summary.duplicates,
        rejected=summary.rejected,
    )
    return summary


def _fail(import_id: uuid.UUID, error: str) -> ImportSummary:
    """An import that cannot succeed however often it is tried (its header, say) ends failed."""
    with UnitOfWork() as uow:
        uow.session.execute(
            update(Import)
            .where(Import.id == import_id)
            .values(status=ImportStatus.FAILED, error=error[:2000], phase=None, finished_at=dt.datetime.now(dt.UTC))
        )
        uow.session.execute(delete(ImportChunk).where(ImportChunk.import_id == import_id))
        uow.commit()
        row = uow.session.get(Import, import_id)
        assert row is not None
        log.warning("import.failed", import_id=str(import_id), error=error)
        return summary_of(uow, row)


def mark_failed(import_id: uuid.UUID, error: str) -> None:
    """After its retries, an import that kept failing is failed, with the error."""
    _fail(import_id, error)


def summary_of(uow: UnitOfWork, row: Import, listed: int = 100) -> ImportSummary:
    return ImportSummary(
        import_id=row.id,
        status=row.status.value,
        rows=row.rows_read,
        created=row.created,
        existing=row.existing,
        duplicates=row.duplicates,
        rejected=row.rejected,
        rejections=import_rejections(uow.session, row.id, listed),
        error=row.error,
    )


class _ProgressRow:
    """Progress written to the import row on a connection of its own, so ``GET /v1/imports/{id}``
    sees it while the import's transaction is still open (PostgreSQL only: SQLite has one writer)."""

    def __init__(self, import_id: uuid.UUID, enabled: bool) -> None:
        self.import_id = import_id
        self.enabled = enabled

    def __call__(self, **values: Any) -> None:
        if not self.enabled:
            return
        with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(update(Import).where(Import.id == self.import_id).values(**values))


class _Run:
    def __init__(self, uow: UnitOfWork, row: Import, report: Progress) -> None:
        self.uow = uow
        self.import_id = row.id
        self.account_id = row.account_id
        self.filename = row.filename
        self.mapping = dict(row.mapping)
        self.owner: EntityRef = uow.orgs.entity_ref(row.owner_entity_id)
        user = uow.session.get(User, row.by_user_id)
        self.actor = user.slug if user else "import"
        self.duplication = uow.orgs.account(row.account_id).duplication
        self.ownership: Ownership = decide_import_owner(self.owner, self.filename)
        self.report = report
        self.at = dt.datetime.now(dt.UTC)
        postgres = uow.session.get_bind().dialect.name == "postgresql"
        self.progress_row = _ProgressRow(row.id, postgres)
        self.store = ImportStore(uow.session, account_id=row.account_id, import_id=row.id, source_key=row.id)
        self.progress_row(status=ImportStatus.RUNNING, phase="reading", started_at=self.at, rows_read=0)

    def execute(self, chunks: Iterable[bytes]) -> ImportSummary:
        store = self.store
        store.create_staging()
        entity = self.ownership.routing_entity
        router = _Router(entity, *self.uow.orgs.routing_rules(entity, lock=False)) if entity is not None else None
        reader = _HashingReader(iter(chunks))
        staged = self._stage(reader, router)
        # The same file imported again for the same owner writes its events under the same key: none twice.
        store.source_key = uuid.uuid5(_SOURCE_KEYS, f"{self.account_id}:{self.owner.id}:{reader.sha256.hexdigest()}")
        self._phase("saving")
        if router is not None:
            self._settle_routing(router, staged.to_make)
        assignee = self.ownership.assignee
        created = store.insert_leads(
            owner_id=self.owner.id,
            assignee_id=assignee.id if assignee else None,
            routing_entity_id=entity.id if entity else None,
            filename=self.filename,
            at=self.at,
        )
        existing = store.existing_leads(
            summary=f"Listed again in import {self.filename} by {self.actor}", actor=self.actor, at=self.at
        )
        self._phase("timeline")
        created_data = {
            "rule": self.ownership.rule,
            "owner": self.owner.slug,
            "reason": self.ownership.reason,
            "import_id": str(self.import_id),
        }
        store.add_lead_events(
            created=(f"Imported from {self.filename} by {self.actor}", created_data),
            owner_routed=self.ownership.owner_assigned() if entity is None else None,
            actor=self.actor,
            at=self.at,
        )
        claimed = store.claim_site_activity(owner_id=self.owner.id if self.duplication else None)
        self.uow.leads.add_events(claimed_activity_events(self.account_id, claimed))
        store.save_rejections(staged.rejections)
        rows, rejected = staged.rows, staged.rejected
        summary = ImportSummary(
            import_id=self.import_id,
            status=ImportStatus.DONE.value,
            rows=rows,
            created=created,
            existing=existing,
            duplicates=staged.duplicates,
            rejected=rejected,
            rejections=staged.rejections[:100],
            ignored_columns=staged.ignored,
        )
        self.uow.session.execute(
            update(Import)
            .where(Import.id == self.import_id)
            .values(
                status=ImportStatus.DONE,
                phase=None,
                file_sha256=reader.sha256.hexdigest(),
                rows_read=rows,
                created=created,
                existing=existing,
                duplicates=summary.duplicates,
                rejected=rejected,
                started_at=self.at,
                finished_at=dt.datetime.now(dt.UTC),
                error=None,
            )
        )
        self.uow.session.execute(delete(ImportChunk).where(ImportChunk.import_id == self.import_id))
        store.drop_staging()
        self.report("done", rows, rows)
        return summary

    def _phase(self, phase: str, done: int = 0, total: int | None = None) -> None:
        self.report(phase, done, total)
        self.progress_row(phase=phase)

    def _stage(self, reader: _HashingReader, router: _Router | None) -> _Staged:
        """Stream the file through the row rules, :data:`STAGE_CHUNK` rows at a time, into the staging
        tables: the first row of each unique key (later ones are duplicates inside the file), checked
        against the account's leads, and routed when it makes one."""
        text_stream = io.TextIOWrapper(
            io.BufferedReader(reader, CHUNK_BYTES), encoding="utf-8-sig", errors="replace", newline=""
        )
        first = text_stream.readline()
        if not first.strip():
            raise MappingError("the file is empty: the first line must be the header")
        delimiter = _delimiter(first)
        header = next(csv.reader([first], delimiter=delimiter))
        columns = map_header(header, self.mapping)
        parser = RowParser(columns, len(header))
        staged = _Staged(ignored=columns.ignored)
        rejections = staged.rejections
        owner_id, duplication = self.owner.id, self.duplication
        # The first row of each unique key in this chunk, in file order; the staging tables know the
        # keys of the chunks before (a million rows would hold ~100 MB of keys here).
        chunk: dict[str, tuple[int, ImportRow]] = {}
        csv_rows = csv.reader(text_stream, delimiter=delimiter)
        line = 2  # the header was line 1
        rows = 0
        for cells in csv_rows:
            start, line = line, csv_rows.line_num + 2
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            rows += 1
            parsed = parser.parse(cells)
            if isinstance(parsed, str):
                staged.rejected += 1
                if len(rejections) < LISTED_REJECTIONS:
                    rejections.append((start, parsed))
            else:
                key = unique_key(
                    duplication=duplication,
                    owner_id=owner_id,
                    email_normalized=parsed.email_normalized,
                    phone_e164=parsed.phone,
                )
                assert key is not None, "a parsed row has an email or a phone"
                if key in chunk:
                    staged.duplicates += 1
                else:
                    chunk[key] = (start, parsed)
                    if len(chunk) >= STAGE_CHUNK:
                        self._stage_chunk(chunk, router, staged)
                        chunk = {}
            if rows % PROGRESS_EVERY == 0:
                self.report("reading", reader.bytes_read, None)
                self.progress_row(rows_read=rows)
        self._stage_chunk(chunk, router, staged)
        staged.rows = rows
        self.progress_row(rows_read=rows)
        return staged

    def _stage_chunk(self, chunk: dict[str, tuple[int, ImportRow]], router: _Router | None, staged: _Staged) -> None:
        """One chunk of first rows (key -> line, row): a key an earlier chunk had makes a duplicate;
        a key whose lead exists goes to KNOWN; the others, routed in file order, to STAGE."""
        if not chunk:
            return
        store = self.store
        first = store.first_keys(list(chunk))
        staged.duplicates += len(chunk) - len(first)
        known = store.known_keys(list(first))
        if known:
            store.stage_known([(line, key) for key, (line, _) in chunk.items() if key in known])
        new = [(line, key, row) for key, (line, row) in chunk.items() if key in first and key not in known]
        decisions: Sequence[int | None] = (
            router.route([(row.price, row.zip) for _, _, row in new]) if router is not None else [None] * len(new)
        )
        store.stage_new([_stage_row(line, key, row, d) for (line, key, row), d in zip(new, decisions, strict=True)])
        staged.to_make += len(new)

    def _settle_routing(self, router: _Router, to_make: int) -> None:
        """A1/A2, made final before any lead is written. The rows were routed as the file streamed, in
        file order, from the cursors as they stood when it began; here the cursors are locked and,
        if nothing moved them meanwhile, moved on to where those decisions leave them. If a signup
        was routed by the same entity (or its rules changed) while the file was read, the rows are
        routed again from the locked cursors, so the outcome is always that of routing them one by
        one, in file order, after the file was read.

        On PostgreSQL the cursors are locked and moved on a short transaction of their own, as a
        signup's are, so signups to the same entity wait only while the decisions are checked, and
        the import never holds a cursor lock while inserting leads (no lock-order deadlock with a
        signup of the same person). If the import then rolls back, the cursors have moved on: the
        next leads start one round later, and no agent is skipped twice in a row.
        An agent owner is the assignee; nothing is routed."""
        if to_make == 0:
            return
        entity = router.entity
        with contextlib.ExitStack() as stack:
            orgs_uow = stack.enter_context(UnitOfWork()) if self.store.postgres else self.uow
            rules, default = orgs_uow.orgs.routing_rules(entity, lock=True)
            locked = [*rules, default]
            if locked != router.before:
                log.info("import.rerouted", import_id=str(self.import_id), reason="cursors moved while reading")
                self._route_again(router, rules, default, to_make)
            orgs_uow.orgs.move_cursors(entity.id, locked, router.after)
            if orgs_uow is not self.uow:
                orgs_uow.commit()
        in_pond = entity.kind is Kind.TEAM
        with self.store.writer(DECISIONS) as write:
            for index, decision in router.decisions.values():
                pond = decision.agent is None and in_pond
                summary = decision.summary(entity.slug, in_pond=pond)
                campaign = decision.rule.campaign if decision.rule is not None and decision.agent is not None else None
                data = {"routing_entity": entity.slug, **decision.as_data()}
                write((index, decision.agent.id if decision.agent else None, pond, campaign, summary, _json(data)))
        self.report("routing", to_make, to_make)

    def _route_again(self, router: _Router, rules: list[Rule], default: Rule, to_make: int) -> None:
        router.restart(rules, default)
        after_line, done = 0, 0
        while batch := self.store.staged(after_line, ROUTING_BATCH):
            chosen = router.route([(price, zip_code) for _, price, zip_code in batch])
            with self.store.writer(ROUTED) as write:
                for (line, _, _), decision in zip(batch, chosen, strict=True):
                    write((line, decision))
            after_line = batch[-1][0]
            done += len(batch)
            self.report("routing", done, to_make)
        self.store.apply_routed()


@dataclass
class _Staged:
    """What reading the file found."""

    ignored: tuple[str, ...]
    rows: int = 0
    rejected: int = 0
    rejections: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0
    to_make: int = 0


class _Router:
    """The routing decisions of an import's new leads, in file order, carrying the cursors along as
    routing them one by one would. Decisions that read the same on the timeline share one index."""

    def __init__(self, entity: EntityRef, rules: list[Rule], default: Rule) -> None:
        self.entity = entity
        self.before = [*rules, default]
        self.restart(rules, default)

    def restart(self, rules: list[Rule], default: Rule) -> None:
        self.rules, self.default = rules, default
        self.decisions: dict[tuple[Any, ...], tuple[int, Decision]] = {}

    @property
    def after(self) -> list[Rule]:
        return [*self.rules, self.default]

    def route(self, leads: Sequence[tuple[int | None, str | None]]) -> list[int]:
        """The decision index of each lead, given as (price, zip)."""
        signups = [LeadSignup(source_kind="import", price_max=price, zip=zip_code) for price, zip_code in leads]
        chosen, self.rules, self.default = route_many(self.rules, self.default, signups)
        decisions = self.decisions
        indexes: list[int] = []
        for decision in chosen:
            key = _decision_key(decision)
            found = decisions.get(key)
            if found is None:
                found = decisions[key] = (len(decisions), decision)
            indexes.append(found[0])
        return indexes


def _decision_key(decision: Decision) -> tuple[Any, ...]:
    """Decisions that read the same on the timeline share one row (an agent, a rule, the same skips)."""
    rule = decision.rule
    return (
        rule.id if rule else None,
        rule.name if rule else None,
        decision.agent.id if decision.agent else None,
        decision.skipped,
        decision.tried,
    )


def _stage_row(line: int, key: str, row: ImportRow, decision: int | None) -> tuple[Any, ...]:
    """A row that makes a lead, in :data:`STAGE_ROW` order."""
    return (
        line,
        key,
        decision,
        row.email,
        row.email_normalized,
        row.phone,
        row.first_name,
        row.last_name,
        _tags_json(row.tags),
        row.source,
        row.notes,
        row.price,
        row.zip,
    )


@functools.lru_cache(maxsize=4096)
def _tags_json(tags: tuple[str, ...]) -> str:
    """Most rows of a file share their tags; encode each set once."""
    return _json(list(tags))


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _delimiter(header_line: str) -> str:
    """Comma, unless the header plainly uses semicolons, tabs or pipes (spreadsheet exports do)."""
    counts = {d: header_line.count(d) for d in ",;\t|"}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


class _HashingReader(io.RawIOBase):
    """Bytes from an iterator of chunks, counted and hashed as they are read (the file is never whole in memory)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self.bytes_read = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
            self.sha256.update(self._buffer)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        self.bytes_read += n
        return n


__all__ = [
    "ImportInvalid",
    "ImportRefused",
    "ImportSummary",
    "check_header",
    "create_import",
    "file_chunks",
    "mark_failed",
    "parse_map",
    "run_import",
    "spooled_upload",
    "store_upload",
]
