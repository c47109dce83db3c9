"""A schemathesis run over the OpenAPI schema of every intake endpoint, against the real API
(uvicorn, PostgreSQL, Redis and two Celery workers), loaded from the live server's ``/openapi.json``.

What the HTTP API promises (docs/api.md): errors are ``application/problem+json`` (``status``, ``title``,
``detail``, and ``errors`` listing each bad field); a missing or unknown credential is 401; a malformed
body is 422; and no 5xx (the only one it documents, an intake's 503 when it cannot store the request,
needs a database that is down).

schemathesis's own pytest loader for a schema known only at run time (``schemathesis.pytest.from_fixture``)
reads ``Function._nodeid``, which pytest 9.2 no longer has; so each operation is a plain parametrized test
that loads the live schema and runs the operation's schemathesis strategy under hypothesis itself."""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import itertools
import json
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, GenerationMode, Response
from sqlalchemy import select
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from intake.api import create_app
from leadrelay.settings import get_settings
from models.tables import Import, ImportStatus, Intake, IntakeStatus
from models.uow import UnitOfWork
from tests.integration.conftest import apply
from tests.integration.test_pipeline import count_intakes
from tests.support.client import Brokerage
from tests.support.leads import make_lead
from tests.support.orgs import brokerage
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration

# Every operation of the API: the live schema must list exactly these.
INTAKE_OPERATIONS = [
    ("POST", "/v1/intake/registrations"),
    ("POST", "/v1/intake/providers/{format}"),
    ("POST", "/v1/intake/activity"),
    ("GET", "/v1/intake/registrations/candidates"),
    ("GET", "/v1/intake/{intake_id}"),
    ("POST", "/v1/events"),
    ("POST", "/v1/imports"),
    ("GET", "/v1/imports/{import_id}"),
    ("POST", "/v1/intake/sms/twilio"),
    ("POST", "/v1/intake/sms/twilio/status"),
    ("POST", "/v1/intake/replay"),
]
# Working the leads: every operation a user token reaches, as the company admin.
WORK_OPERATIONS = [
    ("PATCH", "/v1/leads/{lead_id}"),
    ("POST", "/v1/leads/{lead_id}/assign"),
    ("POST", "/v1/leads/{lead_id}/shares"),
    ("DELETE", "/v1/leads/{lead_id}/shares/{user_id}"),
    ("POST", "/v1/leads/{lead_id}/transfer"),
    ("POST", "/v1/leads/merge/preview"),
    ("POST", "/v1/leads/merge"),
    ("POST", "/v1/leads/{lead_id}/archive"),
    ("DELETE", "/v1/leads/{lead_id}"),
    ("POST", "/v1/leads/{lead_id}/unsubscribe"),
    ("GET", "/v1/leads/{lead_id}/campaigns"),
    ("POST", "/v1/leads/{lead_id}/campaigns"),
    ("DELETE", "/v1/leads/{lead_id}/campaigns/{name}"),
    ("POST", "/v1/leads/bulk"),
    ("GET", "/v1/jobs/{job_id}"),
    ("GET", "/v1/export.csv"),
    ("POST", "/v1/teams/{team_id}/members/{agent_id}/leave"),
]
READ_OPERATIONS = [
    ("GET", "/v1/leads"),
    ("GET", "/v1/leads/{lead_id}"),
    ("GET", "/v1/leads/{lead_id}/timeline"),
    ("POST", "/v1/leads/{lead_id}/messages"),
    ("POST", "/v1/routing/simulate"),
    ("GET", "/v1/webhooks"),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"),
    ("POST", "/v1/webhooks/{webhook_id}/replay"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]
ALL_OPERATIONS = INTAKE_OPERATIONS + WORK_OPERATIONS + READ_OPERATIONS
OPERATIONS = INTAKE_OPERATIONS  # the intake endpoints the 401 test covers below
IDS = [f"{method} {path}" for method, path in OPERATIONS]
# Twilio's webhooks carry no credential but a signature of the request (X-Twilio-Signature): they are
# fuzzed signed (``sign``), and a missing or wrong signature is a 403 (tests/integration/test_sms_inbound.py).
SIGNED = {"/v1/intake/sms/twilio", "/v1/intake/sms/twilio/status"}
CREDENTIALED = [(method, path) for method, path in OPERATIONS if path not in SIGNED]
INTAKE_PREFIXES = ("/v1/intake", "/v1/events", "/v1/imports")

# Bounded and reproducible: the same cases on every run, no example database written anywhere.
FUZZ = settings(
    max_examples=30,  # per operation: 39 operations, and CI has ten minutes for everything
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
NO_CREDENTIAL = settings(FUZZ, max_examples=12)

# Answers of the run, by operation and status: the figures behind the "reaches the handlers" check.
STATUSES: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)


@schemathesis.check
def refusal_is_problem_json(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """What the API promises: every error is ``application/problem+json`` with ``status``, ``title`` and
    ``detail`` (and ``errors``, when given, a list of ``{field, message}``)."""
    STATUSES[case.operation.label][response.status_code] += 1
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.split(";")[0].strip() == "application/problem+json", (
        f"{response.status_code} answered {content_type!r}, not application/problem+json: {response.content[:300]!r}"
    )
    body = json.loads(response.content)
    assert isinstance(body, dict), f"a problem is an object, got {body!r}"
    missing = {"status", "title", "detail"} - body.keys()
    assert not missing, f"the problem lacks {sorted(missing)}: {body!r}"
    assert body["status"] == response.status_code, f"problem status {body['status']} on a {response.status_code}"
    assert isinstance(body["title"], str), body
    assert body["title"], body
    assert isinstance(body["detail"], str), body
    assert body["detail"], body
    if "errors" in body:
        assert isinstance(body["errors"], list), body
        assert all(isinstance(e, dict) and {"field", "message"} <= e.keys() for e in body["errors"]), body
    return None


# Every check schemathesis has (the stateful ones, use_after_free and ensure_resource_availability, look at
# the cases a run has sent; unsupported_method and missing_required_header at its coverage phase, which
# ``test_every_path_answers_an_undocumented_method_405_with_its_allow`` does for every path), and ours.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
    schemathesis.checks.positive_data_acceptance,
    schemathesis.checks.missing_required_header,
    schemathesis.checks.unsupported_method,
    schemathesis.checks.allow_header_conformance,
    schemathesis.checks.use_after_free,
    schemathesis.checks.ensure_resource_availability,
    schemathesis.checks.ignored_auth,
    schemathesis.checks.object_level_authorization,
    refusal_is_problem_json,
]
# Every check schemathesis registers is run (ours registered itself too).
assert {c.__name__ for c in schemathesis.checks.CHECKS.get_all()} == {c.__name__ for c in CHECKS}

ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis's default for valid data
# Where a schema-valid request is still refused with the documented 422, because the rule is semantic and
# no schema can say it: positive_data_acceptance takes that 422 too, for that operation only.
PHONE = "a phone in any format must still be a possible number (D9): no pattern says which are"
ENTITY = "an entity, agent or user id that is not in the account is a 422 by the contract (SH5)"
SEMANTIC_422: dict[tuple[str, str], str] = {
    ("POST", "/v1/intake/registrations"): PHONE,
    ("POST", "/v1/intake/providers/{format}"): PHONE,
    ("POST", "/v1/events"): PHONE,
    ("POST", "/v1/routing/simulate"): PHONE,
    ("PATCH", "/v1/leads/{lead_id}"): PHONE,
    ("GET", "/v1/leads"): f"{PHONE}; {ENTITY} (owner, assigned_agent); a cursor is one this API gave",
    ("GET", "/v1/leads/{lead_id}/timeline"): "a cursor is one this API gave, not any string",
    ("GET", "/v1/intake/registrations/candidates"): "a page whose host no entity of the account claims (O9)",
    ("POST", "/v1/imports"): f"the CSV's header needs an email or a phone column; {ENTITY} (owner)",
    ("POST", "/v1/leads/{lead_id}/messages"): "a lead with no phone cannot be texted",
    ("POST", "/v1/leads/{lead_id}/assign"): ENTITY,
    ("POST", "/v1/leads/{lead_id}/shares"): ENTITY,
    ("POST", "/v1/leads/{lead_id}/transfer"): f"{ENTITY}; the lead's owner is no new owner (T1)",
    ("POST", "/v1/leads/merge/preview"): f"{ENTITY} (assigned_agent_id); a lead merged with itself",
    ("POST", "/v1/leads/merge"): f"{ENTITY} (assigned_agent_id); a lead merged with itself",
    ("POST", "/v1/leads/bulk"): f"{ENTITY}; each action's own parameter (share: user_id, transfer: to)",
    ("POST", "/v1/teams/{team_id}/members/{agent_id}/leave"): ENTITY,
}


def fuzz_config() -> schemathesis.Config:
    """An explicit config: no ``schemathesis.toml`` is looked up, the seed is fixed, and each operation
    with a semantic rule accepts its 422 as the answer to valid data (the reason is in ``SEMANTIC_422``)."""
    operations = [
        {
            "include-path": path,
            "include-method": method,
            "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}},
        }
        for method, path in SEMANTIC_422
    ]
    # No NUL character in generated text: PostgreSQL's text cannot hold one, so the API refuses it with a 422
    # naming the field in every string of every operation (test_text_that_cannot_be_stored_is_a_422_...).
    return schemathesis.Config.from_dict({"seed": 3, "generation": {"allow-x00": False}, "operations": operations})


@pytest.fixture(scope="module")
def live_schema(api: str) -> Any:
    """The OpenAPI document the running server serves."""
    return schemathesis.openapi.from_url(f"{api}/openapi.json", config=fuzz_config())


SMART_NUMBER = "+15559871234"  # the fuzzed account's company number (smart numbers are unique in a run)
TWILIO_TOKEN_ENV = "LEADRELAY_TEST_TWILIO_TOKEN"  # set for every process by tests/integration/conftest.py
_numbers = itertools.count(1)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"leadrelay-fuzz-webhook-secret-01").decode()


