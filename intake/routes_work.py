"""Working the leads: edit, assign, share, transfer, merge, archive, delete, unsubscribe,
campaigns, bulk jobs, the export and leaving a team. Every endpoint asks a rule in ``rules/`` through
``workers.leadwork`` and only maps its answer: a plan carried out, or a refusal naming the rule."""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from intake.deps import CurrentUser, UoW
from intake.links import public_url_for
from intake.problems import Problem, invalid
from intake.routes_leads import NOT_FOUND, lead_views
from intake.schemas import (
    AgentOut,
    AssignIn,
    BulkIn,
    CampaignIn,
    CampaignPage,
    EntityOut,
    JobAccepted,
    JobFailureOut,
    JobOut,
    LeadOut,
    LeadPatch,
    LeaveOut,
    MergeIn,
    MergeMoves,
    MergePreviewOut,
    ShareIn,
    TransferIn,
    UnsubscribeIn,
)
from models.repositories import Caller
from models.uow import UnitOfWork
from rules.permissions import Refusal, Refused
from workers import jobs, leadwork

router = APIRouter(prefix="/v1", tags=["working the leads"])

RULE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or unknown user token"},
    403: {"description": "A rule refuses: the detail names it (T1: only the owner can transfer this lead)"},
    404: {"description": "No such lead the caller can see (V1), or a deleted one"},
    409: {"description": "A conflict the rule names (M2, M3, a merged lead, a unique key taken: D1)"},
    422: {"description": "A malformed body, or a user or entity not in the caller's account (SH5)"},
}
_TITLES = {
    Refused.FORBIDDEN: (403, "Forbidden"),
    Refused.CONFLICT: (409, "Conflict"),
    Refused.NOT_FOUND: (404, "Not found"),
}


def refused(refusal: Refusal) -> Problem:
    """A rule's refusal as the API documents it: 403/409/404 with the rule in the detail, or 422 naming the field."""
    if refusal.kind is Refused.INVALID:
        field = refusal.field or "body"
        return invalid(field, refusal.detail, detail=f"{field}: {refusal.detail}")
    if refusal.rule == "V1" and refusal.kind is Refused.NOT_FOUND:
        return NOT_FOUND
    status, title = _TITLES[refusal.kind]
    return Problem(status, title, refusal.detail)


def _done(uow: UnitOfWork, refusal: Refusal | None, lead_id: uuid.UUID) -> LeadOut:
    if refusal is not None:
        raise refused(refusal)
    lead = uow.leads.get(lead_id)
    assert lead is not None
    return lead_views(uow, [lead])[0]


@router.patch("/leads/{lead_id:lead}", response_model=LeadOut, responses=RULE_ERRORS)
def edit_lead(lead_id: uuid.UUID, body: LeadPatch, caller: CurrentUser, uow: UoW) -> LeadOut:
    """SH2/V2: change the contact's name, phone or tags. The owner side, the assignee and users shared
    with edit permission may; view permission may not (403 SH2). A timeline note lists the fields."""
    return _done(uow, leadwork.edit_lead(uow, caller, lead_id, body.changes()), lead_id)


@router.post("/leads/{lead_id:lead}/assign", response_model=LeadOut, responses=RULE_ERRORS)
def assign_lead(lead_id: uuid.UUID, body: AssignIn, caller: CurrentUser, uow: UoW) -> LeadOut:
    """A3/A4/A6: reassign to an agent connected to the owner, or (a team-owned lead) to the team's
    pond. The owner's admins do (an agent-owned lead: that agent alone); the owner never changes."""
    params = {"agent_id": body.agent_id, "pond": bool(body.pond)}
    return _done(uow, leadwork.act(uow, caller, "assign", lead_id, params), lead_id)


@router.post("/leads/{lead_id:lead}/shares", response_model=LeadOut, responses=RULE_ERRORS)
def share_lead(lead_id: uuid.UUID, body: ShareIn, caller: CurrentUser, uow: UoW) -> LeadOut:
    """SH1-SH3, SH5: anyone who can see the lead shares it with a user of the account, with view or
    edit permission; a timeline note, and a mail to that user. Sharing again changes the permission."""
    params = {"user_id": body.user_id, "permission": body.permission}
    return _done(uow, leadwork.act(uow, caller, "share", lead_id, params), lead_id)


@router.delete("/leads/{lead_id:lead}/shares/{user_id}", status_code=204, responses=RULE_ERRORS)
def unshare_lead(lead_id: uuid.UUID, user_id: str, caller: CurrentUser, uow: UoW) -> Response:
    """SH6: anyone shared on the lead (and its owner side) removes a share; a note; access ends at once."""
    if refusal := leadwork.unshare_lead(uow, caller, lead_id, user_id):
        raise refused(refusal)
    return Response(status_code=204)


