"""The bulk jobs' queries (SH7, T4): the job, locked while a chunk runs, and the leads it did not change."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.repositories.common import dialect_insert
from models.tables import Job, JobFailure


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, job: Job) -> None:
        """Keep a new job; written at the next flush or commit."""
        self.session.add(job)

    def get(self, job_id: uuid.UUID) -> Job | None:
        return self.session.get(Job, job_id)

    def get_for_update(self, job_id: uuid.UUID) -> Job | None:
        """The job, locked until the transaction ends: a redelivered task waits for the chunk in hand,
        then resumes after it."""
        return self.session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()

    def add_failures(self, job_id: uuid.UUID, reasons: Mapping[uuid.UUID, str]) -> None:
        """Keep why each of these leads was not changed, in one INSERT; a lead kept already is skipped
        (a chunk applied again after a lost commit)."""
        if reasons:
            self.session.execute(
                dialect_insert(self.session, JobFailure)
                .values([{"job_id": job_id, "lead_id": lead_id, "reason": r} for lead_id, r in reasons.items()])
                .on_conflict_do_nothing(index_elements=["job_id", "lead_id"])
            )

    def failures(self, job_id: uuid.UUID, *, limit: int) -> list[tuple[uuid.UUID, str]]:
        """The first ``limit`` leads the job did not change, by lead id, with the reason."""
        rows = self.session.execute(
            select(JobFailure.lead_id, JobFailure.reason)
            .where(JobFailure.job_id == job_id)
            .order_by(JobFailure.lead_id)
            .limit(limit)
        ).all()
        return [(lead_id, reason) for lead_id, reason in rows]
