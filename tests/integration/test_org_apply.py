"""`leadrelay org apply`: an org file written into a database migrated by Alembic, idempotently.

Each test gets a database of its own: a SQLite file always, and a fresh PostgreSQL database too
when the server of the integration tests answers (LEADRELAY_TEST_PG_ADMIN, as in conftest.py)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session

from models.base import Base
from models.db import make_engine
from models.migrate import upgrade
from models.org import ApplyReport, apply_org, reencrypt_sms_tokens
from models.orgspec import OrgFileError, parse_org
from models.secrets import Keyring, UndecryptableSecret, generate_key
from models.security import hash_secret
from models.tables import (
    Account,
    AdminRole,
    ApiConnection,
    Entity,
    IntakeKey,
    Lead,
    Membership,
    RoutingRule,
    RoutingRuleMember,
    SiteDomain,
    User,
)

DEMO_ORG = Path(__file__).parents[2] / "leadrelay" / "demo" / "org.yaml"
PG_ADMIN = os.environ.get("LEADRELAY_TEST_PG_ADMIN", "postgresql://root@127.0.0.1:5432/postgres")
DEMO_SECRETS = (
    "demo-site-key",
    "demo-olivia-token",
    "demo-john-token",
    "demo-jill-token",
    "demo-tara-token",
    "demo-zillow-john-key",
)
# The keyring `org apply` would build from LEADRELAY_SECRET_KEY.
KEYS = Keyring([generate_key()])
TWILIO_TOKENS = ["twilio-literal-token-current-5f1c", "twilio-literal-token-next-9a2e"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'org.db'}"
        upgrade(url)
        eng = make_engine(url)
        yield eng
        eng.dispose()
        return
    name = f"leadrelay_org_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG_ADMIN}: {exc}")
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        upgrade(url)
        eng = make_engine(url, pool_size=1)
        yield eng
        eng.dispose()
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def demo() -> dict[str, Any]:
    """The demo org file; its Twilio token variable is set as `leadrelay dev` sets it."""
    os.environ.setdefault("LEADRELAY_DEMO_TWILIO_TOKEN", "demo-twilio-token")
    with DEMO_ORG.open() as f:
        return copy.deepcopy(yaml.safe_load(f))


def apply(engine: Engine, org: dict[str, Any], keys: Keyring = KEYS) -> ApplyReport:
    """One unit of work, as the command runs it: apply, then the caller commits."""
    with Session(engine) as session:
        report = apply_org(session, parse_org(org), keys)
        session.commit()
    return report


def with_literal_tokens(tokens: list[str] = TWILIO_TOKENS) -> dict[str, Any]:
    org = demo()
    org["sms"] = {"provider": "twilio", "account_sid": "ACdemo", "auth_tokens": list(tokens)}
    return org


def stored_tokens(engine: Engine) -> list[str]:
    with Session(engine) as s:
        return list(s.execute(select(Account.sms_auth_tokens_encrypted).where(Account.slug == "demo")).scalar_one())


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, every column: equal snapshots mean nothing was written."""
    with engine.connect() as conn:
        return {
            table.name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
            for table in Base.metadata.sorted_tables
        }


def writes_during(engine: Engine, action: Any) -> list[str]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return statements


def slugs(session: Session, stmt: Any) -> set[tuple[str, ...]]:
    return {tuple(row) for row in session.execute(stmt)}


# --- idempotence ------------------------------------------------------------------------------------


def test_applying_the_same_file_twice_changes_nothing_the_second_time(engine: Engine) -> None:
    reports: list[ApplyReport] = []
    assert writes_during(engine, lambda: reports.append(apply(engine, demo())))
    first = reports.pop()
    assert first.changed
    assert first.created["entity"] == 7
    assert first.created["user"] == 5  # four agents and olivia
    before = snapshot(engine)

    writes = writes_during(engine, lambda: reports.append(apply(engine, demo())))

    second = reports.pop()
    assert not second.changed
    assert writes == []
    assert snapshot(engine) == before
    assert second.unchanged["entity"] == 7
    assert second.unchanged["routing_rule"] == 4


