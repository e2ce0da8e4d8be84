"""One live stream, whatever carries it (SSE or WebSocket): admission, then what it sends.

``open_session`` checks a client's filters and resume position (400/403
problem+json naming the field), the caps (429/503), registers the client on
the hub and plans what it gets first; every refusal is audited. ``messages``
is the stream itself, transport-neutral: an optional ``reset``, then a
``snapshot`` or the replay of what was missed, then live updates; it re-checks
the credentials every ``LINKPULSE_STREAM_REVALIDATE_S`` and ends with
``revoked`` or ``overflow`` when it must; it unregisters the client and audits
the stream's end (``Session.close``); ``batches`` is the same stream in lists
of what was ready together (the SSE route writes each list at once), with
stored and live updates as the hub's ``Update`` itself (no object per client
per update) and, if asked, a ``HEARTBEAT`` when one is due. ``routes/stream.py``
turns them into SSE frames or WebSocket text messages (see docs/streams.md).

>>> Message("reset", None, b'{"reason":"x"}').json()
b'{"event":"reset","id":null,"data":{"reason":"x"}}'
>>> Message("metric", "metrics-7", b"{}").json()
b'{"event":"metric","id":"metrics-7","data":{}}'
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass

import orjson
from starlette.requests import HTTPConnection

from linkpulse.api.audit import AuditEntry
from linkpulse.api.auth.authenticator import AuthError
from linkpulse.api.auth.guard import resource_of
from linkpulse.api.auth.roles import Principal
from linkpulse.api.hub import STOP, Client, Plan, StreamHub
from linkpulse.api.problems import ProblemError
from linkpulse.api.stream_filter import (
    EVENT_NAMES,
    FilterError,
    StreamFilter,
    Update,
    format_event_id,
    parse_event_id,
    scoped_filter,
)

__all__ = ["HEARTBEAT", "Message", "Session", "as_message", "batches", "messages", "open_session"]


@dataclass(frozen=True, slots=True)
class Message:
    """One thing a stream sends: an event name, its id (if any) and JSON data.

    ``update`` is set for stored and live updates, whose SSE frame the hub
    encoded once for every client (``Update.frame``).
    """

    event: str
    id: str | None
    data: bytes
    update: Update | None = None

    def json(self) -> bytes:
        """The message as one JSON document (a WebSocket text message)."""
        ident = b"null" if self.id is None else b'"%s"' % self.id.encode()
        return b'{"event":"%s","id":%s,"data":%s}' % (self.event.encode(), ident, self.data)


HEARTBEAT = Message("heartbeat", None, b"")  # in a batch when a heartbeat is due (SSE)


@dataclass
class Session:
    """An admitted stream: its hub, registered client, plan and credential."""

    hub: StreamHub
    client: Client
    plan: Plan
    token: str | None
    resource: str
    closed: bool = False

    def close(self, outcome: str = "closed", sent: int = 0) -> None:
        """Take the client off the hub and audit the stream's end (once; idempotent)."""
        if self.closed:
            return
        self.closed = True
        client = self.client
        self.hub.unregister(client)
        self.hub.guard.audit.record(
            AuditEntry.of(
                client.principal,
                f"stream.{client.filter.kind}",
                resource=self.resource,
                scope=client.filter.describe(),
                outcome=outcome,
                status=200,
                items=sent,
            )
        )


def _checked(
    conn: HTTPConnection,
    principal: Principal,
    kind: str,
    last_event_id: str | None,
    filters: dict[str, str | None],
    other_params: Iterable[str],
    resume_field: str,
) -> tuple[StreamFilter, int | None]:
    """The client's filter and resume position, or a 400/403 problem naming the field."""
    known = set(filters) | set(other_params)
    unknown = sorted(set(conn.query_params) - known)
    if unknown:  # a filter we don't know must not open a stream that ignores it
        names = ", ".join(sorted(known))
        detail = f"unknown query parameter {unknown[0]!r} on this stream; its parameters: {names}"
        raise ProblemError(400, "invalid-filter", "Invalid stream filter", detail, field=unknown[0])
    try:
        flt = scoped_filter(principal, kind, **filters)
        resume = parse_event_id(kind, last_event_id) if last_event_id else None
    except FilterError as e:
        slug = "forbidden-scope" if e.status == 403 else "invalid-filter"
        title = "Out of scope" if e.status == 403 else "Invalid stream filter"
        field = resume_field if e.field == "Last-Event-ID" else e.field
        raise ProblemError(e.status, slug, title, e.detail, field=field) from e
    return flt, resume


