"""Scale-out: three Celery worker processes with three node names on one broker and one database,
and nothing else consuming their queues (their own queue prefix and their own API server), take a
burst of concurrent signups to several owners with round-robin rules and repeated emails."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from models.tables import Entity, Intake, Lead, TimelineEvent
from models.uow import UnitOfWork
from tests.integration.conftest import apply, broker_idle, delete_broker_queues
from tests.support.client import Brokerage, post_all
from tests.support.orgs import brokerage
from tests.support.processes import api_server, celery_workers, wait_for

pytestmark = pytest.mark.integration

WORKERS = 3
SIGNUPS = 200
PEOPLE = 120  # fewer people than signups: repeats, some of them racing each other
PARALLEL = 32
# The site a signup comes from decides its owner (O2-O4): the office's site is the company's (O3).
OWNER_OF_SITE = {"co": "co", "downtown": "co", "sunrise": "sunrise", "john": "john"}
RULES = {
    "Company round robin": ("co", ["john", "jill", "bob"]),
    "Downtown round robin": ("downtown", ["john", "jill", "bob"]),
    "Sunrise round robin": ("sunrise", ["john", "tara"]),
}


@dataclass(frozen=True)
class Pool:
    """An API and three workers of their own on queues under ``prefix``; their logs in ``logdir``."""

    base: str
    logdir: Path
    prefix: str


def log_events(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of a worker's log (its banner and warnings are not JSON)."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written
    return events


def node_of(log: Path) -> str | None:
    """The node name a worker announced as ready ("w1-123@host ready.")."""
    for event in log_events(log):
        text = str(event.get("event", ""))
        if event.get("logger") == "celery.apps.worker" and text.endswith(" ready."):
            return text.removesuffix(" ready.")
    return None


def worker_logs(logdir: Path) -> list[Path]:
    return sorted(logdir.glob("worker-*.log"))


@pytest.fixture(scope="module")
def pool(pipeline_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    env = {**pipeline_env, "LEADRELAY_QUEUE_PREFIX": prefix}
    logdir = tmp_path_factory.mktemp("scale-out")
    try:
        with (
            celery_workers(env, logdir, count=WORKERS, concurrency=1) as procs,
            api_server(env, logdir / "api.log") as base,
        ):
            # All three consuming before the burst, or the first ones up could take it all.
            wait_for(
                lambda: all(node_of(log) for log in worker_logs(logdir)) and len(worker_logs(logdir)) == WORKERS,
                timeout=60,
                interval=0.2,
                what="three workers ready",
            )
            yield Pool(base, logdir, prefix)
            # Their warm shutdowns at once rather than one after the other (celery_workers waits for each).
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
    finally:
        delete_broker_queues(prefix)


def test_three_workers_share_a_burst_of_signups_with_one_effect_each(
    pool: Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    org = brokerage()
    for entity in org["entities"]:
        # No mail to the assigned agents: the pool's work is the signups alone (the mail has its tests).
        entity.pop("email", None)
    org["routing"] = [
        {"entity": entity, "rules": [{"name": name, "agents": agents}]} for name, (entity, agents) in RULES.items()
    ]
    b = Brokerage(pool.base, apply(org))
    rng = random.Random(20240611)
    sites = list(OWNER_OF_SITE)
    signups = [(sites[i % len(sites)], f"scale{rng.randrange(PEOPLE)}@example.com") for i in range(SIGNUPS)]
    rng.shuffle(signups)
    bodies = [{"page_url": f"https://{b.host(site)}/burst", "email": email} for site, email in signups]
    expected = {(email, OWNER_OF_SITE[site]) for site, email in signups}

    started = time.monotonic()
    ids = asyncio.run(post_all(b, bodies, parallel=PARALLEL))
    accepted = time.monotonic() - started
    assert len(set(ids)) == SIGNUPS
    intake_ids = [uuid.UUID(i) for i in ids]

    def statuses() -> collections.Counter[str]:
        with UnitOfWork() as uow:
            rows = uow.session.execute(select(Intake.status).where(Intake.id.in_(intake_ids))).scalars()
            return collections.Counter(status.value for status in rows)

    wait_for(lambda: statuses()["done"] == SIGNUPS, timeout=90, interval=0.25, what=f"{SIGNUPS} intakes done")
    processed = time.monotonic() - started
    # Nothing of this pool left queued or unacknowledged (no copy of a task still to run).
    wait_for(lambda: broker_idle(pool.prefix), timeout=60, interval=0.25, what="the pool's queues to drain")
    assert statuses() == {"done": SIGNUPS}  # every accepted intake done, none rejected or dead

    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(b.org["account"])
        assert account is not None
        slugs = dict(
            uow.session.execute(select(Entity.id, Entity.slug).where(Entity.account_id == account.id)).tuples().all()
        )
        leads = uow.session.execute(
            select(Lead.id, Lead.email_normalized, Lead.owner_entity_id, Lead.assigned_agent_id).where(
                Lead.account_id == account.id, Lead.deleted_at.is_(None), Lead.merged_into_id.is_(None)
            )
        ).all()
        events = uow.session.execute(
            select(TimelineEvent.lead_id, TimelineEvent.kind, TimelineEvent.data).where(
                TimelineEvent.account_id == account.id
            )
        ).all()
        intake_leads = dict(
            uow.session.execute(select(Intake.id, Intake.lead_id).where(Intake.id.in_(intake_ids))).tuples().all()
        )

    # Leads = the distinct (email, owner) pairs posted, and no pair twice among live leads (D1, D4).
    pairs = collections.Counter((email, slugs[owner]) for _, email, owner, _ in leads)
    assert [pair for pair, n in pairs.items() if n > 1] == []
    assert set(pairs) == expected
    # Each intake landed on the lead of its own (email, owner).
    lead_pair = {lead_id: (email, slugs[owner]) for lead_id, email, owner, _ in leads}
    for (site, email), intake_id in zip(signups, intake_ids, strict=True):
        assert lead_pair[intake_leads[intake_id]] == (email, OWNER_OF_SITE[site])

    # Each lead made once and assigned once (one created, one routed event, the routed agent is the
    # assignee); every other signup of the person is one signup event on it.
    kinds = collections.Counter((lead_id, kind) for lead_id, kind, _ in events)
    assignee = {lead_id: slugs.get(agent) if agent else None for lead_id, _, _, agent in leads}
    for lead_id in assignee:
        assert (kinds[(lead_id, "created")], kinds[(lead_id, "routed")]) == (1, 1), lead_id
    routed = [(lead_id, data) for lead_id, kind, data in events if kind == "routed"]
    assert all(data["agent"] == assignee[lead_id] for lead_id, data in routed)
    assert sum(n for (_, kind), n in kinds.items() if kind == "signup") == SIGNUPS - len(expected)

    # Round robin within one per rule, over exactly the rule's agents (A2: the cursor moved once per lead).
    per_rule: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for lead_id, data in routed:
        if data.get("routing_entity"):
            per_rule[data["rule"]][str(assignee[lead_id])] += 1
    assert set(per_rule) == set(RULES)
    for rule, counts in per_rule.items():
        assert set(counts) == set(RULES[rule][1]), (rule, counts)
        assert max(counts.values()) - min(counts.values()) <= 1, (rule, counts)

    # All three nodes did part of the work (their logs name the intakes they finished).
    done_by: dict[str, set[str]] = {}
    retries = collections.Counter[str]()
    for log in worker_logs(pool.logdir):
        node = node_of(log)
        assert node is not None
        events_logged = log_events(log)
        done_by[node] = {str(e["intake_id"]) for e in events_logged if e.get("event") == "intake.done"}
        # A retried task still has one effect; retries are reported, and deadlocks between the workers
        # (the routing cursor's lock against the lead insert's key-share lock on the owner) must stay gone.
        retries.update(
            "deadlock" if "DeadlockDetected" in str(e["event"]) else "other"
            for e in events_logged
            if " retry: Retry in " in str(e.get("event", ""))
        )
    assert len(done_by) == WORKERS  # three different node names
    assert set().union(*done_by.values()) == set(ids)
    assert all(done_by.values()), {node: len(done) for node, done in done_by.items()}
    assert retries["deadlock"] == 0, retries

    with capsys.disabled():
        print(
            f"\nscale-out: {SIGNUPS} signups ({len(expected)} leads, {SIGNUPS - len(expected)} repeats) accepted in "
            f"{accepted:.1f}s, all done in {processed:.1f}s by {WORKERS} workers: "
            f"{ {node: len(done) for node, done in sorted(done_by.items())} }; round robin: "
            f"{ {rule: dict(sorted(counts.items())) for rule, counts in sorted(per_rule.items())} }; "
            f"task retries: {dict(retries) or 0}"
        )
