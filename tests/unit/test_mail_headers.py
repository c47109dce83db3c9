"""A mail's header lines come from what a lead sent (its name in the subject): they stay one line whatever
it holds, and a mail that no header can hold fails at once instead of blocking every later flush."""

from __future__ import annotations

import datetime as dt
import uuid

from models.tables import Outbox
from workers.notifications import Mailer, header_text, mail_message, retry_schedule, try_mail


def row(*, to: str = "john@co.test", subject: str = "New lead assigned to you: Ann Lee") -> Outbox:
    return Outbox(
        id=uuid.uuid4(),
        account_id=1,
        kind="email",
        dedupe_key=f"test:{uuid.uuid4()}",
        to_address=to,
        subject=subject,
        body="Hello",
        status="pending",
        attempts=0,
        created_at=dt.datetime.now(dt.UTC),
    )


def test_control_and_line_breaking_characters_in_a_subject_become_single_spaces() -> None:
    assert header_text("Ann\r\nBcc: spy@example.com") == "Ann Bcc: spy@example.com"
    assert header_text("Ann\x0c\x1b[31mLee\u2028\x85 Jr\t") == "Ann [31mLee Jr"
    assert header_text("Zoë  O'Brien") == "Zoë O'Brien"


def test_a_lead_name_with_a_line_break_writes_no_header_of_its_own() -> None:
    message = mail_message(row(subject="New lead assigned to you: Ann\r\nBcc: spy@example.com"), "lr <lr@localhost>")
    assert message["Subject"] == "New lead assigned to you: Ann Bcc: spy@example.com"
    assert message["Bcc"] is None
    assert "\nBcc:" not in message.as_string()


def test_a_mail_no_header_can_hold_fails_on_its_first_try_and_asks_for_no_retry() -> None:
    bad = row(to="john@co.test\r\nBcc: spy@example.com")
    with Mailer(None) as mailer:
        tried = try_mail(mailer, bad, "lr <lr@localhost>", retry_schedule())
    assert tried.reachable, "the server is fine: the next mail is sent"
    assert (tried.status, tried.attempts, tried.retry_in) == ("failed", 1, None)
    assert tried.error is not None
    assert "ValueError" in tried.error
