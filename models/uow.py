"""The unit of work: one transaction per request or task, committed once, rolled back by default."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from sqlalchemy.orm import Session, sessionmaker

from models.db import session_factory
from models.repositories import (
    ImportRepository,
    IntakeRepository,
    JobRepository,
    LeadRepository,
    MetricsRepository,
    OrgRepository,
    OutboxRepository,
    RelayRepository,
    TextRepository,
    WebhookRepository,
)
from models.signups import SignupStore


class UnitOfWork:
    session: Session
    intakes: IntakeRepository
    orgs: OrgRepository
    leads: LeadRepository
    texts: TextRepository
    jobs: JobRepository
    imports: ImportRepository
    signups: SignupStore
    relay: RelayRepository
    outbox: OutboxRepository
    metrics: MetricsRepository
    webhooks: WebhookRepository

    def __init__(self, factory: sessionmaker[Session] | None = None) -> None:
        self._factory = factory

    def __enter__(self) -> UnitOfWork:
        self.session = (self._factory or session_factory())()
        self._after_commit: list[Callable[[], object]] = []
        self.intakes = IntakeRepository(self.session)
        self.orgs = OrgRepository(self.session)
        self.leads = LeadRepository(self.session)
        self.texts = TextRepository(self.session)
        self.jobs = JobRepository(self.session)
        self.imports = ImportRepository(self.session)
        self.signups = SignupStore(self.session, self.orgs)
        self.relay = RelayRepository(self.session)
        self.outbox = OutboxRepository(self.session)
        self.metrics = MetricsRepository(self.session)
        self.webhooks = WebhookRepository(self.session)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Whatever was not committed is rolled back, so no session is left in PendingRollbackError.
        self._after_commit.clear()
        self.session.rollback()
        self.session.close()

    def commit(self) -> None:
        """Commit, then run what was registered with :meth:`after_commit` (publishing the tasks that
        carry out what was just decided: never before the rows they name are visible)."""
        self.session.commit()
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    def rollback(self) -> None:
        """Roll back what this unit of work did so far (and drop what was to run after its commit)."""
        self._after_commit.clear()
        self.session.rollback()

    def flush(self) -> None:
        """Send what was changed on loaded rows so far to the database, in this transaction (nothing is
        committed): the statements that follow see it, and the unique indexes check it now."""
        self.session.flush()

    def after_commit(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` once this unit of work commits; dropped if it rolls back."""
        self._after_commit.append(callback)

    def each_statement_commits(self) -> None:
        """From here until this unit of work's transaction ends, each statement commits on its own: no
        BEGIN and no COMMIT, each a round trip of its own to PostgreSQL. For work that is one statement (a
        credential read, an intake's one INSERT), called before it. :meth:`commit` and :meth:`end_read`
        then end nothing on the server; the connection goes back to the pool as it came (SQLite keeps its
        transaction: its BEGIN IMMEDIATE costs no round trip)."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})

    def end_read(self) -> None:
        """End a read-only transaction now, returning its connection to the pool. A FastAPI
        dependency calls this before the endpoint runs in another threadpool slot; holding a
        connection across that wait starves the pool under load (every slot waiting on a connection
        held by a request that waits for a slot)."""
        self.session.rollback()
