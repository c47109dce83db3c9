"""Reads of leads and their timelines (V1), and the routing dry run."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query

from intake.deps import CurrentUser, UoW
from intake.links import register_id_convertor
from intake.problems import Problem, invalid
from intake.schemas import (
    AgentOut,
    EntityOut,
    LeadOut,
    LeadPage,
    MessageAccepted,
    MessageIn,
    NotMatchedOut,
    ShareOut,
    SimulateIn,
    SimulateOut,
    SkipOut,
    SourceOut,
    TimelineEventOut,
    TimelinePage,
)
from models.tables import Lead, LeadStatus
from models.uow import UnitOfWork
from rules.contact import InvalidPhone, normalize_email, normalize_phone
from rules.ownership import Unclaimed
from workers.services import decide_registration_owner, plan_routing
from workers.texts_outbound import Refused, record_outbound_text

router = APIRouter(prefix="/v1", tags=["leads"])
# ``{lead_id:lead}``: not /v1/leads/merge nor /v1/leads/bulk, so ``GET /v1/leads/merge`` is that path's 405.
register_id_convertor("lead", "merge", "bulk")

K = TypeVar("K")

NOT_FOUND = Problem(404, "Not found", "no such lead")
Limit = Annotated[int, Query(ge=1, le=500)]


def _encode_cursor(at: dt.datetime, row_id: uuid.UUID | int) -> str:
    return base64.urlsafe_b64encode(json.dumps([at.isoformat(), str(row_id)]).encode()).decode()


def _decode_cursor(cursor: str | None, id_type: Callable[[str], K]) -> tuple[dt.datetime, K] | None:
    """A keyset cursor: the (time, id) of the last row of the previous page."""
    if not cursor:
        return None
    try:
        at, row_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return dt.datetime.fromisoformat(at), id_type(row_id)
    except (ValueError, TypeError) as exc:
        raise invalid("cursor", "invalid cursor", detail="cursor: not a cursor this API gave") from exc


def lead_views(uow: UnitOfWork, leads: Sequence[Lead]) -> list[LeadOut]:
    """Leads in the API's documented shape (``LeadOut``), with their owners, assignees, shares, campaigns and signup messages
    in five queries."""
    ids = [lead.id for lead in leads]
    entities = uow.orgs.entities_by_ids(
        {lead.owner_entity_id for lead in leads} | {lead.assigned_agent_id for lead in leads if lead.assigned_agent_id}
    )
    shares = uow.leads.shares_of(ids)
    campaigns = uow.leads.campaigns_of(ids)
    messages = uow.leads.signup_messages(ids)
    accounts = {account_id: uow.orgs.account(account_id).slug for account_id in {lead.account_id for lead in leads}}
    out = []
    for lead in leads:
        owner = entities[lead.owner_entity_id]
        agent = entities.get(lead.assigned_agent_id) if lead.assigned_agent_id else None
        out.append(
            LeadOut(
                id=lead.id,
                account=accounts[lead.account_id],
                email=lead.email,
                phone=lead.phone_e164,
                first_name=lead.first_name,
                last_name=lead.last_name,
                status=lead.status.value,
                in_pond=lead.in_pond,
                tags=list(lead.tags),
                campaigns=campaigns[lead.id],
                owner=EntityOut(id=owner.slug, kind=owner.kind.value, name=owner.name),
                assigned_agent=AgentOut(id=agent.slug, name=agent.name) if agent else None,
                source=SourceOut(kind=lead.source_kind, detail=lead.source_detail),
                shares=[ShareOut(user_id=u, permission=p) for u, p in shares[lead.id]],
                lead_type=lead.lead_type,
                price_min=lead.price_min,
                price_max=lead.price_max,
                zip=lead.zip,
                message=messages.get(lead.id),
                last_activity_at=lead.last_activity_at,
                merged_into=lead.merged_into_id,
                created_at=lead.created_at,
            )
        )
    return out


@router.get("/leads", response_model=LeadPage)
def list_leads(
    caller: CurrentUser,
    uow: UoW,
    email: str | None = None,
    phone: str | None = None,
    owner: str | None = None,
    assigned_agent: str | None = None,
    status: Literal["active", "archived", "merged"] | None = None,
    limit: Limit = 100,
    cursor: str | None = None,
) -> LeadPage:
    """The leads the caller can see (V1), newest first."""
    filters: dict[str, Any] = {}
    if email:
        filters["email_normalized"] = normalize_email(email)
    if phone:
        try:
            filters["phone_e164"] = normalize_phone(phone)
        except InvalidPhone as exc:
            raise invalid("phone", str(exc)) from exc
    for param, column, slug in (
        ("owner", "owner_entity_id", owner),
        ("assigned_agent", "assigned_agent_id", assigned_agent),
    ):
        if slug:
            entity = uow.orgs.entity_by_slug(caller.account_id, slug)
            if entity is None:
                raise invalid(param, "unknown entity", detail=f"{param}: unknown entity {slug!r}")
            filters[column] = entity.id
    if status:
        filters["status"] = LeadStatus(status)
    rows = uow.leads.list_visible(caller, filters=filters, after=_decode_cursor(cursor, uuid.UUID), limit=limit + 1)
    page, more = rows[:limit], len(rows) > limit
    return LeadPage(
        items=lead_views(uow, page), next=_encode_cursor(page[-1].created_at, page[-1].id) if more else None
    )


@router.get("/leads/{lead_id:lead}", response_model=LeadOut)
def get_lead(lead_id: uuid.UUID, caller: CurrentUser, uow: UoW) -> LeadOut:
    lead = uow.leads.visible(caller, lead_id)
    if lead is None:
        raise NOT_FOUND
    return lead_views(uow, [lead])[0]


@router.get("/leads/{lead_id:lead}/timeline", response_model=TimelinePage)
def get_timeline(
    lead_id: uuid.UUID, caller: CurrentUser, uow: UoW, limit: Limit = 100, cursor: str | None = None
) -> TimelinePage:
    """The lead's events, oldest first."""
    if uow.leads.visible(caller, lead_id) is None:
        raise NOT_FOUND
    rows = uow.leads.timeline(lead_id, after=_decode_cursor(cursor, int), limit=limit + 1)
    page, more = rows[:limit], len(rows) > limit
    items = [
        TimelineEventOut(id=e.id, at=e.at, kind=e.kind, actor=e.actor, summary=e.summary, data=e.data) for e in page
    ]
    return TimelinePage(items=items, next=_encode_cursor(page[-1].at, page[-1].id) if more else None)


