"""One stored intake, processed exactly once by what its source asks for: a text goes to
:mod:`workers.texts` (S1-S4, O6), a signup or site activity to :mod:`workers.services`.

Above both: texts builds on the services' signup recording, so the choice between them is made here."""

from __future__ import annotations

import uuid

from models.orgsnapshot import SNAPSHOTS
from models.tables import IntakeSource
from models.uow import UnitOfWork
from workers import services, texts


def process_intake(uow: UnitOfWork, intake_id: uuid.UUID) -> services.Outcome:
    """Turn one stored intake into a lead (or a repeat signup on one), or record its activity, exactly once.

    The intake row is locked first, so a redelivered or relayed copy of the task waits and then
    finds it final; the lead insert, the cursor move and the timeline commit together.

    The account's org version comes with the lock: the organisation this process keeps of that
    version (models.orgsnapshot) decides owners and routing, and is loaded again when it moved."""
    locked = uow.intakes.get_for_update_with_account(intake_id)
    if locked is None:
        return services.Outcome("missing", reason="no such intake")
    intake, account = locked
    if intake.status in services.FINAL:
        return services.Outcome(intake.status.value, intake.lead_id, reason="already processed")
    intake.attempts += 1
    version = account.org_version
    uow.orgs.use_snapshot(SNAPSHOTS.get(account.id, version, lambda: uow.orgs.load_snapshot(account.id, version)))
    if intake.source is IntakeSource.SMS:
        return texts.process_inbound_text(uow, intake)
    return services.process_signup_or_activity(uow, intake)
