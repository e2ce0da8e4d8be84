"""Export jobs: ``POST /v1/exports``, status, progress on SSE, and a download link that expires.

An export is queued after its statement is planned in the caller's scoped
analyst session (so bad SQL, a bad parameter or another tenant is a 4xx now,
not a failed job later); the API's ``ExportWorker`` runs it in the
background. ``GET /v1/exports/{id}`` and ``/events`` report rows and bytes
written (and the planner's estimate); a done job carries ``download_url``,
signed and valid until the file is removed (``LINKPULSE_EXPORT_LINK_TTL_S``),
after which the link answers 410. Only the principal that queued a job (or an
admin) sees it. See docs/exports.md.

>>> sorted(r.value for r in EXPORT_ROLES)
['admin', 'analyst', 'seller']
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import orjson
import psycopg
import psycopg_pool
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from linkpulse.api.analyst_db import AnalystDb
from linkpulse.api.audit import AuditEntry
from linkpulse.api.auth.guard import Need, resource_of
from linkpulse.api.auth.roles import Principal, Role
from linkpulse.api.problems import ProblemError, problem_responses
from linkpulse.api.routes.query import scope_of
from linkpulse.exports.jobs import Job, JobStore, new_job_id
from linkpulse.exports.links import LinkError, check_link, download_key, sign_link
from linkpulse.exports.query import QueryExportError, compile_query
from linkpulse.exports.query import parse as parse_query
from linkpulse.exports.request import ExportRequest, ExportScope, ScopeError, resolve_scope
from linkpulse.exports.run import ExportInputError, check_statement
from linkpulse.exports.watermark import make_watermark
from linkpulse.exports.worker import ExportWorker
from linkpulse.formats import media_type

__all__ = ["EXPORT_ROLES", "router"]

# Exports hand out raw rows in bulk: analysts and admins, and sellers (their own rows).
EXPORT_ROLES = frozenset({Role.ADMIN, Role.ANALYST, Role.SELLER})
ExportPrincipal = Annotated[Principal, Depends(Need(EXPORT_ROLES))]
EVENTS_POLL_S = 0.5
_ID = Path(pattern=r"^ex_[0-9a-f]{20}$", description="the export's id (ex_ and 20 hex digits)")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    access = app.state.access  # started by the app's lifespan, which encloses this one
    store = JobStore(access.pool)
    worker = ExportWorker(app.state.settings, store, access.analyst_db, access.audit)
    app.state.export_jobs, app.state.export_worker = store, worker
    await worker.start()
    try:
        yield
    finally:
        await worker.stop()


router = APIRouter(tags=["exports"], lifespan=_lifespan)


class ExportStatus(BaseModel):
    """An export job: where it stands, and its download link once it is done."""

    id: str
    state: str = Field(description="queued, running, done, failed or expired")
    format: str
    tenant: str
    seller: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    rows_written: int
    bytes_written: int
    estimated_rows: int | None = Field(description="the planner's estimate, when it gave one")
    progress: float | None = Field(description="rows written / estimated rows, at most 1")
    error: str = Field(description="why the export failed (empty otherwise)")
    expires_at: datetime | None = Field(description="when the file and its link go")
    download_url: str | None = Field(description="signed link to the file (state done)")
    watermark: dict[str, str]


def _unavailable(e: Exception) -> ProblemError:
    if isinstance(e, psycopg.errors.UndefinedTable):
        detail = "the store has no export_jobs table: run `linkpulse db migrate`"
    else:
        detail = f"export jobs can't be reached: the database is unreachable ({type(e).__name__})"
    return ProblemError(
        503, "store-unavailable", "Store unavailable", detail, headers={"Retry-After": "2"}
    )


def _store(request: Request) -> JobStore:
    store: JobStore = request.app.state.export_jobs
    return store


async def _key(request: Request) -> bytes:
    db: AnalystDb = request.app.state.analyst_db
    return download_key(await db.secret())


async def _status(request: Request, job: Job) -> ExportStatus:
    url = None
    if job.state == "done" and job.expires_at is not None:
        token = sign_link(await _key(request), job.id, expires=int(job.expires_at.timestamp()))
        url = str(
            request.url_for("download_export", export_id=job.id).include_query_params(token=token)
        )
    progress = None
    if job.state == "done":
        progress = 1.0
    elif job.estimated_rows:
        progress = min(1.0, job.rows_written / job.estimated_rows)
    return ExportStatus(
        id=job.id,
        state=job.state,
        format=job.format,
        tenant=job.tenant,
        seller=job.seller,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        rows_written=job.rows_written,
        bytes_written=job.bytes_written,
        estimated_rows=job.estimated_rows,
        progress=progress,
        error=job.error,
        expires_at=job.expires_at,
        download_url=url,
        watermark=job.watermark,
    )


async def _visible_job(request: Request, principal: Principal, export_id: str) -> Job:
    """The job, if this principal queued it (or is an admin); 404 otherwise, as if absent."""
    try:
        job = await _store(request).get(export_id)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
        raise _unavailable(e) from e
    if job is None or (principal.role is not Role.ADMIN and job.principal != principal.id):
        raise ProblemError(404, "not-found", "Not found", f"no export {export_id}")
    return job


def _audit(request: Request, principal: Principal | None, action: str, **kw: Any) -> None:
    request.app.state.guard.audit.record(
        AuditEntry.of(principal, action, resource=resource_of(request), **kw)
    )


@router.post(
    "/v1/exports",
    summary="Queue an export of a SQL statement (or query) as CSV, JSON or Parquet",
    status_code=202,
    response_model=ExportStatus,
    responses=problem_responses(400, 401, 403, 422, 429, 503),
)
async def create_export(
    request: Request, principal: ExportPrincipal, body: ExportRequest
) -> JSONResponse:
    """The statement is planned now in your scope (4xx naming ``sql``, ``params``,
    ``tenant`` or ``query`` if it can't run); the export then runs in the background.
    Poll ``GET /v1/exports/{id}`` or follow ``/v1/exports/{id}/events``."""
    query = None
    if body.query is not None:
        try:
            query = parse_query(body.query)
        except QueryExportError as e:
            raise ProblemError(
                e.status, "invalid-query", "Invalid query", e.detail, field=e.field
            ) from e
        # the query API's own scope rules: an admin's tenant, a seller filter for tenant keys
        tenant, seller_filter = scope_of(principal, body.tenant or query.tenant, query.seller)
        scope = ExportScope(tenant=tenant, seller=principal.seller)
    else:
        try:
            scope = resolve_scope(
                tenant=principal.tenant,
                seller=principal.seller,
                all_tenants=principal.all_tenants,
                asked_tenant=body.tenant,
            )
        except ScopeError as e:
            slug, title = (
                ("forbidden", "Forbidden") if e.status == 403 else ("invalid-body", "Invalid")
            )
            raise ProblemError(e.status, slug, title, str(e), field=e.field) from e
    db: AnalystDb = request.app.state.analyst_db
    statement, params = body.sql or "", body.params
    try:
        async with db.session(tenant=scope.tenant, seller=scope.seller) as conn:
            if query is not None:
                max_points = request.app.state.settings.query_max_points
                statement = compile_query(conn, query, seller=seller_filter, max_points=max_points)
            estimate = await check_statement(conn, statement, params)
    except QueryExportError as e:
        raise ProblemError(
            e.status, "invalid-query", "Invalid query", e.detail, field=e.field
        ) from e
    except ExportInputError as e:
        _audit(request, principal, "export.create", outcome="refused", status=400, detail=e.detail)
        raise ProblemError(400, "invalid-sql", "Invalid statement", e.detail, field=e.field) from e
    except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
        raise _unavailable(e) from e
    job_id = new_job_id()
    source = body.source() if query is None else {"query": body.query, "sql": statement}
    watermark = make_watermark(
        export_id=job_id,
        principal=principal.id,
        role=principal.role.value,
        tenant=scope.tenant,
        seller=scope.seller,
        source=source,
    )
    try:
        job = await _store(request).create(
            job_id=job_id,
            principal=principal.id,
            role=principal.role.value,
            tenant=scope.tenant,
            seller=scope.seller,
            fmt=body.format,
            source=source,
            watermark=watermark,
            estimated_rows=estimate,
        )
    except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
        raise _unavailable(e) from e
    worker: ExportWorker = request.app.state.export_worker
    worker.wake()
    _audit(
        request,
        principal,
        "export.create",
        scope={"export": job_id, "format": body.format, "tenant": scope.tenant},
        status=202,
        detail=statement[:2000],
    )
    status = await _status(request, job)
    return JSONResponse(
        status.model_dump(mode="json"),
        status_code=202,
        headers={"Location": str(request.url_for("get_export", export_id=job_id))},
    )


@router.get(
    "/v1/exports/{export_id}",
    summary="An export's state, progress and download link",
    response_model=ExportStatus,
    responses=problem_responses(400, 401, 403, 404, 422, 429, 503),
)
async def get_export(
    request: Request, principal: ExportPrincipal, export_id: str = _ID
) -> ExportStatus:
    """``download_url`` appears when ``state`` is ``done``; it is valid until ``expires_at``."""
    return await _status(request, await _visible_job(request, principal, export_id))


async def _events(request: Request, job: Job) -> AsyncIterator[ServerSentEvent]:
    last: tuple[str, int, int] | None = None
    store = _store(request)
    while True:
        seen = (job.state, job.rows_written, job.bytes_written)
        if seen != last:
            last = seen
            status = await _status(request, job)
            name = job.state if job.finished else "progress"
            data = orjson.dumps(status.model_dump(mode="json")).decode()
            yield ServerSentEvent(event=name, id=f"{job.rows_written}", data=data)
            if job.finished:
                return
        await asyncio.sleep(EVENTS_POLL_S)
        fresh = await store.get(job.id)
        if fresh is None:
            return
        job = fresh


@router.get(
    "/v1/exports/{export_id}/events",
    summary="An export's progress as server-sent events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "``event: progress`` as rows are written, then one of ``done``, "
            "``failed`` or ``expired`` (data: the export's status), then the stream ends",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problem_responses(400, 401, 403, 404, 422, 429, 503),
    },
)
async def export_events(
    request: Request, principal: ExportPrincipal, export_id: str = _ID
) -> EventSourceResponse:
    """Each event's data is the same document as ``GET /v1/exports/{id}``."""
    job = await _visible_job(request, principal, export_id)
    return EventSourceResponse(
        _events(request, job),
        ping=15,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/v1/exports/{export_id}/download",
    name="download_export",
    summary="Download an export's file (the signed link from its status)",
    response_class=FileResponse,
    responses={
        200: {"description": "the file (text/csv, application/json, ndjson or Parquet)"},
        **problem_responses(400, 403, 404, 410, 422, 503),
    },
)
async def download_export(
    request: Request,
    export_id: str = _ID,
    token: str = Query(
        ..., min_length=1, max_length=200, description="the signature from download_url"
    ),
) -> FileResponse:
    """No credentials needed: the token is the permission, until it expires (then 410)."""
    try:
        check_link(await _key(request), export_id, token)
    except LinkError as e:
        slug, title = (
            ("link-expired", "Link expired") if e.status == 410 else ("forbidden", "Forbidden")
        )
        raise ProblemError(e.status, slug, title, str(e), field="token") from e
    try:
        job = await _store(request).get(export_id)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
        raise _unavailable(e) from e
    if job is None:
        raise ProblemError(404, "not-found", "Not found", f"no export {export_id}")
    expired = job.expires_at is not None and job.expires_at.timestamp() <= time.time()
    path = request.app.state.settings.export_dir / (job.file or "")
    if job.state == "expired" or expired or not job.file or not path.is_file():
        detail = "this export's file was removed after its link expired: export again"
        raise ProblemError(410, "link-expired", "Link expired", detail, field="token")
    _audit(
        request,
        None,
        "export.download",
        scope={"export": job.id, "exported_by": job.principal, "tenant": job.tenant},
        status=200,
        items=job.rows_written,
    )
    return FileResponse(path, media_type=media_type(job.format), filename=job.file)
