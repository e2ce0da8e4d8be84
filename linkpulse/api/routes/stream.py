"""Live streams over SSE: ``/v1/stream/metrics``, ``/v1/stream/anomalies``, ``/v1/stream/alerts``.

Standard SSE (see docs/streams.md): the first frame sets ``retry:``; every
update has ``id: <kind>-<sequence>``; a heartbeat comment goes out every
``LINKPULSE_STREAM_HEARTBEAT_S``; a reconnect with ``Last-Event-ID`` gets
exactly what it missed, or ``event: reset`` then ``event: snapshot`` when
that is no longer retained. ``event: overflow`` (the client was too slow) and
``event: revoked`` (its key or token is no longer valid) end a stream.
Everything a client sends that is wrong is refused before the stream opens,
as problem+json.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from linkpulse.api.audit import AuditEntry
from linkpulse.api.auth.authenticator import AuthError
from linkpulse.api.auth.guard import StreamPrincipal
from linkpulse.api.auth.roles import Principal
from linkpulse.api.hub import STOP, Client, Plan, StreamHub
from linkpulse.api.problems import ProblemError, problem_responses
from linkpulse.api.stream_filter import (
    FilterError,
    StreamFilter,
    format_event_id,
    parse_event_id,
    scoped_filter,
)
from linkpulse.logging import get_logger

router = APIRouter(tags=["streams"])
log = get_logger(__name__)

RETRY_MS = 3000
SEND_TIMEOUT_S = 10.0  # a client that accepts nothing for this long is disconnected
_RESPONSES = {
    200: {
        "description": "an SSE stream (text/event-stream); see docs/streams.md",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **problem_responses(400, 401, 403, 429, 503),
}


class _EventStream(EventSourceResponse):
    """An SSE response for which a client that stopped reading is routine, not an error."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.info("stream client accepted nothing for a while: disconnected", path=scope["path"])


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def _json(obj: object) -> str:
    return orjson.dumps(obj).decode()


async def _still_valid(hub: StreamHub, token: str | None) -> str | None:
    """Why the stream's credentials no longer hold, or None while they do."""
    try:
        await hub.guard.principal(token)
    except AuthError as e:
        if e.status == 503:  # can't check right now: keep serving, check again later
            return None
        return e.detail
    return None


async def _events(
    request: Request, hub: StreamHub, client: Client, plan: Plan, token: str | None
) -> AsyncIterator[ServerSentEvent | bytes]:
    kind = client.filter.kind
    settings = hub.settings
    sent, outcome, last = 0, "closed", plan.position
    try:
        yield ServerSentEvent(comment="linkpulse stream", retry=RETRY_MS)
        if plan.reset_reason is not None:
            yield ServerSentEvent(event="reset", data=_json({"reason": plan.reset_reason}))
        if plan.replay_from is None:
            items = await hub.snapshot(client.filter)
            data = b'{"position":"%s","items":[%s]}' % (
                format_event_id(kind, plan.position).encode(),
                b",".join(items),
            )
            yield ServerSentEvent(
                event="snapshot", id=format_event_id(kind, plan.position), data=data.decode()
            )
        else:
            async for u in hub.replay(client.filter, plan.replay_from):
                last = max(last, u.seq)
                sent += 1
                yield u.frame  # encoded once by the hub, shared by every client
        next_check = time.monotonic() + settings.stream_revalidate_s
        while True:
            timeout = next_check - time.monotonic()
            if timeout <= 0:
                reason = await _still_valid(hub, token)
                if reason is not None:
                    outcome = "revoked"
                    yield ServerSentEvent(event="revoked", data=_json({"reason": reason}))
                    return
                next_check = time.monotonic() + settings.stream_revalidate_s
                continue
            try:
                u = await asyncio.wait_for(client.queue.get(), timeout)
            except TimeoutError:
                continue
            if u is STOP:
                if client.overflowed:
                    outcome = "overflow"
                    detail = (
                        f"this client fell {settings.stream_queue_size} updates behind and was "
                        "disconnected; reconnect with Last-Event-ID to get what it missed"
                    )
                    yield ServerSentEvent(event="overflow", data=_json({"reason": detail}))
                else:
                    outcome = client.closing or "closed"
                return
            if u.seq <= last:  # already sent by the replay (hand-over overlap)
                continue
            last = u.seq
            sent += 1
            yield u.frame
    finally:
        hub.unregister(client)
        hub.guard.audit.record(
            AuditEntry.of(
                client.principal,
                f"stream.{kind}",
                resource=request.url.path,
                scope=client.filter.describe(),
                outcome=outcome,
                status=200,
                items=sent,
            )
        )