@router.post("/leads/{lead_id:lead}/transfer", response_model=LeadOut, responses=RULE_ERRORS)
def transfer_lead(lead_id: uuid.UUID, body: TransferIn, caller: CurrentUser, uow: UoW) -> LeadOut:
    """T1-T3, T6, SH5: the owner side gives the lead to another entity of the account, for good. A
    note, and a mail to the new owner (an agent, or an entity's admins). Answers the lead as it is now."""
    return _done(uow, leadwork.act(uow, caller, "transfer", lead_id, {"to": body.to}), lead_id)


@router.post("/leads/{lead_id:lead}/archive", response_model=LeadOut, responses=RULE_ERRORS)
def archive_lead(lead_id: uuid.UUID, caller: CurrentUser, uow: UoW) -> LeadOut:
    """X2: the owner side or the assigned agent archives (an agent's only way to drop an entity's lead)."""
    return _done(uow, leadwork.archive_lead(uow, caller, lead_id), lead_id)


@router.delete("/leads/{lead_id:lead}", status_code=204, responses=RULE_ERRORS)
def delete_lead(lead_id: uuid.UUID, caller: CurrentUser, uow: UoW) -> Response:
    """X1-X4: the owner deletes; an agent cannot delete an entity's lead (X2), nor any lead with
    duplication off (X3). A tombstone keeps who and when (X4); the lead is then 404 everywhere."""
    if refusal := leadwork.delete_lead(uow, caller, lead_id):
        raise refused(refusal)
    return Response(status_code=204)


@router.post("/leads/{lead_id:lead}/unsubscribe", response_model=LeadOut, responses=RULE_ERRORS)
def unsubscribe_lead(lead_id: uuid.UUID, body: UnsubscribeIn, caller: CurrentUser, uow: UoW) -> LeadOut:
    """D8: this lead only, on one channel; the person's other leads keep their subscriptions."""
    return _done(uow, leadwork.unsubscribe_lead(uow, caller, lead_id, body.channel), lead_id)


@router.get("/leads/{lead_id:lead}/campaigns", response_model=CampaignPage, responses=RULE_ERRORS)
def list_campaigns(lead_id: uuid.UUID, caller: CurrentUser, uow: UoW) -> CampaignPage:
    """D6: the lead's own active campaigns."""
    if uow.leads.visible(caller, lead_id) is None:
        raise NOT_FOUND
    return CampaignPage(items=uow.leads.campaigns_of([lead_id])[lead_id])


@router.post("/leads/{lead_id:lead}/campaigns", response_model=CampaignPage, status_code=201, responses=RULE_ERRORS)
def start_campaign(lead_id: uuid.UUID, body: CampaignIn, caller: CurrentUser, uow: UoW) -> CampaignPage:
    """D6: start a campaign on this lead (an edit, SH2), with a note."""
    if refusal := leadwork.campaign(uow, caller, lead_id, body.name, start=True):
        raise refused(refusal)
    return CampaignPage(items=uow.leads.campaigns_of([lead_id])[lead_id])


@router.delete("/leads/{lead_id:lead}/campaigns/{name}", status_code=204, responses=RULE_ERRORS)
def stop_campaign(lead_id: uuid.UUID, name: str, caller: CurrentUser, uow: UoW) -> Response:
    """D6: stop one of the lead's campaigns, with a note."""
    if refusal := leadwork.campaign(uow, caller, lead_id, name, start=False):
        raise refused(refusal)
    return Response(status_code=204)


def _merge(body: MergeIn, caller: Caller, uow: UnitOfWork, *, preview: bool) -> leadwork.MergeOutcome:
    outcome = leadwork.merge(uow, caller, body.primary_id, body.other_id, body.assigned_agent_id, preview=preview)
    if isinstance(outcome, Refusal):
        raise refused(outcome)
    return outcome


@router.post("/leads/merge/preview", response_model=MergePreviewOut, responses=RULE_ERRORS)
def merge_preview(body: MergeIn, caller: CurrentUser, uow: UoW) -> MergePreviewOut:
    """M7: the merge's outcome (owner, primary, assignee, what moves, what stops); changes nothing."""
    outcome = _merge(body, caller, uow, preview=True)
    plan = outcome.plan
    owner = uow.orgs.entity(plan.owner_id)
    agent = uow.orgs.entity(plan.assignee_id) if plan.assignee_id is not None else None
    return MergePreviewOut(
        primary_id=plan.primary_id,
        other_id=plan.other_id,
        owner=EntityOut(id=owner.slug, kind=owner.kind.value, name=owner.name),
        assigned_agent=AgentOut(id=agent.slug, name=agent.name) if agent else None,
        moves=MergeMoves(**outcome.moves),
        stops=list(plan.stops),
        merged_note=outcome.note,
        merged_note_data=outcome.note_data,
        rules=list(plan.rules),
    )


