"""Bytewax source reading a JetStream stream with an ordered push consumer.

Each partition is one filter subject (by default the whole events stream, one
partition). It reads through an *ordered push consumer* (flow-controlled, no
acks) started at a given stream sequence. The position lives in Bytewax's
recovery state, not in JetStream: ``snapshot()`` is the sequence *after* the
last message emitted, so a resumed flow re-reads exactly from there, and
idempotent sinks turn that at-least-once delivery into exactly-once in effect.

Each partition starts a reader process (``jetstream_reader``) that keeps the
consumer and ships whole chunks over a pipe; the flow pays them back with
credits, so a slow sink slows the reading and nothing is buffered without
bound (``jetstream_partition``; ``docs/dataflow.md`` has the design).

Items are ``Chunk``s of messages ``(payload, subject, stream_sequence,
stream_time_ns)`` cut by a deterministic rule (see ``chunks``), so a replay
re-forms the chunks of the first run; the stream time (when JetStream stored
the message) is a deterministic "now" for validation and the watermark.

>>> src = JetStreamSource(Settings(subject_prefix="lp"))
>>> src.list_parts()
['lp.events.>']
>>> partition_of("acme", 4) == partition_of("acme", 4)
True
"""

from __future__ import annotations

import zlib
from datetime import timedelta

from bytewax.inputs import FixedPartitionedSource

from linkpulse.bus.subjects import events_filter
from linkpulse.config import Settings
from linkpulse.dataflows.chunks import Chunk, Message
from linkpulse.dataflows.jetstream_partition import JetStreamPartition

__all__ = ["Item", "JetStreamPartition", "JetStreamSource", "partition_of"]

Item = Message  # (payload, subject, stream sequence, stream time ns)


def partition_of(key: str, partitions: int) -> int:
    """A routing hash stable across processes and runs (never ``hash()``).

    >>> partition_of("acme", 8)
    6
    """
    return zlib.crc32(key.encode()) % partitions


class JetStreamSource(FixedPartitionedSource[Chunk, int]):
    """The events stream as a Bytewax source, one partition per filter subject.

    ``filter_subjects`` must not overlap (each message must belong to one
    partition); the default is the whole events stream in one partition,
    which reads ~150k msg/s here, more than decoding and storing can use on
    one worker. The resume state is the next stream sequence to read.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        filter_subjects: list[str] | None = None,
        batch_size: int = 1000,
        max_buffered: int = 20_000,
        stop_at_seq: int | None = None,
        start_seq: int = 1,
        idle_wake: timedelta = timedelta(milliseconds=5),
    ) -> None:
        if batch_size <= 0 or max_buffered < batch_size:
            msg = f"need 0 < batch_size <= max_buffered, got {batch_size} and {max_buffered}"
            raise ValueError(msg)
        if start_seq < 1:
            msg = f"start_seq is a stream sequence, 1 or more, got {start_seq}"
            raise ValueError(msg)
        self._settings = settings
        self._subjects = filter_subjects or [events_filter(settings.subject_prefix)]
        self._batch_size = batch_size
        self._max_buffered = max_buffered
        self._stop_at_seq = stop_at_seq
        self._start_seq = start_seq
        self._idle_wake = idle_wake

    def list_parts(self) -> list[str]:
        return list(self._subjects)

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> JetStreamPartition:
        return JetStreamPartition(
            self._settings,
            for_part,
            resume_state if resume_state is not None else self._start_seq,
            batch_size=self._batch_size,
            max_buffered=self._max_buffered,
            stop_at_seq=self._stop_at_seq,
            idle_wake=self._idle_wake,
        )
