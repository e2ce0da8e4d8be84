"""Bytewax sinks into the time-series store, through the idempotent writer.

Delivery into a sink is at least once (a resumed flow replays from its last
snapshot), so every write here is idempotent: events are keyed by event id,
windows upserted by window key with a revision guard, dead letters keyed by
their origin (source, stream sequence, subject, stream time) and skipped when
already stored (``ON CONFLICT DO NOTHING``, migration 0008). Each
``write_batch`` flushes before returning: Bytewax only commits a snapshot
once every sink has finished the epoch's items, so a crash can never skip a
write.

A store that is down *pauses* the flow: every sink writes through
``EventWriter``, which reconnects and retries a batch with backoff for the
outage budget (``_outage_budget``, ``LINKPULSE_STORE_OUTAGE_S``) and raises
only when that is spent, which stops the flow (a restart resumes from the
last snapshot and loses nothing). A sink's write is one statement per batch,
so there is nothing else to retry.

>>> sink = StoreSink("postgresql://postgres@127.0.0.1/test", "events")
>>> sink.kind
'events'
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import msgspec
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from linkpulse.dataflows._child import Child
from linkpulse.dataflows.events_writer import ACK_DECODER, WriterArgs
from linkpulse.dataflows.instrumentation import SINK_BATCH, SINK_LATENCY, timed_sink
from linkpulse.errors import DataflowError, StoreError
from linkpulse.logging import get_logger
from linkpulse.query.watermarks import WatermarkTarget
from linkpulse.schemas.codec import encode_event

__all__ = ["PipelinedEventsSink", "StoreKind", "StoreSink", "Writer"]

StoreKind = Literal["events", "dead_letters", "metric_windows"]

log = get_logger(__name__)

_MAX_REVIVALS = 3  # writers started in a row that stored nothing before the flow stops


class Writer(Protocol):
    """What the sinks need of ``linkpulse.store.writer.EventWriter``."""

    def write_events(self, events: Sequence[Any]) -> int: ...
    def write_event_json(self, payloads: Sequence[bytes]) -> int: ...
    def write_dead_letters(self, letters: Sequence[Any]) -> int: ...
    def upsert_metric_windows(self, windows: Sequence[Any]) -> int: ...
    def close(self) -> None: ...


# The default of LINKPULSE_STORE_OUTAGE_S; the flow passes the setting itself
# (settings reach the flow one way: build_flow's arguments, never read here).
DEFAULT_OUTAGE_S = 300.0


def _outage_budget(outage_s: float | None = None) -> tuple[float, int]:
    """(seconds, retries) a writer rides out an unreachable store for.

    While the store is unreachable the writer keeps retrying, so the flow
    pauses (its bounded source stops reading) instead of stopping; past the
    budget (``outage_s``, 300 s unless given) it gives up and a restart
    resumes from the snapshot.
    """
    from linkpulse.store.writer import retries_for  # optional at import time

    budget = DEFAULT_OUTAGE_S if outage_s is None else outage_s
    return budget, retries_for(budget)


def _default_writer(dsn: str) -> Writer:
    from linkpulse.store.writer import EventWriter

    return EventWriter(dsn, max_retries=_outage_budget()[1])


class _StorePartition(StatelessSinkPartition[Any]):
    def __init__(self, writer: Writer, kind: StoreKind) -> None:
        self._writer = writer
        self._kind = kind
        self._write: Callable[[Sequence[Any]], int] = {
            "events": writer.write_events,
            "dead_letters": writer.write_dead_letters,
            "metric_windows": writer.upsert_metric_windows,
        }[kind]

    def write_batch(self, items: list[Any]) -> None:
        if not items:
            return
        # Upstream may send one list per chunk (fewer, bigger Bytewax items).
        rows = [x for it in items for x in it] if isinstance(items[0], list) else items
        with timed_sink(f"store_{self._kind}", len(rows)):
            self._write(rows)

    def close(self) -> None:
        # Never raise from close(): see _PipelinedPartition.close.
        try:
            self._writer.close()
        except Exception as e:  # noqa: BLE001 - logged; nothing is left to write
            log.warning("closing a store writer failed", sink=f"store_{self._kind}", error=str(e))


class StoreSink(DynamicSink[Any]):
    """Writes events, dead letters or metric windows; one writer per worker.

    ``writer_factory`` builds the writer from the DSN on each worker (never in
    the constructor: the sink object is shared by every worker's thread).
    """

    def __init__(
        self,
        dsn: str,
        kind: StoreKind,
        *,
        writer_factory: Callable[[str], Writer] = _default_writer,
    ) -> None:
        if kind not in ("events", "dead_letters", "metric_windows"):
            msg = f"kind must be events, dead_letters or metric_windows, got {kind!r}"
            raise ValueError(msg)
        self._dsn = dsn
        self.kind: StoreKind = kind
        self._factory = writer_factory

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Any]:
        return _StorePartition(self._factory(self._dsn), self.kind)


class _PipelinedPartition(StatefulSinkPartition[list[Any], None]):
    """Hands raw events to a writer process so PostgreSQL works while the flow computes.

    ``write_batch`` encodes the events (canonical JSON) and sends them to the
    writer (``events_writer``), blocking once ``max_in_flight`` batches are
    unacknowledged: backpressure. ``snapshot()`` waits until every batch sent
    is stored. Bytewax takes that snapshot before it commits the epoch, so a
    committed epoch never has unwritten rows; a write error surfaces at the
    next call and stops the flow, which then resumes from the last commit.

    A writer that dies without a write error (killed: OOM, an operator) is
    replaced: the partition keeps every batch until it is acknowledged and
    sends them all again to the new writer, in order. That is exactly-once
    still, because the writes are idempotent (``ON CONFLICT DO NOTHING`` on
    the event key) and the snapshot still waits for every acknowledgement.
    A writer that dies ``_MAX_REVIVALS`` times in a row without storing a
    batch (it cannot start, say) stops the flow with an error naming it.
    """

    def __init__(self, args: WriterArgs, max_in_flight: int, *, what: str, stall_s: float) -> None:
        self._max_in_flight = max_in_flight
        self._stall_s = stall_s
        self._sent = 0  # frames sent
        self._stored = 0  # frames the writer acknowledged
        self._unacked: deque[bytes] = deque()  # frames sent, not yet acknowledged, in order
        self._revivals = 0  # writers started since the last acknowledgement
        self._error: str | None = None
        self._args = msgspec.json.encode(args)
        self._what = what
        self._child = self._spawn()

    def _spawn(self) -> Child:
        return Child("linkpulse.dataflows.events_writer", self._args, what=self._what)

    def _collect(self, timeout_s: float = 0.0) -> None:
        for body in self._child.receive(timeout_s):
            ack = ACK_DECODER.decode(body)
            if ack.error is not None:
                self._error = ack.error
                continue
            self._stored += ack.batches
            for _ in range(ack.batches):
                self._unacked.popleft()
            self._revivals = 0
            SINK_BATCH.labels("store_events").observe(ack.rows)
            SINK_LATENCY.labels("store_events").observe(ack.seconds)

    def _check(self) -> None:
        if self._error is not None:
            msg = f"writing events to the store failed: {self._error}"
            raise StoreError(msg)
        while self._child.eof:  # it died: everything it wrote has been collected
            self._revive()

    def _revive(self) -> None:
        """Replace the dead writer and send it every unacknowledged batch again."""
        gone = self._child
        if self._revivals >= _MAX_REVIVALS:
            error = gone.exit_error()
            msg = f"{error} (it died {self._revivals + 1} times in a row without storing a batch)"
            raise DataflowError(msg)
        code = gone.exit_code()
        gone.close(timeout_s=5)
        self._revivals += 1
        log.warning(
            "raw-events writer died; started a new one and sent it the unacknowledged batches",
            writer=self._what,
            code=code,
            resent=len(self._unacked),
        )
        self._child = self._spawn()
        for body in self._unacked:
            if not self._child.send(body):
                break  # dead already: the caller's loop sees eof and tries again

    def _wait(self, in_flight: int) -> None:
        """Until at most ``in_flight`` batches are unacknowledged (or it failed).

        A writer that acknowledges nothing for ``stall_s`` (its whole outage
        budget and a margin) is stuck, not retrying: the flow stops rather
        than hang without a word.
        """
        self._collect()
        stored, since = self._stored, time.monotonic()
        while self._sent - self._stored > in_flight:
            self._check()
            self._collect(timeout_s=1.0)
            if self._stored != stored:
                stored, since = self._stored, time.monotonic()
            elif time.monotonic() - since > self._stall_s:
                msg = (
                    f"{self._child.what} acknowledged no write for {self._stall_s:g} s; "
                    "check the store (a lock? a hung connection?) and restart the flow: "
                    "it resumes from its last snapshot"
                )
                raise DataflowError(msg)
        self._check()

    def write_batch(self, values: list[list[Any]]) -> None:
        self._collect()
        self._check()
        lines = [encode_event(ev) for batch in values for ev in batch]
        if not lines:
            return
        self._wait(self._max_in_flight - 1)
        body = b"\n".join(lines)
        self._unacked.append(body)
        self._sent += 1
        if not self._child.send(body):
            self._collect(timeout_s=1.0)  # a write error: it said why before it went
            self._check()  # or killed: a new writer gets this batch with the others

    def snapshot(self) -> None:
        self._wait(0)

    def close(self) -> None:
        """Let the writer finish what it was sent, then stop it; never raises.

        Bytewax calls close() from a Rust destructor, also while it unwinds
        from an error raised by this or any other step; an exception here
        then is a panic during a panic, and the whole flow aborts (SIGABRT)
        without the first error's message. Nothing is lost by not raising:
        Bytewax takes a snapshot (which waits for every batch) before it
        closes a flow that ends normally, and a failed flow resumes from its
        last snapshot, so the unacknowledged batches are written again.
        """
        try:
            if self._error is None and not self._child.eof:
                self._wait(0)
        except Exception as e:  # noqa: BLE001 - logged, and the restart replays them
            log.error(
                "raw-events writer: batches not acknowledged at close; "
                "a restart of the flow writes them again from its last snapshot",
                writer=self._child.what,
                unacknowledged=self._sent - self._stored,
                error=str(e),
            )
        finally:
            self._child.close(timeout_s=30)


class PipelinedEventsSink(FixedPartitionedSink[list[Any], None]):
    """Raw events into the store, written while the flow goes on computing.

    Items are ``(source partition, [events])``; there is one sink partition
    per source partition (so the writes stay on the worker that decoded
    them), each with its own writer process (``events_writer``) and at most
    ``max_in_flight`` batches unacknowledged. ``outage_s`` (the flow passes
    ``LINKPULSE_STORE_OUTAGE_S``) is how long the writer rides out a store
    that does not answer before the flow stops; a writer that acknowledges
    nothing for that long plus ``stall_margin_s`` stops the flow too.
    ``log_level`` and ``log_json`` configure the writer processes' logs;
    ``watermarks`` is where they touch what they stored (the query cache).
    """

    def __init__(
        self,
        dsn: str,
        parts: list[str],
        *,
        max_in_flight: int = 8,
        outage_s: float | None = None,
        stall_margin_s: float = 60.0,
        log_level: str = "INFO",
        log_json: bool = False,
        watermarks: WatermarkTarget | None = None,
    ) -> None:
        if not parts or max_in_flight < 1:
            msg = f"need partitions and max_in_flight >= 1, got {parts!r}, {max_in_flight}"
            raise ValueError(msg)
        if (outage_s is not None and outage_s < 0) or stall_margin_s <= 0:
            msg = (
                f"outage_s must be 0 or more and stall_margin_s more than 0, "
                f"got {outage_s} and {stall_margin_s}"
            )
            raise ValueError(msg)
        self._dsn = dsn
        self._parts = list(parts)
        self._max_in_flight = max_in_flight
        self._outage_s = outage_s
        self._stall_margin_s = stall_margin_s
        self._log_level = log_level
        self._log_json = log_json
        self._watermarks = watermarks

    def list_parts(self) -> list[str]:
        return list(self._parts)

    def part_fn(self, item_key: str) -> int:
        # Keys are the partition names themselves: send each to its own part.
        return self._parts.index(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _PipelinedPartition:
        outage_s, retries = _outage_budget(self._outage_s)
        args = WriterArgs(
            dsn=self._dsn,
            max_retries=retries,
            log_level=self._log_level,
            log_json=self._log_json,
            watermarks=self._watermarks,
        )
        what = f"the raw-events writer of {for_part}"
        stall_s = outage_s + self._stall_margin_s
        return _PipelinedPartition(args, self._max_in_flight, what=what, stall_s=stall_s)