class Fuzzed(Brokerage):
    """An account the fuzzing posts to, with what its operations name: an intake, an import, leads of every
    owner kind (most of them the company admin's to manage), a bulk job, a webhook endpoint, a smart number."""

    intake_id: str
    import_id: str
    leads: list[str]
    job_id: str
    smart_number: str


def fuzzed_account(api: str, smart_number: str) -> Fuzzed:
    org = brokerage()
    org["entities"][0]["smart_numbers"] = [smart_number]
    org["sms"] = {"provider": "twilio", "account_sid": "ACfuzz", "auth_tokens_env": [TWILIO_TOKEN_ENV]}
    # A receiver that is never called: only the intake.dead event goes there, and the workers keep none dead.
    org["webhooks"] = [
        {"id": "crm", "url": "http://127.0.0.1:9/hook", "events": ["intake.dead"], "secrets": [WEBHOOK_SECRET]}
    ]
    b = Fuzzed(api, apply(org))
    b.smart_number = smart_number
    r = b.register("co", "seed@example.com")
    assert r.status_code == 202, r.text
    b.intake_id = r.json()["intake_id"]
    account = b.org["account"]
    shapes = [
        ("co", "jill", "downtown"),
        ("downtown", "bob", "downtown"),
        ("co", "bob", "co"),
        ("sunrise", "john", "sunrise"),
        ("john", "john", None),
    ]
    b.leads = [
        make_lead(
            account,
            owner=o,
            assignee=a,
            routed_via=v,
            campaigns=["Drip"],
            shares={"bob": "view"},
            phone=f"+1555010{n:04d}",
        )
        for n, (o, a, v) in enumerate(shapes * 5)
    ]
    with b.user("olivia") as olivia:
        r = olivia.post(
            "/v1/imports",
            files={"file": ("seed.csv", io.BytesIO(b"email,first_name\nseed-import@example.com,Sid\n"), "text/csv")},
            data={"owner": "co"},
        )
        assert r.status_code == 202, r.text
        b.import_id = r.json()["import_id"]
        r = olivia.post("/v1/leads/bulk", json={"action": "archive", "lead_ids": b.leads[:2]})
        assert r.status_code == 202, r.text
        b.job_id = r.json()["job_id"]
    return b


