"""Subject access: every stored event of a person, and the dead letters that mention them.

One JSON object per line, ``"table"`` saying where it was stored
(``events`` or ``dead_letters``), the other keys the row's columns; events in
event-time order. Rows are read through a server-side cursor, so a person
with millions of events costs constant memory. Pseudonymised fields come out
as stored: their raw values were never kept (docs/privacy.md).

>>> from datetime import UTC, datetime
>>> line({"table": "events", "event_time": datetime(2026, 1, 1, tzinfo=UTC)})
b'{"table":"events","event_time":"2026-01-01T00:00:00Z"}\\n'
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg
from psycopg.rows import dict_row

from linkpulse.errors import StoreError
from linkpulse.privacy.person import Person
from linkpulse.store.migrate import stored_tier

__all__ = ["EVENT_COLUMNS", "line", "subject_rows"]

EVENT_COLUMNS = (
    "tenant",
    "event_id",
    "event_time",
    "type",
    "user_id",
    "seller_id",
    "amount",
    "currency",
    "properties",
    "schema_version",
    "ingested_at",
)
_encoder = msgspec.json.Encoder(decimal_format="number")
_EVENTS = f"""
SELECT 'events' AS "table", {", ".join(EVENT_COLUMNS)} FROM events
WHERE user_id = ANY(%(ids)s) AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
ORDER BY event_time, tenant, event_id
"""
_LETTERS = """
SELECT 'dead_letters' AS "table", id, received_at, payload, field, problem, source, subject,
       sequence
FROM dead_letters
WHERE EXISTS (SELECT 1 FROM unnest(%s::text[]) AS q(s) WHERE strpos(payload, q.s) > 0)
ORDER BY received_at, id
"""


def line(row: dict[str, Any]) -> bytes:
    """One row as a JSON line (numbers stay numbers, times are RFC 3339)."""
    return _encoder.encode(row) + b"\n"


def subject_rows(conn: psycopg.Connection, who: Person) -> Iterator[dict[str, Any]]:
    """The person's events, then the dead letters about them, as dicts (see the module doc)."""
    if stored_tier(conn) is None:
        msg = "the store has no schema yet: run `linkpulse db migrate` first"
        raise StoreError(msg)
    args = {"ids": list(who.ids), "tenant": who.tenant}
    with conn.transaction(), conn.cursor("lp_subject_events", row_factory=dict_row) as cur:
        cur.itersize = 2000
        cur.execute(_EVENTS, args)
        yield from cur
    with conn.transaction(), conn.cursor("lp_subject_letters", row_factory=dict_row) as cur:
        cur.execute(_LETTERS, (who.quoted(),))
        for row in cur:
            if who.mentioned_in(row["payload"]):
                yield row
