"""What a failure may say about itself in a log line and in a kept row.

An exception's text is not safe to log: a database error carries its statement's parameters and the server's
``DETAIL`` (PostgreSQL's "Failing row contains (..., Ann, Lee, ...)"), and ``ValueError``s quote the value
they refused. Logs name the failure's kind only; a row that keeps the error for an operator (a dead intake's
``reason``) gets the first line of an application error's text, and for a database error only its class,
SQLSTATE and constraint.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

REASON_MAX_CHARS = 500


def error_kind(exc: BaseException) -> str:
    """For a log line: the exception's class, and for a database error the driver's class and SQLSTATE."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "sqlite_errorname", None)
        return f"{type(exc).__name__}({type(exc.orig).__name__}{f' {state}' if state else ''})"
    return type(exc).__name__


def error_reason(exc: BaseException) -> str:
    """For a kept row: ``Class: first line of its text``; a database error without its text, which holds values."""
    if isinstance(exc, DBAPIError):
        diag = getattr(exc.orig, "diag", None)
        constraint = getattr(diag, "constraint_name", None)
        return error_kind(exc) + (f": constraint {constraint}" if constraint else "")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}"[:REASON_MAX_CHARS] if text else type(exc).__name__