@pytest.fixture(scope="module")
def fuzzed(api: str) -> Iterator[Fuzzed]:
    b = fuzzed_account(api, SMART_NUMBER)
    yield b
    b.site.close()


@pytest.fixture
def own_account(api: str) -> Iterator[Fuzzed]:
    """An account of the test's own (each operation is fuzzed on one), with a smart number no other has."""
    b = fuzzed_account(api, f"+1555987{next(_numbers):04d}")
    yield b
    b.site.close()


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def credentials(path: str, b: Brokerage) -> dict[str, str]:
    """The credential each operation takes (docs/sources.md, docs/working-leads.md)."""
    if path in ("/healthz", "/readyz", "/metrics") or path in SIGNED:
        return {}
    if path.startswith("/v1/intake/providers/"):
        return {"X-Api-Key": f"conn-john-{b.s}"}
    if path == "/v1/events":
        return {"Authorization": basic(f"conn-john-{b.s}")}
    if path.startswith("/v1/teams/"):  # a team admin takes agents off its team
        return {"Authorization": f"Bearer tok-tara-{b.s}"}
    if path.startswith(("/v1/intake/", "/v1/intake")) and path != "/v1/intake/replay":
        return {"Authorization": f"Bearer key-{b.s}"}
    return {"Authorization": f"Bearer tok-olivia-{b.s}"}


