"""Decoding step: raw JetStream messages become events or dead letters.

A bad message never stops the flow (STYLE.md §9): ``decode_message`` returns
either the event or a ``DeadLetter`` carrying the original payload, the
reason, the subject and the stream sequence; the flow branches on the type.

Validation uses the message's *stream time* as "now" (for the future-skew
rule), not the wall clock, so a replay accepts and rejects exactly what the
first run did.

>>> ok = decode_message((b'{"type": "nope"}', "lp.events.a.x", 7, 1_700_000_000_000_000_000))
>>> ok.field, ok.sequence, ok.subject
('type', 7, 'lp.events.a.x')
"""

from __future__ import annotations

from datetime import UTC, datetime

from linkpulse.dataflows.jetstream_source import Item
from linkpulse.errors import SchemaValidationError
from linkpulse.schemas import BaseEvent, decode_event
from linkpulse.schemas.outputs import DeadLetter

__all__ = ["DEAD_LETTER_SOURCE", "decode_message", "stream_time"]

# ``DeadLetter.source`` of messages rejected by the dataflow (they came from NATS).
DEAD_LETTER_SOURCE = "nats"


def stream_time(stream_ns: int) -> datetime:
    """JetStream's storage timestamp (ns since the epoch) as an aware UTC datetime.

    >>> stream_time(1_700_000_000_000_000_000).isoformat()
    '2023-11-14T22:13:20+00:00'
    """
    return datetime.fromtimestamp(stream_ns / 1e9, UTC)


def decode_message(item: Item, now: datetime | None = None) -> BaseEvent | DeadLetter:
    """The valid event in one message, or a dead letter saying why there is none.

    ``now`` (for the future-skew rule) defaults to the message's stream time;
    a caller decoding a whole chunk passes the chunk's clock once instead.
    """
    payload, subject, seq, stream_ns = item
    try:
        return decode_event(payload, now=now or stream_time(stream_ns))
    except SchemaValidationError as e:
        return DeadLetter(
            payload=payload.decode("utf-8", errors="replace"),
            field=e.field,
            problem=e.problem,
            source=DEAD_LETTER_SOURCE,
            received_at=stream_time(stream_ns),
            subject=subject,
            sequence=seq,
        )
