"""One stored intake, processed exactly once by what its source asks for: a text goes to
:mod:`workers.texts` (S1-S4, O6), site activity to :mod:`workers.services`, and a signup to
:mod:`workers.signups`, together with the signups waiting beside it (a batch).

Above all three: texts builds on the signup path, so the choice between them is made here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import structlog

from leadrelay.settings import get_settings
from models.signups import FINAL, Claimed, SignupStore
from models.tables import Intake, IntakeSource
from models.uow import UnitOfWork
from workers import services, signups, texts
from workers.relay import send_intake

log = structlog.get_logger(__name__)


def process_intake(uow: UnitOfWork, intake_id: uuid.UUID, *, batch_size: int | None = None) -> services.Outcome:
    """Turn one stored intake into a lead (or a repeat signup on one), or record its activity, exactly once.

    The intake row is locked first. A signup's task also takes up to ``batch_size`` (by default
    ``LEADRELAY_BATCH_SIZE``) other signups of its account that wait for their first try, skipping rows
    another batch holds, and decides them together. So a task whose intake a batch already finished finds
    it final and does nothing more; one whose intake a batch holds right now first runs the batch it
    could take, then waits for that intake alone.

    If a batch fails, each of its intakes is tried alone at once, in its own transaction: one that fails
    alone is counted as tried (so no batch takes it again) and is left to its own task's retries, and
    only this task's own intake raises. One poison intake fails no batch twice, and ends dead alone."""
    store = uow.signups
    size = batch_size or get_settings().batch_size
    claimed = store.claim(intake_id, size)
    if claimed is not None and len(claimed.intakes) >= size > 1:
        # A full batch: more may wait that have no task of their own (they came while a task of their
        # account was queued). Once this batch is over, this intake's task runs again for them.
        source = claimed.intakes[0].source  # of the batch's kind; read now, before the commit expires it
        try:
            return _process_claimed(uow, store, claimed, intake_id)
        finally:
            send_intake(intake_id, source)
    return _process_claimed(uow, store, claimed, intake_id)


def _process_claimed(
    uow: UnitOfWork, store: SignupStore, claimed: Claimed | None, intake_id: uuid.UUID
) -> services.Outcome:
    if claimed is not None and claimed.intakes[0].id != intake_id:
        _run_or_split(uow, claimed, claimed.intakes, intake_id)
        claimed = None
    if claimed is None:
        uow.rollback()
        claimed = store.wait_for(intake_id)
        if claimed is None:
            return services.Outcome("missing", reason="no such intake")
    this, companions = claimed.intakes[0], claimed.intakes[1:]
    if this.status in FINAL:
        outcome = services.Outcome(this.status.value, this.lead_id, reason="already processed")
        if companions:
            _run_or_split(uow, claimed, companions, intake_id)
        else:
            uow.rollback()
        return outcome
    if _is_activity(this):
        this.attempts += 1
        signups.snapshot_of(uow, store, claimed)
        return services.process_activity(uow, this)
    outcomes = _run_or_split(uow, claimed, claimed.intakes, intake_id)
    return outcomes[intake_id]


def _is_activity(intake: Intake) -> bool:
    return intake.source is IntakeSource.ACTIVITY or (
        intake.source is IntakeSource.EVENTS and "activity" in intake.payload
    )


def _run_or_split(
    uow: UnitOfWork, claimed: Claimed, intakes: list[Intake], intake_id: uuid.UUID
) -> dict[uuid.UUID, services.Outcome]:
    """Run the batch; if it fails, run each intake alone (see :func:`process_intake`)."""
    store = uow.signups
    try:
        return _run(uow, store, claimed, intakes)
    except Exception as exc:
        if len(intakes) == 1:
            uow.rollback()
            raise
        # Before the rollback expires them (reading them would load them).
        ids = [intake.id for intake in intakes]
        source_of = {intake.id: intake.source for intake in intakes}
        uow.rollback()
        log.warning("intake.batch_split", intakes=len(ids), error=type(exc).__name__)
    outcomes: dict[uuid.UUID, services.Outcome] = {}
    failure: Exception | None = None
    for key in ids:
        alone = store.claim(key, 1)
        if alone is None or alone.intakes[0].status in FINAL:
            uow.rollback()
            continue
        try:
            outcomes.update(_run(uow, store, alone, alone.intakes))
        except Exception as exc:
            uow.rollback()
            if key == intake_id:
                failure = exc
            else:
                # Tried and failed alone: no batch takes it again. Its own task retries it, sent now (a signup
                # that shared its account's queued task has none; one that had a task now has two, and the
                # lock makes the second a no-op).
                store.count_attempt(key)
                uow.commit()
                log.warning("intake.failed_alone", intake_id=str(key), error=type(exc).__name__)
                send_intake(key, source_of[key], countdown=get_settings().retry_backoff_seconds)
    if failure is not None:
        raise failure
    return outcomes


def _run(
    uow: UnitOfWork, store: SignupStore, claimed: Claimed, intakes: Sequence[Intake]
) -> dict[uuid.UUID, services.Outcome]:
    """A batch of one kind (a claim takes companions of its intake's kind only): texts, or signups."""
    if intakes[0].source is IntakeSource.SMS:
        return texts.run_batch(uow, store, claimed, intakes)
    return signups.run_batch(uow, store, claimed, intakes)
