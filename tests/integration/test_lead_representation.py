"""What a lead shows, through the real intake pipeline: the CSV export does not hand a spreadsheet
formulas typed by visitors."""

from __future__ import annotations

import csv
import io
import random
import uuid

import httpx
import pytest

from tests.support.client import Brokerage
from tests.support.leads import make_lead

pytestmark = pytest.mark.integration


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
