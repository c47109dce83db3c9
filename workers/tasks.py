"""Thin tasks: ids in, a unit of work, a service call. Stable dotted names."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import structlog
from celery import Task

from leadrelay.settings import get_settings
from models.uow import UnitOfWork
from workers import imports, intakes, jobs, notifications, relay, services, texts_outbound, webhooks
from workers.app import QUEUED_HEADERS, app, claimed_from_now, publish
from workers.celeryconfig import MAX_RETRY_COUNTDOWN, TASK_QUEUES
from workers.errors import error_kind, error_reason

log = structlog.get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def backoff(retries: int) -> float:
    """Seconds before retry number ``retries + 1``: ``LEADRELAY_RETRY_BACKOFF_SECONDS`` doubled each time (2, 4, 8...)."""
    return float(min(get_settings().retry_backoff_seconds * 2**retries, MAX_RETRY_COUNTDOWN))


class RetryingTask(Task):  # type: ignore[misc]  # celery has no type hints
    """The base of the project's tasks: their one retry policy. A failure is tried again after
    :func:`backoff` seconds until the last try, whose number is the task's ceiling (:attr:`ceiling`)."""

    # Whether LEADRELAY_TASK_MAX_RETRIES lowers the task's own max_retries (the intake and outbound texts:
    # the setting's retries); set by the ``task`` decorator.
    capped_by_setting: bool = False

    @property
    def ceiling(self) -> int:
        """The task's own ``max_retries``, or ``LEADRELAY_TASK_MAX_RETRIES`` when it is capped by it and that is lower."""
        if self.capped_by_setting:
            return min(int(self.max_retries), get_settings().task_max_retries)
        return int(self.max_retries)

    def last_try(self, *, own_ceiling: bool = False) -> bool:
        """Whether this run is the last: no retry is left under the ceiling (the task's own
        ``max_retries`` with ``own_ceiling``, whatever the setting says)."""
        ceiling = int(self.max_retries) if own_ceiling else self.ceiling
        return int(self.request.retries) >= ceiling

    def retry_later(self, exc: Exception) -> NoReturn:
        """Raise Celery's retry of this run, after :func:`backoff` seconds."""
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from exc


def task(name: str, *, max_retries: int = 5, capped_by_setting: bool = False) -> Callable[[F], Any]:
    """The project's task decorator: explicit parameters, late acks, bound for retries, on :class:`RetryingTask`.
    Queues are routed by name (``celeryconfig.TASK_QUEUES``)."""
    assert name in TASK_QUEUES, f"route {name} to a named queue in workers.celeryconfig.TASK_QUEUES"
    return app.task(  # type: ignore[no-any-return]
        name=name,
        base=RetryingTask,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=max_retries,
        capped_by_setting=capped_by_setting,
        ignore_result=True,
    )


@task("intake.process", max_retries=5, capped_by_setting=True)
def process_intake(self: RetryingTask, intake_id: str) -> str:
    """Process one stored intake. Any failure retries with backoff; past the retries the intake is dead."""
    for kind, header in QUEUED_HEADERS.items():
        account = self.request.get(header)
        if account is not None:  # this task stood for its account's new intakes: from now on they publish their own
            claimed_from_now(int(account), kind)
    try:
        with UnitOfWork() as uow:
            outcome = intakes.process_intake(uow, uuid.UUID(intake_id))
        return outcome.status
    except Exception as exc:
        if self.last_try():
            log.error("intake.dead", intake_id=intake_id, error=error_kind(exc))
            with UnitOfWork() as uow:
                services.mark_dead(uow, uuid.UUID(intake_id), error_reason(exc))
            return "dead"
        log.warning("intake.retry", intake_id=intake_id, retries=self.request.retries, error=error_kind(exc))
        self.retry_later(exc)


def _whole_or_retry(
    self: RetryingTask,
    what: str,
    key: uuid.UUID,
    run: Callable[[uuid.UUID], str],
    fail: Callable[[uuid.UUID, str], None],
) -> str:
    """Run an import or a bulk job; any failure retries with backoff, and past the retries the row is
    failed with the error."""
    try:
        return run(key)
    except Exception as exc:
        if self.last_try():
            log.error("task.dead", kind=what, id=str(key), error=error_kind(exc))
            fail(key, error_reason(exc))
            return "failed"
        log.warning("task.retry", kind=what, id=str(key), retries=self.request.retries, error=error_kind(exc))
        self.retry_later(exc)


def _import(key: uuid.UUID) -> str:
    with imports.spooled_upload(key) as path:
        return imports.run_import(key, imports.file_chunks(path)).status


@task("imports.run", max_retries=3)
def run_import(self: RetryingTask, import_id: str) -> str:
    """Run an uploaded CSV import (kept in the database) on the imports queue, whole or not at all.
    A failure retries from the start; past the retries the import is failed with the error."""
    return _whole_or_retry(self, "import", uuid.UUID(import_id), _import, imports.mark_failed)


