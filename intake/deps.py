"""FastAPI dependencies as types: a unit of work per request, and who is calling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from intake.problems import Problem
from models.repositories import Caller
from models.security import hash_secret
from models.uow import UnitOfWork

# Each kind of credential is its own security scheme in /openapi.json, so a client knows which one an
# operation takes (docs/sources.md says where each comes from).
_intake_key_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="IntakeKey",
    description="An intake key of the account's org file (`intake_keys`), for sites and landing pages.",
)
_user_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="UserToken",
    description="A user's token (the org file's `users[].token`): what the user may see and do.",
)
connection_key = APIKeyHeader(
    name="X-Api-Key",
    auto_error=False,
    scheme_name="ConnectionKey",
    description="An API connection's key (`api_connections[].key`): the connection decides the owner (O5).",
)


async def _uow() -> AsyncIterator[UnitOfWork]:
    """A unit of work per request. Async, so it costs the request no trip through the threadpool: opening
    one does no I/O, and neither does closing one whose transaction ended (committed, or ended by
    ``end_read``). One left open (an endpoint that failed halfway) is rolled back in the threadpool."""
    uow = UnitOfWork().__enter__()
    try:
        yield uow
    finally:
        if uow.session.in_transaction():
            await run_in_threadpool(uow.__exit__, None, None, None)
        else:
            uow.__exit__(None, None, None)


UoW = Annotated[UnitOfWork, Depends(_uow)]
IntakeKeyCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_intake_key_bearer)]
UserCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_user_bearer)]
ConnectionKeyHeader = Annotated[str | None, Depends(connection_key)]

UNAUTHORIZED = Problem(401, "Unauthorized", "a valid credential is required", headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class IntakeCaller:
    account_id: int
    intake_key_id: int


def _intake_key(uow: UoW, creds: IntakeKeyCredentials) -> IntakeCaller:
    if creds is None:
        raise UNAUTHORIZED
    uow.each_statement_commits()
    key = uow.orgs.intake_key_by_hash(hash_secret(creds.credentials))
    # Read what we need before ending the transaction: rollback expires loaded rows.
    caller = IntakeCaller(key.account_id, key.id) if key is not None else None
    uow.end_read()
    if caller is None:
        raise UNAUTHORIZED
    return caller


def _user(uow: UoW, creds: UserCredentials) -> Caller:
    if creds is None:
        raise UNAUTHORIZED
    caller = uow.orgs.caller_by_token_hash(hash_secret(creds.credentials))
    uow.end_read()
    if caller is None:
        raise UNAUTHORIZED
    return caller


def _account_credential(
    uow: UoW, intake_key: IntakeKeyCredentials, token: UserCredentials, x_api_key: ConnectionKeyHeader
) -> int:
    """Any credential of an account (its intake key, a connection key, an admin's user token): the account id."""
    try:
        return _account_of(uow, intake_key or token, x_api_key)
    finally:
        uow.end_read()


def _account_of(uow: UnitOfWork, creds: HTTPAuthorizationCredentials | None, x_api_key: str | None) -> int:
    if x_api_key:
        connection = uow.orgs.api_connection_by_hash(hash_secret(x_api_key))
        if connection is not None:
            return connection.account_id
    if creds is not None:
        digest = hash_secret(creds.credentials)
        key = uow.orgs.intake_key_by_hash(digest)
        if key is not None:
            return key.account_id
        caller = uow.orgs.caller_by_token_hash(digest)
        if caller is not None and caller.admin_of:
            return caller.account_id
    raise UNAUTHORIZED


IntakeKeyCaller = Annotated[IntakeCaller, Depends(_intake_key)]
CurrentUser = Annotated[Caller, Depends(_user)]
AccountCredential = Annotated[int, Depends(_account_credential)]