async def open_session(
    conn: HTTPConnection,
    principal: Principal,
    kind: str,
    last_event_id: str | None,
    filters: dict[str, str | None],
    *,
    token: str | None,
    other_params: Iterable[str] = (),
    resume_field: str = "Last-Event-ID",
) -> Session:
    """Admit a stream (or raise the ProblemError saying why not, audited)."""
    hub: StreamHub = conn.app.state.hub
    try:
        flt, resume = _checked(
            conn, principal, kind, last_event_id, filters, other_params, resume_field
        )
        hub.admit(principal)
    except ProblemError as e:  # refused requests are audited like the guard's refusals
        hub.guard.audit.record(
            AuditEntry.of(
                principal,
                "refused",
                resource=resource_of(conn),
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
            resource=conn.url.path,
            scope={**flt.describe(), **({"last_event_id": last_event_id} if last_event_id else {})},
            outcome="open",
            status=200,
        )
    )
    return Session(hub, client, plan, token, conn.url.path)


def _json(obj: object) -> bytes:
    return orjson.dumps(obj)


async def _still_valid(hub: StreamHub, token: str | None) -> str | None:
    """Why the stream's credentials no longer hold, or None while they do."""
    try:
        await hub.guard.principal(token)
    except AuthError as e:
        if e.status == 503:  # can't check right now: keep serving, check again later
            return None
        return e.detail
    return None


def _update(kind: str, u: Update) -> Message:
    return Message(EVENT_NAMES[kind], format_event_id(kind, u.seq), u.data, u)


def as_message(kind: str, item: Message | Update) -> Message:
    """An item of ``batches`` as a ``Message`` (updates come as the hub's ``Update``)."""
    return item if isinstance(item, Message) else _update(kind, item)


async def batches(
    s: Session, *, heartbeat_s: float | None = None
) -> AsyncGenerator[list[Message | Update], None]:
    """Everything the stream sends, in order, in lists of what was ready together;
    ends the session (unregister, audit).

    A client that fell behind gets every queued update in one list, so its
    transport sends them in one write: the cost per update falls as the load
    rises, instead of each update paying a send of its own. No timer is armed
    per wait: the hub's tick wakes the stream when ``client.due`` (its next
    credential check, or ``HEARTBEAT`` every ``heartbeat_s``) has passed.
    """
    hub, client, plan = s.hub, s.client, s.plan
    kind, queue = client.filter.kind, client.queue
    settings = hub.settings
    sent, outcome, last = 0, "closed", plan.position
    try:
        if plan.reset_reason is not None:
            yield [Message("reset", None, _json({"reason": plan.reset_reason}))]
        if plan.replay_from is None:
            items = await hub.snapshot(client.filter)
            position = format_event_id(kind, plan.position)
            data = b'{"position":"%s","items":[%s]}' % (position.encode(), b",".join(items))
            yield [Message("snapshot", position, data)]
        else:
            async for u in hub.replay(client.filter, plan.replay_from):
                last = max(last, u.seq)
                sent += 1
                yield [u]
        now = time.monotonic()
        next_check = now + settings.stream_revalidate_s
        next_beat = now + heartbeat_s if heartbeat_s else float("inf")
        client.due = min(next_check, next_beat)
        while True:
            out: list[Message | Update] = []
            if client.due <= (now := time.monotonic()):
                if now >= next_check:
                    reason = await _still_valid(hub, s.token)
                    if reason is not None:
                        outcome = "revoked"
                        yield [Message("revoked", None, _json({"reason": reason}))]
                        return
                    next_check = time.monotonic() + settings.stream_revalidate_s
                if heartbeat_s and now >= next_beat:
                    out.append(HEARTBEAT)
                    next_beat = now + heartbeat_s
                client.due = min(next_check, next_beat)
            elif queue.empty():
                await queue.wait()
                continue
            for u in queue.take_all():
                if u is STOP:
                    if client.overflowed:
                        outcome = "overflow"
                        detail = (
                            f"this client fell {settings.stream_queue_size} updates behind and "
                            "was disconnected; reconnect with Last-Event-ID (last_event_id on "
                            "/v1/ws) to get what it missed"
                        )
                        out.append(Message("overflow", None, _json({"reason": detail})))
                    else:
                        outcome = client.closing or "closed"
                    if out:
                        yield out
                    return
                if u.seq <= last:  # already sent by the replay (hand-over overlap)
                    continue
                last = u.seq
                sent += 1
                out.append(u)
            if out:
                yield out
    finally:
        s.close(outcome, sent)


async def messages(s: Session) -> AsyncGenerator[Message, None]:
    """Everything the stream sends, one message at a time (see ``batches``)."""
    kind = s.client.filter.kind
    async with contextlib.aclosing(batches(s)) as it:
        async for batch in it:
            for item in batch:
                yield as_message(kind, item)
