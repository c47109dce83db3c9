"""What a dead intake leaves behind: its log line names the kind of failure, never the values the error
quoted (a database error's parameters and DETAIL, a ValueError's refused text), and its kept reason says
what an operator needs without a database error's values."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from structlog.testing import capture_logs

from models.db import get_engine
from models.tables import Intake
from models.uow import UnitOfWork
from tests.support.chaos import IntakeStore
from workers.errors import error_kind, error_reason
from workers.tasks import process_intake

pytestmark = pytest.mark.integration

CANARY = "Zebediah Quillfeather"


def test_a_database_error_is_described_without_its_parameters_or_detail(pipeline_env: dict[str, str]) -> None:
    with get_engine().connect() as conn, pytest.raises(DBAPIError) as caught:
        conn.execute(text("SELECT CAST(:name AS integer)"), {"name": CANARY})
    assert CANARY in str(caught.value)  # what the old log line wrote
    assert CANARY not in error_kind(caught.value)
    assert CANARY not in error_reason(caught.value)
    assert error_reason(caught.value).startswith("DataError(InvalidTextRepresentation 22P02)")


def test_an_intake_that_dies_logs_no_value_its_error_quoted(acme: Any) -> None:
    [intake_id] = IntakeStore(acme.org).add(1, "dead")
    with UnitOfWork() as uow:
        row = uow.session.get(Intake, uuid.UUID(intake_id))
        assert row is not None
        # A payload this version cannot read; the error quotes the value it refused.
        row.payload = {**row.payload, "occurred_at": CANARY}
        uow.commit()
    with capture_logs() as lines:
        outcome = process_intake.apply(args=[intake_id], retries=process_intake.ceiling).get()
    assert outcome == "dead"
    [dead] = [line for line in lines if line["event"] == "intake.dead"]
    assert dead["error"] == "ValueError"
    assert CANARY not in repr(lines)
    with UnitOfWork() as uow:
        kept = uow.session.get(Intake, uuid.UUID(intake_id))
        assert kept is not None
        assert kept.status == "dead"
        assert kept.reason is not None
        assert kept.reason.startswith("ValueError: ")