class _Fields(dict[str, list[str]]):
    """Form fields as Twilio's ``RequestValidator`` reads them (every value of a repeated field)."""

    def getlist(self, key: str) -> list[str]:
        return self[key]


def sign(case: Case, b: Fuzzed) -> None:
    """Sign the body the case will send (as ``requests`` encodes it) the way Twilio does, with the account's
    token over the public URL, so the fuzzing reaches the handler; a body that cannot be encoded goes unsigned."""
    url = get_settings().public_base_url.rstrip("/") + case.operation.path
    try:
        body = requests.Request("POST", url, data=case.body).prepare().body or ""
    except (TypeError, ValueError):
        return
    fields = _Fields()
    for key, value in urllib.parse.parse_qsl(
        body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body, keep_blank_values=True
    ):
        fields.setdefault(key, []).append(value)
    token = os.environ[TWILIO_TOKEN_ENV]
    case.headers = {
        **(case.headers or {}),
        "X-Twilio-Signature": RequestValidator(token).compute_signature(url, fields),
    }


def aim(case: Case, b: Fuzzed, pick: int) -> None:
    """Point a generated case at this account's real things, so it gets past the 422 and the 404 into the
    handler, the store and the workers: a page on one of its domains (or an unknown one: O9), a provider
    format that matches the media type, an intake or import it has, an owner that exists, a CSV header."""
    hosts = [b.host("co"), b.host("downtown"), b.host("sunrise"), b.host("john"), "unknown-host.example"]
    path = case.operation.path
    host = f"https://{hosts[pick % len(hosts)]}"
    if path in ("/v1/intake/registrations", "/v1/intake/activity", "/v1/routing/simulate") and isinstance(
        case.body, dict
    ):
        if isinstance(case.body.get("page_url"), str):  # the same page, on this account's host
            case.body["page_url"] = re.sub(r"^[^:]+://[^/?#]+", host, case.body["page_url"])
    elif path == "/v1/intake/registrations/candidates" and isinstance(case.query, dict):
        if isinstance(case.query.get("page_url"), str):
            case.query["page_url"] = re.sub(r"^[^:]+://[^/?#]+", host, case.query["page_url"])
    elif path == "/v1/intake/providers/{format}" and case.media_type:
        json_format = ("realtor_com", "zillow")[pick % 2]
        case.path_parameters = {"format": "hotpads" if "form" in case.media_type else json_format}
    elif path == "/v1/intake/{intake_id}":
        case.path_parameters = {"intake_id": b.intake_id}
    elif path == "/v1/imports/{import_id}":
        case.path_parameters = {"import_id": b.import_id}
    elif path in SIGNED and isinstance(case.body, dict):
        # The smart number decides the account: To of an inbound text, From of a status callback.
        case.body["To" if path.endswith("/twilio") else "From"] = (b.smart_number, "+15550000001")[pick % 5 == 4]
    elif path == "/v1/imports" and isinstance(case.body, dict):
        case.body["owner"] = ("co", "co", "co", "downtown", "nobody")[pick % 5]
        case.body.pop("map", None)
        content = case.body.get("file", b"")
        content = content.encode() if isinstance(content, str) else bytes(content or b"")
        case.body["file"] = b"email,first_name,phone\n" + content
    else:
        aim_work(case, b, pick)


