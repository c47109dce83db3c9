"""CSV imports over HTTP: the upload is kept in the database before the 202, and the ``imports.run``
task imports it on the imports queue; ``GET /v1/imports/{id}`` follows its progress."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import IO, Annotated

import structlog
from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from pydantic import AfterValidator, BaseModel

from intake.deps import CurrentUser, UoW
from intake.links import public_url_for
from intake.problems import Problem, invalid
from intake.schemas import storable, unstorable
from workers import imports
from workers.app import publish

router = APIRouter(prefix="/v1/imports", tags=["imports"])
log = structlog.get_logger(__name__)

HEADER_PEEK = 64 * 1024


class ImportAccepted(BaseModel):
    import_id: uuid.UUID
    status: str = "queued"
    status_url: str


class Rejection(BaseModel):
    line: int
    reason: str


class ImportOut(BaseModel):
    id: uuid.UUID
    status: str  # queued | running | done | failed
    phase: str | None
    filename: str
    owner: str
    by: str
    rows: int
    created: int
    existing: int
    duplicates: int
    rejected: int
    rejections: list[Rejection]
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


def _pieces(stream: IO[bytes]) -> Iterator[bytes]:
    while data := stream.read(imports.CHUNK_BYTES):
        yield data


@router.post(
    "",
    status_code=202,
    response_model=ImportAccepted,
    responses={
        401: {"description": "Missing or unknown user token"},
        403: {"description": "O1: the caller may not import for that owner"},
        422: {"description": "Unknown owner, a bad --map, or a header with no email or phone column"},
    },
)
def post_import(
    caller: CurrentUser,
    uow: UoW,
    request: Request,
    response: Response,
    file: Annotated[UploadFile, File(description="The CSV, UTF-8, with a header line")],
    owner: Annotated[
        str,
        Form(min_length=1, description="The entity that owns every lead the file makes (O1)"),
        AfterValidator(storable),
    ],
    map_: Annotated[
        list[str] | None,
        Form(alias="map", description="'Header=field' for a column the usual spellings miss; 'Header=' skips one"),
        AfterValidator(storable),
    ] = None,
) -> ImportAccepted:
    """Upload a CSV of leads for an owner: an agent imports for itself, an admin for its entity (O1).
    The file is kept before the answer; the import then runs on the imports queue."""
    filename = file.filename or "import.csv"
    if unstorable(filename) is not None:
        raise invalid("file", "its name contains a NUL character or an unpaired surrogate")
    try:
        mapping = imports.parse_map(map_ or [])
        imports.check_header(file.file.read(HEADER_PEEK), mapping)
        file.file.seek(0)
        import_id = imports.create_import(uow, caller=caller, owner_slug=owner, filename=filename, mapping=mapping)
    except imports.ImportRefused as exc:
        raise Problem(403, "Forbidden", str(exc)) from exc
    except imports.ImportInvalid as exc:
        raise invalid(exc.field, exc.message) from exc
    size = imports.store_upload(uow, import_id, _pieces(file.file))
    uow.commit()
    publish("imports.run", import_id)
    log.info("import.accepted", import_id=str(import_id), bytes=size)
    status_url = public_url_for(request, "get_import", import_id=import_id)
    response.headers["Location"] = status_url
    return ImportAccepted(import_id=import_id, status_url=status_url)


@router.get(
    "/{import_id}",
    response_model=ImportOut,
    name="get_import",
    responses={
        401: {"description": "Missing or unknown user token"},
        404: {"description": "No such import the caller may see"},
    },
)
def get_import(import_id: uuid.UUID, caller: CurrentUser, uow: UoW) -> ImportOut:
    """An import's progress and summary, to the user who ran it and the owner's side (the agent, its admins)."""
    row = uow.imports.get(import_id)
    allowed = (
        row is not None
        and row.account_id == caller.account_id
        and (
            row.by_user_id == caller.user_id
            or row.owner_entity_id in caller.admin_of
            or row.owner_entity_id == caller.agent_id
        )
    )
    if row is None or not allowed:
        raise Problem(404, "Not found", "no such import")
    summary = imports.summary_of(uow, row)
    return ImportOut(
        id=row.id,
        status=row.status.value,
        phase=row.phase,
        filename=row.filename,
        owner=uow.orgs.entity(row.owner_entity_id).slug,
        by=uow.imports.user_slug(row.by_user_id) or "",
        rows=row.rows_read,
        created=row.created,
        existing=row.existing,
        duplicates=row.duplicates,
        rejected=row.rejected,
        rejections=[Rejection(line=line, reason=reason) for line, reason in summary.rejections],
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )
