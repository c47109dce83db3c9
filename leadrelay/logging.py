"""One logging setup for the API, the workers and the CLI: structlog, with stdlib records
(Celery, uvicorn) rendered through the same processors, and emails and phones masked."""

from __future__ import annotations

import logging
import re
from typing import Any, TextIO

import structlog

from rules.contact import mask_email, mask_phone

# An email is found from its "@" outwards, never by a pattern that starts at every character: a leading
# ``[\w.+-]+`` retried from each position of a long run without an "@" is quadratic (a 16 KB URL took a
# second of the event loop). ``_AT_DOMAIN`` finds each "@" that has a local-part character before it and a
# dotted domain after it; the local part (at most 64 characters, as in RFC 5321) is then matched on the
# reversed text from just before the "@". Every quantifier is bounded, so the cost is linear in the text.
_AT_DOMAIN = re.compile(r"(?<=[\w.+-])@([\w-]{1,63}(?:\.[\w-]{1,63}){1,16})")
_LOCAL_REVERSED = re.compile(r"[\w.+-]{1,64}")
# E.164 (+15551234567) and North American forms ((555) 010-2233, 555.010.2233); not dates or times.
PHONE_RE = re.compile(r"\+\d{8,15}\b|\(?\b\d{3}\)?[ .-]?\d{3}[ .-]\d{4}\b")
# Fields the logging setup itself writes; they hold no personal data and must stay readable.
_META = frozenset({"timestamp", "level", "logger", "correlation_id", "intake_id", "lead_id", "task", "task_id"})


def mask_emails(text: str) -> str:
    """Every ``local@domain.tld`` in ``text`` masked (``a***@e***.com``), in time linear in its length."""
    if "@" not in text:
        return text
    reversed_text, size = text[::-1], len(text)
    parts: list[str] = []
    done = 0  # text[:done] is in parts already: a local part never reaches back into the previous address
    for found in _AT_DOMAIN.finditer(text):
        at = found.start()
        local = _LOCAL_REVERSED.match(reversed_text, size - at, size - done)
        if local is None:
            continue
        begin = at - (local.end() - local.start())
        parts += [text[done:begin], mask_email(text[begin : found.end()])]
        done = found.end()
    parts.append(text[done:])
    return "".join(parts)


def mask_text(text: str) -> str:
    return PHONE_RE.sub(lambda m: mask_phone(m.group(0)), mask_emails(text))


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    return value


def mask_pii(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Masks every email and phone number in every field of every line, whoever wrote it."""
    return {k: v if k in _META else _mask(v) for k, v in event_dict.items()}


class _NoQueryString(logging.Filter):
    """uvicorn's access line names the full path: a query string can hold an email or a phone
    (``?email=ann%40example.com``), percent-encoded past the masks. Keep the path only."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


def configure_logging(*, fmt: str = "console", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Every record of the process, structlog's and the standard library's alike, rendered by one chain to
    ``stream`` (standard error by default; ``leadrelay dev`` gives its log file)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        mask_pii,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python warnings (Celery's SecurityWarning, ...) as records, not bare stderr text.
    logging.captureWarnings(True)
    # billiard logs its pool's events on "multiprocessing", which does not propagate: the same handler.
    logging.getLogger("multiprocessing").handlers[:] = [handler]
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _NoQueryString) for f in access.filters):
        access.addFilter(_NoQueryString())
