"""CSV imports (O1, O4, D4, A2): the CLI in its own process and the upload over HTTP run by a real
worker, on PostgreSQL; the same file on the embedded SQLite gives the same leads."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select, text
from sqlalchemy.orm import aliased

from models.db import make_engine
from models.repositories.common import activity_lock_key
from models.security import hash_secret
from models.tables import Account, Entity, Import, Intake, IntakeSource, Lead, TimelineEvent
from models.uow import UnitOfWork
from tests.support.client import Brokerage
from tests.support.leads import lead_row, make_lead
from tests.support.processes import ROOT, child_env, wait_for

pytestmark = pytest.mark.integration

HEADER = ["firstName", "lastName", "emailAddress", "phoneNumber", "hashtags", "listPrice", "zipCode", "Notes"]


def csv_text(rows: list[list[str]], header: list[str] = HEADER) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def people(n: int, tag: str) -> list[list[str]]:
    return [
        [f"P{i}", "Lee", f"{tag}{i}@example.com", f"(555) 301-{i:04d}", "#csv #buyer", "$450,000", "02134", ""]
        for i in range(n)
    ]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leadrelay", *args],
        env={**child_env(env), "COLUMNS": "200"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_import(
    env: dict[str, str], b: Brokerage, path: Path, owner: str, by: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(env, "import", str(path), "--account", f"acct-{b.s}", "--owner", owner, "--by", by, *extra)


def leads_of(b: Brokerage) -> list[tuple[str | None, str, str | None, list[str], int | None]]:
    """(email, owner slug, assigned agent slug, tags, price) of every lead of the account."""
    owner, agent = aliased(Entity), aliased(Entity)
    with UnitOfWork() as uow:
        rows = uow.session.execute(
            select(Lead.email_normalized, owner.slug, agent.slug, Lead.tags, Lead.price_max)
            .join(Account, Account.id == Lead.account_id)
            .join(owner, owner.id == Lead.owner_entity_id)
            .outerjoin(agent, agent.id == Lead.assigned_agent_id)
            .where(Account.slug == f"acct-{b.s}")
            .order_by(Lead.email_normalized)
        ).all()
    return [(r[0], r[1], r[2], list(r[3]), r[4]) for r in rows]


def timeline_count(b: Brokerage) -> int:
    with UnitOfWork() as uow:
        return int(
            uow.session.execute(
                select(func.count())
                .select_from(TimelineEvent)
                .join(Account, Account.id == TimelineEvent.account_id)
                .where(Account.slug == f"acct-{b.s}")
            ).scalar_one()
        )


def imports_count(b: Brokerage) -> int:
    with UnitOfWork() as uow:
        return int(
            uow.session.execute(
                select(func.count())
                .select_from(Import)
                .join(Account, Account.id == Import.account_id)
                .where(Account.slug == f"acct-{b.s}")
            ).scalar_one()
        )


def test_O1_A2_an_office_import_is_owned_by_the_office_and_round_robined_like_signups(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "downtown.csv"
    path.write_text(csv_text(people(300, "rr")))

    done = cli_import(pipeline_env, acme, path, "downtown", "oscar")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "│  300 │     300 │" in done.stdout  # rows, created
    leads = leads_of(acme)
    assert len(leads) == 300
    assert {owner for _, owner, _, _, _ in leads} == {"downtown"}
    # Downtown's rule deals john, jill, bob in turn: 300 leads, 100 each, as one-by-one routing would.
    assert Counter(agent for _, _, agent, _, _ in leads) == {"john": 100, "jill": 100, "bob": 100}
    assert leads[0][3:] == (["csv", "buyer"], 450_000)
    # Every lead is on its timeline: created by the import, routed with the rule that chose (A7).
    first = next(iter(leads))
    lead_id = _lead_id(acme, first[0])
    kinds = [(e["kind"], e["actor"]) for e in acme.timeline(lead_id, as_user="oscar")]
    assert kinds == [("created", "oscar"), ("routed", "system")]
    routed = acme.timeline(lead_id, as_user="oscar")[1]
    assert routed["data"]["rule"] == "Downtown round robin"
    lead = acme.lead(lead_id, as_user="oscar")
    assert lead["owner"]["id"] == "downtown"
    assert lead["source"] == {"kind": "import", "detail": "downtown.csv"}


def _lead_id(b: Brokerage, email: str | None) -> str:
    with UnitOfWork() as uow:
        found = uow.session.execute(
            select(Lead.id)
            .join(Account, Account.id == Lead.account_id)
            .where(Account.slug == f"acct-{b.s}", Lead.email_normalized == email)
        ).scalar_one()
    return str(found)


def test_D4_importing_the_same_file_twice_creates_nothing_the_second_time(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "twice.csv"
    path.write_text(csv_text(people(40, "twice")))
    first = cli_import(pipeline_env, acme, path, "john", "john")
    assert first.returncode == 0, first.stdout + first.stderr
    leads, events = leads_of(acme), timeline_count(acme)

    second = cli_import(pipeline_env, acme, path, "john", "john")

    assert second.returncode == 0, second.stdout + second.stderr
    assert "│   40 │       0 │               40 │" in second.stdout  # rows, created, already existing
    assert leads_of(acme) == leads
    assert timeline_count(acme) == events


def test_O1_an_agent_import_is_owned_by_and_assigned_to_the_agent(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(csv_text(people(5, "mine")))
    done = cli_import(pipeline_env, acme, path, "john", "john")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {(owner, agent) for _, owner, agent, _, _ in leads_of(acme)} == {("john", "john")}


def test_D4_a_row_whose_lead_exists_adds_a_timeline_event_and_no_lead(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    signup = acme.register_and_wait("john", "Known@Example.com")
    path = tmp_path / "known.csv"
    path.write_text(csv_text([["Kim", "Known", "known@example.com", "", "", "", "", "met at the open house"]]))

    done = cli_import(pipeline_env, acme, path, "john", "john")

    assert done.returncode == 0, done.stdout + done.stderr
    assert [e for e, _, _, _, _ in leads_of(acme)] == ["known@example.com"]
    kinds = [e["kind"] for e in acme.timeline(signup["lead_id"], as_user="john")]
    assert kinds == ["created", "routed", "import"]


def test_malformed_rows_are_reported_with_line_and_reason_and_never_stop_the_import(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    rows = [
        ["Ann", "Lee", "ann@example.com", "", "", "", "", "a note\nover two lines"],  # lines 2-3
        ["Bad", "Mail", "not-an-email", "", "", "", "", ""],  # line 4
        ["No", "Contact", "", "", "", "", "", ""],  # line 5
        ["Bad", "Price", "price@example.com", "", "", "a lot", "", ""],  # line 6
        ["Ann", "Again", "ANN@example.com", "", "", "", "", ""],  # line 7: same lead as line 2
        ["Bea", "Ok", "bea@example.com", "555 301 9999", "", "", "", ""],  # line 8
    ]
    path = tmp_path / "messy.csv"
    path.write_text(csv_text(rows))

    done = cli_import(pipeline_env, acme, path, "john", "john")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "│    6 │       2 │                0 │                          1 │        3 │" in done.stdout
    for line, reason in [(4, "email: not an email address"), (5, "no email or phone"), (6, "price: not an amount")]:
        assert f"│    {line} │ {reason}" in done.stdout
    assert [e for e, _, _, _, _ in leads_of(acme)] == ["ann@example.com", "bea@example.com"]
    note = [e for e in acme.timeline(_lead_id(acme, "ann@example.com"), as_user="john") if e["kind"] == "note"]
    assert [n["summary"] for n in note] == ["a note\nover two lines"]


def test_map_names_the_columns_the_usual_spellings_miss(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "odd.csv"
    path.write_text(
        csv_text([["Mo", "mo@example.com", "2025551234", "x"]], header=["Given", "Contact E", "Tel", "Fax"])
    )

    refused = cli_import(pipeline_env, acme, path, "john", "john", "--map", "Contact E=favourite")
    assert refused.returncode == 2
    assert "favourite" in refused.stdout

    done = cli_import(pipeline_env, acme, path, "john", "john", "--map", "Contact E=email", "--map", "Given=first_name")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "columns not imported: Fax" in done.stdout
    lead = acme.lead(_lead_id(acme, "mo@example.com"), as_user="john")
    assert (lead["first_name"], lead["phone"]) == ("Mo", "+12025551234")


def test_O1_an_import_for_an_owner_the_user_is_not_is_refused_403_naming_the_rule(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    body = csv_text(people(3, "nope"))
    before = imports_count(acme)
    with acme.user("john") as john:
        r = john.post("/v1/imports", data={"owner": "co"}, files={"file": ("nope.csv", body, "text/csv")})
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"].startswith("O1: john may import only for itself")

    path = tmp_path / "nope.csv"
    path.write_text(body)
    cli = cli_import(pipeline_env, acme, path, "sunrise", "jill")
    assert cli.returncode == 1
    assert "O1: jill may import only for itself" in cli.stdout
    assert imports_count(acme) == before
    assert leads_of(acme) == []


def test_a_header_without_email_or_phone_is_422_naming_the_file(acme: Brokerage) -> None:
    with acme.user("john") as john:
        r = john.post("/v1/imports", data={"owner": "john"}, files={"file": ("x.csv", "name,city\nA,B\n", "text/csv")})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "file"
    assert imports_count(acme) == 0


def test_O4_an_upload_runs_on_the_imports_queue_and_reports_progress(acme: Brokerage) -> None:
    body = csv_text([*people(30, "team"), ["Bad", "Row", "nope", "", "", "", "", ""]])
    with acme.user("tara") as tara:
        r = tara.post("/v1/imports", data={"owner": "sunrise"}, files={"file": ("team.csv", body, "text/csv")})
        assert r.status_code == 202, r.text
        status_url = r.json()["status_url"]
        assert r.headers["Location"] == status_url
        result: dict[str, Any] = {}

        def finished() -> bool:
            result.update(tara.get(status_url).json())
            return result["status"] in ("done", "failed")

        wait_for(finished, timeout=60, interval=0.1, what="the import")
    assert result["status"] == "done", result
    assert (result["rows"], result["created"], result["rejected"]) == (31, 30, 1)
    assert result["rejections"] == [{"line": 32, "reason": "email: not an email address (4 characters)"}]
    assert (result["owner"], result["by"]) == ("sunrise", "tara")
    # O4: the team owns; with no team rule its admin is assigned.
    assert {(owner, agent) for _, owner, agent, _, _ in leads_of(acme)} == {("sunrise", "tara")}
    # Someone neither the importer nor the owner's side cannot see it.
    with acme.user("jill") as jill:
        assert jill.get(status_url).status_code == 404


def test_sqlite_gives_the_same_leads_as_postgresql(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """The embedded default loads with batched INSERTs instead of COPY; the result is the same."""
    rows = [
        *people(60, "same"),
        ["Dup", "Row", "SAME1@example.com", "", "", "", "", ""],
        ["x", "y", "bad", "", "", "", "", ""],
    ]
    path = tmp_path / "same.csv"
    path.write_text(csv_text(rows))
    pg = cli_import(pipeline_env, acme, path, "downtown", "oscar")
    assert pg.returncode == 0, pg.stdout + pg.stderr

    sqlite_env = {"LEADRELAY_ENV": "test", "LEADRELAY_DATA_DIR": str(tmp_path / "embedded")}
    org_file = tmp_path / "org.yaml"
    org_file.write_text(yaml.safe_dump(acme.org))
    for args in (("db", "upgrade"), ("org", "apply", str(org_file))):
        step = run_cli(sqlite_env, *args)
        assert step.returncode == 0, step.stdout + step.stderr
    embedded = cli_import(sqlite_env, acme, path, "downtown", "oscar")
    assert embedded.returncode == 0, embedded.stdout + embedded.stderr
    # The summary tables, from the first border on (the title names each run's import id).
    assert embedded.stdout[embedded.stdout.index("┏") :] == pg.stdout[pg.stdout.index("┏") :]

    engine = make_engine(f"sqlite:///{tmp_path / 'embedded' / 'leadrelay.db'}")
    owner, agent = aliased(Entity), aliased(Entity)
    with engine.connect() as conn:
        sqlite_leads = [
            (r[0], r[1], r[2], list(r[3]), r[4])
            for r in conn.execute(
                select(Lead.email_normalized, owner.slug, agent.slug, Lead.tags, Lead.price_max)
                .join(owner, owner.id == Lead.owner_entity_id)
                .outerjoin(agent, agent.id == Lead.assigned_agent_id)
                .order_by(Lead.email_normalized)
            ).all()
        ]
    engine.dispose()
    assert sqlite_leads == leads_of(acme)
    assert os.path.exists(tmp_path / "embedded" / "leadrelay.db")


def test_D7_activity_kept_before_an_import_joins_the_imported_lead(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    r = acme.site.post(
        "/v1/intake/activity",
        json={
            "page_url": f"https://{acme.host('john')}/listing/9",
            "email": "early@example.com",
            "kind": "property_view",
            "listing": {"mls_id": "9001", "address": "9 Elm St"},
        },
    )
    assert r.status_code == 202, r.text
    assert acme.wait_done(r.json()["intake_id"])["lead_id"] is None  # kept as anonymous activity
    path = tmp_path / "early.csv"
    path.write_text(csv_text([["Ed", "Early", "early@example.com", "", "", "", "", ""]]))

    done = cli_import(pipeline_env, acme, path, "john", "john")

    assert done.returncode == 0, done.stdout + done.stderr
    events = acme.timeline(_lead_id(acme, "early@example.com"), as_user="john")
    assert [e["kind"] for e in events] == ["property_view", "created", "routed"]
    assert events[0]["summary"] == "Viewed 9 Elm St (MLS 9001) (before signup)"


def import_in_process(
    b: Brokerage, path: Path, owner: str, by: str, on_saving: Any = None, *, at_phase: str = "saving"
) -> Any:
    """``run_import`` in this process, calling ``on_saving()`` once the file is read and before any
    lead is written: what a signup that lands while a large file is read looks like to the import.
    With ``at_phase="timeline"`` it is called once the leads are written, before the timeline and the
    kept activity's claim, the import's transaction still open."""
    from workers.imports import create_import, file_chunks, run_import

    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(f"acct-{b.s}")
        assert account is not None
        caller = uow.orgs.caller_by_slug(account.id, by)
        assert caller is not None
        import_id = create_import(uow, caller=caller, owner_slug=owner, filename=path.name, mapping={})
        uow.commit()
    called: list[str] = []

    def progress(phase: str, _done: int, _total: int | None) -> None:
        if phase == at_phase and not called:
            called.append(phase)
            if on_saving is not None:
                on_saving()

    summary = run_import(import_id, file_chunks(str(path)), progress=progress)
    assert called == [at_phase]
    return summary


def test_D4_a_person_listed_again_in_a_later_chunk_of_the_file_is_a_duplicate(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is read in chunks of first rows (10,000); a key met in an earlier chunk makes no
    lead and no event, as one met earlier in the same chunk."""
    monkeypatch.setattr("workers.imports.STAGE_CHUNK", 2)
    rows = people(5, "chunk")
    path = tmp_path / "chunks.csv"
    path.write_text(
        csv_text([rows[0], rows[1], rows[2], rows[0], rows[3], ["Again", "", "CHUNK1@example.com"], rows[4]])
    )

    summary = import_in_process(acme, path, "john", "john")

    assert (summary.rows, summary.created, summary.existing, summary.duplicates) == (7, 5, 0, 2)
    assert [e for e, _, _, _, _ in leads_of(acme)] == [f"chunk{i}@example.com" for i in range(5)]
    assert [e["kind"] for e in acme.timeline(_lead_id(acme, "chunk1@example.com"), as_user="john")] == [
        "created",
        "routed",
    ]