SLUGS = ["john", "jill", "bob", "tara", "olivia", "co", "downtown", "sunrise", "nobody"]
AGENTS = ["john", "jill", "bob", "tara", "nobody"]  # mostly the account's agents, one unknown (a 422)
USERS = ["bob", "jill", "tara", "olivia", "nobody"]


def aim_work(case: Case, b: Fuzzed, pick: int) -> None:
    """Name this account's own leads, users, entities, job and webhook, so the cases reach the rules."""
    params = dict(case.path_parameters or {})
    leads = b.leads
    if "lead_id" in params:
        params["lead_id"] = leads[pick % len(leads)]
    if "user_id" in params:  # the fixture shares every lead with bob
        params["user_id"] = ("bob", "bob", "tara")[pick % 3]
    if "agent_id" in params:  # john is on the team
        params["agent_id"] = ("john", "john", "bob")[pick % 3]
    if "team_id" in params:
        params["team_id"] = "sunrise"
    if "job_id" in params:
        params["job_id"] = b.job_id
    if "name" in params:
        params["name"] = "Drip"
    if "webhook_id" in params:
        params["webhook_id"] = "crm"
    case.path_parameters = params
    if isinstance(case.body, dict):
        for name, names in (("user_id", USERS), ("agent_id", AGENTS), ("assigned_agent_id", AGENTS), ("to", SLUGS)):
            if isinstance(case.body.get(name), str):
                case.body[name] = names[pick % len(names)]
        for name, offset in (("primary_id", 0), ("other_id", 1)):
            if name in case.body:
                case.body[name] = leads[(pick + offset) % len(leads)]
        if isinstance(case.body.get("lead_ids"), list):
            case.body["lead_ids"] = leads[pick % len(leads) : pick % len(leads) + 5]


@pytest.mark.parametrize(("method", "path"), ALL_OPERATIONS, ids=[f"{m} {p}" for m, p in ALL_OPERATIONS])
def test_every_operation_with_its_credential(method: str, path: str, live_schema: Any, own_account: Fuzzed) -> None:
    """What the API promises, on an account of the operation's own, with the operation's real credential:
    schema-valid and schema-invalid requests never get a 5xx, every refusal is ``application/problem+json``
    with ``status``, ``title`` and ``detail``, an invalid request is refused (4xx) and a valid one accepted
    (but for the semantic 422s of ``SEMANTIC_422``), and every answer is one /openapi.json documents, in
    its status, content type, headers and body schema. Two in three schema-valid cases are aimed at the
    account's own domains, intakes, imports, leads and people (``aim``): every operation must accept some,
    and the workers must process every intake and import it accepted."""
    b = own_account
    operation = live_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    label = operation.label
    STATUSES.pop(label, None)

    @FUZZ
    @given(case=cases, aimed=st.sampled_from([True, True, False]), pick=st.integers(0, 59))
    def fuzz(case: Case, aimed: bool, pick: int) -> None:
        if aimed and case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE:
            aim(case, b, pick)
        if path in SIGNED:
            sign(case, b)
        # The credential as the caller's own (not generated): ignored_auth then checks that without it, or
        # with a wrong one, the operation refuses.
        case.call_and_validate(headers=credentials(path, b), checks=CHECKS, timeout=30)

    started = time.monotonic()
    fuzz()
    seen = dict(sorted(STATUSES[label].items()))
    print(f"\n{label}: {sum(seen.values())} requests in {time.monotonic() - started:.1f}s, by status {seen}")
    assert any(200 <= status < 300 for status in seen), f"{label}: no case got past the refusals: {seen}"
    # Accepted means kept, and processed: no accepted intake or import ends dead or failed in the workers.
    dead, failed = settled(b)
    assert not dead, f"{label}: intakes the workers could not process: {dead}"
    assert not failed, f"{label}: imports the workers could not run: {failed}"


