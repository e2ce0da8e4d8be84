"""The stream hub: one NATS subscription per channel, fanned out to bounded client queues.

Per API process, the hub holds one ordered JetStream consumer per live channel
(window updates, anomalies, alerts; see ``linkpulse.bus.live``). Each message
is decoded once into an ``Update`` (its SSE frame encoded once too) and put on
the inbox of every client whose ``StreamFilter`` matches it. Clients are
indexed by their filter's key (tenant, metric, window, seller; ``None`` for
"any"), so an update costs at most 16 dict look-ups to find its clients, not
a test per open stream. An inbox is bounded: a client whose inbox is full is
marked ``overflowed``, taken off the hub and its inbox emptied, so a slow
client never makes memory grow; its stream then says ``overflow`` and ends.

Time-based duties take no timer per update: one hub task ticks (every second
at most) and wakes the clients whose heartbeat or credential check is due,
cancels the send of a client that accepted nothing for ``SEND_TIMEOUT_S``,
and ends every stream when the server is told to exit (sse-starlette's
``AppStatus``, set on SIGINT/SIGTERM).

Resume: ``plan`` tells a (re)connecting client what to send first. A
``Last-Event-ID`` still retained on the channel's stream is replayed from the
stream (``replay``, a short-lived consumer filtered to the client's subject);
one no longer retained (or too far behind, or ahead of the stream, as after
the stream was re-created) gives a ``reset`` and a snapshot of the latest
values from Redis. The client is registered *before* its replay or snapshot
is read, and queued updates at or before what was already sent are skipped,
so the hand-over from stored to live updates has neither gap nor duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import msgspec
import nats.errors
import nats.js.errors
import redis.asyncio as aioredis
import redis.exceptions
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sse_starlette.sse import AppStatus

from linkpulse.aio import cancel_and_wait
from linkpulse.api.auth.guard import Guard
from linkpulse.api.auth.roles import Principal
from linkpulse.api.problems import ProblemError
from linkpulse.api.stream_filter import StreamFilter, Update, parse_update
from linkpulse.bus.connection import connect_nats
from linkpulse.bus.live import KINDS, ensure_live_streams, tenant_of_subject
from linkpulse.config import Settings
from linkpulse.errors import IngestError
from linkpulse.logging import get_logger
from linkpulse.schemas.outputs import MetricWindow

__all__ = ["SEND_TIMEOUT_S", "STOP", "Client", "Inbox", "Plan", "StreamHub", "filter_key"]

log = get_logger(__name__)
_RETRY_S = 2.0
_REPLAY_BATCH = 500
_window_decoder = msgspec.json.Decoder(MetricWindow)
SEND_TIMEOUT_S = 10.0  # a client that accepts nothing for this long is disconnected
_MAX_TICK_S = 1.0
# Put on a client's inbox to wake its stream when the hub ends it (overflow, shutdown).
STOP = Update(-1, "", None, None, None, b"")

FilterKey = tuple[str | None, str | None, str | None, str | None]


def filter_key(flt: StreamFilter) -> FilterKey:
    """The index key of a filter: (tenant, metric, window, seller), None for "any".

    >>> filter_key(StreamFilter("metrics", "acme", seller="s1"))
    ('acme', None, None, 's1')
    """
    return (flt.tenant, flt.metric, flt.window, flt.seller)


def _keys_of(u: Update) -> Iterator[FilterKey]:
    """Every filter key that matches ``u`` (each attribute: its value or "any").

    >>> sorted(_keys_of(Update(1, "acme", None, "gmv", None, b"")), key=str)
    [('acme', 'gmv', None, None), ('acme', None, None, None), (None, 'gmv', None, None), \
(None, None, None, None)]
    """
    tenants = (None,) if u.tenant is None else (u.tenant, None)
    metrics = (None,) if u.metric is None else (u.metric, None)
    windows = (None,) if u.window is None else (u.window, None)
    sellers = (None,) if u.seller is None else (u.seller, None)
    for t in tenants:
        for m in metrics:
            for w in windows:
                for s in sellers:
                    yield (t, m, w, s)


class Inbox:
    """A client's bounded FIFO of updates, with one reader that waits on it.

    The part of ``asyncio.Queue`` a stream uses, cheaper per update (a deque
    append, and a future only when the reader waits); the hub can also wake
    the reader with nothing in it (a heartbeat or a check is due).

    >>> box = Inbox(1)
    >>> box.put_nowait(STOP); box.qsize(), box.get_nowait() is STOP, box.empty()
    (1, True, True)
    """

    __slots__ = ("_items", "_maxsize", "_waiter")

    def __init__(self, maxsize: int) -> None:
        self._items: deque[Update] = deque()
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Update) -> None:
        """Append ``item``; ``asyncio.QueueFull`` when the inbox is full."""
        if len(self._items) >= self._maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        self.wake()

    def stop(self) -> None:
        """Drop what is queued (its memory goes now) and leave ``STOP`` alone in it."""
        self._items.clear()
        self._items.append(STOP)
        self.wake()

    def wake(self) -> None:
        """Make a waiting reader return from ``wait``."""
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def get_nowait(self) -> Update:
        """The oldest item; ``asyncio.QueueEmpty`` if none."""
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    def take_all(self) -> list[Update]:
        """Everything queued, oldest first, leaving the inbox empty."""
        items = list(self._items)
        self._items.clear()
        return items

    def qsize(self) -> int:
        """How many items are queued."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether nothing is queued."""
        return not self._items

    async def wait(self) -> None:
        """Return once something is queued, or the hub woke the reader."""
        if self._items:
            return
        w = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await w
        finally:
            self._waiter = None


