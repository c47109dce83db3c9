"""Outbound webhooks when a worker or Redis dies: the deliveries are rows written with the changes they
report, so a worker SIGKILLed while sending, or Redis restarted with their tasks queued, delays them and
loses none (the relay sends again what is due). At least once: a repeat carries the same webhook-id."""

from __future__ import annotations

import base64
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from models.org import apply_org
from models.orgspec import parse_org
from models.secrets import keyring
from models.uow import UnitOfWork
from tests.chaos.test_broker_loss import queued_messages, restart
from tests.support.chaos import Stack, query
from tests.support.leads import make_lead
from tests.support.orgs import brokerage, suffix_of
from tests.support.processes import wait_for
from tests.support.receiver import Received, Receiver

pytestmark = pytest.mark.chaos

SECRET = "whsec_" + base64.b64encode(b"leadrelay-chaos-webhook-secret!!").decode()
LEADS = 8


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def account_posting_to(receiver: Receiver, path: str) -> dict[str, Any]:
    """A new account whose one webhook posts its transfers to ``path``; its secret encrypted with the key the
    stack's processes share (their data dir's)."""
    org = brokerage()
    org["webhooks"] = [{"id": "crm", "url": receiver.url(path), "events": ["lead.transferred"], "secrets": [SECRET]}]
    with UnitOfWork() as uow:
        apply_org(uow.session, parse_org(org), keyring())
        uow.commit()
    return org


def transfer_all(stack: Stack, org: dict[str, Any], lead_ids: list[str]) -> None:
    """Each lead transferred to the downtown office by the company admin, over the API: the API's own
    transaction writes the delivery and, after its commit, publishes the delivery's task."""
    s = suffix_of(org)
    with httpx.Client(base_url=stack.base, headers={"Authorization": f"Bearer tok-olivia-{s}"}, timeout=30) as c:
        for lead_id in lead_ids:
            r = c.post(f"/v1/leads/{lead_id}/transfer", json={"to": "downtown"})
            assert r.status_code == 200, r.text


def delivery_states(stack: Stack, org: dict[str, Any]) -> list[tuple[str, str, int]]:
    rows = query(
        stack.dsn,
        "SELECT d.id::text, d.status, d.attempts FROM webhook_deliveries d JOIN accounts a ON a.id = d.account_id"
        " WHERE a.slug = %s ORDER BY d.seq",
        (org["account"],),
    )
    return [(str(i), str(s), int(n)) for i, s, n in rows]


def all_delivered(stack: Stack, org: dict[str, Any]) -> bool:
    states = delivery_states(stack, org)
    return len(states) == LEADS and all(status == "delivered" for _, status, _ in states)


def assert_each_once_under_its_id(stack: Stack, org: dict[str, Any], got: list[Received]) -> None:
    """Every delivery arrived; a repeat (at least once) carried the same id and the same body."""
    ids = {f"msg_{uuid.UUID(i).hex}" for i, _, _ in delivery_states(stack, org)}
    assert len(ids) == LEADS
    assert {r.webhook_id for r in got if r.status == 200} == ids
    for webhook_id in ids:
        bodies = {r.body for r in got if r.webhook_id == webhook_id}
        assert len(bodies) == 1
    leads = {r.verified(SECRET)["data"]["lead_id"] for r in got}
    assert len(leads) == LEADS, "one delivery per transfer, never two ids for one event"


@pytest.mark.timeout(240)
def test_a_worker_sigkilled_while_sending_loses_no_delivery(stack: Stack, receiver: Receiver) -> None:
    path = f"/chaos-kill-{uuid.uuid4().hex[:6]}"
    receiver.slow(path, 1.0)
    org = account_posting_to(receiver, path)
    leads = [make_lead(org["account"], owner="co", assignee="john") for _ in range(LEADS)]
    transfer_all(stack, org, leads)
    # A request is being answered (slowly) right now: the worker that sent it dies.
    wait_for(lambda: receiver.arrived(path) >= 1, timeout=30, interval=0.01, what="a delivery in flight")
    stack.crash_worker(stack.workers[0])
    receiver.slow(path, 0.0)
    wait_for(lambda: all_delivered(stack, org), timeout=180, what="every delivery delivered after the kill")
    assert_each_once_under_its_id(stack, org, receiver.got(path))


@pytest.mark.timeout(240)
def test_redis_killed_with_deliveries_queued_the_relay_sends_them_all(stack: Stack, receiver: Receiver) -> None:
    path = f"/chaos-redis-{uuid.uuid4().hex[:6]}"
    org = account_posting_to(receiver, path)
    leads = [make_lead(org["account"], owner="co", assignee="john") for _ in range(LEADS)]
    relay = stack.relay
    assert relay is not None
    relay.stop()
    stack.stop_workers()
    try:
        transfer_all(stack, org, leads)
        queued_before = queued_messages(stack.redis)
        restart(stack.redis, signal.SIGKILL)
        queued_after = queued_messages(stack.redis)
    finally:
        stack.resume_workers()
        relay.start()
    assert queued_before >= LEADS, "the deliveries' tasks waited in Redis"
    assert queued_after == 0, "persistence off: the restart lost them"
    wait_for(lambda: all_delivered(stack, org), timeout=180, what="every delivery delivered by the relay")
    assert_each_once_under_its_id(stack, org, receiver.got(path))
    relays = query(
        stack.dsn,
        "SELECT sum(d.relays) FROM webhook_deliveries d JOIN accounts a ON a.id = d.account_id WHERE a.slug = %s",
        (org["account"],),
    )[0][0]
    assert int(relays) >= LEADS, "the relay sent each again"