def settled(b: Brokerage, timeout: float = 60) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """Once the workers are through with the account's intakes and imports: the dead ones and the failed ones."""
    with UnitOfWork() as uow:
        account_id = uow.orgs.account_by_slug(b.org["account"]).id  # type: ignore[union-attr]
    pending_intakes = (IntakeStatus.ACCEPTED, IntakeStatus.PROCESSING)
    pending_imports = (ImportStatus.QUEUED, ImportStatus.RUNNING)

    def idle() -> bool:
        with UnitOfWork() as uow:
            return (
                not uow.session.execute(
                    select(Intake.id)
                    .where(Intake.account_id == account_id, Intake.status.in_(pending_intakes))
                    .limit(1)
                ).first()
                and not uow.session.execute(
                    select(Import.id)
                    .where(Import.account_id == account_id, Import.status.in_(pending_imports))
                    .limit(1)
                ).first()
            )

    wait_for(idle, timeout=timeout, interval=0.2, what="the workers to finish the fuzzed intakes and imports")
    with UnitOfWork() as uow:
        dead = uow.session.execute(
            select(Intake.id, Intake.reason).where(Intake.account_id == account_id, Intake.status == IntakeStatus.DEAD)
        ).all()
        failed = uow.session.execute(
            select(Import.id, Import.error).where(Import.account_id == account_id, Import.status == ImportStatus.FAILED)
        ).all()
    return {str(i): r for i, r in dead}, {str(i): e for i, e in failed}


@pytest.mark.parametrize(("method", "path"), CREDENTIALED, ids=[f"{m} {p}" for m, p in CREDENTIALED])
def test_every_intake_endpoint_refuses_a_missing_or_unknown_credential_with_a_401_problem(
    method: str, path: str, live_schema: Any, fuzzed: Fuzzed
) -> None:
    """What the API promises: a missing or unknown credential is 401, as problem+json with a
    ``WWW-Authenticate`` challenge, whatever the (schema-valid) request; and nothing is stored."""
    operation = live_schema[path][method]
    wrong = st.sampled_from(
        [
            {},
            {"Authorization": "Bearer not-a-key"},
            {"Authorization": "Bearer "},
            {"Authorization": basic("not-a-key")},
            {"Authorization": "Basic %%%not-base64"},
            {"X-Api-Key": "not-a-key"},
            # Another kind of credential of the same account is not this endpoint's credential.
            # (Where a user's token is the credential, another user's is no 401 but a 403: not this case.)
            {}
            if credentials(path, fuzzed).get("Authorization", "").startswith("Bearer tok-")
            else {"Authorization": f"Bearer tok-john-{fuzzed.s}"},
            {"X-Api-Key": ""},
        ]
    )

    @NO_CREDENTIAL
    @given(case=operation.as_strategy(GenerationMode.POSITIVE), headers=wrong)
    def fuzz(case: Case, headers: dict[str, str]) -> None:
        sent = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ("authorization", "x-api-key")}
        case.headers = {**sent, **headers}
        response = case.call(timeout=30)
        case.validate_response(response, checks=CHECKS)
        assert response.status_code == 401, f"{response.status_code}: {response.text[:300]}"
        assert response.headers.get("www-authenticate"), "a 401 carries a challenge"

    before = count_intakes(fuzzed.org["account"])
    fuzz()
    assert count_intakes(fuzzed.org["account"]) == before, "a refused request stored an intake"


# --- The live schema, and plain regression tests for what the fuzzing found ---


def test_the_fuzzed_operations_are_every_operation_and_document_their_problems(api: str) -> None:
    """What the API promises: its OpenAPI document at /openapi.json, and errors as application/problem+json. The
    fuzzing covers every intake operation the live schema lists, and every error the schema documents is a
    ``Problem`` in application/problem+json (not FastAPI's default ``HTTPValidationError`` JSON); a GET of an
    intake or an import documents its 401 and 404."""
    schema = httpx.get(f"{api}/openapi.json", timeout=30).json()
    listed = sorted((method.upper(), path) for path, item in schema["paths"].items() for method in item)
    assert listed == sorted(ALL_OPERATIONS)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")):
                    assert response.get("content") == problem, f"{method.upper()} {path} {code}"
    for path in ("/v1/intake/{intake_id}", "/v1/imports/{import_id}"):
        assert {"401", "404", "422"} <= schema["paths"][path]["get"]["responses"].keys(), path
    assert schema["components"]["schemas"]["Problem"]["required"] == ["type", "status", "title", "detail"]


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers["content-type"]
    body = r.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return dict(body)