@router.post("/leads/merge", response_model=LeadOut, responses=RULE_ERRORS)
def merge_leads(body: MergeIn, caller: CurrentUser, uow: UoW) -> LeadOut:
    """M1-M6: merge ``other_id`` into ``primary_id``, at once. Answers the primary; the other then
    reads ``status: "merged"`` with ``merged_into``."""
    outcome = _merge(body, caller, uow, preview=False)
    return _done(uow, None, outcome.plan.primary_id)


@router.post("/leads/bulk", status_code=202, response_model=JobAccepted, responses=RULE_ERRORS)
def bulk(body: BulkIn, caller: CurrentUser, uow: UoW, request: Request, response: Response) -> JobAccepted:
    """SH7/T4: queue one action on many leads. The job applies the same rule lead by lead, in chunks,
    keeps each refusal with its reason, and reports its progress at ``status_url``."""
    params = body.model_dump(include={"user_id", "permission", "to", "agent_id", "pond"}, exclude_none=True)
    created = jobs.create_job(uow, caller, body.action, list(body.lead_ids), params)
    if isinstance(created, Refusal):
        raise refused(created)
    url = public_url_for(request, "get_job", job_id=created)
    response.headers["Location"] = url
    return JobAccepted(job_id=created, status_url=url)


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: {"description": "No such job of the caller"}})
def get_job(job_id: uuid.UUID, caller: CurrentUser, uow: UoW) -> JobOut:
    view = jobs.job_view(uow, caller, job_id)
    if view is None:
        raise Problem(404, "Not found", "no such job")
    return JobOut(
        id=view.id,
        action=view.action,
        status=view.status,
        total=view.total,
        done=view.done,
        failed=[JobFailureOut(lead_id=lead_id, reason=reason) for lead_id, reason in view.failed],
        error=view.error,
    )


EXPORT_COLUMNS = (
    "id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "status",
    "owner",
    "owner_kind",
    "assigned_agent",
    "source_kind",
    "source_detail",
    "tags",
    "created_at",
)


# OWASP's CSV injection advice: a cell starting with one of these is a formula to a spreadsheet.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A phone is stored in E.164, checked on the way in: a spreadsheet reads "+15551234567" as a number and
# nothing else, so it stays as it is (escaped it would no longer read as the phone).
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


def spreadsheet_safe(value: object) -> object:
    """A cell that a spreadsheet will not run: text starting like a formula gets a leading ``'`` (OWASP).
    Names, tags and sources come from anonymous visitors, and an admin opens the export in a spreadsheet."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _E164.fullmatch(value):
        return "'" + value
    return value


@router.get(
    "/export.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "The caller's leads (V3), as CSV"}},
)
def export_csv(caller: CurrentUser) -> StreamingResponse:
    """V3: an agent's export holds the leads it owns and the company-owned leads assigned to it, never
    team-owned ones; an admin's, its entities' leads. Streamed from a server-side cursor. A cell that
    starts like a spreadsheet formula (``=``, ``+``, ``-``, ``@``, tab, CR) starts with ``'`` instead,
    E.164 phones excepted."""

    def rows() -> Iterator[str]:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(EXPORT_COLUMNS)
        with UnitOfWork() as uow:
            for batch in uow.leads.export_rows(caller):
                for row in batch:
                    values = list(row)
                    values[5] = values[5].value
                    values[7] = values[7].value
                    values[11] = " ".join(values[11] or ())
                    values[12] = values[12].isoformat()
                    writer.writerow([spreadsheet_safe(v) for v in values])
                yield out.getvalue()
                out.seek(0)
                out.truncate()
        yield out.getvalue()

    return StreamingResponse(
        rows(), media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="leads.csv"'}
    )


@router.post("/teams/{team_id}/members/{agent_id}/leave", response_model=LeaveOut, responses=RULE_ERRORS)
def leave_team(team_id: str, agent_id: str, caller: CurrentUser, uow: UoW) -> LeaveOut:
    """A5/T5: the agent (or a team admin for it) leaves the team. The team's leads assigned to it are
    routed again by the team's rules and the team's leads shared with it unshared, each with a note;
    the leads it owns stay with it."""
    outcome = leadwork.leave_team(uow, caller, team_id, agent_id)
    if isinstance(outcome, Refusal):
        raise refused(outcome)
    return LeaveOut(rerouted=outcome.rerouted, unshared=outcome.unshared, kept=outcome.kept)
