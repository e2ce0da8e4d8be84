"""One JetStream source partition: a reader process behind a bounded pipe.

The partition starts its reader (``jetstream_reader``, a child process that
holds the nats client and cuts the deterministic chunks), reads the frames it
writes without ever blocking Bytewax's thread, and pays them back with
credits, which is what bounds the reading. See ``jetstream_source`` for the
contract and ``docs/dataflow.md`` for the design. Build partitions with
``JetStreamSource.build_part``.
"""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime, timedelta

import msgspec
from bytewax.inputs import StatefulSourcePartition

from linkpulse.bus.connection import nats_servers
from linkpulse.config import Settings
from linkpulse.dataflows import instrumentation as metrics
from linkpulse.dataflows._child import Child
from linkpulse.dataflows.chunks import Chunk
from linkpulse.dataflows.jetstream_reader import CREDIT, FRAME_DECODER, Frame, ReaderArgs
from linkpulse.errors import DataflowError
from linkpulse.logging import get_logger

__all__ = ["JetStreamPartition"]

log = get_logger(__name__)


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
        start_timeout_s: float = 15.0,
    ) -> None:
        self._filter = filter_subject
        self._next_seq = next_seq  # first sequence not yet emitted
        self._batch_size = batch_size
        self._stop_at_seq = stop_at_seq
        self._idle_wake = idle_wake
        self._ready: deque[Chunk] = deque()  # decoded frames' chunks, not yet emitted
        self._read = 0  # messages the reader has read (its latest report)
        self._taken = 0  # messages emitted: the credit paid back
        self._stream_last = 0
        self._restarts = 0
        self._reader_done = False
        self._done = False
        self._last_empty = False
        args = ReaderArgs(
            servers=nats_servers(settings),
            stream=settings.stream_name,
            filter_subject=filter_subject,
            start_seq=next_seq,
            stop_at_seq=stop_at_seq,
            batch_size=batch_size,
            max_buffered=max_buffered,
            tick_ns=tick_ns,
            idle_wake_s=idle_wake.total_seconds(),
            connect_timeout_s=start_timeout_s * 2 / 3,  # its error, not our timeout
            log_level=settings.log_level,
            log_json=settings.log_json,
        )
        self._reader = Child(
            "linkpulse.dataflows.jetstream_reader",
            msgspec.json.encode(args),
            what=f"the JetStream reader of {filter_subject}",
        )
        self._wait_ready(start_timeout_s, settings.stream_name)

    @property
    def reader_pid(self) -> int:
        """The reader process's pid (for operators and tests)."""
        return self._reader.pid

    def _wait_ready(self, timeout_s: float, stream: str) -> None:
        deadline = time.monotonic() + timeout_s
        problem = f"no answer within {timeout_s:g} s"
        while (left := deadline - time.monotonic()) > 0:
            try:
                first = self._pump(timeout_s=left)
            except DataflowError as e:
                problem = str(e)
                break
            if first is None:
                if self._reader.eof:
                    problem = str(self._reader.exit_error())
                    break
                continue
            if first.error is None:
                return
            problem = first.error
            break
        self.close()
        msg = f"cannot consume {self._filter} from stream {stream}: {problem}"
        raise DataflowError(msg)

    def _pump(self, timeout_s: float = 0.0) -> Frame | None:
        """Take in what the reader wrote (waiting up to ``timeout_s``); the first new frame."""
        first: Frame | None = None
        for body in self._reader.receive(timeout_s):
            try:
                frame = FRAME_DECODER.decode(body)
            except msgspec.DecodeError as e:  # a bug, not bad input: stop loudly
                msg = f"unreadable frame from the JetStream reader of {self._filter}: {e}"
                raise DataflowError(msg) from e
            self._ready.extend(frame.chunks)
            self._read, self._stream_last = frame.read, frame.stream_last
            if frame.restarts > self._restarts:
                metrics.SOURCE_RESTARTS.labels(self._filter).inc(frame.restarts - self._restarts)
                self._restarts = frame.restarts
            self._reader_done = self._reader_done or frame.done
            if first is None:
                first = frame
        return first

    def buffered(self) -> int:
        """Messages read from NATS and not yet emitted (at most ``2 * max_buffered``)."""
        self._pump()
        return self._read - self._taken

    @property
    def lag(self) -> int:
        """Messages in the stream after the last one emitted: stream last seq - position."""
        return max(0, self._stream_last - (self._next_seq - 1))

    def next_batch(self) -> list[Chunk]:
        if self._done or (self._stop_at_seq is not None and self._next_seq > self._stop_at_seq):
            raise StopIteration
        self._pump()
        chunks: list[Chunk] = []
        n = 0
        while self._ready and n < self._batch_size * 4:
            chunk = self._ready.popleft()
            chunks.append(chunk)
            if chunk.messages:
                n += len(chunk.messages)
                self._next_seq = chunk.messages[-1][2] + 1
                metrics.SOURCE_BATCH.observe(len(chunk.messages))
        if n:
            self._taken += n
            self._reader.send(CREDIT.pack(self._taken))  # a gone reader shows as eof below
            metrics.EVENTS_IN.labels(self._filter).inc(n)
        if self._reader_done and not self._ready:
            self._done = True  # the chunk ending at stop_at_seq is in this batch
        elif self._reader.eof and not self._ready:
            raise self._reader.exit_error()
        self._last_empty = not chunks
        metrics.CONSUMER_LAG.labels(self._filter).set(self.lag)
        return chunks

    def next_awake(self) -> datetime | None:
        # Poll an idle stream every few ms instead of Bytewax's 1 ms spin.
        if self._last_empty:
            return datetime.now(UTC) + self._idle_wake
        return None

    def snapshot(self) -> int:
        return self._next_seq

    def close(self) -> None:
        # Closing its stdin is the reader's signal to delete its consumer and exit.
        self._reader.close()
