"""One JetStream source partition: an ordered push consumer behind a bounded buffer.

The nats client runs in a background event-loop thread (``LoopThread``); the
callback appends messages to a deque that Bytewax's thread drains into
deterministic chunks (``chunks.Chunker``). See ``jetstream_source`` for the
contract and ``docs/dataflow.md`` for the design. Build partitions with
``JetStreamSource.build_part``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import nats.errors
from bytewax.inputs import StatefulSourcePartition
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from linkpulse.bus.connection import nats_servers
from linkpulse.config import Settings
from linkpulse.dataflows import instrumentation as metrics
from linkpulse.dataflows._loop import LoopThread
from linkpulse.dataflows.chunks import Chunk, Chunker, Message
from linkpulse.errors import DataflowError
from linkpulse.logging import get_logger

__all__ = ["JetStreamPartition"]

log = get_logger(__name__)


def _seq_time_pending(reply: str) -> tuple[int, int, int]:
    """Stream sequence, stream time (ns) and consumer num_pending from an ack subject.

    v1: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>``;
    v2 adds a domain and an account hash after ``ACK`` (and maybe a token at the end).

    >>> _seq_time_pending("$JS.ACK.S.C.1.42.7.1700000000.3")
    (42, 1700000000, 3)
    >>> _seq_time_pending("$JS.ACK.dom.acc.S.C.1.42.7.1700000000.3.xyz")
    (42, 1700000000, 3)
    """
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[7]), int(tokens[8])
    return int(tokens[7]), int(tokens[9]), int(tokens[10])


class JetStreamPartition(StatefulSourcePartition[Chunk, int]):
    """One filter subject of the stream, read from ``next_seq`` on."""

    def __init__(
        self,
        settings: Settings,
        filter_subject: str,
        next_seq: int,
        *,
        batch_size: int,
        max_buffered: int,
        stop_at_seq: int | None,
        idle_wake: timedelta,
        tick_ns: int = 100_000_000,
    ) -> None:
        self._settings = settings
        self._filter = filter_subject
        self._next_seq = next_seq  # Bytewax thread: first sequence not yet emitted
        self._batch_size = batch_size
        self._max_buffered = max_buffered
        self._stop_at_seq = stop_at_seq
        self._idle_wake = idle_wake
        self._buf: deque[Message] = deque()  # appended by the loop thread, popped by Bytewax
        self._chunker = Chunker(filter_subject, max_messages=batch_size, tick_ns=tick_ns)
        self._last_empty = False
        self._done = False
        # Loop-thread state.
        self._read_seq = next_seq - 1  # last sequence put in the buffer
        # Consumer num_pending after the last message read; -1 until known, so
        # a fresh consumer that has not delivered yet never looks idle.
        self._pending = -1
        self._stream_last = 0  # the stream's last sequence, as of the last message read
        self._paused = False  # no consumer: buffer full, or restarting after a drop
        self._restarting = False
        self._sub: Any = None
        self._nc: Client | None = None
        self._loop = LoopThread(f"jetstream-{filter_subject}")
        try:
            self._loop.run(self._start(), timeout=15)
        except Exception as e:
            self._loop.stop()
            msg = f"cannot consume {filter_subject} from stream {settings.stream_name}: {e!r}"
            raise DataflowError(msg) from e

    # -- loop thread ---------------------------------------------------------

    async def _start(self) -> None:
        async def on_error(e: Exception) -> None:
            if isinstance(e, nats.errors.SlowConsumerError) and self._sub is not None:
                if e.sid == self._sub._id:
                    # nats-py dropped a message but already advanced its ordered
                    # consumer past it: the next message would hide a gap.
                    # Ignore the rest of this consumer and re-read from the last
                    # sequence we buffered.
                    metrics.SOURCE_RESTARTS.labels(self._filter).inc()
                    self._paused = True
                    self._pending = -1
                    asyncio.get_running_loop().create_task(self._restart())
                    return
            log.warning("nats error", error=repr(e), subject=self._filter)

        self._nc = await nats.connect(
            servers=nats_servers(self._settings),
            name=f"linkpulse-dataflow-source-{self._filter}",
            connect_timeout=3,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            error_cb=on_error,
        )
        js = self._nc.jetstream()
        await js.stream_info(self._settings.stream_name)  # fails fast if it doesn't exist
        await self._subscribe()

    async def _subscribe(self) -> None:
        assert self._nc is not None
        js = self._nc.jetstream()
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, self._read_seq + 1),
        )
        self._sub = await js.subscribe(
            self._filter,
            stream=self._settings.stream_name,
            ordered_consumer=True,
            config=config,
            cb=self._on_msg,
            idle_heartbeat=2.0,
            # The buffer below is the bound; this queue stays short because
            # the callback never blocks.
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=1 << 30,
        )
        self._paused = False
        if self._pending < 0:
            # Nothing may ever arrive (we start past the end): ask once.
            try:
                info = await self._sub.consumer_info()
                if self._pending < 0 and info.num_pending == 0 and not self._buf:
                    self._pending = 0
            except (nats.errors.Error, TimeoutError) as e:
                log.warning("consumer info failed", error=repr(e), subject=self._filter)

    async def _on_msg(self, msg: Msg) -> None:
        if self._paused:
            return  # this consumer is being replaced; its messages are re-read
        seq, stream_ns, pending = _seq_time_pending(msg.reply)
        if seq <= self._read_seq:
            return  # re-delivered after an ordered-consumer reset
        self._buf.append((msg.data, msg.subject, seq, stream_ns))
        self._read_seq = seq
        self._pending = pending
        self._stream_last = seq + pending
        if len(self._buf) >= self._max_buffered:
            self._paused = True
            self._pending = -1  # the messages we now skip are still to come
            asyncio.get_running_loop().create_task(self._drop_consumer())

    async def _drop_consumer(self) -> None:
        sub, self._sub = self._sub, None
        if sub is None:
            return
        try:
            await sub.unsubscribe()
        except (TimeoutError, nats.errors.Error) as e:
            log.warning("unsubscribe failed", error=repr(e), subject=self._filter)

    async def _restart(self) -> None:
        if self._restarting:
            return
        self._restarting = True
        try:
            await self._drop_consumer()
            await self._subscribe()
        finally:
            self._restarting = False

    async def _close(self) -> None:
        await self._drop_consumer()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    # -- Bytewax thread ------------------------------------------------------

    def buffered(self) -> int:
        """Messages read from NATS and not yet emitted (bounded by ``max_buffered``)."""
        return len(self._buf)

    @property
    def lag(self) -> int:
        """Messages in the stream after the last one emitted: stream last seq - position."""
        return max(0, self._stream_last - (self._next_seq - 1))

    def next_batch(self) -> list[Chunk]:
        if self._done or (self._stop_at_seq is not None and self._next_seq > self._stop_at_seq):
            raise StopIteration
        n = min(self._batch_size * 4, len(self._buf))
        popleft = self._buf.popleft
        chunks: list[Chunk] = []
        add = self._chunker.add
        stop = self._stop_at_seq
        for _ in range(n):
            item = popleft()
            closed = add(item)
            if closed is not None:
                chunks.append(closed)
            if stop is not None and item[2] >= stop:
                last = self._chunker.close()
                if last is not None:
                    chunks.append(last)
                self._done = True
                break
        if self._paused and not self._restarting and len(self._buf) <= self._max_buffered // 2:
            self._restarting = True
            self._loop.loop.call_soon_threadsafe(self._resume)
        # Closing a chunk by the clock is only right when the stream has nothing
        # more for us; while catching up the buffer is often empty for a moment.
        if not self._buf and not self._done and self._pending == 0:
            idle = self._chunker.on_idle(time.time_ns())
            if idle is not None:
                chunks.append(idle)
        self._last_empty = n == 0
        for chunk in chunks:
            if chunk.messages:
                self._next_seq = chunk.messages[-1][2] + 1
                metrics.SOURCE_BATCH.observe(len(chunk.messages))
        if n:
            metrics.EVENTS_IN.labels(self._filter).inc(n)
        metrics.CONSUMER_LAG.labels(self._filter).set(self.lag)
        return chunks

    def _resume(self) -> None:
        self._restarting = False
        asyncio.get_running_loop().create_task(self._restart())

    def next_awake(self) -> datetime | None:
        # Poll an idle stream every few ms instead of Bytewax's 1 ms spin.
        if self._last_empty:
            return datetime.now(UTC) + self._idle_wake
        return None

    def snapshot(self) -> int:
        return self._next_seq

    def close(self) -> None:
        try:
            self._loop.run(self._close(), timeout=5)
        except Exception as e:  # closing is best effort; the process is ending
            log.warning("closing the JetStream source failed", error=repr(e))
        self._loop.stop()
