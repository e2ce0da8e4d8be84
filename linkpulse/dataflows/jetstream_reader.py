"""The JetStream reader process: consume, cut chunks, ship them to the flow.

One reader process serves one source partition (``jetstream_partition``
starts it with ``python -m linkpulse.dataflows.jetstream_reader``). It keeps
an ordered push consumer on the stream, cuts the messages into the
deterministic chunks of ``chunks.Chunker``, and writes each closed chunk to
its stdout as a length-prefixed msgpack ``Frame``. Its stdin carries the
reader's arguments first, then *credits*: the running count of messages the
flow has taken.

Why a process, and why a lean data connection: receiving a message costs
nats-py ~12 us of Python here; the reader's own ``nats_wire`` connection
does it in ~3 us, and in a process of its own even that runs on the other
core instead of holding the GIL that decoding, aggregation and the store
writer need. The flow then decodes a whole chunk per frame, in C. nats-py
still does everything else: stream info, creating and deleting consumers.

What the reader guarantees:

* **Bounded.** Once the messages read but not yet taken by the flow
  (credits) reach ``max_buffered``, the reader holds back its answers to
  JetStream's flow-control requests, and the server stops pushing after a
  window (~1.5 MB on NATS 2.9; with large messages it goes on at a trickle);
  the answers go out when the flow has caught up. Should the server push on
  to twice ``max_buffered``, the reader
  drops its consumer and re-creates it at the next unread sequence once the
  flow has taken half.
* **Exact resume.** The reader starts at ``start_seq``, a chunk boundary (the
  flow's snapshot), so it re-forms the very chunks of the first run.
* **Ordered, no gaps.** Every delivery must carry the next consumer
  sequence; a gap, three missed heartbeats, a consumer error status or a lost
  connection re-create the consumer after the last sequence read.
* **Idle clock.** Once no delivery has closed a due chunk, the reader asks
  the server whether anything matching its filter is stored after the last
  sequence read (a ``next_by_subj`` message get); only a "no" lets the wall
  clock close the chunk or tick on (``Chunker.on_idle`` with the time it
  asked). The pending count a delivery carries is not used for this: on NATS
  2.9 it stays at 1 or 3 after a pipelined burst while nothing is left, and
  the tail of the burst then waited for the next publish.
* **No orphan.** The reader exits when its stdin closes, which the kernel does
  when the flow's process dies, even by SIGKILL. It ignores SIGINT: a Ctrl-C
  in the terminal is the flow's to handle.

>>> f = Frame([Chunk("p", 7, [(b"{}", "lp.events.a.x", 3, 7)])], read=3, stream_last=9)
>>> FRAME_DECODER.decode(FRAME_ENCODER.encode(f)) == f
True
"""

from __future__ import annotations

import asyncio
import os
import struct
import time

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from linkpulse.dataflows._child import FrameBuffer, child_stdio, frame, read_frame
from linkpulse.dataflows.chunks import Chunk, Chunker
from linkpulse.dataflows.nats_wire import DataConnection, NatsWireError, parse_status
from linkpulse.logging import configure_logging, get_logger
from linkpulse.nats_auth import nats_py_auth

__all__ = [
    "CREDIT",
    "FRAME_DECODER",
    "FRAME_ENCODER",
    "Frame",
    "ReaderArgs",
]

log = get_logger(__name__)

CREDIT = struct.Struct("<Q")  # flow -> reader: messages taken so far, a running total
HEARTBEAT_S = 2.0  # the consumer's idle heartbeat; 3 missed ones re-create it
QUIET_RETRY_S = (0.05, 1.0)  # between "is it quiet?" asks answered "no": doubling, capped
INACTIVE_S = 30.0  # the server deletes a consumer left without its reader this long


class ReaderArgs(msgspec.Struct, frozen=True):
    """What the flow tells its reader, as the first message on the reader's stdin."""

    servers: list[str]
    stream: str
    filter_subject: str
    start_seq: int
    stop_at_seq: int | None
    batch_size: int
    max_buffered: int
    tick_ns: int
    idle_wake_s: float = 0.005
    connect_timeout_s: float = 10.0  # the first connection to NATS; then it reconnects forever
    log_level: str = "INFO"
    log_json: bool = False