def test_a_fub_event_with_a_null_or_blank_price_is_accepted_not_a_500(fuzzed: Fuzzed) -> None:
    """Found by the fuzzing: ``property.price`` null (or blank text, which means no price) made pydantic apply
    the price's bounds to None, a TypeError and a 500. A price is optional: the event is kept (202)."""
    for price in (None, "", " $ "):
        event = {
            "type": "Property Inquiry",
            "person": {"emails": [{"value": "price@example.com"}]},
            "property": {"price": price},
        }
        r = httpx.post(
            f"{fuzzed.base}/v1/events",
            json=event,
            headers={"Authorization": basic(f"conn-john-{fuzzed.s}")},
            timeout=30,
        )
        assert r.status_code == 202, (price, r.text)
    bad = {
        "type": "Property Inquiry",
        "person": {"emails": [{"value": "price@example.com"}]},
        "property": {"price": -1},
    }
    r = httpx.post(
        f"{fuzzed.base}/v1/events", json=bad, headers={"Authorization": basic(f"conn-john-{fuzzed.s}")}, timeout=30
    )
    assert assert_problem(r, 422)["errors"][0]["field"] == "property.price"


def test_an_empty_idempotency_key_is_no_key_not_a_500(fuzzed: Fuzzed) -> None:
    """Found by the fuzzing: an empty ``Idempotency-Key`` header was stored as the key "", so the second such
    request of the account hit the unique index and answered 500. An empty key is no key: each request is its
    own intake, as without the header."""
    for path, body in (
        ("/v1/intake/registrations", {"page_url": f"https://{fuzzed.host('co')}/", "email": "empty-key@example.com"}),
        (
            "/v1/intake/activity",
            {"page_url": f"https://{fuzzed.host('co')}/", "email": "empty-key@example.com", "kind": "page_view"},
        ),
    ):
        first = fuzzed.site.post(path, json=body, headers={"Idempotency-Key": ""})
        second = fuzzed.site.post(path, json=body, headers={"Idempotency-Key": ""})
        assert (first.status_code, second.status_code) == (202, 202), (first.text, second.text)
        assert first.json()["intake_id"] != second.json()["intake_id"]


def test_a_body_that_cannot_be_parsed_is_a_422_problem_naming_the_body(fuzzed: Fuzzed) -> None:
    """Found by the fuzzing: JSON that is not UTF-8 got FastAPI's 400 "There was an error parsing the body",
    a status no operation documents. A malformed body is 422, as problem+json naming ``body``."""
    r = fuzzed.site.post(
        "/v1/intake/registrations", content=b'{"page_url": "\xff\xfe"}', headers={"Content-Type": "application/json"}
    )
    assert assert_problem(r, 422)["errors"] == [
        {"field": "body", "message": "could not be parsed (There was an error parsing the body)"}
    ]


def test_an_unknown_path_or_method_is_a_problem_too(fuzzed: Fuzzed) -> None:
    """Every error is problem+json, the router's own 404 and 405 too (they were FastAPI's
    ``{"detail": ...}`` in application/json); the 405 keeps its ``Allow`` header."""
    assert_problem(fuzzed.site.get("/v1/intake/providers/zillow/extra"), 404)
    r = fuzzed.site.delete("/v1/intake/registrations")
    assert_problem(r, 405)
    assert r.headers["allow"] == "POST"


def _concrete(path: str) -> str:
    """The path with a value for each parameter: a UUID for an id the route reads as one, else a name."""
    return re.sub(r"\{(\w+)\}", lambda m: INTAKE_UUID if m.group(1).endswith("_id") else "drip", path)


INTAKE_UUID = "0b9d3c4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"


