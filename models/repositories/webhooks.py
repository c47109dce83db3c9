"""Outbound webhooks' queries: the leads as events describe them, the deliveries written with a change,
claimed for a try and settled after it, listed, replayed and counted."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from models.tables import Account, Entity, Lead, WebhookDelivery, WebhookEndpoint
from rules.webhooks import Delivery, LeadView

DELIVERIES = cast(Table, WebhookDelivery.__table__)
# A try's record on the row: the last ones only (the listing shows them; the row stays small).
KEPT_ATTEMPTS = 20


def delivery_rows(account_id: int, deliveries: Iterable[Delivery], now: dt.datetime) -> list[dict[str, Any]]:
    """The rows of ``deliveries``, every column given (a writer inserting them in a CTE evaluates no default)."""
    return [
        {
            "id": d.id,
            "account_id": account_id,
            "endpoint_id": d.endpoint_id,
            "event_type": d.event.type,
            "lead_id": d.event.lead_id,
            "occurred_at": d.event.at,
            "data": d.event.data,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "attempt_log": [],
            "created_at": now,
            "updated_at": now,
            "relays": 0,
        }
        for d in deliveries
    ]


class WebhookRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # --- written with a change ----------------------------------------------------------------------

    def lead_views(self, lead_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, LeadView]:
        """The leads as they are now in this transaction (after the change), in one query."""
        wanted = list(dict.fromkeys(lead_ids))
        if not wanted:
            return {}
        owner, assignee = aliased(Entity), aliased(Entity)
        rows = self.session.execute(
            select(
                Lead.id,
                Lead.status,
                owner.slug,
                assignee.slug,
                Lead.first_name,
                Lead.last_name,
                Lead.email,
                Lead.phone_e164,
            )
            .join(owner, owner.id == Lead.owner_entity_id)
            .outerjoin(assignee, assignee.id == Lead.assigned_agent_id)
            .where(Lead.id.in_(wanted))
        ).all()
        return {
            row[0]: LeadView(row[0], str(getattr(row[1], "value", row[1])), row[2], row[3], *row[4:]) for row in rows
        }

    def add(self, account_id: int, deliveries: Sequence[Delivery]) -> None:
        """Insert deliveries in one executemany, in the caller's transaction."""
        if deliveries:
            self.session.execute(insert(DELIVERIES), delivery_rows(account_id, deliveries, dt.datetime.now(dt.UTC)))

    # --- sending ------------------------------------------------------------------------------------

    def claim(self, delivery_id: uuid.UUID, *, now: dt.datetime, lease: dt.timedelta) -> WebhookDelivery | None:
        """Take a pending delivery that is due (its next try's time has come, give or take a second of a
        task's early start) for one try: its next try moves ``lease`` ahead, so a second copy of its task
        finds it not due, and a worker killed while sending leaves it to the relay once the lease is over.
        None when it is not pending or not due."""
        claimed = self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now + dt.timedelta(seconds=1),
            )
            .values(next_attempt_at=now + lease)
            .returning(WebhookDelivery.seq)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if claimed is None:
            return None
        return self.session.execute(select(WebhookDelivery).where(WebhookDelivery.seq == claimed)).scalar_one()

    def endpoint(self, endpoint_id: int) -> WebhookEndpoint:
        return self.session.execute(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)).scalar_one()

    def settle(
        self,
        delivery_id: uuid.UUID,
        *,
        status: str,
        attempt: dict[str, Any] | None,
        next_attempt_at: dt.datetime | None,
        error: str | None,
        now: dt.datetime,
    ) -> None:
        """Record a try (``attempt``; None when nothing was sent) and what the delivery is now."""
        row = self.session.execute(
            select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update()
        ).scalar_one()
        if attempt is not None:
            row.attempts += 1
            row.attempt_log = [*row.attempt_log, attempt][-KEPT_ATTEMPTS:]
        row.status = status
        row.last_error = error
        if status == "delivered":
            row.delivered_at = now
        if next_attempt_at is not None:
            row.next_attempt_at = next_attempt_at
        row.updated_at = now

    def disable_endpoint(self, endpoint_id: int, reason: str, *, now: dt.datetime) -> int:
        """A receiver answered 410 Gone: nothing more is sent to it until its org file is applied again.
        Returns the account's id (whose org version the caller moves, so workers drop it from their snapshot)."""
        endpoint = self.session.execute(
            select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).with_for_update()
        ).scalar_one()
        if endpoint.disabled_at is None:
            endpoint.disabled_at = now
            endpoint.disabled_reason = reason
        return endpoint.account_id

    # --- the API and the CLI ------------------------------------------------------------------------

    def endpoints(self, account_id: int) -> list[WebhookEndpoint]:
        return list(
            self.session.execute(
                select(WebhookEndpoint).where(WebhookEndpoint.account_id == account_id).order_by(WebhookEndpoint.slug)
            ).scalars()
        )

    def endpoint_by_slug(self, account_id: int, slug: str) -> WebhookEndpoint | None:
        return self.session.execute(
            select(WebhookEndpoint).where(WebhookEndpoint.account_id == account_id, WebhookEndpoint.slug == slug)
        ).scalar_one_or_none()

    def counts_by_status(self, endpoint_ids: Sequence[int]) -> dict[tuple[int, str], int]:
        if not endpoint_ids:
            return {}
        rows = self.session.execute(
            select(WebhookDelivery.endpoint_id, WebhookDelivery.status, func.count())
            .where(WebhookDelivery.endpoint_id.in_(endpoint_ids))
            .group_by(WebhookDelivery.endpoint_id, WebhookDelivery.status)
        ).all()
        return {(endpoint_id, status): n for endpoint_id, status, n in rows}

    def deliveries(
        self, endpoint_id: int, *, status: str | None = None, before: int | None = None, limit: int = 50
    ) -> list[WebhookDelivery]:
        """An endpoint's deliveries, newest first; ``before`` a ``seq`` to page back from."""
        stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        if status is not None:
            stmt = stmt.where(WebhookDelivery.status == status)
        if before is not None:
            stmt = stmt.where(WebhookDelivery.seq < before)
        return list(self.session.execute(stmt.order_by(WebhookDelivery.seq.desc()).limit(limit)).scalars())

    def reopen(
        self, endpoint_id: int, *, since: dt.datetime | None, delivery_ids: Sequence[uuid.UUID] = (), limit: int
    ) -> list[uuid.UUID]:
        """Put an endpoint's failed deliveries (or those named, whatever their status) back to pending, due
        now, tries counted from zero again; their ids, oldest first. Their ``webhook-id`` stays the same."""
        stmt = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint_id)
        if delivery_ids:
            stmt = stmt.where(WebhookDelivery.id.in_(list(delivery_ids)))
        else:
            stmt = stmt.where(WebhookDelivery.status == "failed")
        if since is not None:
            stmt = stmt.where(WebhookDelivery.created_at >= since)
        ids = list(self.session.execute(stmt.order_by(WebhookDelivery.seq).limit(limit)).scalars())
        if ids:
            now = dt.datetime.now(dt.UTC)
            self.session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .values(status="pending", attempts=0, next_attempt_at=now, last_error=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
        return ids

    def status_counts(self) -> list[tuple[str, str, str, int]]:
        """(account slug, endpoint slug, status, deliveries) for ``GET /metrics``."""
        rows = self.session.execute(
            select(Account.slug, WebhookEndpoint.slug, WebhookDelivery.status, func.count())
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .join(Account, Account.id == WebhookDelivery.account_id)
            .group_by(Account.slug, WebhookEndpoint.slug, WebhookDelivery.status)
        ).all()
        return [(a, e, s, int(n)) for a, e, s, n in rows]