def test_the_demo_file_builds_the_organisation_it_describes(engine: Engine) -> None:
    apply(engine, demo())
    with Session(engine) as s:
        account = s.execute(select(Account).where(Account.slug == "demo")).scalar_one()
        assert (account.name, account.duplication, account.sms_provider, account.sms_auth_token_envs) == (
            "Demo Realty",
            True,
            "twilio",
            ["LEADRELAY_DEMO_TWILIO_TOKEN"],  # the variable's name only: its token is never stored
        )
        agent, group = Entity.__table__.alias("agent"), Entity.__table__.alias("grp")
        memberships = slugs(
            s,
            select(agent.c.slug, group.c.slug)
            .join(Membership, Membership.agent_id == agent.c.id)
            .join(group, group.c.id == Membership.group_id),
        )
        assert memberships == {
            ("john", "demo-co"),
            ("john", "downtown"),
            ("john", "sunrise"),
            ("jill", "demo-co"),
            ("jill", "downtown"),
            ("tara", "demo-co"),
            ("tara", "sunrise"),
            ("bob", "demo-co"),
            ("bob", "downtown"),
        }
        admins = slugs(
            s,
            select(User.slug, Entity.slug)
            .join(AdminRole, AdminRole.user_id == User.id)
            .join(Entity, Entity.id == AdminRole.entity_id),
        )
        assert admins == {("olivia", "demo-co"), ("tara", "sunrise")}
        downtown = s.execute(select(Entity).where(Entity.slug == "downtown")).scalar_one()
        company = s.execute(select(Entity).where(Entity.slug == "demo-co")).scalar_one()
        assert downtown.parent_id == company.id
        john_user = s.execute(select(User).where(User.slug == "john")).scalar_one()
        assert (john_user.name, john_user.email) == ("John Smith", "john@example.com")
        assert john_user.agent_id == s.execute(select(Entity.id).where(Entity.slug == "john")).scalar_one()
        assert slugs(s, select(SiteDomain.host, Entity.slug).join(Entity, Entity.id == SiteDomain.entity_id)) == {
            ("kvcore-demo.com", "demo-co"),
            ("downtown.kvcore-demo.com", "downtown"),
            ("sunriseteam.com", "sunrise"),
            ("john.kvcore-demo.com", "john"),
        }
        rules = (
            s.execute(select(RoutingRule).where(RoutingRule.entity_id == company.id).order_by(RoutingRule.position))
            .scalars()
            .all()
        )
        assert [(r.name, r.conditions, r.all_connected, r.strategy) for r in rules] == [
            ("Luxury", {"price_min": 1_000_000}, False, "round_robin"),
            ("Default", {}, True, "round_robin"),
        ]
        members = slugs(
            s,
            select(Entity.slug, RoutingRuleMember.position, RoutingRuleMember.weight)
            .join(Entity, Entity.id == RoutingRuleMember.agent_id)
            .where(RoutingRuleMember.rule_id == rules[0].id),
        )
        assert members == {("john", 0, 1), ("jill", 1, 1)}


