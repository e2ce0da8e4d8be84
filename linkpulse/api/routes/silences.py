"""Silences: ``POST /v1/silences``, ``GET /v1/silences``, ``DELETE /v1/silences/{id}``.

A silence mutes the alerts all of whose matchers it matches, between
``starts_at`` and ``ends_at`` (the notifier reads them at each group flush).
An operator's silence is scoped to its tenant: a ``tenant="<its tenant>"``
matcher is added when it has none. Expiring sets ``ends_at`` to now.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import psycopg
from fastapi import APIRouter, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, Field

from linkpulse.alerts.durations import parse_duration
from linkpulse.alerts.policy import PolicyError, Silence
from linkpulse.api.audit import AuditEntry
from linkpulse.api.problems import ProblemError, problem_responses
from linkpulse.api.routes._alerting import (
    OperatorPrincipal,
    ReaderPrincipal,
    in_store,
    tenant_scope,
)
from linkpulse.notifier import store

router = APIRouter(tags=["silences"])


class SilenceIn(BaseModel):
    """A new silence: ``ends_at``, or a ``duration`` from ``starts_at`` (default now)."""

    matchers: list[str] = Field(..., max_length=50, description='e.g. ["severity=\\"warning\\""]')
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    duration: str | None = Field(None, max_length=32, description="instead of ends_at: 2h, 30m")
    comment: str = Field(..., max_length=2000)
    created_by: str | None = Field(None, max_length=200, description="default: the caller")


class SilenceOut(BaseModel):
    """A stored silence."""

    id: str
    tenant: str
    matchers: list[str]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    created_at: datetime
    expired_at: datetime | None
    state: str  # pending, active, expired


def _out(row: dict[str, Any], now: datetime) -> SilenceOut:
    state = "pending" if row["starts_at"] > now else "active" if row["ends_at"] > now else "expired"
    return SilenceOut(**row, state=state)


def _invalid(field: str, detail: str) -> NoReturn:
    raise ProblemError(422, "invalid-silence", "Invalid silence", detail, field=field)


@router.post(
    "/v1/silences",
    summary="Create a silence (operators)",
    response_model=SilenceOut,
    status_code=201,
    responses=problem_responses(401, 403, 422, 429, 503),
)
async def create_silence(
    request: Request, principal: OperatorPrincipal, body: SilenceIn
) -> SilenceOut:
    """Every problem is named: a bad matcher, an end not after the start, no comment."""
    now = datetime.now(UTC)
    starts = body.starts_at or now
    if body.ends_at is not None and body.duration is not None:
        _invalid("duration", "give ends_at or duration, not both")
    if body.ends_at is None:
        if body.duration is None:
            _invalid("ends_at", "a silence needs ends_at or a duration")
        try:
            ends = starts + timedelta(seconds=parse_duration(body.duration))
        except ValueError as e:
            _invalid("duration", str(e))
    else:
        ends = body.ends_at
    tenant = tenant_scope(principal, None) or ""
    matchers = list(body.matchers)
    if tenant and not any(m.replace(" ", "").startswith(("tenant=", "tenant=~")) for m in matchers):
        matchers.append(f'tenant="{tenant}"')
    silence = Silence(
        id="",
        matchers=matchers,
        starts_at=starts,
        ends_at=ends,
        created_by=body.created_by or principal.id,
        comment=body.comment,
    )
    try:
        silence.validate()
    except PolicyError as e:
        field, _ = e.problems[0]
        _invalid(field, str(e))

    async def work(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
        return await store.create_silence(conn, silence, tenant)

    row = await in_store(request, "the silence cannot be stored", work)
    request.app.state.guard.audit.record(
        AuditEntry.of(
            principal,
            "silence.create",
            resource=row["id"],
            status=201,
            detail=", ".join(matchers)[:500],
        )
    )
    return _out(row, now)


@router.get(
    "/v1/silences",
    summary="Silences, newest first",
    response_model=list[SilenceOut],
    responses=problem_responses(401, 403, 422, 429, 503),
)
async def list_silences(
    request: Request,
    principal: ReaderPrincipal,
    expired: bool = Query(False, description="include expired silences"),
) -> list[SilenceOut]:
    """Active and pending silences of the caller's tenant (every tenant for admins)."""
    now = datetime.now(UTC)
    tenant = tenant_scope(principal, None)

    async def work(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
        return await store.list_silences(conn, tenant=tenant, include_expired=expired)

    return [_out(r, now) for r in await in_store(request, "silences cannot be read", work)]


@router.delete(
    "/v1/silences/{silence_id}",
    summary="Expire a silence now (operators)",
    response_model=SilenceOut,
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
async def expire_silence(
    request: Request,
    principal: OperatorPrincipal,
    silence_id: str = Path(..., max_length=200),
) -> SilenceOut:
    """The silence stops muting at once; its record stays."""
    now = datetime.now(UTC)
    tenant = tenant_scope(principal, None)

    async def work(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
        return await store.expire_silence(conn, silence_id, now, tenant)

    row = await in_store(request, "the silence cannot be expired", work)
    if row is None:
        detail = f"no silence {silence_id!r} in this key's scope"
        raise ProblemError(404, "not-found", "Not found", detail, field="silence_id")
    request.app.state.guard.audit.record(
        AuditEntry.of(principal, "silence.expire", resource=silence_id, status=200)
    )
    return _out(row, now)
