"""Working the leads, end to end: every request goes through the real API server, the mails
through the outbox, the notifications.send task and a real SMTP server, the bulk jobs and replays
through the real Celery workers, all on the run's PostgreSQL and Redis. Each test names the rules it
checks; the leads are made straight in the database in the shapes a rule needs
(tests/support/leads.py), or by real signups where the intake pipeline is part of the story."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from collections.abc import Sequence
from email.message import Message
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import func, select

from models.tables import Lead
from models.uow import UnitOfWork
from tests.integration.conftest import SmtpSink, broker_idle
from tests.support.client import Brokerage
from tests.support.leads import lead_row, make_lead
from tests.support.orgs import brokerage, suffix_of
from tests.support.processes import wait_for
from workers.app import publish

pytestmark = pytest.mark.integration


# --- Helpers ---------------------------------------------------------------------------------------


def acct(b: Brokerage) -> str:
    return str(b.org["account"])


def new_email(tag: str = "p") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@example.com"


def refused(r: httpx.Response, status: int, rule: str) -> dict[str, Any]:
    """The response is the refusal ``status`` whose detail names ``rule``, as a problem document."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    problem: dict[str, Any] = r.json()
    assert f"{rule}:" in problem["detail"], problem
    return problem


def ok(r: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return dict(r.json()) if r.content else {}


def events(b: Brokerage, lead_id: str, as_user: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [e for e in b.timeline(lead_id, as_user) if kind is None or e["kind"] == kind]


def assert_at_now(event: dict[str, Any], since: dt.datetime) -> None:
    """A note carries its date and time (SH3): the moment the request was carried out."""
    at = dt.datetime.fromisoformat(event["at"])
    assert since <= at <= dt.datetime.now(dt.UTC), (since, at)


def text_of(mail: Message) -> str:
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def mails_to(smtp: SmtpSink, address: str, lead_ids: Sequence[str]) -> list[Message]:
    """The mails to ``address`` naming any of ``lead_ids`` (every test account's users share addresses,
    so a mail is told apart by the lead links in its body)."""
    return [m for m in smtp.messages() if m["To"] == address and any(i in text_of(m) for i in lead_ids)]


def wait_mail(smtp: SmtpSink, address: str, lead_ids: Sequence[str]) -> Message:
    """The one mail to ``address`` about these leads: waited for, then checked alone once the queues drained."""
    wait_for(lambda: mails_to(smtp, address, lead_ids), timeout=30, what=f"a mail to {address}")
    wait_for(broker_idle, timeout=30, what="the queues to drain")
    (mail,) = mails_to(smtp, address, lead_ids)
    return mail


def leads_with_email(b: Brokerage, email: str) -> list[Lead]:
    """Every stored lead of the account with this email, deleted and merged ones included."""
    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(acct(b))
        assert account is not None
        rows = list(
            uow.session.execute(
                select(Lead)
                .where(Lead.account_id == account.id, Lead.email_normalized == email.lower())
                .order_by(Lead.created_at)
            ).scalars()
        )
        uow.session.expunge_all()
        return rows


def count_leads(b: Brokerage) -> int:
    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(acct(b))
        assert account is not None
        return int(
            uow.session.execute(
                select(func.count()).select_from(Lead).where(Lead.account_id == account.id)
            ).scalar_one()
        )


def run_job(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/leads/bulk, then poll the job until it is done; its final view."""
    accepted = ok(client.post("/v1/leads/bulk", json=body), 202)
    url = accepted["status_url"]
    assert url.endswith(f"/v1/jobs/{accepted['job_id']}")
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(ok(client.get(url)))
        return seen["status"] in ("done", "failed")

    wait_for(done, timeout=30, interval=0.1, what=f"job {accepted['job_id']}")
    return seen


# --- Sharing (SH1-SH3, SH5, SH6) ---------------------------------------------------------------------


def test_SH3_share_adds_a_note_and_mails_the_user(acme: Brokerage, smtp_server: SmtpSink) -> None:
    last = f"Sharp{uuid.uuid4().hex[:6]}"
    email = new_email("shay")
    lead = make_lead(acct(acme), owner="john", assignee="john", first_name="Shay", last_name=last, email=email)
    with acme.user("jill") as jill:
        assert jill.get(f"/v1/leads/{lead}").status_code == 404
    since = dt.datetime.now(dt.UTC)
    with acme.user("john") as john:
        shared = ok(john.post(f"/v1/leads/{lead}/shares", json={"user_id": "jill", "permission": "view"}))
    assert shared["shares"] == [{"user_id": "jill", "permission": "view"}]

    (note,) = events(acme, lead, "john", "shared")
    assert note["actor"] == "john"
    assert note["summary"] == "Shared with Jill Jones (view only) by john"
    assert note["data"]["rule"] == "SH3"
    assert (note["data"]["user"], note["data"]["permission"]) == ("jill", "view")
    assert_at_now(note, since)
    assert acme.lead(lead, "jill")["id"] == lead  # the share gives access

    mail = wait_mail(smtp_server, "jill@co.test", [lead])
    assert mail["Subject"] == "A lead was shared with you"
    body = text_of(mail)
    assert "Hello Jill Jones," in body
    assert f"Shay {last}: " in body
    assert f"/v1/leads/{lead} (view only, shared by john)" in body
    assert email not in body  # a mail names the lead, never its contact details


def test_SH2_a_view_share_cannot_edit_an_edit_share_can(acme: Brokerage) -> None:
    lead = make_lead(acct(acme), owner="john", assignee="john", first_name="Vera", shares={"jill": "view"})
    with acme.user("jill") as jill:
        refused(jill.patch(f"/v1/leads/{lead}", json={"first_name": "Hacked"}), 403, "SH2")
        refused(jill.post(f"/v1/leads/{lead}/campaigns", json={"name": "Drip"}), 403, "SH2")
        assert jill.get(f"/v1/leads/{lead}/timeline").status_code == 200  # view: record and timeline
    assert lead_row(lead).first_name == "Vera"
    assert events(acme, lead, "john", "edited") == []

    with acme.user("john") as john:  # sharing again changes the permission, with its own note
        changed = ok(john.post(f"/v1/leads/{lead}/shares", json={"user_id": "jill", "permission": "edit"}))
    assert changed["shares"] == [{"user_id": "jill", "permission": "edit"}]
    notes = events(acme, lead, "john", "shared")
    assert notes[-1]["summary"] == "Share with Jill Jones changed to view & edit by john"
    assert notes[-1]["data"]["previous"] == "view"

    with acme.user("jill") as jill:
        edited = ok(jill.patch(f"/v1/leads/{lead}", json={"first_name": "Verity", "tags": ["vip"]}))
    assert (edited["first_name"], edited["tags"]) == ("Verity", ["vip"])
    row = lead_row(lead)
    assert (row.first_name, row.tags) == ("Verity", ["vip"])
    (note,) = events(acme, lead, "john", "edited")
    assert note["actor"] == "jill"
    assert note["data"] == {"rule": "SH2", "fields": ["first_name", "tags"]}


def test_SH1_a_user_shared_with_view_only_shares_the_lead_further(acme: Brokerage, smtp_server: SmtpSink) -> None:
    lead = make_lead(acct(acme), owner="co", assignee="john", routed_via="downtown", shares={"jill": "view"})
    with acme.user("bob") as bob:
        assert bob.get(f"/v1/leads/{lead}").status_code == 404
    with acme.user("jill") as jill:  # neither owner nor assignee, and only allowed to view
        shared = ok(jill.post(f"/v1/leads/{lead}/shares", json={"user_id": "bob", "permission": "edit"}))
        refused(jill.post(f"/v1/leads/{lead}/shares", json={"user_id": "jill"}), 422, "SH1")
    assert shared["shares"] == [{"user_id": "bob", "permission": "edit"}, {"user_id": "jill", "permission": "view"}]
    (note,) = events(acme, lead, "olivia", "shared")
    assert (note["actor"], note["data"]["user"], note["data"]["permission"]) == ("jill", "bob", "edit")
    assert acme.lead(lead, "bob")["owner"]["id"] == "co"  # ownership never moved
    mail = wait_mail(smtp_server, "bob@co.test", [lead])
    assert "(view & edit, shared by jill)" in text_of(mail)


def test_SH5_sharing_or_transferring_to_another_account_is_422(brokerage_factory: Any) -> None:
    outside = brokerage()
    s = suffix_of(outside)
    outside["users"].append({"id": "zed", "name": "Zed Outsider", "email": "zed@other.test", "token": f"tok-zed-{s}"})
    outside["entities"].append({"id": "zack", "kind": "agent", "name": "Zack Outsider", "email": "zack@other.test"})
    other = brokerage_factory(org=outside)
    acme = brokerage_factory()
    lead = make_lead(acct(acme), owner="john", assignee="john")

    with acme.user("john") as john:
        problem = refused(john.post(f"/v1/leads/{lead}/shares", json={"user_id": "zed"}), 422, "SH5")
        assert [e["field"] for e in problem["errors"]] == ["user_id"]
        problem = refused(john.post(f"/v1/leads/{lead}/transfer", json={"to": "zack"}), 422, "SH5")
        assert [e["field"] for e in problem["errors"]] == ["to"]
        bulk = {"action": "share", "lead_ids": [lead], "user_id": "zed"}
        refused(john.post("/v1/leads/bulk", json=bulk), 422, "SH5")
    with other.user("zed") as zed:
        assert zed.get(f"/v1/leads/{lead}").status_code == 404
    assert acme.lead(lead, "john")["shares"] == []
    assert acme.lead(lead, "john")["owner"]["id"] == "john"
    assert [e["kind"] for e in acme.timeline(lead, "john")] == ["created"]


def test_SH6_a_shared_user_removes_another_who_loses_access_at_once(acme: Brokerage) -> None:
    lead = make_lead(acct(acme), owner="john", assignee="john", shares={"jill": "view", "bob": "edit"})
    with acme.user("bob") as bob:
        assert bob.get(f"/v1/leads/{lead}").status_code == 200
    with acme.user("tara") as tara:  # a team admin sees John's lead, but is not shared on it
        assert tara.get(f"/v1/leads/{lead}").status_code == 200
        refused(tara.delete(f"/v1/leads/{lead}/shares/bob"), 403, "SH6")
    with acme.user("jill") as jill:  # view only, and not the owner: still removes others
        assert jill.delete(f"/v1/leads/{lead}/shares/bob").status_code == 204
        refused(jill.delete(f"/v1/leads/{lead}/shares/bob"), 404, "SH6")
    with acme.user("bob") as bob:
        assert bob.get(f"/v1/leads/{lead}").status_code == 404
        assert bob.get(f"/v1/leads/{lead}/timeline").status_code == 404
        assert bob.patch(f"/v1/leads/{lead}", json={"first_name": "Late"}).status_code == 404
        assert bob.delete(f"/v1/leads/{lead}/shares/jill").status_code == 404
    assert acme.lead(lead, "john")["shares"] == [{"user_id": "jill", "permission": "view"}]
    (note,) = events(acme, lead, "john", "unshared")
    assert (note["actor"], note["data"]["rule"]) == ("jill", "SH6")
    assert note["summary"] == "Bob Brown removed from the lead by jill"


# --- Transfer (T1-T3, T6, D1) -------------------------------------------------------------------------


def test_T1_only_the_owner_side_transfers(acme: Brokerage) -> None:
    company_lead = make_lead(acct(acme), owner="co", assignee="john", routed_via="downtown")
    johns_lead = make_lead(acct(acme), owner="john", assignee="john")
    with acme.user("john") as john:  # the assignee of a company lead is not its owner
        problem = refused(john.post(f"/v1/leads/{company_lead}/transfer", json={"to": "john"}), 403, "T1")
        assert "an agent cannot transfer a company-owned lead" in problem["detail"]
    with acme.user("olivia") as olivia:  # the company admin sees John's lead but does not own it
        assert olivia.get(f"/v1/leads/{johns_lead}").status_code == 200
        problem = refused(olivia.post(f"/v1/leads/{johns_lead}/transfer", json={"to": "co"}), 403, "T1")
        assert "an admin cannot transfer a lead owned by an agent" in problem["detail"]
    with acme.user("tara") as tara:
        refused(tara.post(f"/v1/leads/{johns_lead}/transfer", json={"to": "sunrise"}), 403, "T1")
    for lead in (company_lead, johns_lead):
        assert events(acme, lead, "olivia", "transferred") == []
    assert acme.lead(johns_lead, "john")["owner"]["id"] == "john"

    with acme.user("olivia") as olivia:  # the owner side does transfer
        moved = ok(olivia.post(f"/v1/leads/{company_lead}/transfer", json={"to": "downtown"}))
    assert moved["owner"] == {"id": "downtown", "kind": "office", "name": "Downtown"}
    assert moved["assigned_agent"]["id"] == "john"  # T6: connected to the office, kept


def test_T2_the_previous_owner_cannot_take_a_transferred_lead_back(acme: Brokerage) -> None:
    lead = make_lead(acct(acme), owner="co", assignee="jill", routed_via="downtown")
    with acme.user("olivia") as olivia:
        given = ok(olivia.post(f"/v1/leads/{lead}/transfer", json={"to": "john"}))
        assert given["owner"]["id"] == "john"
        assert olivia.get(f"/v1/leads/{lead}").status_code == 200  # John is connected to the company
        refused(olivia.post(f"/v1/leads/{lead}/transfer", json={"to": "co"}), 403, "T1")
    assert acme.lead(lead, "john")["owner"]["id"] == "john"
    with acme.user("john") as john:  # the new owner alone gives it back
        back = ok(john.post(f"/v1/leads/{lead}/transfer", json={"to": "co"}))
    assert back["owner"]["id"] == "co"
    assert back["assigned_agent"]["id"] == "john"
    assert [e["data"]["to"] for e in events(acme, lead, "olivia", "transferred")] == ["john", "co"]


def test_T3_T6_a_transfer_to_an_agent_notes_mails_and_assigns_it(acme: Brokerage, smtp_server: SmtpSink) -> None:
    last = f"Trent{uuid.uuid4().hex[:6]}"
    lead = make_lead(acct(acme), owner="john", assignee="john", first_name="Tia", last_name=last)
    since = dt.datetime.now(dt.UTC)
    with acme.user("john") as john:
        moved = ok(john.post(f"/v1/leads/{lead}/transfer", json={"to": "jill"}))
        assert john.get(f"/v1/leads/{lead}").status_code == 404  # given away for good
    assert moved["owner"] == {"id": "jill", "kind": "agent", "name": "Jill Jones"}
    assert moved["assigned_agent"] == {"id": "jill", "name": "Jill Jones"}
    assert lead_row(lead).owner_entity_id == lead_row(lead).assigned_agent_id
    (note,) = events(acme, lead, "jill", "transferred")
    assert note["summary"] == "Transferred from agent John Smith to agent Jill Jones by john"
    assert note["actor"] == "john"
    assert note["data"]["rule"] == "T3"
    assert (note["data"]["from"], note["data"]["to"]) == ("john", "jill")
    assert note["data"]["assignee_kept"] is False
    assert_at_now(note, since)

    mail = wait_mail(smtp_server, "jill@co.test", [lead])
    assert mail["Subject"] == "A lead was transferred to you"
    body = text_of(mail)
    assert "Hello Jill Jones," in body
    assert f"Tia {last}: " in body
    assert f"/v1/leads/{lead} (from John Smith)" in body


def test_T6_a_transfer_to_a_team_keeps_a_connected_assignee_else_routes(acme: Brokerage, smtp_server: SmtpSink) -> None:
    kept = make_lead(acct(acme), owner="john", assignee="john")
    routed = make_lead(acct(acme), owner="jill", assignee="jill")
    with acme.user("john") as john:
        after = ok(john.post(f"/v1/leads/{kept}/transfer", json={"to": "sunrise"}))
    assert after["owner"] == {"id": "sunrise", "kind": "team", "name": "Sunrise Team"}
    assert after["assigned_agent"]["id"] == "john"  # connected to the team: kept
    (note,) = events(acme, kept, "tara", "transferred")
    assert note["data"]["assignee_kept"] is True
    assert events(acme, kept, "tara", "routed") == []

    with acme.user("jill") as jill:  # Jill is not in the team: the team's rules choose
        after = ok(jill.post(f"/v1/leads/{routed}/transfer", json={"to": "sunrise"}))
    assert after["owner"]["id"] == "sunrise"
    assert after["assigned_agent"]["id"] == "tara"  # no team rule: the team's admin (O4)
    assert after["in_pond"] is False
    (note,) = events(acme, routed, "tara", "transferred")
    assert note["data"]["assignee_kept"] is False
    (route,) = events(acme, routed, "tara", "routed")
    assert (route["data"]["cause"], route["data"]["routing_entity"]) == ("T6", "sunrise")
    assert route["data"]["rule"] == "Default: the team's admin (O4)"  # A7: the routing rule that matched
    assert route["data"]["agent"] == "tara"

    # T3 for an entity: its admins hear of it, one mail per transfer.
    wait_for(lambda: len(mails_to(smtp_server, "tara@co.test", [kept, routed])) == 2, timeout=30, what="two mails")
    for mail in mails_to(smtp_server, "tara@co.test", [kept, routed]):
        assert mail["Subject"] == "A lead was transferred to you"


def test_T1_D1_a_transfer_onto_an_owner_with_a_lead_for_that_email_is_409(acme: Brokerage) -> None:
    email = new_email("dup")
    lead = make_lead(acct(acme), owner="john", assignee="john", email=email)
    make_lead(acct(acme), owner="jill", assignee="jill", email=email.upper())
    with acme.user("john") as john:
        problem = refused(john.post(f"/v1/leads/{lead}/transfer", json={"to": "jill"}), 409, "D1")
    assert "jill" in problem["detail"]
    after = acme.lead(lead, "john")
    assert (after["owner"]["id"], after["assigned_agent"]["id"]) == ("john", "john")
    assert events(acme, lead, "john", "transferred") == []
    assert len(leads_with_email(acme, email)) == 2


def test_T3_X4_a_deleted_lead_of_the_new_owner_does_not_block_a_transfer(acme: Brokerage) -> None:
    email = new_email("tomb")
    lead = make_lead(acct(acme), owner="john", assignee="john", email=email)
    deleted = make_lead(acct(acme), owner="jill", assignee="jill", email=email)
    with acme.user("jill") as jill:
        assert jill.delete(f"/v1/leads/{deleted}").status_code == 204
    with acme.user("john") as john:  # the tombstone lets its key go, as for a new signup (X4)
        moved = ok(john.post(f"/v1/leads/{lead}/transfer", json={"to": "jill"}))
    assert (moved["owner"]["id"], moved["assigned_agent"]["id"]) == ("jill", "jill")
    assert lead_row(deleted).status.value == "deleted"
    assert lead_row(deleted).unique_key is None
    assert lead_row(lead).unique_key is not None
    with acme.user("jill") as jill:
        assert jill.get(f"/v1/leads/{deleted}").status_code == 404


# --- Merge (M1-M7) ------------------------------------------------------------------------------------


def merge_pair(b: Brokerage, email: str, **other: Any) -> tuple[str, str]:
    """John's own lead (the other) and the company's lead of the same person assigned to John (the
    primary, M3: the lead of the party that is not merging)."""
    primary = make_lead(acct(b), owner="co", assignee="john", routed_via="downtown", email=email, first_name="Pia")
    fields: dict[str, Any] = {"first_name": "Ole", "last_name": "Other", "tags": ["buyer", "vip"], **other}
    mine = make_lead(acct(b), owner="john", assignee="john", email=email, **fields)
    return primary, mine


def snapshot(b: Brokerage, *lead_ids: str) -> list[Any]:
    return [(b.lead(i, "john"), b.timeline(i, "john")) for i in lead_ids]


def test_M7_a_merge_preview_shows_the_outcome_and_changes_nothing(acme: Brokerage) -> None:
    email = new_email("prev")
    primary, other = merge_pair(acme, email, phone="+15555550123", campaigns=["Drip A", "Drip B"])
    before = snapshot(acme, primary, other)
    body = {"primary_id": primary, "other_id": other}
    with acme.user("john") as john:
        preview = ok(john.post("/v1/leads/merge/preview", json=body))
        again = ok(john.post("/v1/leads/merge/preview", json=body))
    assert preview == again
    assert (preview["primary_id"], preview["other_id"]) == (primary, other)
    assert preview["owner"] == {"id": "co", "kind": "company", "name": "Demo Realty"}
    assert preview["assigned_agent"] == {"id": "john", "name": "John Smith"}
    assert preview["moves"] == {"timeline_events": 1, "messages": 0, "site_activity": 0}
    assert preview["stops"] == ["Drip A", "Drip B"]
    assert other in preview["merged_note"]
    assert preview["merged_note_data"]["email"] == email
    assert {"M1", "M3", "M4", "M5"} <= set(preview["rules"])
    assert snapshot(acme, primary, other) == before
    assert lead_row(other).merged_into_id is None


def test_M1_M3_the_other_party_keeps_ownership_and_its_lead_is_the_primary(acme: Brokerage) -> None:
    primary, other = merge_pair(acme, new_email("own"))
    with acme.user("john") as john:
        wrong = {"primary_id": other, "other_id": primary}
        problem = refused(john.post("/v1/leads/merge/preview", json=wrong), 409, "M3")
        assert "company co" in problem["detail"]
        refused(john.post("/v1/leads/merge", json=wrong), 409, "M3")
        assert lead_row(primary).status.value == lead_row(other).status.value == "active"
        merged = ok(john.post("/v1/leads/merge", json={"primary_id": primary, "other_id": other}))
    assert merged["id"] == primary
    assert merged["owner"]["id"] == "co"  # never moves to the party doing the merge (O7)
    assert merged["assigned_agent"]["id"] == "john"
    assert merged["status"] == "active"
    gone = acme.lead(other, "john")
    assert (gone["status"], gone["merged_into"]) == ("merged", primary)
    with acme.user("john") as john:  # a merged lead takes no more changes
        refused(john.post(f"/v1/leads/{other}/transfer", json={"to": "jill"}), 409, "M4")


def test_M4_M5_the_primary_keeps_its_data_and_gains_the_others_timeline_in_time_order(
    acme: Brokerage,
) -> None:
    email = new_email("mrg")
    phone = "+15555550177"
    primary, other = merge_pair(acme, email, phone=phone, campaigns=["Drip A", "Drip B"])
    with acme.user("john") as john:  # one event on each lead, interleaved in time
        ok(john.post(f"/v1/leads/{primary}/campaigns", json={"name": "Primary drip"}), 201)
        ok(john.patch(f"/v1/leads/{other}", json={"tags": ["buyer", "vip", "hot"]}))
    others = [e["id"] for e in acme.timeline(other, "john")]
    mine = [e["id"] for e in acme.timeline(primary, "john")]
    with acme.user("john") as john:
        merged = ok(john.post("/v1/leads/merge", json={"primary_id": primary, "other_id": other}))
    assert (merged["first_name"], merged["email"]) == ("Pia", email)
    assert merged["campaigns"] == ["Primary drip"]

    timeline = acme.timeline(primary, "john")
    ats = [dt.datetime.fromisoformat(e["at"]) for e in timeline]
    assert ats == sorted(ats)
    ids = [e["id"] for e in timeline]
    assert set(others) | set(mine) <= set(ids)
    created_p, started_p = mine
    created_o, edited_o = others
    assert ids.index(created_p) < ids.index(created_o) < ids.index(started_p) < ids.index(edited_o)

    (note,) = [e for e in timeline if e["kind"] == "merged"]
    assert note["actor"] == "john"
    assert note["summary"] == f"Merged Ole Other ({other}) owned by agent John Smith into this lead"
    data = note["data"]
    assert data["rule"] == "M5"
    assert (data["name"], data["id"], data["owner"]) == ("Ole Other", other, "agent John Smith")
    assert (data["email"], data["phone"]) == (email, phone)
    assert data["hashtags"] == ["buyer", "vip", "hot"]
    assert data["active_campaigns"] == ["Drip A", "Drip B"]
    assert data["source"] == "site (made by a test)"
    stopped = [e for e in timeline if e["kind"] == "campaign_stopped"]
    assert sorted(e["data"]["campaign"] for e in stopped) == ["Drip A", "Drip B"]
    assert all(e["data"]["rule"] == "M5" and other in e["summary"] for e in stopped)

    gone = acme.lead(other, "john")
    assert (gone["status"], gone["merged_into"], gone["campaigns"]) == ("merged", primary, [])
    assert [e["kind"] for e in acme.timeline(other, "john")] == ["merged_into"]

    # D4 through the merge: the same person signing up again on John's site lands on the primary.
    intake = acme.register_and_wait("john", email, first_name="Ole")
    assert (intake["status"], intake["lead_id"]) == ("done", primary)
    (signup,) = events(acme, primary, "john", "signup")
    assert signup["data"]["rule"] == "D4"
    assert len(leads_with_email(acme, email)) == 2


def test_M2_two_leads_of_two_entities_cannot_be_merged(acme: Brokerage) -> None:
    email = new_email("ent")
    company = make_lead(acct(acme), owner="co", assignee="john", email=email)
    office = make_lead(acct(acme), owner="downtown", assignee="john", email=email)
    for user in ("olivia", "john"):  # the admin of both, and the agent working both
        with acme.user(user) as c:
            for path in ("/v1/leads/merge/preview", "/v1/leads/merge"):
                refused(c.post(path, json={"primary_id": company, "other_id": office}), 409, "M2")
    assert lead_row(company).status.value == lead_row(office).status.value == "active"
    assert lead_row(office).merged_into_id is None


def test_M6_an_admin_merging_two_agents_leads_chooses_the_assignee(acme: Brokerage) -> None:
    ava = make_lead(acct(acme), owner="co", assignee="john", routed_via="downtown", first_name="Ava")
    bea = make_lead(acct(acme), owner="co", assignee="jill", first_name="Bea")
    body: dict[str, Any] = {"primary_id": ava, "other_id": bea}
    with acme.user("olivia") as olivia:
        problem = refused(olivia.post("/v1/leads/merge", json=body), 422, "M6")
        assert [e["field"] for e in problem["errors"]] == ["assigned_agent_id"]
        refused(olivia.post("/v1/leads/merge", json={**body, "assigned_agent_id": "bob"}), 422, "M6")
        assert lead_row(bea).status.value == "active"
        preview = ok(olivia.post("/v1/leads/merge/preview", json={**body, "assigned_agent_id": "jill"}))
        assert preview["assigned_agent"]["id"] == "jill"
        assert "M6" in preview["rules"]
        merged = ok(olivia.post("/v1/leads/merge", json={**body, "assigned_agent_id": "jill"}))
    assert merged["assigned_agent"]["id"] == "jill"
    assert (merged["owner"]["id"], merged["first_name"], merged["email"]) == ("co", "Ava", lead_row(ava).email)
    assert acme.lead(bea, "olivia")["merged_into"] == ava
    with acme.user("jill") as jill:
        assert jill.get(f"/v1/leads/{ava}").status_code == 200


# --- Archive and delete (X1-X4) --------------------------------------------------------------------


def test_X1_the_owner_deletes_and_the_lead_is_gone_for_everyone(acme: Brokerage) -> None:
    lead = make_lead(acct(acme), owner="john", assignee="john", shares={"jill": "edit"})
    with acme.user("jill") as jill:
        refused(jill.delete(f"/v1/leads/{lead}"), 403, "X1")
    with acme.user("john") as john:
        assert john.delete(f"/v1/leads/{lead}").status_code == 204
        assert john.get(f"/v1/leads/{lead}").status_code == 404
        assert john.get(f"/v1/leads/{lead}/timeline").status_code == 404
        assert john.delete(f"/v1/leads/{lead}").status_code == 404
    for user in ("jill", "olivia", "tara"):
        with acme.user(user) as c:
            assert c.get(f"/v1/leads/{lead}").status_code == 404
    row = lead_row(lead)
    assert row.status.value == "deleted"
    assert row.deleted_at is not None
    assert row.deleted_by_user_id is not None

    routed = make_lead(acct(acme), owner="co", assignee="bob", routed_via="downtown")
    elsewhere = make_lead(acct(acme), owner="co", assignee="tara")
    with acme.user("oscar") as oscar:  # an office admin: company leads routed through its office
        assert oscar.delete(f"/v1/leads/{routed}").status_code == 204
        assert oscar.delete(f"/v1/leads/{elsewhere}").status_code == 404
    with acme.user("olivia") as olivia:
        assert olivia.delete(f"/v1/leads/{elsewhere}").status_code == 204
    assert lead_row(routed).status.value == lead_row(elsewhere).status.value == "deleted"


def test_X2_an_agent_cannot_delete_an_entity_lead_but_archives_it(acme: Brokerage) -> None:
    company = make_lead(acct(acme), owner="co", assignee="john", routed_via="downtown")
    team = make_lead(acct(acme), owner="sunrise", assignee="john")
    with acme.user("john") as john:
        for lead in (company, team):
            problem = refused(john.delete(f"/v1/leads/{lead}"), 403, "X2")
            assert "archive it" in problem["detail"]
            archived = ok(john.post(f"/v1/leads/{lead}/archive"))
            assert archived["status"] == "archived"
            assert john.get(f"/v1/leads/{lead}").status_code == 200
    for lead in (company, team):
        assert lead_row(lead).status.value == "archived"
        (note,) = events(acme, lead, "john", "archived")
        assert (note["actor"], note["data"]["rule"]) == ("john", "X2")


def test_X3_with_duplication_off_no_agent_deletes(brokerage_factory: Any) -> None:
    b = brokerage_factory(duplication=False)
    lead = make_lead(acct(b), owner="john", assignee="john")
    with b.user("john") as john:
        refused(john.delete(f"/v1/leads/{lead}"), 403, "X3")
        assert ok(john.post(f"/v1/leads/{lead}/archive"))["status"] == "archived"
    assert lead_row(lead).status.value == "archived"


def replay(b: Brokerage, intake_id: str) -> dict[str, Any]:
    """An operator's replay of one kept intake (what ``leadrelay intake replay`` does for a status): back
    to accepted, and its task published again for the real workers."""
    with UnitOfWork() as uow:
        uow.intakes.reopen([uuid.UUID(intake_id)])
        uow.commit()
    publish("intake.process", uuid.UUID(intake_id))
    return b.wait_done(intake_id)


def test_X4_a_replay_does_not_bring_a_deleted_lead_back_and_a_new_signup_makes_a_new_lead(acme: Brokerage) -> None:
    email = new_email("xena")
    intake = acme.register_and_wait("john", email, first_name="Xena")
    lead = intake["lead_id"]
    with acme.user("john") as john:
        assert john.delete(f"/v1/leads/{lead}").status_code == 204

    for _ in range(2):  # replayed, and the rejected intake replayed once more: never back
        replayed = replay(acme, intake["id"])
        assert replayed["status"] == "rejected", replayed
        assert replayed["reason"].startswith(f"X4: lead {lead} of this person was deleted by john at ")
        assert replayed["lead_id"] is None
        assert [row.id for row in leads_with_email(acme, email)] == [uuid.UUID(lead)]
        assert lead_row(lead).status.value == "deleted"

    fresh = acme.register_and_wait("john", email, first_name="Xena")
    assert fresh["status"] == "done"
    assert fresh["lead_id"] != lead
    (created,) = events(acme, fresh["lead_id"], "john", "created")
    assert created["data"]["replaces"] == lead
    assert created["data"]["X4"].startswith(f"X4: lead {lead} of this person was deleted by john")
    assert len(leads_with_email(acme, email)) == 2
    assert lead_row(lead).status.value == "deleted"


# --- Assignment (A3-A6, T5) --------------------------------------------------------------------------


def test_A3_A4_a_team_admin_reassigns_a_team_lead_and_moves_it_to_the_pond(
    acme: Brokerage, smtp_server: SmtpSink
) -> None:
    lead = make_lead(acct(acme), owner="sunrise", assignee="tara", routed_via="sunrise")
    with acme.user("tara") as tara:
        to_john = ok(tara.post(f"/v1/leads/{lead}/assign", json={"agent_id": "john"}))
        assert (to_john["assigned_agent"]["id"], to_john["owner"]["id"], to_john["in_pond"]) == (
            "john",
            "sunrise",
            False,
        )
        problem = refused(tara.post(f"/v1/leads/{lead}/assign", json={"agent_id": "jill"}), 422, "A3")
        assert [e["field"] for e in problem["errors"]] == ["agent_id"]
        assert "not connected to team sunrise" in problem["detail"]
        pond = ok(tara.post(f"/v1/leads/{lead}/assign", json={"pond": True}))
    assert (pond["in_pond"], pond["assigned_agent"], pond["owner"]["id"]) == (True, None, "sunrise")
    assigned, pooled = events(acme, lead, "tara", "assigned"), events(acme, lead, "tara", "pond")
    assert [e["data"] for e in assigned] == [{"rule": "A3", "agent": "john", "owner_unchanged": "A4"}]
    assert [e["summary"] for e in pooled] == ["Moved to the Sunrise Team pond by tara"]
    with acme.user("john") as john:
        assert john.get(f"/v1/leads/{lead}").status_code == 404  # no longer his to work
    mail = wait_mail(smtp_server, "john@co.test", [lead])
    assert mail["Subject"] == "A lead was assigned to you"


def test_A6_an_admin_cannot_reassign_a_lead_owned_by_an_agent(acme: Brokerage) -> None:
    lead = make_lead(acct(acme), owner="john", assignee="john")
    with acme.user("tara") as tara:
        refused(tara.post(f"/v1/leads/{lead}/assign", json={"agent_id": "tara"}), 403, "A6")
        refused(tara.post(f"/v1/leads/{lead}/assign", json={"pond": True}), 403, "A6")
    with acme.user("olivia") as olivia:
        refused(olivia.post(f"/v1/leads/{lead}/assign", json={"agent_id": "jill"}), 403, "A6")
    after = acme.lead(lead, "john")
    assert (after["owner"]["id"], after["assigned_agent"]["id"]) == ("john", "john")
    assert events(acme, lead, "john", "assigned") == []


def test_A5_T5_an_agent_leaving_a_team_hands_back_its_team_leads_and_keeps_its_own(acme: Brokerage) -> None:
    worked = make_lead(acct(acme), owner="sunrise", assignee="john", routed_via="sunrise")
    shared = make_lead(acct(acme), owner="sunrise", assignee="tara", shares={"john": "edit"})
    given = make_lead(acct(acme), owner="sunrise", assignee="tara")
    with acme.user("tara") as tara:
        ok(tara.post(f"/v1/leads/{given}/transfer", json={"to": "john"}))
    with acme.user("bob") as bob:
        refused(bob.post("/v1/teams/sunrise/members/john/leave"), 403, "A5")
    with acme.user("tara") as tara:
        left = ok(tara.post("/v1/teams/sunrise/members/john/leave"))
        assert left == {"rerouted": 1, "unshared": 1, "kept": 1}
        refused(tara.post("/v1/teams/sunrise/members/john/leave"), 404, "A5")

    after = acme.lead(worked, "tara")
    assert (after["owner"]["id"], after["assigned_agent"]["id"]) == ("sunrise", "tara")
    (route,) = events(acme, worked, "tara", "routed")
    assert (route["data"]["cause"], route["actor"], route["data"]["agent"]) == ("A5", "tara", "tara")
    assert route["data"]["rule"] == "Default: the team's admin (O4)"
    assert route["summary"].startswith("John Smith left Sunrise Team: ")
    assert acme.lead(shared, "tara")["shares"] == []
    (unshared,) = events(acme, shared, "tara", "unshared")
    assert unshared["data"] == {"rule": "A5", "user": "john"}
    with acme.user("john") as john:
        assert john.get(f"/v1/leads/{worked}").status_code == 404
        assert john.get(f"/v1/leads/{shared}").status_code == 404
        mine = ok(john.get(f"/v1/leads/{given}"))
    assert (mine["owner"]["id"], mine["assigned_agent"]["id"]) == ("john", "john")  # T5
    assert [e["kind"] for e in events(acme, given, "john")] == ["created", "transferred"]


# --- Subscriptions and campaigns (D6, D8) -------------------------------------------------------------


def test_D8_unsubscribing_one_duplicate_keeps_the_others_subscribed(acme: Brokerage) -> None:
    email = new_email("unsub")
    mine = make_lead(acct(acme), owner="john", assignee="john", email=email)
    theirs = make_lead(acct(acme), owner="co", assignee="jill", email=email)
    with acme.user("john") as john:
        ok(john.post(f"/v1/leads/{mine}/unsubscribe", json={"channel": "email"}))
    assert (lead_row(mine).email_unsubscribed, lead_row(mine).sms_unsubscribed) == (True, False)
    assert (lead_row(theirs).email_unsubscribed, lead_row(theirs).sms_unsubscribed) == (False, False)
    (note,) = events(acme, mine, "john", "unsubscribed")
    assert note["data"] == {"rule": "D8", "channel": "email"}
    assert events(acme, theirs, "jill", "unsubscribed") == []

    with acme.user("jill") as jill:
        ok(jill.post(f"/v1/leads/{theirs}/unsubscribe", json={"channel": "sms"}))
        assert jill.post(f"/v1/leads/{mine}/unsubscribe", json={"channel": "sms"}).status_code == 404
    assert (lead_row(theirs).email_unsubscribed, lead_row(theirs).sms_unsubscribed) == (False, True)
    assert lead_row(mine).sms_unsubscribed is False


def test_D6_each_lead_starts_and_stops_its_own_campaigns_with_notes(acme: Brokerage) -> None:
    email = new_email("camp")
    mine = make_lead(acct(acme), owner="john", assignee="john", email=email)
    company = make_lead(acct(acme), owner="co", assignee="john", routed_via="downtown", email=email)
    name = "New buyer drip"
    with acme.user("john") as john:
        assert ok(john.post(f"/v1/leads/{mine}/campaigns", json={"name": name}), 201) == {
            "items": [name],
            "next": None,
        }
        assert ok(john.get(f"/v1/leads/{company}/campaigns"))["items"] == []
        assert acme.lead(mine, "john")["campaigns"] == [name]
        assert john.delete(f"/v1/leads/{mine}/campaigns/{quote(name)}").status_code == 204
        assert ok(john.get(f"/v1/leads/{mine}/campaigns"))["items"] == []
        refused(john.delete(f"/v1/leads/{mine}/campaigns/{quote(name)}"), 404, "D6")
    started, stopped = events(acme, mine, "john", "campaign_started"), events(acme, mine, "john", "campaign_stopped")
    assert [e["summary"] for e in started] == [f"Campaign {name} started by john"]
    assert [e["summary"] for e in stopped] == [f"Campaign {name} stopped by john"]
    assert all(e["data"] == {"rule": "D6", "campaign": name} for e in started + stopped)
    assert [e["kind"] for e in events(acme, company, "john")] == ["created"]


# --- Bulk jobs (SH7, T4) ------------------------------------------------------------------------------


def test_SH7_a_bulk_share_notes_each_lead_lists_the_refused_and_mails_one_digest(
    brokerage_factory: Any, smtp_server: SmtpSink
) -> None:
    acme, other = brokerage_factory(), brokerage_factory()
    mine = [make_lead(acct(acme), owner="john", assignee="john", first_name=f"Bulk{i}") for i in range(25)]
    hidden = [make_lead(acct(acme), owner="jill", assignee="jill") for _ in range(3)]
    foreign = [make_lead(acct(other), owner="john", assignee="john") for _ in range(2)]
    with acme.user("john") as john:
        job = run_job(
            john,
            {"action": "share", "lead_ids": [*mine, *hidden, *foreign], "user_id": "bob", "permission": "edit"},
        )
    assert (job["status"], job["action"], job["total"], job["done"]) == ("done", "share", 30, 30)
    failed = {f["lead_id"]: f["reason"] for f in job["failed"]}
    assert set(failed) == set(hidden) | set(foreign)
    assert all(reason.startswith("V1: ") for reason in failed.values())

    with acme.user("bob") as bob:
        for lead in mine:
            assert ok(bob.get(f"/v1/leads/{lead}"))["shares"] == [{"user_id": "bob", "permission": "edit"}]
        for lead in hidden:
            assert bob.get(f"/v1/leads/{lead}").status_code == 404
    for lead in mine:
        (note,) = events(acme, lead, "john", "shared")
        assert (note["actor"], note["data"]["rule"], note["data"]["user"]) == ("john", "SH3", "bob")
    for lead in hidden:
        assert events(acme, lead, "jill", "shared") == []

    mail = wait_mail(smtp_server, "bob@co.test", [*mine, *hidden, *foreign])  # one mail for the job
    assert mail["Subject"] == "25 leads were shared with you"
    body = text_of(mail)
    assert sum(f"/v1/leads/{lead} (view & edit, shared by john)" in body for lead in mine) == 20
    assert "... and 5 more" in body
    assert not any(lead in body for lead in hidden + foreign)


def test_T4_a_bulk_transfer_notes_each_lead_lists_the_refused_and_mails_one_digest(
    acme: Brokerage, smtp_server: SmtpSink
) -> None:
    clash_email = new_email("clash")
    mine = [make_lead(acct(acme), owner="john", assignee="john") for _ in range(11)]
    clash = make_lead(acct(acme), owner="john", assignee="john", email=clash_email)
    make_lead(acct(acme), owner="jill", assignee="jill", email=clash_email)
    company = [make_lead(acct(acme), owner="co", assignee="john", routed_via="downtown") for _ in range(3)]
    hidden = [make_lead(acct(acme), owner="bob", assignee="bob") for _ in range(2)]
    with acme.user("john") as john:
        job = run_job(john, {"action": "transfer", "lead_ids": [*mine, clash, *company, *hidden], "to": "jill"})
    assert (job["status"], job["total"], job["done"]) == ("done", 17, 17)
    failed = {f["lead_id"]: f["reason"] for f in job["failed"]}
    assert set(failed) == {clash, *company, *hidden}
    assert failed[clash].startswith("D1: ")
    assert all(failed[lead].startswith("T1: ") for lead in company)
    assert all(failed[lead].startswith("V1: ") for lead in hidden)

    for lead in mine:
        after = acme.lead(lead, "jill")
        assert (after["owner"]["id"], after["assigned_agent"]["id"]) == ("jill", "jill")
        (note,) = events(acme, lead, "jill", "transferred")
        assert (note["actor"], note["data"]["rule"], note["data"]["from"]) == ("john", "T3", "john")
    for lead in (clash, *company):
        assert events(acme, lead, "olivia" if lead in company else "john", "transferred") == []
    assert acme.lead(clash, "john")["owner"]["id"] == "john"

    mail = wait_mail(smtp_server, "jill@co.test", [*mine, clash, *company, *hidden])
    assert mail["Subject"] == "11 leads were transferred to you"
    body = text_of(mail)
    assert all(f"/v1/leads/{lead} (from John Smith)" in body for lead in mine)
    assert not any(lead in body for lead in (clash, *company, *hidden))


# --- Visibility and export (V1, V3, V4) ---------------------------------------------------------------


def export_ids(client: httpx.Client) -> dict[str, dict[str, str]]:
    r = client.get("/v1/export.csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    return {row["id"]: row for row in csv.DictReader(io.StringIO(r.text))}


def test_V3_an_agents_export_holds_its_own_and_company_leads_assigned_to_it_not_team_leads(
    acme: Brokerage,
) -> None:
    own = make_lead(acct(acme), owner="john", assignee="john", first_name="Own")
    archived = make_lead(acct(acme), owner="john", assignee="john")
    company = make_lead(acct(acme), owner="co", assignee="john", routed_via="downtown")
    office = make_lead(acct(acme), owner="downtown", assignee="john")
    make_lead(acct(acme), owner="sunrise", assignee="john")  # team-owned: never in an agent's export
    make_lead(acct(acme), owner="co", assignee="jill")
    make_lead(acct(acme), owner="jill", assignee="jill", shares={"john": "edit"})  # shared, not his
    gone = make_lead(acct(acme), owner="john", assignee="john")
    with acme.user("john") as john:
        ok(john.post(f"/v1/leads/{archived}/archive"))
        assert john.delete(f"/v1/leads/{gone}").status_code == 204
        rows = export_ids(john)
    assert set(rows) == {own, archived, company, office}
    assert (rows[own]["owner"], rows[own]["owner_kind"], rows[own]["first_name"]) == ("john", "agent", "Own")
    assert (rows[company]["owner"], rows[company]["assigned_agent"]) == ("co", "john")
    assert rows[archived]["status"] == "archived"


def test_V1_V2_the_owner_side_edits_whatever_the_privacy_settings(brokerage_factory: Any) -> None:
    org = brokerage()
    (john_entity,) = [e for e in org["entities"] if e["id"] == "john"]
    john_entity.update(private=True, hide_from_team=True)
    b = brokerage_factory(org=org)
    company = make_lead(acct(b), owner="co", assignee="john", routed_via="downtown", first_name="Cora")
    johns = make_lead(acct(b), owner="john", assignee="john", first_name="Jo")
    for admin in ("tara", "olivia"):  # V1: a private agent hidden from the team is not seen through it
        with b.user(admin) as c:
            assert c.get(f"/v1/leads/{johns}").status_code == 404
            assert c.patch(f"/v1/leads/{johns}", json={"first_name": "Nope"}).status_code == 404
    for editor, name in (("olivia", "Cora O"), ("oscar", "Cora D"), ("john", "Cora J")):
        with b.user(editor) as c:  # the owner's admins, the office it was routed through, the assignee
            assert ok(c.patch(f"/v1/leads/{company}", json={"first_name": name}))["first_name"] == name
    assert [(e["actor"], e["data"]["rule"]) for e in events(b, company, "olivia", "edited")] == [
        ("olivia", "V2"),
        ("oscar", "V2"),
        ("john", "SH2"),
    ]
    with b.user("john") as john:
        assert ok(john.patch(f"/v1/leads/{johns}", json={"last_name": "Own"}))["last_name"] == "Own"
    assert (lead_row(johns).first_name, lead_row(johns).last_name) == ("Jo", "Own")


def test_V4_an_export_holds_nothing_of_another_account(brokerage_factory: Any) -> None:
    a, b = brokerage_factory(), brokerage_factory()
    made = {
        x: (make_lead(acct(x), owner="john", assignee="john"), make_lead(acct(x), owner="co", assignee="john"))
        for x in (a, b)
    }
    for x, y in ((a, b), (b, a)):
        own, company = made[x]
        with x.user("john") as john:
            johns = set(export_ids(john))
        with x.user("olivia") as olivia:
            olivias = set(export_ids(olivia))
        assert johns == {own, company}
        assert olivias == {company}  # an admin's export: its entities' leads
        assert not (johns | olivias) & set(made[y])


def test_V1_V4_a_lead_of_another_account_is_404_for_every_operation(brokerage_factory: Any) -> None:
    a, b = brokerage_factory(), brokerage_factory()
    theirs = make_lead(acct(b), owner="co", assignee="john", shares={"jill": "edit"}, campaigns=["Drip"])
    ours = make_lead(acct(a), owner="co", assignee="john")
    before = (b.lead(theirs, "olivia"), b.timeline(theirs, "olivia"))
    lead = f"/v1/leads/{theirs}"
    attempts: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", lead, None),
        ("GET", f"{lead}/timeline", None),
        ("PATCH", lead, {"first_name": "Mallory"}),
        ("POST", f"{lead}/assign", {"agent_id": "john"}),
        ("POST", f"{lead}/shares", {"user_id": "bob", "permission": "edit"}),
        ("DELETE", f"{lead}/shares/jill", None),
        ("POST", f"{lead}/transfer", {"to": "jill"}),
        ("POST", f"{lead}/archive", None),
        ("DELETE", lead, None),
        ("POST", f"{lead}/unsubscribe", {"channel": "email"}),
        ("GET", f"{lead}/campaigns", None),
        ("POST", f"{lead}/messages", {"body": "Hello from another account"}),
        ("POST", f"{lead}/campaigns", {"name": "Spam"}),
        ("DELETE", f"{lead}/campaigns/Drip", None),
        ("POST", "/v1/leads/merge/preview", {"primary_id": theirs, "other_id": ours}),
        ("POST", "/v1/leads/merge", {"primary_id": ours, "other_id": theirs}),
    ]
    for user in ("olivia", "john", "jill"):
        with a.user(user) as c:
            for method, path, body in attempts:
                r = c.request(method, path, json=body)
                assert r.status_code == 404, (user, method, path, r.text)
                assert theirs not in r.text
    with a.user("olivia") as olivia:
        job = run_job(olivia, {"action": "archive", "lead_ids": [theirs]})
        assert [(f["lead_id"], f["reason"][:3]) for f in job["failed"]] == [(theirs, "V1:")]
        with b.user("olivia") as their_admin:
            assert their_admin.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert (b.lead(theirs, "olivia"), b.timeline(theirs, "olivia")) == before
    assert lead_row(theirs).status.value == "active"
