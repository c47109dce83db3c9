"""What a lead shows, through the real intake pipeline: GET /v1/leads/{id} says what the lead asked for
(type, price range, ZIP, its last message, its last activity), and the CSV export does not hand a
spreadsheet formulas typed by visitors."""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import uuid

import httpx
import pytest

from tests.support.client import Brokerage
from tests.support.leads import make_lead

pytestmark = pytest.mark.integration

LEAD_SHAPE = [
    "id",
    "account",
    "email",
    "phone",
    "first_name",
    "last_name",
    "status",
    "in_pond",
    "tags",
    "campaigns",
    "owner",
    "assigned_agent",
    "source",
    "shares",
    "lead_type",
    "price_min",
    "price_max",
    "zip",
    "message",
    "last_activity_at",
    "merged_into",
    "created_at",
]


def test_a_lead_shows_its_type_price_range_zip_last_message_and_last_activity(acme: Brokerage) -> None:
    email = f"asks-{uuid.uuid4().hex[:8]}@example.com"
    first = acme.register_and_wait(
        "co",
        email,
        lead_type="seller",
        price_min=300_000,
        price_max=450_000,
        zip="62704",
        message="Please call after 5pm about selling my house.",
    )
    assert first["status"] == "done", first
    lead = acme.lead(first["lead_id"])
    assert list(lead) == LEAD_SHAPE
    assert (lead["lead_type"], lead["price_min"], lead["price_max"], lead["zip"]) == (
        "seller",
        300_000,
        450_000,
        "62704",
    )
    assert lead["message"] == "Please call after 5pm about selling my house."
    created = dt.datetime.fromisoformat(lead["created_at"])
    assert dt.datetime.fromisoformat(lead["last_activity_at"]) == created

    # The same person signs up again (D4): the lead shows the newer message and the newer activity;
    # a signup without a message keeps the last one it sent.
    later = created + dt.timedelta(minutes=5)
    again = acme.register_and_wait("co", email, message="Actually, after 6pm.", occurred_at=later.isoformat())
    assert again["lead_id"] == first["lead_id"]
    acme.register_and_wait("co", email, occurred_at=(later + dt.timedelta(minutes=1)).isoformat())
    lead = acme.lead(first["lead_id"])
    assert lead["message"] == "Actually, after 6pm."
    assert dt.datetime.fromisoformat(lead["last_activity_at"]) == later + dt.timedelta(minutes=1)
    with acme.user("olivia") as olivia:
        listed = olivia.get("/v1/leads", params={"email": email}).json()["items"]
    assert [(x["id"], x["message"], x["zip"]) for x in listed] == [(first["lead_id"], "Actually, after 6pm.", "62704")]

    # A lead that said nothing of these shows nulls, not missing keys.
    bare = acme.lead(acme.register_and_wait("co", f"bare-{uuid.uuid4().hex[:8]}@example.com")["lead_id"])
    assert [bare[k] for k in ("lead_type", "price_min", "price_max", "zip", "message")] == [None] * 5


def test_the_openapi_document_declares_the_lead_shape(api: str) -> None:
    schema = httpx.get(f"{api}/openapi.json", timeout=30).json()["components"]["schemas"]["LeadOut"]
    assert list(schema["properties"]) == LEAD_SHAPE
    assert set(schema["required"]) == set(LEAD_SHAPE)


def export_rows(client: httpx.Client) -> tuple[list[str], list[dict[str, str]]]:
    r = client.get("/v1/export.csv")
    assert r.status_code == 200, r.text
    reader = csv.DictReader(io.StringIO(r.text))
    rows = list(reader)
    assert reader.fieldnames is not None
    return list(reader.fieldnames), rows


def test_the_export_escapes_cells_a_spreadsheet_would_run_and_keeps_phones(acme: Brokerage) -> None:
    phone = f"+1555{random.randint(2_000_000, 9_999_999)}"
    hyperlink = '=HYPERLINK("http://x","y")'
    intake = acme.register_and_wait(
        "john", f"formula-{uuid.uuid4().hex[:8]}@example.com", first_name=hyperlink, last_name="-2+3", phone=phone
    )
    assert intake["status"] == "done", intake
    tagged = make_lead(acme.org["account"], owner="john", assignee="john", first_name="@cmd", tags=["@SUM(1)", "vip"])
    plain = make_lead(acme.org["account"], owner="john", assignee="john", first_name="Ann", tags=["vip", "@SUM(1)"])
    with acme.user("john") as john:
        columns, rows = export_rows(john)
    by_id = {row["id"]: row for row in rows}
    assert all(len(row) == len(columns) and None not in row for row in rows)  # still one cell per column

    registered = by_id[intake["lead_id"]]
    assert registered["first_name"] == "'" + hyperlink
    assert registered["last_name"] == "'-2+3"
    assert registered["phone"] == phone  # E.164, checked on the way in: left as it is
    assert (by_id[tagged]["first_name"], by_id[tagged]["tags"]) == ("'@cmd", "'@SUM(1) vip")
    assert (by_id[plain]["first_name"], by_id[plain]["tags"]) == ("Ann", "vip @SUM(1)")  # only a leading sign
    for row in rows:
        for column, cell in row.items():
            if column != "phone":
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (column, cell)