@task("jobs.run", max_retries=3)
def run_job(self: RetryingTask, job_id: str) -> str:
    """Run a bulk job (SH7, T4) chunk by chunk; a retry resumes after the last committed chunk.
    Past the retries the job is failed with the error (the chunks done stay done)."""
    return _whole_or_retry(self, "job", uuid.UUID(job_id), jobs.run_job, jobs.mark_failed)


@task("notifications.flush", max_retries=5)
def flush_notifications(self: RetryingTask) -> str:
    """Send the pending mail over one SMTP connection a pass (``notifications.flush``): published after a
    commit that queued mail (``notifications.request_flush``) and by the relay. A mail that fails stays
    pending with its error; this flush then publishes the next one for when that mail is due. A database
    failure retries the whole flush with backoff; past the retries the relay publishes another."""
    try:
        result = notifications.flush()
    except Exception as exc:
        if self.last_try():
            log.error("notification.flush_failed", error=error_kind(exc))
            return "error"
        log.warning("notification.flush_retry", retries=self.request.retries, error=error_kind(exc))
        self.retry_later(exc)
    if result.more:
        publish(notifications.FLUSH_TASK, None)
    elif result.retry_in is not None:
        publish(notifications.FLUSH_TASK, None, countdown=min(result.retry_in, MAX_RETRY_COUNTDOWN))
    return f"sent {result.sent}, failed {result.failed}"


@task("notifications.send", max_retries=8)
def send_notification(self: RetryingTask, outbox_id: str) -> str:
    """Send one kept notification; failures retry with backoff, and the row keeps the error. Nothing
    publishes this task any more (``notifications.flush`` sends the outbox in batches): it stays registered
    so that the messages queued before an upgrade are still consumed."""
    try:
        with UnitOfWork() as uow:
            return notifications.send(uow, uuid.UUID(outbox_id))
    except Exception as exc:
        final = self.last_try()
        with UnitOfWork() as uow:
            notifications.record_failure(uow, uuid.UUID(outbox_id), error_reason(exc), final=final)
        if final:
            log.error("notification.failed", outbox_id=outbox_id, error=type(exc).__name__)
            return "failed"
        self.retry_later(exc)


# A copy of texts.send that finds the text's gateway call in flight looks again after this long.
IN_FLIGHT_RECHECK_SECONDS = 10


@task("texts.send", max_retries=5, capped_by_setting=True)
def send_text(self: RetryingTask, message_id: str) -> str:
    """Send one recorded outbound text, at most once. Gateway failures retry with backoff
    (``LEADRELAY_TASK_MAX_RETRIES``, at most 5); the last one leaves the text ``failed`` with the error."""
    key = uuid.UUID(message_id)
    last_try = self.last_try()
    try:
        return texts_outbound.send_text(key, last_try=last_try)
    except texts_outbound.InFlight as exc:
        # Another copy is calling the gateway (or was lost doing so): look again, until it is over or stale.
        countdown = min(IN_FLIGHT_RECHECK_SECONDS, int(exc.stale_in) + 1)
        raise self.retry(exc=exc, countdown=countdown, max_retries=self.request.retries + 1) from exc
    except texts_outbound.SendFailed as exc:
        if exc.final:
            return "failed"
        log.warning("text.retry", message_id=message_id, retries=self.request.retries)
        self.retry_later(exc)
    except Exception as exc:  # the database: the text is still queued (or in flight) and is looked at again
        # The task's own ceiling: LEADRELAY_TASK_MAX_RETRIES counts the gateway's failures, not the database's.
        if self.last_try(own_ceiling=True):
            log.error("text.gave_up", message_id=message_id, error=type(exc).__name__)
            return "error"
        self.retry_later(exc)


@task("webhooks.deliver", max_retries=5)
def deliver_webhook(self: RetryingTask, delivery_id: str) -> str:
    """One try of one outbound webhook delivery (``webhooks.deliver``). The receiver's failures are the
    delivery's own retries (kept on its row, the schedule of ``LEADRELAY_WEBHOOKS_RETRY_SECONDS``); this
    task retries only when the database fails, and past that the relay sends it again."""
    try:
        return webhooks.deliver(uuid.UUID(delivery_id))
    except Exception as exc:
        if self.last_try():
            log.error("webhook.gave_up", delivery_id=delivery_id, error=error_kind(exc))
            return "error"
        self.retry_later(exc)


@app.task(name="relay.sweep", ignore_result=True)  # type: ignore[untyped-decorator]
def relay_sweep() -> dict[str, int]:
    """One relay pass, for celery beat (``celery -A workers beat``); ids only, so nothing to retry."""
    return relay.sweep()