@router.post(
    "/leads/{lead_id:lead}/messages",
    status_code=202,
    response_model=MessageAccepted,
    responses={
        401: {"description": "Missing or unknown user token"},
        403: {"description": "SH4: texting is an edit; a view-only share may not text the lead"},
        404: {"description": "No such lead the caller can see (V1)"},
        409: {
            "description": "S4/D8: the lead unsubscribed from texts; SH4: no smart number to send from; a merged lead"
        },
        422: {"description": "A blank or too long body, or a lead with no phone"},
    },
)
def post_message(lead_id: uuid.UUID, body: MessageIn, caller: CurrentUser, uow: UoW) -> MessageAccepted:
    """Text a lead the caller may edit (SH4: the text is in the owner's name and steers where the reply
    goes, so a view-only share may not). The text is recorded at once (S1 counts it from that moment)
    and sent by a task through the SMS gateway, from the owner's smart number in the owner's name (SH4)."""
    lead = uow.leads.visible(caller, lead_id)
    if lead is None:
        raise NOT_FOUND
    recorded = record_outbound_text(uow, caller, lead, body.body)
    if isinstance(recorded, Refused):
        if recorded.status == 422:
            raise invalid(recorded.field or "body", recorded.detail, detail=recorded.detail)
        if recorded.status == 404:
            raise NOT_FOUND
        raise Problem(recorded.status, "Forbidden" if recorded.status == 403 else "Conflict", recorded.detail)
    uow.commit()
    return MessageAccepted(message_id=recorded)


@router.post("/routing/simulate", response_model=SimulateOut, tags=["routing"])
def simulate_routing(body: SimulateIn, caller: CurrentUser, uow: UoW) -> SimulateOut:
    """The owner and routing decision a registration would get now, explained, computed by the
    same rule code as the workers. Writes nothing: no lead, no cursor move. Admins only."""
    if not caller.admin_of:
        raise Problem(403, "Forbidden", "routing simulation is for admins")
    signup = body.to_signup()
    ownership = decide_registration_owner(uow.orgs, caller.account_id, signup)
    if isinstance(ownership, Unclaimed):
        return SimulateOut(
            outcome="rejected",
            ownership_rule="O9",
            owner=None,
            routing_entity=None,
            rule=None,
            agent=None,
            skipped=[],
            rules_not_matched=[],
            explanation=ownership.reason,
        )
    owner = EntityOut(id=ownership.owner.slug, kind=ownership.owner.kind.value, name=ownership.owner.name)
    decision = plan_routing(uow.orgs, ownership, signup, lock=False)
    if decision is None:
        assert ownership.assignee is not None
        return SimulateOut(
            outcome="assigned",
            ownership_rule=ownership.rule,
            owner=owner,
            routing_entity=None,
            rule=None,
            agent=AgentOut(id=ownership.assignee.slug, name=ownership.assignee.name),
            skipped=[],
            rules_not_matched=[],
            explanation=ownership.reason,
        )
    return SimulateOut(
        outcome="assigned" if decision.agent else "unassigned",
        ownership_rule=ownership.rule,
        owner=owner,
        routing_entity=ownership.routing_entity.slug if ownership.routing_entity else None,
        rule=decision.rule.name if decision.rule else None,
        agent=AgentOut(id=decision.agent.slug, name=decision.agent.name) if decision.agent else None,
        skipped=[SkipOut(agent=s.agent, reason=s.reason) for s in decision.skipped],
        rules_not_matched=[NotMatchedOut(rule=t.rule, failed=list(t.failed)) for t in decision.tried],
        explanation=f"{ownership.reason}; {decision.explanation}",
    )