class Frame(msgspec.Struct, array_like=True):
    """Reader -> flow: closed chunks, in stream order, and where the reader stands.

    ``read`` counts every message read so far (a running total, including the
    open chunk's); ``read`` minus the credits sent is what is buffered.
    ``stream_last`` is the partition's last stream sequence as of the last
    message read, for the lag metric: that message's sequence plus the pending
    count it came with (approximate), or exactly the last sequence read once
    the server said nothing follows it; ``restarts`` counts consumer re-creations (after a
    gap, missed heartbeats, an error status or a lost connection).
    ``done``: the chunk ending at ``stop_at_seq`` was sent. ``error``: the
    reader could not start, and why.
    """

    chunks: list[Chunk]
    read: int = 0
    stream_last: int = 0
    restarts: int = 0
    done: bool = False
    error: str | None = None


FRAME_ENCODER = msgspec.msgpack.Encoder()
FRAME_DECODER = msgspec.msgpack.Decoder(Frame)
ARGS_DECODER = msgspec.json.Decoder(ReaderArgs)


class _Credits(asyncio.Protocol):
    """The reader's stdin: running totals of messages the flow took; EOF = stop."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self._frames = FrameBuffer()

    def data_received(self, data: bytes) -> None:
        credits = self._frames.feed(data)
        if credits:
            (taken,) = CREDIT.unpack(credits[-1])  # running totals: the latest is enough
            self._reader.on_credit(taken)

    def eof_received(self) -> bool:
        self._reader.stop()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._reader.stop()


class _Frames(asyncio.Protocol):
    """The reader's frame output; a closed pipe means the flow is gone."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader

    def connection_lost(self, exc: Exception | None) -> None:
        self._reader.stop()


