"""The bodies leadrelay posts are what the OpenAPI document's ``webhooks`` section says they are: the events
no lead carries, built as the workers build them, and the check every webhook test's receiver applies."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from rules.webhooks import body, import_event, intake_event
from tests.support.receiver import documented
from workers.imports import ImportSummary, counts_of

AT = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def _posted(event_type: str, data: dict[str, object]) -> dict[str, object]:
    """The body as it goes on the wire and a receiver parses it."""
    return dict(json.loads(json.dumps(body(event_type, AT, data, None))))


def test_import_finished_carries_the_counts_the_document_lists() -> None:
    summary = ImportSummary(uuid.uuid4(), "done", rows=3, created=2, existing=0, duplicates=0, rejected=1)
    event = import_event(import_id=summary.import_id, status="done", counts=counts_of(summary), error=None, at=AT)
    assert documented(_posted(event.type, event.data))["data"]["created"] == 2


@pytest.mark.parametrize("event_type", ["intake.rejected", "intake.dead"])
def test_an_intake_event_is_what_the_document_says(event_type: str) -> None:
    event = intake_event(event_type, intake_id=uuid.uuid4(), source="registration", reason="O7: no owner", at=AT)
    assert documented(_posted(event.type, event.data))["data"]["rule"] == "O7"


def test_a_body_missing_a_documented_field_is_refused_naming_it() -> None:
    summary = ImportSummary(uuid.uuid4(), "done", rows=3, created=2)
    counts = {k: v for k, v in counts_of(summary).items() if k != "rows"}
    event = import_event(import_id=summary.import_id, status="done", counts=counts, error=None, at=AT)
    with pytest.raises(AssertionError, match="rows"):
        documented(_posted(event.type, event.data))


def test_an_event_type_the_document_does_not_list_is_refused() -> None:
    with pytest.raises(AssertionError, match="not an event type"):
        documented({"type": "lead.teleported", "timestamp": AT.isoformat(), "data": {}})
