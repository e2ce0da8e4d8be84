"""Rows for the writer: events, dead letters and metric windows as column tuples.

Pure conversion, no database: the writer sends these by COPY or as arrays.

>>> from datetime import UTC, datetime
>>> from linkpulse.schemas import PageView
>>> ev = PageView(event_id="e1", tenant="acme", event_time=datetime(2026, 11, 24, tzinfo=UTC),
...               properties={"page": "home"})
>>> event_row(ev)[:4]
('acme', 'e1', datetime.datetime(2026, 11, 24, 0, 0, tzinfo=datetime.timezone.utc), 'page_view')
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import orjson

from linkpulse.schemas.codec import decode_event
from linkpulse.schemas.events import BaseEvent
from linkpulse.schemas.outputs import DeadLetter, MetricWindow

__all__ = [
    "DEAD_LETTER_COLUMNS",
    "EVENT_COLUMNS",
    "WINDOW_COLUMNS",
    "dead_letter_row",
    "dedupe_windows",
    "event_row",
    "json_copy_text",
    "json_event_days",
    "window_row",
]

EVENT_COLUMNS = (
    "tenant", "event_id", "event_time", "type", "user_id", "seller_id", "amount", "currency",
    "properties", "schema_version",
)  # fmt: skip
# Staged types: amount as float8 and properties as text, cast on the server,
# so COPY and the array path convert them the same way.
EVENT_STAGE_TYPES = (
    "text", "text", "timestamptz", "text", "text", "text", "float8", "text", "text", "int2",
)  # fmt: skip
DEAD_LETTER_COLUMNS = (
    "payload", "field", "problem", "reason", "source", "subject", "sequence", "received_at",
)  # fmt: skip
WINDOW_COLUMNS = (
    "metric", "tenant", "dims_key", "dimensions", "window", "window_start", "window_end",
    "value", "count", "sum", "min", "max", "mean", "distinct", "p50", "p95", "p99",
    "revision", "final",
)  # fmt: skip
WINDOW_ARRAY_TYPES = (
    "text", "text", "text", "jsonb", "text", "timestamptz", "timestamptz",
    "float8", "int8", "float8", "float8", "float8", "float8", "float8", "float8", "float8",
    "float8", "int4", "bool",
)  # fmt: skip


def _f(x: float | None) -> float | None:
    return None if x is None else float(x)


def event_row(ev: BaseEvent) -> tuple[Any, ...]:
    """An event as a tuple in EVENT_COLUMNS order."""
    props = ev.properties
    return (
        ev.tenant,
        ev.event_id,
        ev.event_time,
        ev.type,
        ev.user_id,
        ev.seller_id,
        _f(ev.amount),
        ev.currency,
        orjson.dumps(props).decode() if props else "{}",
        ev.schema_version,
    )


def event_days(rows: Sequence[tuple[Any, ...]], index: int) -> set[date]:
    """The UTC days of column ``index`` in ``rows`` (partitions a batch needs)."""
    return {r[index].astimezone(UTC).date() for r in rows}


def json_copy_text(payloads: Sequence[bytes]) -> bytes:
    r"""Canonical event JSON documents as COPY text input: one line each, backslashes doubled.

    Compact JSON escapes every control character inside strings and has no
    whitespace between tokens, so a document holds no raw tab, newline or
    carriage return (COPY's separators); the check guards that.

    >>> json_copy_text([b'{"a":"x\\y"}', b'{"b":1}'])
    b'{"a":"x\\\\y"}\n{"b":1}\n'
    """
    buf = b"\n".join(payloads) + b"\n"
    if buf.count(b"\n") != len(payloads) or b"\t" in buf or b"\r" in buf:
        msg = "event JSON for COPY must be compact (no raw tab, newline or carriage return)"
        raise ValueError(msg)
    return buf.replace(b"\\", b"\\\\")


def json_event_days(payloads: Sequence[bytes]) -> set[date]:
    """The UTC days of canonical event JSON documents (partitions a batch needs)."""
    return {ev.event_time.astimezone(UTC).date() for ev in map(decode_event, payloads)}


def minute_buckets(rows: Sequence[tuple[Any, ...]]) -> tuple[list[str], list[datetime]]:
    """The distinct (tenant, minute) of event rows, as two arrays (for the dirty log)."""
    seen = {(r[0], r[2].replace(second=0, microsecond=0)) for r in rows}
    return [t for t, _ in seen], [m for _, m in seen]


def dead_letter_row(dl: DeadLetter) -> tuple[Any, ...]:
    """A dead letter as a tuple in DEAD_LETTER_COLUMNS order."""
    return (
        dl.payload.replace("\x00", "\ufffd"),  # text columns can't hold NUL
        dl.field,
        dl.problem,
        dl.reason,
        dl.source,
        dl.subject,
        dl.sequence,
        dl.received_at,
    )


def window_row(w: MetricWindow) -> tuple[Any, ...]:
    """A metric window as a tuple in WINDOW_COLUMNS order."""
    return (
        w.metric, w.tenant, w.dims_key, orjson.dumps(w.dimensions).decode(), w.window,
        w.window_start, w.window_end, _f(w.value), int(w.count), float(w.sum), _f(w.min),
        _f(w.max), _f(w.mean), _f(w.distinct), _f(w.p50), _f(w.p95), _f(w.p99),
        int(w.revision), bool(w.final),
    )  # fmt: skip


def dedupe_windows(windows: Sequence[MetricWindow]) -> list[MetricWindow]:
    """One window per primary key, the highest revision (the last one on a tie).

    An upsert can't touch the same row twice in one statement.
    """
    best: dict[tuple[str, str, str, str, object], MetricWindow] = {}
    for w in windows:
        key = (w.tenant, w.metric, w.dims_key, w.window, w.window_start)
        cur = best.get(key)
        if cur is None or w.revision >= cur.revision:
            best[key] = w
    return list(best.values())