def test_every_path_answers_an_undocumented_method_405_with_the_allow_the_document_says(api: str) -> None:
    """No path shadows another, and a 405 says what the document does: each method a path's operations do not
    take (OPTIONS too) is a 405 problem whose ``Allow`` lists exactly the path's documented methods. A fixed
    path beside an id's (``/v1/leads/merge`` beside ``/v1/leads/{lead_id}``) is answered as itself: ``GET
    /v1/leads/merge`` reached the lead's route and answered 422, and ``PUT /v1/leads/{id}`` allowed GET only."""
    document = httpx.get(f"{api}/openapi.json", timeout=30).json()
    with httpx.Client(base_url=api, timeout=30) as client:
        for path, item in document["paths"].items():
            declared = {method.upper() for method in item}
            for method in {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - declared:
                r = client.request(method, _concrete(path))
                assert_problem(r, 405)
                allowed = {m.strip() for m in r.headers["allow"].split(",")}
                assert allowed == declared, f"{method} {path}: Allow {r.headers['allow']}, documented {declared}"
        for shadowed in ("/v1/leads/merge", "/v1/leads/bulk", "/v1/intake/registrations", "/v1/intake/replay"):
            r = client.get(shadowed)
            assert_problem(r, 405)
            assert r.headers["allow"] == "POST", shadowed


def test_an_unexpected_error_is_a_500_problem() -> None:
    """Every error is problem+json, an unexpected one too (it was Starlette's text/plain
    "Internal Server Error"); its detail names nothing of the request."""
    app = create_app()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret detail")

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        # Started and shut down as uvicorn does, so the app closes the connections it opened.
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            return await client.get("/boom")

    body = assert_problem(asyncio.run(get()), 500)
    assert "secret" not in body["detail"]


def test_text_that_cannot_be_stored_is_a_422_naming_the_field_not_a_500(fuzzed: Fuzzed) -> None:
    """Found by the fuzzing: a NUL character (``\\u0000`` in JSON, ``%00`` in a form) in any stored field
    failed the INSERT (PostgreSQL's text and JSONB refuse it) with a 500. A malformed body is 422, naming
    the field; nothing is stored."""
    site = {"page_url": f"https://{fuzzed.host('co')}/", "email": "nul@example.com"}
    connection = {"X-Api-Key": f"conn-john-{fuzzed.s}"}
    before = count_intakes(fuzzed.org["account"])
    refused = {
        "message": fuzzed.site.post("/v1/intake/registrations", json={**site, "message": "a\x00b"}),
        "listing.mls_id": fuzzed.site.post(
            "/v1/intake/activity", json={**site, "kind": "property_view", "listing": {"mls_id": "A\x003"}}
        ),
        "listingId": httpx.post(
            f"{fuzzed.base}/v1/intake/providers/hotpads",
            content="listingId=A%003&email=nul%40example.com",
            headers={**connection, "Content-Type": "application/x-www-form-urlencoded"},
            timeout=30,
        ),
        "contact.first_name": httpx.post(
            f"{fuzzed.base}/v1/intake/providers/zillow",
            json={"lead_id": "nul-1", "contact": {"email": "nul@example.com", "first_name": "\x00"}},
            headers=connection,
            timeout=30,
        ),
        "description": httpx.post(
            f"{fuzzed.base}/v1/events",
            json={"type": "Registration", "person": {"emails": [{"value": "nul@example.com"}]}, "description": "\x00"},
            headers={"Authorization": basic(f"conn-john-{fuzzed.s}")},
            timeout=30,
        ),
        "page_url": fuzzed.site.get(
            "/v1/intake/registrations/candidates",
            params={"email": "nul@example.com", "page_url": f"https://{fuzzed.host('co')}/\x00"},
        ),
    }
    for field, r in refused.items():
        problem = assert_problem(r, 422)
        assert [e["field"] for e in problem["errors"]] == [field], problem
        assert "NUL" in problem["detail"], problem
    assert count_intakes(fuzzed.org["account"]) == before
    with fuzzed.user("olivia") as olivia:
        r = olivia.post("/v1/imports", files={"file": ("a.csv", b"email\nnul@example.com\n")}, data={"owner": "co\x00"})
    assert [e["field"] for e in assert_problem(r, 422)["errors"]] == ["owner"]