def test_routing_cursors_survive_a_reapply_that_changes_the_rules(engine: Engine) -> None:
    apply(engine, demo())
    with Session(engine) as s:
        company = s.execute(select(Entity).where(Entity.slug == "demo-co")).scalar_one()
        luxury = s.execute(
            select(RoutingRule).where(RoutingRule.entity_id == company.id, RoutingRule.position == 0)
        ).scalar_one()
        luxury.cursor, company.default_cursor = 7, 3
        luxury_id = luxury.id
        s.commit()

    org = demo()
    org["routing"][0]["rules"][0] |= {
        "name": "Luxury homes",
        "agents": ["john", "jill", "bob"],
        "strategy": "weighted",
        "weights": {"bob": 2},
    }
    del org["routing"][0]["rules"][1]  # the company's Default rule goes
    del org["routing"][1]  # downtown's only rule goes
    report = apply(engine, org)

    assert report.updated["routing_rule"] == 1
    assert report.deleted["routing_rule"] == 2
    with Session(engine) as s:
        company = s.execute(select(Entity).where(Entity.slug == "demo-co")).scalar_one()
        rules = s.execute(select(RoutingRule).where(RoutingRule.entity_id == company.id)).scalars().all()
        assert [(r.id, r.name, r.cursor, r.strategy) for r in rules] == [(luxury_id, "Luxury homes", 7, "weighted")]
        assert company.default_cursor == 3
        weights = slugs(
            s,
            select(Entity.slug, RoutingRuleMember.weight)
            .join(Entity, Entity.id == RoutingRuleMember.agent_id)
            .where(RoutingRuleMember.rule_id == luxury_id),
        )
        assert weights == {("john", 1), ("jill", 1), ("bob", 2)}
        downtown = s.execute(select(Entity.id).where(Entity.slug == "downtown")).scalar_one()
        assert (
            s.execute(
                select(func.count()).select_from(RoutingRule).where(RoutingRule.entity_id == downtown)
            ).scalar_one()
            == 0
        )


def test_rules_beyond_the_files_count_are_deleted_with_their_members(engine: Engine) -> None:
    org = demo()
    org["routing"][0]["rules"].append(
        {"name": "Bob first", "agents": "connected", "strategy": "weighted", "weights": {"bob": 3}}
    )
    apply(engine, org)
    with Session(engine) as s:
        extra = s.execute(select(RoutingRule).where(RoutingRule.name == "Bob first")).scalar_one()
        assert extra.all_connected
        assert (
            s.execute(select(RoutingRuleMember.weight).where(RoutingRuleMember.rule_id == extra.id)).scalar_one() == 3
        )

    report = apply(engine, demo())
    assert (report.deleted["routing_rule"], report.deleted["routing_rule_member"]) == (1, 1)
    with Session(engine) as s:
        assert (
            s.execute(
                select(func.count()).select_from(RoutingRuleMember).where(RoutingRuleMember.rule_id == extra.id)
            ).scalar_one()
            == 0
        )
        assert s.execute(select(RoutingRule).where(RoutingRule.name == "Bob first")).scalar_one_or_none() is None


# --- credentials ------------------------------------------------------------------------------------


def test_a_key_removed_from_the_file_is_revoked_and_works_again_when_given_again(engine: Engine) -> None:
    org = demo()
    org["intake_keys"] = ["demo-site-key", "second-key"]
    apply(engine, org)

    org["intake_keys"] = ["demo-site-key"]
    org["api_connections"] = []
    report = apply(engine, org)
    assert report.revoked == {"intake_key": 1, "api_connection": 1}
    with Session(engine) as s:
        second = s.execute(select(IntakeKey).where(IntakeKey.key_hash == hash_secret("second-key"))).scalar_one()
        assert second.revoked_at is not None
        assert (
            s.execute(
                select(IntakeKey.revoked_at).where(IntakeKey.key_hash == hash_secret("demo-site-key"))
            ).scalar_one()
            is None
        )
        assert s.execute(select(ApiConnection.revoked_at)).scalar_one() is not None
        second_id = second.id

    org = demo()
    org["intake_keys"] = ["demo-site-key", "second-key"]
    assert apply(engine, org).updated == {"intake_key": 1, "api_connection": 1}
    with Session(engine) as s:
        again = s.execute(select(IntakeKey).where(IntakeKey.key_hash == hash_secret("second-key"))).scalar_one()
        assert (again.id, again.revoked_at) == (second_id, None)
        assert s.execute(select(ApiConnection.revoked_at)).scalar_one() is None


