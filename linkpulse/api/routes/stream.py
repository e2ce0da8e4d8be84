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
import time

from fastapi import APIRouter, Header, Query, Request, WebSocket
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from linkpulse.api.auth.guard import StreamPrincipal, WsStreamPrincipal
from linkpulse.api.auth.roles import Principal
from linkpulse.api.hub import SEND_TIMEOUT_S
from linkpulse.api.problems import ProblemError, problem_responses
from linkpulse.api.stream_filter import EVENT_NAMES, Update
from linkpulse.api.stream_session import (
    HEARTBEAT,
    Message,
    Session,
    batches,
    messages,
    open_session,
)
from linkpulse.logging import get_logger

router = APIRouter(tags=["streams"])
log = get_logger(__name__)

RETRY_MS = 3000
_RESPONSES = {
    200: {
        "description": "an SSE stream (text/event-stream); see docs/streams.md",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **problem_responses(400, 401, 403, 429, 503),
}


class SseStream(Response):
    """One SSE stream written straight to the ASGI ``send``: a batch of frames per write.

    Why not sse-starlette's ``EventSourceResponse`` here: it takes one event
    per iteration of an async iterator, encodes it, and arms a timer per send
    (a cancel scope, or ``asyncio.timeout``), and runs four tasks per client.
    This response sends bytes the hub encoded once per update (shared by all
    its clients) with no timer per send: the hub's tick wakes the stream for
    its heartbeat and credential check and cancels a send stuck past
    ``SEND_TIMEOUT_S``. Two tasks per client: the sender, and a watcher of
    ``http.disconnect`` (a vanished client frees its stream at once, not at its
    next write). sse-starlette still encodes the control events
    (``ServerSentEvent``) and tells the hub when the server exits (``AppStatus``).
    (HEAD, which sse-starlette answers without a body, is not routed here: 405.)
    """

    media_type = "text/event-stream"

    def __init__(self, session: Session) -> None:
        self.session = session
        self.status_code = 200
        self.background = None
        self.init_headers(  # no body attribute: no content-length, the stream is chunked
            {"Cache-Control": "no-store", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = self.session
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            sender = asyncio.create_task(self._send_all(send), name="sse-send")
            session.client.sender = sender
            watcher = asyncio.create_task(_gone(receive), name="sse-gone")
            try:
                done, _ = await asyncio.wait((sender, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                # STOP as well as cancel: a cancellation swallowed below us (seen at an abrupt
                # reset during the snapshot) would leave the sender waiting for updates.
                session.client.queue.stop()
                for task in (sender, watcher):
                    task.cancel()
                await asyncio.gather(sender, watcher, return_exceptions=True)
            if watcher in done:  # the client went: nothing more to send
                return
            if sender.cancelled():  # the hub's tick: a send stuck past SEND_TIMEOUT_S
                log.info("stream client accepted nothing for a while: disconnected")
                return
            error = sender.exception()
            if error is not None:
                raise error
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            session.close()  # if the stream never started (a failed first send)

    async def _send_all(self, send: Send) -> None:
        session = self.session
        client = session.client
        hb = session.hub.settings.stream_heartbeat_s
        head = _RETRY_FRAME  # goes out with the first batch (reset or snapshot)
        async with contextlib.aclosing(batches(session, heartbeat_s=hb)) as it:
            async for batch in it:
                body = head + b"".join([_frame(x) for x in batch])
                head = b""
                client.send_since = time.monotonic()
                await send({"type": "http.response.body", "body": body, "more_body": True})
                client.send_since = 0.0


async def _gone(receive: Receive) -> None:
    """Return when the client disconnects (an SSE request has nothing more to read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _token(conn: HTTPConnection) -> str | None:
    """The credential the stream re-checks: the header's, else (WebSocket) ``?token=``."""
    auth = conn.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return conn.headers.get("x-api-key") or conn.query_params.get("token")


_SEP = "\r\n"  # as the hub's update frames (stream_filter.sse_frame)
_RETRY_FRAME = ServerSentEvent(comment="linkpulse stream", retry=RETRY_MS, sep=_SEP).encode()
_HEARTBEAT_FRAME = ServerSentEvent(comment="heartbeat", sep=_SEP).encode()


def _frame(item: Message | Update) -> bytes:
    """The SSE frame of a batch item: an update's was encoded once by the hub for all."""
    if type(item) is Update:
        return item.frame
    assert isinstance(item, Message)
    if item is HEARTBEAT:
        return _HEARTBEAT_FRAME
    return ServerSentEvent(event=item.event, id=item.id, data=item.data.decode(), sep=_SEP).encode()


async def _open(
    request: Request,
    principal: Principal,
    kind: str,
    last_event_id: str | None,
    **filters: str | None,
) -> SseStream:
    session = await open_session(
        request, principal, kind, last_event_id, filters, token=_token(request)
    )
    return SseStream(session)


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
) -> SseStream:
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
) -> SseStream:
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
) -> SseStream:
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
    client = session.client
    async with contextlib.aclosing(messages(session)) as it:
        async for m in it:
            if m.event in WS_CLOSE:
                ending = m.event
            client.send_since = time.monotonic()  # the hub's tick cancels a stuck send
            try:
                await websocket.send_text(m.json().decode())
            except (WebSocketDisconnect, OSError, RuntimeError):  # gone mid-send
                return None
            client.send_since = 0.0
    return ending or client.closing


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
        session.close()
        raise
    sender = asyncio.create_task(_ws_send(websocket, session), name="ws-send")
    session.client.sender = sender
    watcher = asyncio.create_task(_ws_gone(websocket), name="ws-gone")
    done: set[asyncio.Task[object]] = set()
    try:
        done, _ = await asyncio.wait((sender, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, watcher):
            task.cancel()
        await asyncio.gather(sender, watcher, return_exceptions=True)
        session.close()  # in case the sender never got to run
    if sender.cancelled() and watcher not in done:
        log.info("ws client accepted nothing for a while: disconnected")
        return
    if watcher in done or sender not in done or sender.exception() is not None:
        return  # the client went (or the send failed): nothing to close
    code, reason = WS_CLOSE.get(sender.result() or "", (1000, "closed"))
    with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError, TimeoutError):
        await asyncio.wait_for(websocket.close(code, reason), SEND_TIMEOUT_S)
