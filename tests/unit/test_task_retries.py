"""The retry ceiling of each task (``workers.tasks.RetryingTask``): LEADRELAY_TASK_MAX_RETRIES lowers the
intake's and the outbound text's own retries only; imports, bulk jobs and notification mail keep theirs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from leadrelay.settings import get_settings
from workers.tasks import process_intake, run_import, run_job, send_notification, send_text


@pytest.fixture
def max_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def set_to(value: int) -> None:
        monkeypatch.setenv("LEADRELAY_TASK_MAX_RETRIES", str(value))
        get_settings.cache_clear()

    yield set_to
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("task", "setting", "ceiling"),
    [
        (process_intake, 2, 2),
        (process_intake, 9, 5),
        (send_text, 2, 2),
        (send_text, 9, 5),
        (run_import, 0, 3),
        (run_job, 0, 3),
        (send_notification, 2, 8),
    ],
)
def test_the_retry_setting_lowers_the_ceiling_of_intakes_and_texts_only(
    max_retries: Any, task: Any, setting: int, ceiling: int
) -> None:
    max_retries(setting)
    assert task.ceiling == ceiling