def _checked(
    request: Request,
    principal: Principal,
    kind: str,
    last_event_id: str | None,
    filters: dict[str, str | None],
) -> tuple[StreamFilter, int | None]:
    """The client's filter and resume position, or a 400/403 problem naming the field."""
    unknown = sorted(set(request.query_params) - set(filters))
    if unknown:  # a filter we don't know must not open a stream that ignores it
        known = ", ".join(sorted(filters))
        detail = f"unknown query parameter {unknown[0]!r} on this stream; its filters: {known}"
        raise ProblemError(400, "invalid-filter", "Invalid stream filter", detail, field=unknown[0])
    try:
        flt = scoped_filter(principal, kind, **filters)
        resume = parse_event_id(kind, last_event_id) if last_event_id else None
    except FilterError as e:
        slug = "forbidden-scope" if e.status == 403 else "invalid-filter"
        title = "Out of scope" if e.status == 403 else "Invalid stream filter"
        raise ProblemError(e.status, slug, title, e.detail, field=e.field) from e
    return flt, resume


async def _open(
    request: Request,
    principal: Principal,
    kind: str,
    last_event_id: str | None,
    **filters: str | None,
) -> EventSourceResponse:
    hub: StreamHub = request.app.state.hub
    try:
        flt, resume = _checked(request, principal, kind, last_event_id, filters)
        hub.admit(principal)
    except ProblemError as e:  # refused requests are audited like the guard's refusals
        hub.guard.audit.record(
            AuditEntry.of(
                principal,
                "refused",
                resource=f"{request.method} {request.url.path}",
                outcome="refused",
                status=e.status_code,
                detail=str(e.detail),
            )
        )
        raise
    client = hub.register(principal, flt)
    try:
        plan = await hub.plan(kind, resume)
    except BaseException:
        hub.unregister(client)
        raise
    hub.guard.audit.record(
        AuditEntry.of(
            principal,
            f"stream.{kind}",
            resource=request.url.path,
            scope={**flt.describe(), **({"last_event_id": last_event_id} if last_event_id else {})},
            outcome="open",
            status=200,
        )
    )
    return _EventStream(
        _events(request, hub, client, plan, _token(request)),
        ping=hub.settings.stream_heartbeat_s,
        ping_message_factory=lambda: ServerSentEvent(comment="heartbeat"),
        send_timeout=SEND_TIMEOUT_S,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


_METRIC = Query(None, description="only this metric (e.g. gmv, orders)")
_TENANT = Query(None, description="only this tenant (admins; others always get their own)")
_SELLER = Query(None, description="only series of this seller (sellers always get their own)")
_LAST = Header(None, alias="Last-Event-ID", description="resume after this event id")


@router.get(
    "/v1/stream/metrics",
    summary="Live window updates (SSE)",
    response_class=EventSourceResponse,
    responses=_RESPONSES,
)
async def stream_metrics(
    request: Request,
    principal: StreamPrincipal,
    metric: str | None = _METRIC,
    window: str | None = Query(
        None, description="only this window: 1m, 5m, 15m, 1h, 5m/10s, 15m/10s"
    ),
    tenant: str | None = _TENANT,
    seller: str | None = _SELLER,
    last_event_id: str | None = _LAST,
) -> EventSourceResponse:
    """Every window update in scope, as ``event: metric`` with a MetricWindow as data."""
    return await _open(
        request,
        principal,
        "metrics",
        last_event_id,
        metric=metric,
        window=window,
        tenant=tenant,
        seller=seller,
    )


@router.get(
    "/v1/stream/anomalies",
    summary="Live anomaly scores (SSE)",
    response_class=EventSourceResponse,
    responses=_RESPONSES,
)
async def stream_anomalies(
    request: Request,
    principal: StreamPrincipal,
    metric: str | None = _METRIC,
    tenant: str | None = _TENANT,
    seller: str | None = _SELLER,
    last_event_id: str | None = _LAST,
) -> EventSourceResponse:
    """Every anomaly score in scope, as ``event: anomaly``."""
    return await _open(
        request, principal, "anomalies", last_event_id, metric=metric, tenant=tenant, seller=seller
    )


@router.get(
    "/v1/stream/alerts",
    summary="Live alert state changes (SSE)",
    response_class=EventSourceResponse,
    responses=_RESPONSES,
)
async def stream_alerts(
    request: Request,
    principal: StreamPrincipal,
    metric: str | None = _METRIC,
    tenant: str | None = _TENANT,
    seller: str | None = _SELLER,
    last_event_id: str | None = _LAST,
) -> EventSourceResponse:
    """Every alert state change in scope, as ``event: alert``."""
    return await _open(
        request, principal, "alerts", last_event_id, metric=metric, tenant=tenant, seller=seller
    )