def test_tokens_and_keys_are_stored_only_as_hashes(engine: Engine) -> None:
    apply(engine, demo())
    for table, rows in snapshot(engine).items():
        for row in rows:
            for value in row:
                assert not any(secret in str(value) for secret in DEMO_SECRETS), f"a plaintext secret in {table}"
    with Session(engine) as s:
        assert s.execute(select(User.token_hash).where(User.slug == "olivia")).scalar_one() == hash_secret(
            "demo-olivia-token"
        )
        assert s.execute(select(User.token_hash).where(User.slug == "bob")).scalar_one() is None
        assert s.execute(select(ApiConnection.key_hash)).scalar_one() == hash_secret("demo-zillow-john-key")
        assert s.execute(select(IntakeKey.key_hash)).scalar_one() == hash_secret("demo-site-key")


def test_literal_sms_auth_tokens_are_stored_encrypted_never_in_clear(engine: Engine) -> None:
    report = apply(engine, with_literal_tokens())
    assert report.created["account"] == 1
    stored = stored_tokens(engine)
    assert [KEYS.decrypt(value) for value in stored] == TWILIO_TOKENS
    with engine.connect() as conn:
        raw = conn.exec_driver_sql("SELECT * FROM accounts").all()
    assert raw
    for token in TWILIO_TOKENS:
        assert token not in repr(raw)  # the columns as the database holds them
    for table, rows in snapshot(engine).items():
        for row in rows:
            assert not any(token in str(value) for token in TWILIO_TOKENS for value in row), table


def test_applying_the_same_literal_auth_tokens_again_writes_nothing_and_new_ones_replace_them(engine: Engine) -> None:
    apply(engine, with_literal_tokens())
    stored = stored_tokens(engine)

    reports: list[ApplyReport] = []
    assert writes_during(engine, lambda: reports.append(apply(engine, with_literal_tokens()))) == []
    assert not reports.pop().changed
    assert stored_tokens(engine) == stored

    rotated = [TWILIO_TOKENS[1], "twilio-literal-token-third-77b0"]
    assert apply(engine, with_literal_tokens(rotated)).updated["account"] == 1
    assert [KEYS.decrypt(value) for value in stored_tokens(engine)] == rotated

    assert apply(engine, demo()).updated["account"] == 1  # auth_tokens_env alone: no literal token is kept
    assert stored_tokens(engine) == []


def test_a_file_with_literal_auth_tokens_is_not_applied_without_a_keyring(engine: Engine) -> None:
    with Session(engine) as s, pytest.raises(ValueError, match="keyring"):
        apply_org(s, parse_org(with_literal_tokens()))


def test_reencrypting_moves_every_token_to_the_newest_key_once(engine: Engine) -> None:
    old, new = generate_key(), generate_key()
    apply(engine, with_literal_tokens(), Keyring([old]))
    both = Keyring([new, old])
    with Session(engine) as s:
        report = reencrypt_sms_tokens(s, both)
        s.commit()
    assert (report.reencrypted, report.current, report.unreadable) == (2, 0, [])
    assert [Keyring([new]).decrypt(value) for value in stored_tokens(engine)] == TWILIO_TOKENS
    with pytest.raises(UndecryptableSecret):
        Keyring([old]).decrypt(stored_tokens(engine)[0])

    with Session(engine) as s:
        again = reencrypt_sms_tokens(s, both)
        s.commit()
    assert (again.reencrypted, again.current, again.unreadable) == (0, 2, [])
    # Applying the file with the new key only finds the same tokens: nothing to write.
    assert not apply(engine, with_literal_tokens(), Keyring([new])).changed

    with Session(engine) as s:
        lost = reencrypt_sms_tokens(s, Keyring([generate_key()]))
    assert (lost.reencrypted, lost.unreadable) == (0, ["demo"])


def test_a_token_can_move_from_one_user_to_another(engine: Engine) -> None:
    apply(engine, demo())
    org = demo()
    tokens = {u["id"]: u for u in org["users"]}
    tokens["john"]["token"], tokens["jill"]["token"] = "demo-jill-token", "demo-john-token"
    assert apply(engine, org).updated["user"] == 2
    with Session(engine) as s:
        assert s.execute(select(User.token_hash).where(User.slug == "john")).scalar_one() == hash_secret(
            "demo-jill-token"
        )