@dataclass(eq=False)
class Client:
    """One open stream: its filter, its bounded inbox, and why it must stop (if so)."""

    principal: Principal
    filter: StreamFilter
    queue: Inbox
    overflowed: bool = False
    registered: bool = True
    closing: str | None = None  # set by the hub: "shutdown"
    key: FilterKey = field(default=(None, None, None, None))
    due: float = float("inf")  # monotonic time of its next heartbeat or credential check
    send_since: float = 0.0  # monotonic time its pending send began; 0: none pending
    sender: asyncio.Task[object] | None = None  # cancelled when a send takes too long


@dataclass(frozen=True)
class Plan:
    """What a stream sends before live updates: a replay from ``replay_from``, or a
    snapshot (after a ``reset`` with ``reason`` when a resume was impossible)."""

    position: int  # the last sequence covered before the queue takes over
    replay_from: int | None = None
    reset_reason: str | None = None

    @property
    def snapshot(self) -> bool:
        """Whether a snapshot is sent (no replay)."""
        return self.replay_from is None


class StreamHub:
    """Owns the NATS subscriptions and the open streams of one API process."""

    def __init__(self, settings: Settings, *, guard: Guard, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.guard = guard
        self._redis = redis
        self._nc: Nats | None = None
        self._streams: dict[str, str] = {}
        self._subs: list[object] = []
        self._last_seq: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._clients: dict[str, set[Client]] = {k: set() for k in KINDS}
        self._index: dict[str, dict[FilterKey, set[Client]]] = {k: {} for k in KINDS}
        self._open: set[Client] = set()  # registered, overflowed ones too, until unregistered
        self._per_principal: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.tick_s = min(
            _MAX_TICK_S, settings.stream_heartbeat_s / 3, settings.stream_revalidate_s / 3
        )
        self.send_timeouts = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.bad_messages = 0
        self.overflows = 0

    # lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background (the API starts even when NATS is down)."""
        self.loop = asyncio.get_running_loop()  # tests count its tasks (leak checks)
        self._task = asyncio.create_task(self._connect_loop(), name="stream-hub-connect")
        self._ticker = asyncio.create_task(self._tick_loop(), name="stream-hub-tick")

    async def _connect_loop(self) -> None:
        while True:
            try:
                await self._connect()
                return
            except IngestError as e:
                log.warning("stream hub not connected; retrying", error=str(e))
                await self._close_nats()
                await asyncio.sleep(_RETRY_S)

    async def _connect(self) -> None:
        nc = await connect_nats(self.settings, name="linkpulse-api-streams")
        self._nc = nc
        js = nc.jetstream()
        self._streams = await ensure_live_streams(js, self.settings)
        prefix = self.settings.subject_prefix
        try:
            for kind in KINDS:
                stream = self._streams[kind]
                info = await js.stream_info(stream)
                self._last_seq[kind] = int(info.state.last_seq)
                sub = await js.subscribe(
                    f"{prefix}.{kind}.>",
                    stream=stream,
                    cb=self._on_message(kind),
                    ordered_consumer=True,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=self._last_seq[kind] + 1,
                    ),
                )
                self._subs.append(sub)
        except (nats.errors.Error, TimeoutError) as e:
            msg = f"could not subscribe to the live streams: {e!r}"
            raise IngestError(msg) from e
        log.info("stream hub connected", streams=self._streams)

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        """Publish on a live stream (the audit watch's scores); dropped while NATS is away."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            log.warning("live update dropped: NATS is not connected", subject=subject)
            return
        try:
            await nc.jetstream().publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
        except (nats.errors.Error, TimeoutError) as e:
            log.warning("live update dropped", subject=subject, error=repr(e))

    async def _close_nats(self) -> None:
        nc, self._nc = self._nc, None
        self._subs.clear()
        if nc is not None:
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                await nc.close()

    async def stop(self) -> None:
        """End every open stream, then close the subscriptions."""
        await cancel_and_wait(self._task, self._ticker)
        self._shutdown()
        await self._close_nats()

    def _shutdown(self) -> None:
        for clients in self._clients.values():
            for c in tuple(clients):
                c.closing = "shutdown"
                self._kick(c)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.tick(time.monotonic())
            except Exception:  # noqa: BLE001 - the ticker must outlive any one bad client
                log.exception("stream hub tick failed")

    def tick(self, now: float) -> None:
        """Wake the clients with a duty due; cut off a send stuck past SEND_TIMEOUT_S;
        end every stream once the server is exiting."""
        if AppStatus.should_exit:  # uvicorn waits for open streams before the lifespan ends
            self._shutdown()
            return
        for c in self._open:  # an overflowed client too: its last send may be stuck
            if c.send_since and now - c.send_since > SEND_TIMEOUT_S:
                if c.sender is not None and not c.sender.done():
                    self.send_timeouts += 1
                    c.queue.stop()  # in case the cancellation is swallowed under the send
                    c.sender.cancel()
            elif now >= c.due:
                c.queue.wake()

    @property
    def ready(self) -> bool:
        """Subscribed to every channel."""
        return self._nc is not None and self._nc.is_connected and len(self._subs) == len(KINDS)

    def stats(self) -> dict[str, int]:
        """Open streams, subscriptions and counters (tests and /metrics)."""
        return {
            "clients": sum(len(c) for c in self._clients.values()),
            "subscriptions": len(self._subs),
            "nats_subscriptions": len(getattr(self._nc, "_subs", {})),
            "overflows": self.overflows,
            "send_timeouts": self.send_timeouts,
            "bad_messages": self.bad_messages,
            **{f"last_seq_{k}": v for k, v in self._last_seq.items()},
        }

    # fan-out -----------------------------------------------------------

    def _on_message(self, kind: str):  # type: ignore[no-untyped-def]
        prefix = self.settings.subject_prefix

        async def on_message(msg: Msg) -> None:
            seq = int(msg.metadata.sequence.stream)
            self._last_seq[kind] = seq
            tenant = tenant_of_subject(prefix, kind, msg.subject)
            try:
                if tenant is None:
                    raise ValueError(msg.subject)
                update = parse_update(kind, tenant, seq, msg.data)
            except ValueError as e:
                self.bad_messages += 1
                log.warning("live message skipped", subject=msg.subject, seq=seq, error=str(e))
                return
            self.dispatch(kind, update)

        return on_message

    def dispatch(self, kind: str, update: Update) -> None:
        """Queue ``update`` for every matching client; cut off the ones that are full."""
        index = self._index[kind]
        if not index:
            return
        full: list[Client] = []
        for key in _keys_of(update):
            clients = index.get(key)
            if clients is None:
                continue
            for c in clients:
                try:
                    c.queue.put_nowait(update)
                except asyncio.QueueFull:
                    full.append(c)
        for c in full:
            self._overflow(c)

    def _overflow(self, c: Client) -> None:
        self.overflows += 1
        c.overflowed = True
        self._forget(c)
        self._kick(c)

    def _forget(self, c: Client) -> None:
        """Take a client off the fan-out (it receives nothing more)."""
        kind = c.filter.kind
        self._clients[kind].discard(c)
        index = self._index[kind]
        clients = index.get(c.key)
        if clients is not None:
            clients.discard(c)
            if not clients:
                del index[c.key]

    @staticmethod
    def _kick(c: Client) -> None:
        """Empty a client's inbox (its memory goes now) and wake its stream with STOP."""
        c.queue.stop()

    # clients -----------------------------------------------------------

    def admit(self, principal: Principal) -> None:
        """Refuse a new stream when the principal's or the process's cap is reached."""
        s = self.settings
        if not self.ready:
            detail = "live streams are not available yet: NATS is not connected; retry shortly"
            raise ProblemError(
                503,
                "streams-unavailable",
                "Streams unavailable",
                detail,
                headers={"Retry-After": "2"},
            )
        if self._per_principal[principal.id] >= s.stream_max_per_principal:
            detail = (
                f"{principal.id} already has {s.stream_max_per_principal} open streams "
                "(LINKPULSE_STREAM_MAX_PER_PRINCIPAL); close one first"
            )
            raise ProblemError(
                429, "too-many-streams", "Too many streams", detail, headers={"Retry-After": "5"}
            )
        if self.stats()["clients"] >= s.stream_max_total:
            detail = (
                f"this API process serves its maximum of {s.stream_max_total} streams "
                "(LINKPULSE_STREAM_MAX_TOTAL); retry later or on another process"
            )
            raise ProblemError(
                503, "streams-full", "Streams full", detail, headers={"Retry-After": "5"}
            )

    def register(self, principal: Principal, flt: StreamFilter) -> Client:
        """Start queueing matching updates for a new client."""
        c = Client(principal, flt, Inbox(self.settings.stream_queue_size), key=filter_key(flt))
        self._clients[flt.kind].add(c)
        self._index[flt.kind].setdefault(c.key, set()).add(c)
        self._open.add(c)
        self._per_principal[principal.id] += 1
        return c

    def unregister(self, c: Client) -> None:
        """Forget a client (idempotent)."""
        if not c.registered:
            return
        c.registered = False
        self._forget(c)
        self._open.discard(c)
        self._per_principal[c.principal.id] -= 1
        if self._per_principal[c.principal.id] <= 0:
            del self._per_principal[c.principal.id]

    def position(self, kind: str) -> int:
        """The last sequence the hub has dispatched on ``kind``."""
        return self._last_seq[kind]

    async def plan(self, kind: str, last_event: int | None) -> Plan:
        """What to send a client (registered already) resuming after ``last_event``."""
        position = self._last_seq[kind]
        if last_event is None:
            return Plan(position)
        assert self._nc is not None
        try:
            info = await self._nc.jetstream().stream_info(self._streams[kind])
        except (nats.errors.Error, TimeoutError) as e:
            return Plan(position, reset_reason=f"the stream could not be read ({e!r})")
        first, last = int(info.state.first_seq), int(info.state.last_seq)
        if last_event > last:
            reason = (
                f"position {last_event} is ahead of the stream (last {last}): it was re-created"
            )
            return Plan(position, reset_reason=reason)
        if last_event + 1 < first:
            reason = f"position {last_event} is no longer retained (oldest kept: {first})"
            return Plan(position, reset_reason=reason)
        if last - last_event > self.settings.stream_max_replay:
            reason = (
                f"{last - last_event} updates were missed, more than LINKPULSE_STREAM_MAX_REPLAY "
                f"({self.settings.stream_max_replay})"
            )
            return Plan(position, reset_reason=reason)
        return Plan(last_event, replay_from=last_event + 1)

    async def replay(self, flt: StreamFilter, start: int) -> AsyncIterator[Update]:
        """The stored updates matching ``flt`` from sequence ``start`` to the stream's end."""
        assert self._nc is not None
        js = self._nc.jetstream()
        stream = self._streams[flt.kind]
        psub = await js.pull_subscribe(
            flt.subject(self.settings.subject_prefix),
            stream=stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60,
                mem_storage=True,
            ),
        )
        consumer: str | None = None
        try:
            info = await psub.consumer_info()
            consumer = info.name
            pending = int(info.num_pending or 0)
            prefix = self.settings.subject_prefix
            while pending > 0:
                try:
                    msgs = await psub.fetch(min(_REPLAY_BATCH, pending), timeout=5)
                except nats.errors.TimeoutError:
                    break
                for msg in msgs:
                    pending = int(msg.metadata.num_pending)
                    tenant = tenant_of_subject(prefix, flt.kind, msg.subject)
                    seq = int(msg.metadata.sequence.stream)
                    try:
                        update = parse_update(flt.kind, tenant or "", seq, msg.data)
                    except ValueError:
                        continue
                    if flt.matches(update):
                        yield update
        finally:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
                await psub.unsubscribe()
                if consumer is not None:
                    await js.delete_consumer(stream, consumer)

    async def snapshot(self, flt: StreamFilter) -> list[bytes]:
        """The latest value of every series the filter matches (window updates only)."""
        if flt.kind != "metrics":
            return []
        prefix = self.settings.redis_key_prefix
        pattern = f"{prefix}latest:{_glob_escape(flt.tenant) if flt.tenant else '*'}|*"
        out: list[bytes] = []
        try:
            keys = [k async for k in self._redis.scan_iter(match=pattern, count=1000)]
            for i in range(0, len(keys), 500):
                for raw in await self._redis.mget(keys[i : i + 500]):
                    if not isinstance(raw, bytes):
                        continue
                    try:
                        w = _window_decoder.decode(raw)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue
                    u = Update(0, w.tenant, w.dimensions.get("seller_id"), w.metric, w.window, raw)
                    if flt.matches(u):
                        out.append(raw)
        except (redis.exceptions.RedisError, OSError) as e:
            log.warning("snapshot incomplete: redis unreachable", error=repr(e))
        return out


def _glob_escape(text: str) -> str:
    """Escape Redis glob characters in a literal.

    >>> _glob_escape("a*b?[c]")
    'a\\\\*b\\\\?\\\\[c\\\\]'
    """
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