def test_A2_a_signup_routed_while_the_file_is_read_moves_the_import_on_by_one(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """The import routes its rows from the cursors as they are once the file is read: a signup to the
    same office meanwhile takes its turn first, as if the rows had been routed one by one after it."""
    path = tmp_path / "busy.csv"
    path.write_text(csv_text(people(6, "busy")))
    walk_in: dict[str, Any] = {}

    summary = import_in_process(
        acme,
        path,
        "downtown",
        "oscar",
        lambda: walk_in.update(acme.register_and_wait("downtown", "walkin@example.com")),
    )

    assert (summary.status, summary.created) == ("done", 6)
    assert acme.lead(walk_in["lead_id"], as_user="oscar")["assigned_agent"]["id"] == "john"
    imported = [agent for email, _, agent, _, _ in leads_of(acme) if email and email.startswith("busy")]
    assert imported == ["jill", "bob", "john", "jill", "bob", "john"]  # busy0..busy5, in file order
    # The next signup continues the round where the import left it.
    assert (
        acme.lead(acme.register_and_wait("downtown", "next@example.com")["lead_id"], as_user="oscar")["assigned_agent"][
            "id"
        ]
        == "jill"
    )


def test_A7_a_row_routed_again_once_the_file_is_read_explains_the_agent_it_now_has(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The made leads' events are written chunk by chunk as the file is read; when a signup moved the
    cursors meanwhile, the rows are routed again at the end, and each ``routed`` event then explains the
    agent its lead has, not the one first planned."""
    monkeypatch.setattr("workers.imports.STAGE_CHUNK", 2)
    path = tmp_path / "again.csv"
    path.write_text(csv_text(people(5, "again")))

    summary = import_in_process(
        acme, path, "downtown", "oscar", lambda: acme.register_and_wait("downtown", "walkin@example.com")
    )

    assert (summary.status, summary.created) == ("done", 5)
    made = [(email, agent) for email, _, agent, _, _ in leads_of(acme) if email and email.startswith("again")]
    assert [agent for _, agent in made] == ["jill", "bob", "john", "jill", "bob"]  # after the walk-in's john
    for email, agent in made:
        events = acme.timeline(_lead_id(acme, email), as_user="oscar")
        assert [e["kind"] for e in events] == ["created", "routed"]
        assert events[1]["data"]["agent"] == agent
        assert events[1]["summary"].startswith(f"Assigned to {agent.title()} ")


def test_D4_a_lead_made_while_the_file_is_read_gets_an_event_not_a_twin(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "race.csv"
    path.write_text(csv_text(people(5, "race")))
    signup: dict[str, Any] = {}

    summary = import_in_process(
        acme, path, "john", "john", lambda: signup.update(acme.register_and_wait("john", "race2@example.com"))
    )

    assert (summary.rows, summary.created, summary.existing) == (5, 4, 1)
    assert [e for e, _, _, _, _ in leads_of(acme)] == [f"race{i}@example.com" for i in range(5)]
    # One D4 event on the signup's lead, at the import's time (it began before the signup).
    kinds = [e["kind"] for e in acme.timeline(signup["lead_id"], as_user="john")]
    assert kinds == ["import", "created", "routed"]
    made = _lead_id(acme, "race3@example.com")
    assert [e["kind"] for e in acme.timeline(made, as_user="john")] == ["created", "routed"]


# --- The import decides as a live signup does: through the one signup planner -------------------------


def timeline_of(lead_id: str) -> list[TimelineEvent]:
    """A lead's events as stored (a merged or deleted lead's too), in timeline order."""
    with UnitOfWork() as uow:
        rows = list(
            uow.session.execute(
                select(TimelineEvent)
                .where(TimelineEvent.lead_id == uuid.UUID(lead_id))
                .order_by(TimelineEvent.at, TimelineEvent.id)
            ).scalars()
        )
        uow.session.expunge_all()
    return rows


def test_M4_an_import_row_of_a_merged_lead_goes_on_the_lead_it_was_merged_into(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """John's own lead of Ole was merged into the company's lead of him: John's key still names the
    merged lead, and an import of Ole by John lists him again on the lead he now is, as a signup does."""
    email = "ole@example.com"
    primary = make_lead(f"acct-{acme.s}", owner="co", assignee="john", routed_via="downtown", email=email)
    merged = make_lead(f"acct-{acme.s}", owner="john", assignee="john", email=email, first_name="Ole")
    with acme.user("john") as john:
        r = john.post("/v1/leads/merge", json={"primary_id": primary, "other_id": merged})
        assert r.status_code == 200, r.text
    path = tmp_path / "ole.csv"
    path.write_text(csv_text([["Ole", "Other", email, "", "", "", "", ""]]))

    summary = import_in_process(acme, path, "john", "john")

    assert (summary.rows, summary.created, summary.existing) == (1, 0, 1)
    (listed,) = [e for e in timeline_of(primary) if e.kind == "import"]
    assert listed.data["rule"] == "D4"
    assert listed.summary == "Listed again in import ole.csv by john (line 2)"
    assert [e.kind for e in timeline_of(merged)] == ["merged_into"]
    assert lead_row(primary).last_activity_at >= listed.at  # joined, as a repeat signup moves it


def test_M4_a_lead_merged_while_the_file_is_read_gets_the_row_on_the_lead_it_was_merged_into(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """The row's chunk found John's own lead of Ole live; John merged it into the company's lead before
    the import wrote anything: the row is planned again and listed on the lead Ole now is."""
    email = "ole-late@example.com"
    primary = make_lead(f"acct-{acme.s}", owner="co", assignee="john", routed_via="downtown", email=email)
    other = make_lead(f"acct-{acme.s}", owner="john", assignee="john", email=email, first_name="Ole")
    path = tmp_path / "ole-late.csv"
    path.write_text(csv_text([["Ole", "Late", email, "", "", "", "", ""], *people(2, "late-merge")]))

    def merge() -> None:
        with acme.user("john") as john:
            r = john.post("/v1/leads/merge", json={"primary_id": primary, "other_id": other})
            assert r.status_code == 200, r.text

    summary = import_in_process(acme, path, "john", "john", merge)

    assert (summary.rows, summary.created, summary.existing) == (3, 2, 1)
    assert [e.kind for e in timeline_of(primary)].count("import") == 1
    assert "import" not in [e.kind for e in timeline_of(other)]


def test_X4_an_import_row_of_a_deleted_lead_makes_a_new_lead_naming_what_was_deleted(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """John deleted his lead of Xena; her key still names the tombstone. An import of Xena by John makes
    a new lead that says what was deleted, as a new signup does, and leaves the tombstone alone."""
    deleted = acme.register_and_wait("john", "xena@example.com", first_name="Xena")["lead_id"]
    with acme.user("john") as john:
        assert john.delete(f"/v1/leads/{deleted}").status_code == 204
    before = [e.id for e in timeline_of(deleted)]
    path = tmp_path / "xena.csv"
    path.write_text(csv_text([["Xena", "Again", "Xena@example.com", "", "", "", "", ""]]))

    done = cli_import(pipeline_env, acme, path, "john", "john")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "│    1 │       1 │                0 │" in done.stdout  # rows, created, already existing
    with UnitOfWork() as uow:
        leads = uow.session.execute(
            select(Lead.id, Lead.status)
            .join(Account, Account.id == Lead.account_id)
            .where(Account.slug == f"acct-{acme.s}", Lead.email_normalized == "xena@example.com")
        ).all()
    (made,) = [str(lead_id) for lead_id, status in leads if status.value == "active"]
    assert len(leads) == 2
    created = acme.timeline(made, as_user="john")[0]
    assert (created["kind"], created["actor"]) == ("created", "john")
    assert created["data"]["replaces"] == deleted
    assert created["data"]["X4"].startswith(f"X4: lead {deleted} of this person was deleted by john at ")
    assert [e.id for e in timeline_of(deleted)] == before
    assert lead_row(deleted).status.value == "deleted"


def test_X4_the_same_file_imported_again_does_not_bring_back_a_lead_deleted_since(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """A file imported again is a replay of the rows it had (the same file for the same owner: the same
    source): a lead it made and someone deleted since is not made again; the row is refused naming X4."""
    path = tmp_path / "again.csv"
    path.write_text(csv_text(people(3, "again")))
    first = import_in_process(acme, path, "john", "john")
    assert first.created == 3
    gone = _lead_id(acme, "again1@example.com")
    with acme.user("john") as john:
        assert john.delete(f"/v1/leads/{gone}").status_code == 204

    second = import_in_process(acme, path, "john", "john")

    assert (second.rows, second.created, second.existing, second.rejected) == (3, 0, 2, 1)
    ((line, reason),) = second.rejections
    assert line == 3
    assert reason.startswith(f"X4: lead {gone} of this person was deleted by john at ")
    assert [e for e, _, _, _, _ in leads_of(acme)].count("again1@example.com") == 1


def store_activity(b: Brokerage, email: str) -> uuid.UUID:
    """A property view on John's site by ``email``, stored as the API stores it, its task not published
    (so the running workers leave it waiting)."""
    from intake.schemas import ActivityIn

    body = {"page_url": f"https://{b.host('john')}/listing/7", "email": email, "kind": "property_view"}
    with UnitOfWork() as uow:
        key = uow.orgs.intake_key_by_hash(hash_secret(f"key-{b.s}"))
        assert key is not None
        intake = Intake(
            account_id=key.account_id,
            source=IntakeSource.ACTIVITY,
            intake_key_id=key.id,
            raw_body="{}",
            payload=ActivityIn(**body).to_activity().to_dict(),
            content_type="application/json",
        )
        intake_id = uow.intakes.add(intake).id
        uow.commit()
    return intake_id


def waiting_for_kept_activity(b: Brokerage) -> bool:
    """Whether a session waits for the account's kept-activity advisory lock (an import about to claim)."""
    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(f"acct-{b.s}")
        assert account is not None
        key = activity_lock_key(account.id) & 0xFFFFFFFFFFFFFFFF  # as PostgreSQL splits a bigint key
        return bool(
            uow.session.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND classid = CAST(:high AS oid) AND objid = CAST(:low AS oid) AND objsubid = 1"
                ),
                {"high": key >> 32, "low": key & 0xFFFFFFFF},
            ).scalar_one()
        )