def test_a_token_from_the_environment_is_stored_hashed(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLIVIA_TOKEN", "olivia-from-env")
    org = demo()
    org["users"][0] = {k: v for k, v in org["users"][0].items() if k != "token"} | {"token_env": "OLIVIA_TOKEN"}
    apply(engine, org)
    with Session(engine) as s:
        assert s.execute(select(User.token_hash).where(User.slug == "olivia")).scalar_one() == hash_secret(
            "olivia-from-env"
        )


# --- refusals ---------------------------------------------------------------------------------------


def test_duplication_cannot_change_once_the_account_has_leads(engine: Engine) -> None:
    org = demo()
    org["duplication"] = False
    apply(engine, org)  # no leads yet: D1 and D3 can still be chosen
    with Session(engine) as s:
        account = s.execute(select(Account).where(Account.slug == "demo")).scalar_one()
        assert account.duplication is False
        company = s.execute(select(Entity.id).where(Entity.slug == "demo-co")).scalar_one()
        s.add(Lead(account_id=account.id, owner_entity_id=company, source_kind="site", email="ann@example.com"))
        s.commit()

    with pytest.raises(OrgFileError) as caught:
        apply(engine, demo())
    assert caught.value.errors == ["duplication: cannot change once the account has leads (unique keys depend on it)"]


def test_a_domain_of_another_account_is_refused_and_nothing_is_written(engine: Engine) -> None:
    apply(engine, demo())
    before = snapshot(engine)
    other = {
        "account": "other",
        "name": "Other Realty",
        "intake_keys": ["other-key"],
        "entities": [
            {"id": "other-co", "kind": "company", "name": "Other Realty", "domains": ["other.example.com"]},
            {
                "id": "uptown",
                "kind": "office",
                "parent": "other-co",
                "name": "Uptown",
                "domains": ["uptown.example.com", "downtown.kvcore-demo.com"],
            },
        ],
    }
    with Session(engine) as s:
        with pytest.raises(OrgFileError) as caught:
            apply_org(s, parse_org(other))
        assert not s.new
        assert not s.dirty
        assert s.execute(select(Account).where(Account.slug == "other")).scalar_one_or_none() is None
    assert caught.value.errors == [
        "entities[1].domains[1]: domain 'downtown.kvcore-demo.com' belongs to another account"
    ]
    assert snapshot(engine) == before


def test_keys_and_tokens_of_another_account_are_refused(engine: Engine) -> None:
    apply(engine, demo())
    other = {
        "account": "other",
        "name": "Other Realty",
        "intake_keys": ["demo-site-key"],
        "entities": [{"id": "ann", "kind": "agent", "name": "Ann Agent"}],
        "users": [{"id": "ann", "token": "demo-john-token"}],
        "api_connections": [{"id": "z", "provider": "zillow", "entity": "ann", "key": "demo-zillow-john-key"}],
    }
    with pytest.raises(OrgFileError) as caught:
        apply(engine, other)
    assert caught.value.errors == [
        "intake_keys[0]: key belongs to another account",
        "api_connections[0].key: key belongs to another account",
        "users[0].token: token belongs to another account",
    ]


def test_an_entity_cannot_change_kind(engine: Engine) -> None:
    apply(engine, demo())
    org = demo()
    org["entities"][2]["kind"] = "office"  # sunrise, a team
    org["entities"][2].pop("admins")
    org["entities"][3]["teams"] = []
    org["entities"][5]["teams"] = []
    with pytest.raises(OrgFileError) as caught:
        apply(engine, org)
    assert caught.value.errors == [
        "entities[2].kind: 'sunrise' is a team in the database; an entity's kind cannot change"
    ]


# --- what the file leaves out -------------------------------------------------------------------------


def test_an_entity_left_out_of_the_file_is_kept_and_reported_and_its_user_loses_access(engine: Engine) -> None:
    apply(engine, demo())
    org = demo()
    org["entities"] = [e for e in org["entities"] if e["id"] != "bob"]
    report = apply(engine, org)

    assert report.not_in_file == ["bob"]
    assert report.deactivated_users == ["bob"]
    with Session(engine) as s:
        bob = s.execute(select(Entity).where(Entity.slug == "bob")).scalar_one()
        assert bob.active  # the entity row is left as it was
        assert s.execute(select(User.active).where(User.slug == "bob")).scalar_one() is False
        assert (
            s.execute(select(func.count()).select_from(Membership).where(Membership.agent_id == bob.id)).scalar_one()
            == 0
        )
    assert not apply(engine, org).changed


# --- published demo credentials in production ---------------------------------------------------------


def org_apply_in_production(org: dict[str, Any], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``leadrelay org apply`` as an operator runs it, with production settings on a SQLite file."""
    path = tmp_path / "org.yaml"
    path.write_text(yaml.safe_dump(org))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEADRELAY_")}
    clean |= {
        "PYTHONPATH": str(Path(__file__).parents[2]),
        "COLUMNS": "200",
        "LEADRELAY_ENV": "production",
        "LEADRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'production.db'}",
        "LEADRELAY_BROKER_URL": "redis://127.0.0.1:6379/15",
        "LEADRELAY_SECRET_KEY": generate_key(),
        "LEADRELAY_METRICS_TOKEN": "metrics-t0ken",
        "LEADRELAY_DATA_DIR": str(tmp_path / "data"),
        **env,
    }
    upgrade(clean["LEADRELAY_DATABASE_URL"])
    return subprocess.run(
        [sys.executable, "-m", "leadrelay", "org", "apply", str(path)],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def accounts_in(tmp_path: Path) -> list[str]:
    engine = make_engine(f"sqlite:///{tmp_path / 'production.db'}")
    try:
        with Session(engine) as s:
            return list(s.execute(select(Account.slug)).scalars())
    finally:
        engine.dispose()


def test_production_refuses_the_demo_org_naming_every_published_credential(tmp_path: Path) -> None:
    result = org_apply_in_production(demo(), tmp_path, LEADRELAY_DEMO_TWILIO_TOKEN="demo-twilio-token")
    assert result.returncode == 1, result.stdout + result.stderr
    refused = [line.split(":")[0].strip() for line in result.stdout.splitlines() if "published demo credential" in line]
    assert refused == [
        "intake_keys[0]",
        "sms.auth_tokens_env[0]",
        "users[0].token",
        "users[1].token",
        "users[2].token",
        "users[3].token",
        "api_connections[0].key",
    ]
    assert accounts_in(tmp_path) == []


def test_production_refuses_a_file_of_its_own_that_reuses_one_demo_credential(tmp_path: Path) -> None:
    org = demo()
    org["account"] = "acme"
    org["intake_keys"] = ["acme-site-key-6c1d"]
    org["sms"] = {"provider": "twilio", "account_sid": "ACacme", "auth_tokens": ["acme-twilio-3b9e"]}
    org["users"] = [{"id": "john", "token_env": "ACME_JOHN_TOKEN"}]
    org["api_connections"] = []
    reused = org_apply_in_production(org, tmp_path, ACME_JOHN_TOKEN="demo-john-token")
    assert reused.returncode == 1, reused.stdout + reused.stderr
    assert "users[0].token_env: a published demo credential" in reused.stdout
    assert "acme-twilio" not in reused.stdout
    assert "demo-john-token" not in reused.stdout
    assert accounts_in(tmp_path) == []

    own = org_apply_in_production(org, tmp_path, ACME_JOHN_TOKEN="acme-john-token-8d2f")
    assert own.returncode == 0, own.stdout + own.stderr
    assert accounts_in(tmp_path) == ["acme"]
