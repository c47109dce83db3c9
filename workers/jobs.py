"""Bulk jobs (SH7, T4): one action on many leads, run by the ``jobs.run`` task in chunks. Each chunk
is one transaction that applies the same rule as one lead at a time, keeps each refusal with its
reason and moves the job's progress, so a redelivered task resumes after the last committed chunk
and never applies a chunk twice."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import structlog

from models.tables import Job, JobStatus
from models.uow import UnitOfWork
from rules.permissions import Actor, Refusal, Refused
from workers import leadwork
from workers.app import publish

log = structlog.get_logger(__name__)

CHUNK = 500
LISTED_FAILURES = 1000  # GET /v1/jobs/{id} lists this many refusals at most


@dataclass(frozen=True)
class JobView:
    id: uuid.UUID
    action: str
    status: str
    total: int
    done: int
    failed: list[tuple[uuid.UUID, str]]
    error: str | None


def create_job(
    uow: UnitOfWork, actor: Actor, action: str, lead_ids: list[uuid.UUID], params: dict[str, Any]
) -> uuid.UUID | Refusal:
    """Check what the request names (a user, agent or entity of the actor's account), keep the job,
    and publish its task after the commit. A target that does not exist is refused here, once, not
    once per lead."""
    targets = leadwork.resolve_targets(uow, actor, params)
    probe = {
        "share": ("user", "user_id", "SH5"),
        "transfer": ("entity", "to", "SH5"),
        "assign": ("agent", "agent_id", "A3"),
    }.get(action)
    if probe is not None:
        attr, name, rule = probe
        if params.get(name) and getattr(targets, attr) is None:
            return Refusal(rule, f"no such {attr} in this account", Refused.INVALID, name)
    ids = list(dict.fromkeys(lead_ids))
    job = Job(
        id=uuid.uuid4(),
        account_id=actor.account_id,
        user_id=actor.user_id,
        action=action,
        params=params,
        lead_ids=[str(i) for i in ids],
        total=len(ids),
    )
    uow.jobs.add(job)
    job_id = job.id
    uow.after_commit(lambda: publish("jobs.run", job_id))
    uow.commit()
    return job_id


def run_job(job_id: uuid.UUID) -> str:
    """Apply the job chunk by chunk until it is done; each chunk commits with the job's progress."""
    while True:
        with UnitOfWork() as uow:
            job = uow.jobs.get_for_update(job_id)
            if job is None:
                return "missing"
            if job.status in (JobStatus.DONE, JobStatus.FAILED):
                return job.status.value
            actor = uow.orgs.caller_by_id(job.user_id)
            if actor is None:
                _finish(job, JobStatus.FAILED, "the user who asked for the job is no longer active")
                uow.commit()
                return "failed"
            if job.status is JobStatus.QUEUED:
                job.status = JobStatus.RUNNING
                job.started_at = dt.datetime.now(dt.UTC)
            chunk = [uuid.UUID(i) for i in job.lead_ids[job.done : job.done + CHUNK]]
            mail = leadwork.Mailbag()
            refusals = leadwork.apply_action(
                uow, actor, job.action, chunk, leadwork.resolve_targets(uow, actor, job.params), mail
            )
            uow.jobs.add_failures(job.id, {lead_id: r.detail for lead_id, r in refusals.items()})
            job.done += len(chunk)
            _queue_digest(uow, job, mail)
            finished = job.done >= job.total
            if finished:
                _finish(job, JobStatus.DONE, None)
                _send_digest(uow, job)
            uow.commit()
            log.info("job.progress", job_id=str(job_id), done=job.done, total=job.total, refused=len(refusals))
            if finished:
                return "done"


def _finish(job: Job, status: JobStatus, error: str | None) -> None:
    job.status = status
    job.error = error
    job.finished_at = dt.datetime.now(dt.UTC)


DIGEST_LINES = 20  # a bulk job's mail names this many leads, then counts the rest


def _queue_digest(uow: UnitOfWork, job: Job, mail: leadwork.Mailbag) -> None:
    """Count this chunk's mail on the job (naming the first leads); it goes out as one mail per person
    and cause when the job is done (SH7, T4: a note on each lead, one mail to each person)."""
    pending: dict[str, Any] = dict(job.params.get("_mail") or {})
    for (address, cause), lines in mail.items.items():
        key = f"{cause}|{address}"
        entry = pending.get(key) or {"name": mail.names[address], "count": 0, "lines": []}
        pending[key] = {
            "name": entry["name"],
            "count": entry["count"] + len(lines),
            "lines": [*entry["lines"], *lines][:DIGEST_LINES],
        }
    if pending:
        job.params = {**job.params, "_mail": pending}


def _send_digest(uow: UnitOfWork, job: Job) -> None:
    pending: dict[str, Any] = job.params.get("_mail") or {}
    mail = leadwork.Mailbag()
    for key, entry in pending.items():
        cause, address = key.split("|", 1)
        for line in entry["lines"]:
            mail.add((entry["name"], address), cause, line)
        mail.counts[(address, cause)] = entry["count"]
    leadwork.send_mail(uow, job.account_id, mail, job_id=job.id)


def mark_failed(job_id: uuid.UUID, error: str) -> None:
    with UnitOfWork() as uow:
        job = uow.jobs.get(job_id)
        if job is not None and job.status not in (JobStatus.DONE, JobStatus.FAILED):
            _finish(job, JobStatus.FAILED, error[:2000])
            uow.commit()


def job_view(uow: UnitOfWork, actor: Actor, job_id: uuid.UUID) -> JobView | None:
    """A job of the caller's account, to the user who asked for it and to the account's company admins;
    anyone else (an office or team admin too) is told there is no such job.

    A job is not kept per entity: its leads may have any owners of the account, and its failures name
    leads and say why. The one admin on the owner side of the account as a whole, the company admin
    (the admin of the company every agent is connected to), may follow anyone's job; an office or team
    admin is the owner side of only some leads, so another user's job is not theirs to read."""
    job = uow.jobs.get(job_id)
    if job is None or job.account_id != actor.account_id:
        return None
    if job.user_id != actor.user_id and not uow.orgs.is_company_admin(actor):
        return None
    failed = uow.jobs.failures(job_id, limit=LISTED_FAILURES)
    return JobView(
        job.id,
        job.action,
        job.status.value,
        job.total,
        job.done,
        failed,
        job.error,
    )