class Reader:
    """The consumer side of one partition (runs in the reader process's event loop).

    An *ordered* push consumer, kept by hand: nats-py (``self._js``) creates
    and deletes it, the lean ``DataConnection`` receives its messages. Every
    delivery's consumer sequence must be the next one; a gap, a missed
    heartbeat or a lost connection re-creates the consumer at the sequence
    after the last one read, on a fresh deliver subject, so a stale delivery
    can never be mistaken for a new one.
    """

    def __init__(self, args: ReaderArgs) -> None:
        self.args = args
        self._chunker = Chunker(
            args.filter_subject, max_messages=args.batch_size, tick_ns=args.tick_ns
        )
        self._read_seq = args.start_seq - 1  # last sequence read
        self._read = 0  # messages read (running total)
        self._taken = 0  # messages the flow took (its latest credit)
        self._asking = False  # an "is the stream quiet?" request is out
        self._ask_after = 0.0  # monotonic time before which we don't ask again
        self._ask_wait = QUIET_RETRY_S[0]
        self._stream_last = 0
        self._restarts = 0
        self._paused = True  # no live consumer: starting, buffer full, restarting, or done
        self._restarting = False
        self._again = False  # a fault came while re-creating: re-create once more
        self._done = False
        self._sid = 0  # the live consumer's subscription on the data connection
        self._dseq = 1  # the consumer sequence the next delivery must carry
        self._consumer: str | None = None
        self._deliveries = 0  # deliveries and heartbeats seen, for the watchdog
        self._subjects: dict[bytes, str] = {}
        self._held: list[bytes] = []  # flow-control answers held back while the flow is behind
        self._nc: Client | None = None
        self._data: DataConnection | None = None
        self._out: asyncio.WriteTransport | None = None
        self._stopped = asyncio.Event()

    # -- output --------------------------------------------------------------

    def _send(self, chunks: list[Chunk], *, error: str | None = None) -> None:
        if self._out is None or self._out.is_closing():
            return
        body = FRAME_ENCODER.encode(
            Frame(chunks, self._read, self._stream_last, self._restarts, self._done, error)
        )
        self._out.write(frame(body))

    # -- lifecycle -----------------------------------------------------------

    async def run(self, frames_fd: int, credits_fd: int) -> None:
        loop = asyncio.get_running_loop()
        out, _ = await loop.connect_write_pipe(
            lambda: _Frames(self), os.fdopen(frames_fd, "wb", buffering=0)
        )
        self._out = out
        await loop.connect_read_pipe(lambda: _Credits(self), os.fdopen(credits_fd, "rb"))
        # The flow may go away while we start (stdin closes): stop starting then.
        start = loop.create_task(self._start())
        stopped = loop.create_task(self._stopped.wait())
        await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not start.done():
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            await self._close()
            return
        if (problem := start.exception()) is not None:
            # reported to the flow, which raises it
            self._send([], error=f"{type(problem).__name__}: {problem}")
            await self._close()
            return
        self._send([])  # ready
        clock = loop.create_task(self._clock())
        await self._stopped.wait()
        clock.cancel()
        await self._close()

    async def _start(self) -> None:
        errors: list[Exception] = []

        async def on_error(e: Exception) -> None:
            errors.append(e)
            log.warning("nats error", error=repr(e), subject=self.args.filter_subject)

        # Reconnecting forever is right once connected, but the first connect
        # would then retry forever too: give it a deadline, and say why.
        try:
            self._nc = await asyncio.wait_for(
                nats.connect(
                    servers=self.args.servers,
                    name=f"linkpulse-dataflow-source-{self.args.filter_subject}",
                    connect_timeout=3,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=on_error,
                    **nats_py_auth(self.args.servers),  # decoded (nats-py sends them encoded)
                ),
                self.args.connect_timeout_s,
            )
        except TimeoutError:
            last = repr(errors[-1]) if errors else "no answer"
            msg = (
                f"NATS at {', '.join(self.args.servers)} not reachable within "
                f"{self.args.connect_timeout_s:g} s: {last}"
            )
            raise ConnectionError(msg) from None
        await self._nc.jetstream().stream_info(self.args.stream)  # fails fast if missing
        await self._open_data()
        await self._subscribe()

    def stop(self) -> None:
        self._stopped.set()

    async def _close(self) -> None:
        await self._drop_consumer()
        if self._data is not None:
            self._data.close()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
        if self._out is not None:
            self._out.close()  # flushes what is buffered first
            for _ in range(100):
                if self._out.get_write_buffer_size() == 0:
                    break
                await asyncio.sleep(0.01)

    # -- consumer ------------------------------------------------------------

    async def _open_data(self) -> None:
        assert self._nc is not None
        current = self._nc.connected_url
        url = current.geturl() if current is not None else self.args.servers[0]
        self._data = await DataConnection.open(
            url,
            self._on_delivery,
            self._on_data_lost,
            name=f"linkpulse-dataflow-source-data-{self.args.filter_subject}",
        )

    def _on_data_lost(self) -> None:
        if not self._stopped.is_set():
            log.warning("jetstream reader: data connection lost", subject=self.args.filter_subject)
            self._reset()

    async def _subscribe(self) -> None:
        assert self._nc is not None and self._data is not None
        inbox = self._nc.new_inbox()
        self._sid = self._data.subscribe(inbox)
        await self._data.ping()  # the SUB is in place before the consumer pushes
        self._dseq = 1
        self._held = []  # the old consumer's
        self._paused = False
        from_seq = self._read_seq
        info = await self._nc.jetstream().add_consumer(
            self.args.stream,
            ConsumerConfig(
                deliver_subject=inbox,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=max(1, from_seq + 1),
                filter_subject=self.args.filter_subject,
                ack_policy=AckPolicy.NONE,
                max_deliver=1,
                flow_control=True,
                idle_heartbeat=HEARTBEAT_S,
                inactive_threshold=INACTIVE_S,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        self._consumer = info.name

    def _on_delivery(
        self, sid: int, subject: bytes, reply: bytes | None, headers: bytes, data: bytes
    ) -> None:
        if sid != self._sid or self._paused:
            return  # a replaced consumer's, or we are paused: re-read later
        self._deliveries += 1
        if reply is None or not reply.startswith(b"$JS.ACK."):
            self._on_control(headers, reply)
            return
        tokens = reply.split(b".")
        # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>; v2 adds
        # a domain and an account hash after ACK (and maybe a token at the end).
        at = 5 if len(tokens) == 9 else 7
        if int(tokens[at + 1]) != self._dseq:
            self._reset()  # a gap: the server skipped (or we lost) a delivery
            return
        self._dseq += 1
        seq = int(tokens[at])
        if seq <= self._read_seq:
            return  # read before a re-creation
        pending = int(tokens[at + 3])
        self._read_seq = seq
        self._read += 1
        self._stream_last = seq + pending  # the lag metric's (pending is not exact)
        name = self._subjects.get(subject)
        if name is None:
            name = self._subjects[subject] = subject.decode()
        closed = self._chunker.add((data, name, seq, int(tokens[at + 2])))
        stop = self.args.stop_at_seq
        if stop is not None and seq >= stop:
            last = self._chunker.close()
            self._done = self._paused = True
            self._send([c for c in (closed, last) if c is not None])
            asyncio.get_running_loop().create_task(self._drop_consumer())
            return
        if closed is not None:
            self._send([closed])
        if self._read - self._taken >= 2 * self.args.max_buffered:
            # The server sent on past held flow control (a bigger window
            # than ours): drop the consumer, re-read from here later.
            self._paused = True
            self._send([])  # let the flow see how much is buffered
            asyncio.get_running_loop().create_task(self._drop_consumer())

    def _on_control(self, headers: bytes, reply: bytes | None) -> None:
        assert self._data is not None
        status = parse_status(headers) if headers else None
        if status is None:
            return  # not JetStream's: ignore
        if status.code == 100 and reply is not None:
            self._flow_control(reply)
        elif status.code == 100:  # idle heartbeat
            stalled = status.fields.get("Nats-Consumer-Stalled")
            if stalled:
                self._flow_control(stalled.encode())
            last = status.fields.get("Nats-Last-Consumer")
            if last is not None and last.isdigit() and int(last) != self._dseq - 1:
                self._reset()  # deliveries we never got
        else:
            log.warning(
                "jetstream reader: consumer status; re-creating it",
                code=status.code,
                description=status.description,
                subject=self.args.filter_subject,
            )
            self._reset()

    def _flow_control(self, reply: bytes) -> None:
        """Answer a flow-control request now, or once the flow has caught up.

        Holding the answer is JetStream's own backpressure: the server stops
        (or slows to a trickle) once about a window (~1.5 MB on NATS 2.9)
        goes unanswered, and nothing it sent is wasted.
        """
        assert self._data is not None
        if self._read - self._taken >= self.args.max_buffered:
            self._held.append(reply)
        else:
            self._data.publish_empty(reply)

    def _release_flow_control(self) -> None:
        if self._held and self._data is not None and not self._data.closed:
            if self._read - self._taken < self.args.max_buffered:
                held, self._held = self._held, []
                for reply in held:
                    self._data.publish_empty(reply)

    def _reset(self) -> None:
        """Drop the consumer and re-create it after the last sequence read."""
        if self._done:
            return
        self._restarts += 1
        self._paused = True
        if self._restarting:
            # A re-creation is under way (a resume, or an earlier fault) and
            # may already be past the point this fault breaks (a consumer
            # pushing to a dead connection): it must go round once more.
            self._again = True
            return
        asyncio.get_running_loop().create_task(self._restart())

    def on_credit(self, taken: int) -> None:
        self._taken = taken
        self._release_flow_control()
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        # Messages in sent chunks the flow has not taken; the open chunk is
        # left out, or a chunk bigger than half the bound would never resume.
        unsent = self._chunker.open_messages
        if (
            self._paused
            and not self._done
            and not self._restarting
            and self._read - unsent - self._taken <= self.args.max_buffered // 2
        ):
            asyncio.get_running_loop().create_task(self._restart())

    async def _clock(self) -> None:
        """Idle chunks by the wall clock, and the heartbeat watchdog."""
        seen, seen_at = -1, time.monotonic()
        while True:
            await asyncio.sleep(self.args.idle_wake_s)
            if self._paused:
                seen, seen_at = -1, time.monotonic()
                self._maybe_resume()  # a credit that came before the pause took effect
                continue
            if self._deliveries != seen:
                seen, seen_at = self._deliveries, time.monotonic()
                self._ask_after, self._ask_wait = 0.0, QUIET_RETRY_S[0]  # it moved: ask soon
            elif time.monotonic() - seen_at > 3 * HEARTBEAT_S:
                log.warning("jetstream reader: no heartbeat", subject=self.args.filter_subject)
                seen, seen_at = -1, time.monotonic()
                self._reset()
                continue
            self._maybe_ask_quiet()

    def _maybe_ask_quiet(self) -> None:
        """Ask the server whether the stream is quiet, when a quiet stream would cut a chunk."""
        if self._asking or time.monotonic() < self._ask_after:
            return
        asked_ns = time.time_ns()
        if self._chunker.idle_due(asked_ns):
            self._asking = True
            asyncio.get_running_loop().create_task(self._close_if_quiet(asked_ns))

    async def _close_if_quiet(self, asked_ns: int) -> None:
        """Cut the idle chunk as of ``asked_ns`` if nothing is stored after what we read.

        The answer is the store's own (the next message matching the filter
        after the last sequence read), not a pending count; it holds as of a
        moment after ``asked_ns``, which is what ``Chunker.on_idle`` needs.
        """
        assert self._nc is not None
        seq = self._read_seq
        try:
            await self._nc.jetstream().get_msg(
                self.args.stream, seq=seq + 1, subject=self.args.filter_subject, next=True
            )
            quiet = False  # stored but not read yet: its delivery is on its way
        except nats.js.errors.NotFoundError:
            quiet = True
        except (TimeoutError, nats.errors.Error) as e:
            log.info("quiet check failed", error=repr(e), subject=self.args.filter_subject)
            quiet = False
        finally:
            self._asking = False
        if seq != self._read_seq or self._done:
            return  # a delivery came meanwhile: the chunker decides again
        if not quiet:
            # Ask again later, less often while nothing moves (held flow control).
            self._ask_after = time.monotonic() + self._ask_wait
            self._ask_wait = min(self._ask_wait * 2, QUIET_RETRY_S[1])
            return
        self._stream_last = seq  # nothing of ours after it
        chunk = self._chunker.on_idle(asked_ns)
        if chunk is not None:
            self._send([chunk])

    async def _drop_consumer(self) -> None:
        sid, self._sid = self._sid, 0
        name, self._consumer = self._consumer, None
        if sid and self._data is not None and not self._data.closed:
            self._data.unsubscribe(sid)
        if name is None or self._nc is None or self._nc.is_closed:
            return
        try:
            await self._nc.jetstream().delete_consumer(self.args.stream, name)
        except (TimeoutError, nats.errors.Error) as e:
            # It goes by itself after INACTIVE_S without a subscriber.
            log.info("consumer delete failed", error=repr(e), subject=self.args.filter_subject)

    async def _restart(self) -> None:
        if self._restarting:
            return
        self._restarting = True
        try:
            attempt = 0
            while not self._stopped.is_set() and not self._done:
                try:
                    self._again = False
                    await self._drop_consumer()
                    if self._data is None or self._data.closed:
                        await self._open_data()
                    await self._subscribe()
                    if not self._again:
                        return
                except (OSError, TimeoutError, NatsWireError, nats.errors.Error) as e:
                    attempt += 1
                    self._paused = True
                    log.warning(
                        "jetstream reader: re-creating the consumer failed; retrying",
                        error=repr(e),
                        attempt=attempt,
                        subject=self.args.filter_subject,
                    )
                    await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        finally:
            self._restarting = False


def main() -> None:
    """Entry point of ``python -m linkpulse.dataflows.jetstream_reader``."""
    credits_fd, frames_fd = child_stdio()
    body = read_frame(credits_fd, timeout_s=30)
    if body is None:
        return  # the flow went away before it told us anything
    args = ARGS_DECODER.decode(body)
    configure_logging(args.log_level, args.log_json)
    asyncio.run(Reader(args).run(frames_fd, credits_fd))


if __name__ == "__main__":
    main()
