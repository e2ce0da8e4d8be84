"""Live streams: SSE at ``/v1/stream/{metrics,anomalies,alerts}``, WebSocket at ``/v1/ws``.

Standard SSE (see docs/streams.md): the first frame sets ``retry:``; every
update has ``id: <kind>-<sequence>``; a heartbeat comment goes out every
``LINKPULSE_STREAM_HEARTBEAT_S``; a reconnect with ``Last-Event-ID`` gets
exactly what it missed, or ``event: reset`` then ``event: snapshot`` when
that is no longer retained. ``event: overflow`` (the client was too slow) and
``event: revoked`` (its key or token is no longer valid) end a stream.
Everything a client sends that is wrong is refused before the stream opens,
as problem+json (for ``/v1/ws``: an HTTP response instead of the upgrade).
Both transports carry the same ``stream_session.messages``; ``/v1/ws`` sends
each as one JSON text message ``{"event", "id", "data"}``.

>>> sorted(WS_CLOSE)
['overflow', 'revoked', 'shutdown']
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query, Request, WebSocket
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.requests import HTTPConnection
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from linkpulse.api.auth.guard import StreamPrincipal, WsStreamPrincipal
from linkpulse.api.auth.roles import Principal
from linkpulse.api.problems import ProblemError, problem_responses
from linkpulse.api.stream_filter import EVENT_NAMES
from linkpulse.api.stream_session import Message, Session, batches, messages, open_session
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

    async def _send_with_timeout(self, send: Send, message: AsgiMessage) -> None:
        """sse-starlette's per-send timeout, with asyncio.timeout for anyio's cancel scope:
        the scope cost ~14% of the API's CPU under fan-out (py-spy), the timeout ~4%."""
        if self.send_timeout is None:
            await send(message)
            return
        try:
            async with asyncio.timeout(self.send_timeout):
                await send(message)
        except TimeoutError as e:
            raise SendTimeoutError from e

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.info("stream client accepted nothing for a while: disconnected", path=scope["path"])


def _token(conn: HTTPConnection) -> str | None:
    """The credential the stream re-checks: the header's, else (WebSocket) ``?token=``."""
    auth = conn.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return conn.headers.get("x-api-key") or conn.query_params.get("token")


def _frame(m: Message) -> bytes:
    """The SSE frame of a message: an update's was encoded once by the hub for every client."""
    if m.update is not None:
        return m.update.frame
    return ServerSentEvent(event=m.event, id=m.id, data=m.data.decode()).encode()


async def _sse(session: Session) -> AsyncIterator[ServerSentEvent | bytes]:
    yield ServerSentEvent(comment="linkpulse stream", retry=RETRY_MS)
    async with contextlib.aclosing(batches(session)) as it:
        async for batch in it:  # what was ready together goes out in one send
            yield b"".join(map(_frame, batch))


async def _open(
    request: Request,
    principal: Principal,
    kind: str,
    last_event_id: str | None,
    **filters: str | None,
) -> EventSourceResponse:
    session = await open_session(
        request, principal, kind, last_event_id, filters, token=_token(request)
    )
    return _EventStream(
        _sse(session),
        ping=session.hub.settings.stream_heartbeat_s,
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


# How /v1/ws ends (docs/streams.md): the close code and reason per ending event.
WS_CLOSE = {
    "overflow": (4008, "overflow: reconnect with last_event_id"),
    "revoked": (4001, "revoked: the key or token is no longer valid"),
    "shutdown": (1001, "the API is shutting down: reconnect with last_event_id"),
}
WS_PARAMS = ("channel", "token", "last_event_id")  # beside the channel's filters


async def _ws_send(websocket: WebSocket, session: Session) -> str | None:
    """Send the session's messages; the ending event's name, or None if the client went."""
    ending: str | None = None
    async with contextlib.aclosing(messages(session)) as it:
        async for m in it:
            if m.event in WS_CLOSE:
                ending = m.event
            try:
                await asyncio.wait_for(websocket.send_text(m.json().decode()), SEND_TIMEOUT_S)
            except TimeoutError:
                log.info("ws client accepted nothing for a while: disconnected")
                return None
            except (WebSocketDisconnect, OSError, RuntimeError):  # gone mid-send
                return None
    return ending or session.client.closing


async def _ws_gone(websocket: WebSocket) -> None:
    """Return when the client closes (messages it sends are ignored)."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


@router.websocket("/v1/ws", name="stream_ws")
async def stream_ws(
    websocket: WebSocket,
    principal: WsStreamPrincipal,
    channel: str | None = Query(None, description="metrics (default), anomalies or alerts"),
    metric: str | None = Query(None),
    window: str | None = Query(None),
    tenant: str | None = Query(None),
    seller: str | None = Query(None),
    last_event_id: str | None = Query(None),
) -> None:
    """One channel's live stream over a WebSocket: the SSE streams' filters, scope and resume.

    Credentials: ``Authorization: Bearer``/``X-API-Key`` or ``?token=`` (browsers
    can't set headers on a WebSocket). Resume: ``?last_event_id=metrics-41``.
    """
    kind = channel or "metrics"
    if kind not in EVENT_NAMES:
        known = ", ".join(EVENT_NAMES)
        detail = f"unknown channel {kind!r}; channels: {known}"
        raise ProblemError(400, "invalid-filter", "Invalid stream filter", detail, field="channel")
    filters: dict[str, str | None] = {"metric": metric, "tenant": tenant, "seller": seller}
    if kind == "metrics" or window is not None:  # the window filter is refused off metrics
        filters["window"] = window
    session = await open_session(
        websocket,
        principal,
        kind,
        last_event_id,
        filters,
        token=_token(websocket),
        other_params=WS_PARAMS,
        resume_field="last_event_id",
    )
    try:
        await websocket.accept()
    except BaseException:
        session.hub.unregister(session.client)
        raise
    sender = asyncio.create_task(_ws_send(websocket, session), name="ws-send")
    watcher = asyncio.create_task(_ws_gone(websocket), name="ws-gone")
    done: set[asyncio.Task[object]] = set()
    try:
        done, _ = await asyncio.wait((sender, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, watcher):
            task.cancel()
        await asyncio.gather(sender, watcher, return_exceptions=True)
        session.hub.unregister(session.client)  # in case the sender never got to run
    if watcher in done or sender not in done or sender.exception() is not None:
        return  # the client went (or the send failed): nothing to close
    code, reason = WS_CLOSE.get(sender.result() or "", (1000, "closed"))
    with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError, TimeoutError):
        await asyncio.wait_for(websocket.close(code, reason), SEND_TIMEOUT_S)
