"""``GET /v1/audit``: the audit log, for admins, filtered by time, principal and action."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
import psycopg_pool
from fastapi import APIRouter, Query, Request
from psycopg.rows import dict_row
from pydantic import AwareDatetime, BaseModel

from linkpulse.api.audit import AuditEntry
from linkpulse.api.auth.guard import AdminPrincipal
from linkpulse.api.problems import ProblemError, problem_responses

router = APIRouter(tags=["audit"])


class AuditRow(BaseModel):
    """One audit entry."""

    id: int
    at: datetime
    principal: str
    role: str | None
    tenant: str | None
    seller: str | None
    action: str
    resource: str
    scope: dict[str, Any]
    outcome: str
    status: int | None
    items: int
    detail: str


class AuditPage(BaseModel):
    """Entries newest first; pass ``before_id`` = ``next_before_id`` for the next page."""

    entries: list[AuditRow]
    next_before_id: int | None


_QUERY = """
SELECT id, at, principal, role, tenant, seller, action, resource, scope, outcome, status, items,
       detail
FROM audit_log
WHERE (%(since)s::timestamptz IS NULL OR at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR at < %(until)s)
  AND (%(principal)s::text IS NULL OR principal = %(principal)s)
  AND (%(action)s::text IS NULL OR action = %(action)s OR action LIKE %(action)s || '.%%')
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
ORDER BY id DESC
LIMIT %(limit)s
"""


# Text PostgreSQL can compare: no NUL (a NUL is a DataError there, not "no match").
_TEXT = r"^[^\x00]*$"


@router.get(
    "/v1/audit",
    summary="Read the audit log (admins)",
    response_model=AuditPage,
    responses=problem_responses(400, 401, 403, 422, 429, 503),
)
async def read_audit(
    request: Request,
    principal: AdminPrincipal,
    since: AwareDatetime | None = Query(
        None, description="entries at or after (ISO 8601, with zone)"
    ),
    until: AwareDatetime | None = Query(None, description="entries before (ISO 8601, with zone)"),
    principal_id: str | None = Query(
        None, alias="principal", description="key id or jwt:<sub>", pattern=_TEXT, max_length=200
    ),
    action: str | None = Query(
        None,
        description="action, or its prefix: stream, key.create...",
        pattern=_TEXT,
        max_length=200,
    ),
    before_id: int | None = Query(None, ge=1, description="page: entries older than this id"),
    limit: int = Query(100, ge=1, le=1000),
) -> AuditPage:
    """Newest first. Actions: ``stream.<kind>``, ``key.create``, ``key.revoke``, ``refused``,
    ``audit.read``."""
    if since is not None and until is not None and since >= until:
        raise ProblemError(
            400, "invalid-filter", "Invalid filter", "since must be before until", field="since"
        )
    pool: psycopg_pool.AsyncConnectionPool = request.app.state.access.pool
    params = {
        "since": since,
        "until": until,
        "principal": principal_id,
        "action": action,
        "before_id": before_id,
        "limit": limit,
    }
    try:
        async with pool.connection(timeout=5) as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_QUERY, params)
            rows = await cur.fetchall()
    except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
        detail = f"the audit log cannot be read: the database is unreachable ({type(e).__name__})"
        raise ProblemError(
            503, "store-unavailable", "Store unavailable", detail, headers={"Retry-After": "2"}
        ) from e
    entries = [AuditRow(**r) for r in rows]
    request.app.state.guard.audit.record(
        AuditEntry.of(
            principal,
            "audit.read",
            resource=request.url.path,
            scope={k: str(v) for k, v in params.items() if v is not None},
            items=len(entries),
            status=200,
        )
    )
    return AuditPage(
        entries=entries, next_before_id=entries[-1].id if len(entries) == limit else None
    )
