"""Account administration: replaying the intakes that ended dead or rejected (the HTTP twin of
``leadrelay intake replay``)."""

from __future__ import annotations

from fastapi import APIRouter

from intake.deps import CurrentUser, UoW
from intake.problems import Problem
from intake.schemas import ReplayIn, ReplayOut
from models.tables import IntakeStatus
from workers.relay import send_intake
from workers.services import reopen_intakes

router = APIRouter(prefix="/v1/intake", tags=["intake"])

# One request replays at most this many; ask again for the rest (the oldest go first).
REPLAY_PAGE = 1000


@router.post(
    "/replay",
    status_code=202,
    response_model=ReplayOut,
    responses={403: {"description": "Only an admin of the account's company replays its intakes"}},
)
def replay_intakes(body: ReplayIn, caller: CurrentUser, uow: UoW) -> ReplayOut:
    """Send the account's kept intakes that ended ``dead`` (failed past their retries; a dead letter)
    or ``rejected`` through the pipeline again, oldest first, up to 1,000 a request: each goes back to
    ``accepted`` and its task is published. Replaying is safe: an intake that makes its lead again
    finds it (the unique key), and one whose cause is still there ends as before."""
    if not uow.orgs.is_company_admin(caller):
        raise Problem(403, "Forbidden", "only an admin of the account's company replays its intakes")
    rows = reopen_intakes(uow, IntakeStatus(body.status), body.since, account_id=caller.account_id, limit=REPLAY_PAGE)
    for key, source in rows:
        send_intake(key, source)
    return ReplayOut(replayed=len(rows), intake_ids=[key for key, _ in rows])