def test_D7_an_activity_kept_while_an_import_writes_is_claimed_by_the_imported_lead(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """An activity of a person in the file decides, while the import writes its leads, that the person
    has no lead (the import's is not committed) and keeps itself. The import claims kept activity at its
    end without a lock per person; it waits for that activity to be kept, then claims it: the view is on
    the imported lead's timeline, never left kept beside it."""
    from workers import services

    intake_id = store_activity(acme, "late@example.com")
    path = tmp_path / "late.csv"
    path.write_text(csv_text([["Lee", "Late", "late@example.com", "", "", "", "", ""]]))
    kept, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    class HeldCommit(UnitOfWork):
        def commit(self) -> None:
            kept.set()  # the activity found no lead and kept itself; it commits once released
            assert release.wait(60)
            super().commit()

    def activity_task() -> None:
        try:
            with HeldCommit() as uow:
                intake = uow.intakes.get_for_update(intake_id)
                assert intake is not None
                services.process_activity(uow, intake)
        except BaseException as exc:  # reported by the test below
            failures.append(exc)

    activity = threading.Thread(target=activity_task)

    def while_writing() -> None:
        activity.start()
        assert kept.wait(60)

    summaries: list[Any] = []
    importer = threading.Thread(
        target=lambda: summaries.append(
            import_in_process(acme, path, "john", "john", while_writing, at_phase="timeline")
        )
    )
    importer.start()
    # The import either finishes first (it did not wait: the activity, kept after its claim, is lost) or
    # waits for the activity to be kept; either way the activity then commits.
    wait_for(
        lambda: not importer.is_alive() or waiting_for_kept_activity(acme),
        timeout=60,
        what="the import to finish or to wait for the kept activity",
    )
    release.set()
    importer.join(60)
    activity.join(60)
    assert not failures, failures
    assert [s.created for s in summaries] == [1]
    lead = _lead_id(acme, "late@example.com")
    with UnitOfWork() as uow:
        kept_row = uow.leads.site_activity_of(intake_id)
        assert kept_row is not None
        assert str(kept_row.lead_id) == lead
    assert [e["kind"] for e in acme.timeline(lead, as_user="john")] == ["property_view", "created", "routed"]


def test_D7_activity_arriving_while_the_file_is_read_joins_the_imported_lead(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """An activity the live workers process while the file is read is kept (no lead yet) and is claimed
    by the lead the import makes."""
    path = tmp_path / "reading.csv"
    path.write_text(csv_text([["Rae", "Reading", "rae@example.com", "", "", "", "", ""]]))

    def view() -> None:
        r = acme.site.post(
            "/v1/intake/activity",
            json={
                "page_url": f"https://{acme.host('john')}/listing/3",
                "email": "rae@example.com",
                "kind": "page_view",
            },
        )
        assert r.status_code == 202, r.text
        assert acme.wait_done(r.json()["intake_id"])["lead_id"] is None  # kept: the import has not written yet

    summary = import_in_process(acme, path, "john", "john", view)

    assert summary.created == 1
    kinds = [e["kind"] for e in acme.timeline(_lead_id(acme, "rae@example.com"), as_user="john")]
    assert sorted(kinds) == ["created", "page_view", "routed"]


def test_a_live_signup_of_the_imports_owner_does_not_wait_for_the_import(
    acme: Brokerage, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """While the import writes its leads (its transaction open, its routing settled), a signup routed by
    the same office, and an activity of the same account, are done without waiting for it to commit."""
    path = tmp_path / "busy-end.csv"
    path.write_text(csv_text(people(4, "end")))
    during: dict[str, Any] = {}

    def live() -> None:
        during["signup"] = acme.register_and_wait("downtown", "walk@example.com")
        r = acme.site.post(
            "/v1/intake/activity",
            json={"page_url": f"https://{acme.host('john')}/", "email": "else@example.com", "kind": "page_view"},
        )
        during["activity"] = acme.wait_done(r.json()["intake_id"])

    summary = import_in_process(acme, path, "downtown", "oscar", live, at_phase="timeline")

    assert summary.created == 4
    assert during["signup"]["status"] == during["activity"]["status"] == "done"


def test_A2_round_robin_carries_on_from_an_import_to_live_signups_as_one_by_one_signups_would(
    brokerage_factory: Any, pipeline_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The company's rules (Luxury for a price of a million or more, else Everyone) route an import in
    chunks of two rows, then three live signups: the assignees are those of the same nine people
    signing up one by one on the company's site."""
    monkeypatch.setattr("workers.imports.STAGE_CHUNK", 2)  # the round is carried from chunk to chunk
    prices = [2_000_000, 300_000, 1_500_000, 450_000, 3_000_000, 200_000]
    live = [("live0@example.com", 1_200_000), ("live1@example.com", 100_000), ("live2@example.com", 5_000_000)]
    imported, alone = brokerage_factory(), brokerage_factory()
    rows = [[f"P{i}", "Rr", f"rr{i}@example.com", "", "", str(price), "", ""] for i, price in enumerate(prices)]
    path = tmp_path / "company.csv"
    path.write_text(csv_text(rows))

    summary = import_in_process(imported, path, "co", "olivia")
    assert summary.created == len(prices)
    for email, price in live:
        imported.register_and_wait("co", email, price_max=price)
    for i, price in enumerate(prices):
        alone.register_and_wait("co", f"rr{i}@example.com", price_max=price)
    for email, price in live:
        alone.register_and_wait("co", email, price_max=price)

    def assignees(b: Brokerage) -> dict[str | None, str | None]:
        return {email: agent for email, _, agent, _, _ in leads_of(b)}

    assert assignees(imported) == assignees(alone)
    assert len(set(assignees(imported).values())) > 2  # both rules dealt, to several agents


def test_an_imported_lead_and_its_events_are_checked_against_their_owner_and_lead_not_the_account(
    pg_database: str,
) -> None:
    """Every foreign key is a trigger call and an index probe per inserted row, and an import inserts a
    lead and two or three events per row. A lead's account is its owner entity's, an event's is its lead's:
    neither ``account_id`` is checked against ``accounts`` again (migration 0012); the keys that say
    something more stay."""
    engine = make_engine(pg_database, pool_size=1)
    try:
        with engine.connect() as conn:
            keys = conn.execute(
                text(
                    "SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text"
                    " FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
                    " WHERE c.contype = 'f' AND c.conrelid IN ('leads'::regclass, 'timeline_events'::regclass)"
                )
            ).all()
    finally:
        engine.dispose()
    assert sorted(tuple(row) for row in keys) == [
        ("leads", "assigned_agent_id", "entities"),
        ("leads", "deleted_by_user_id", "users"),
        ("leads", "merged_into_id", "leads"),
        ("leads", "owner_entity_id", "entities"),
        ("leads", "routed_via_entity_id", "entities"),
        ("timeline_events", "lead_id", "leads"),
    ]
