"""The notifier's tables (migration 0009): dispatcher state, the outbox, silences, alert rows.

Async psycopg, each function on the caller's connection (and in its
transaction), so the notifier can write its state and the notifications it
queued in one commit. The SQL lives here; the service and the API only call
these functions.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
from psycopg.rows import dict_row

from linkpulse.alerts.delivery.base import Outgoing
from linkpulse.alerts.policy import DispatcherState, Silence
from linkpulse.alerts.types import AlertChange
from linkpulse.store.partitions import ensure_partitions

__all__ = [
    "PendingRow",
    "create_silence",
    "expire_silence",
    "insert_alert_change",
    "list_silences",
    "load_state",
    "mark_attempt",
    "next_pending",
    "orphan_pending",
    "pending",
    "queue",
    "save_state",
]


async def load_state(conn: psycopg.AsyncConnection[Any], name: str) -> DispatcherState | None:
    """The dispatcher state last saved by notifier ``name`` (None on a first start)."""
    cur = await conn.execute("SELECT state::text FROM notifier_state WHERE name = %s", (name,))
    row = await cur.fetchone()
    return None if row is None else msgspec.json.decode(row[0], type=DispatcherState)


async def save_state(conn: psycopg.AsyncConnection[Any], name: str, state: DispatcherState) -> None:
    """Replace notifier ``name``'s saved state."""
    await conn.execute(
        "INSERT INTO notifier_state (name, state, updated_at) VALUES (%s, %s::jsonb, now()) "
        "ON CONFLICT (name) DO UPDATE SET state = excluded.state, updated_at = now()",
        (name, msgspec.json.encode(state).decode()),
    )


async def queue(
    conn: psycopg.AsyncConnection[Any], notifier: str, items: Sequence[Outgoing]
) -> int:
    """Add ``items`` to the outbox (a key already there is left alone); return how many were new."""
    added = 0
    for it in items:
        cur = await conn.execute(
            "INSERT INTO notifications (key, notifier, receiver, kind, group_key, alert_ids, "
            "payload, created_at, next_attempt_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s) ON CONFLICT (key) DO NOTHING",
            (
                it.key,
                notifier,
                it.receiver,
                it.kind,
                it.notification.group_key,
                [a.alert_id for a in it.alerts],
                msgspec.json.encode(it).decode(),
                it.created_at,
                it.created_at,
            ),
        )
        added += cur.rowcount
    return added


@dataclasses.dataclass(frozen=True)
class PendingRow:
    """One outbox row still to deliver."""

    item: Outgoing
    attempts: int
    next_attempt_at: datetime


async def pending(
    conn: psycopg.AsyncConnection[Any], notifier: str, receiver: str, *, limit: int = 100
) -> list[PendingRow]:
    """The oldest pending notifications of ``receiver``, in order (a receiver's queue)."""
    cur = await conn.execute(
        "SELECT payload::text, attempts, next_attempt_at FROM notifications "
        "WHERE notifier = %s AND receiver = %s AND status = 'pending' "
        "ORDER BY created_at, key LIMIT %s",
        (notifier, receiver, limit),
    )
    return [
        PendingRow(msgspec.json.decode(text, type=Outgoing), int(attempts), at)
        for text, attempts, at in await cur.fetchall()
    ]


async def next_pending(
    conn: psycopg.AsyncConnection[Any], notifier: str, receiver: str
) -> PendingRow | None:
    """The oldest pending notification of ``receiver``."""
    rows = await pending(conn, notifier, receiver, limit=1)
    return rows[0] if rows else None


async def mark_attempt(
    conn: psycopg.AsyncConnection[Any],
    key: str,
    *,
    status: str,
    now: datetime,
    next_attempt_at: datetime | None = None,
    last_status: int | None = None,
    error: str = "",
) -> None:
    """Record one attempt: ``delivered``, ``pending`` (retry at ``next_attempt_at``) or ``dead``."""
    await conn.execute(
        "UPDATE notifications SET status = %s, attempts = attempts + 1, "
        "next_attempt_at = coalesce(%s, next_attempt_at), last_status = %s, last_error = %s, "
        "delivered_at = CASE WHEN %s = 'delivered' THEN %s ELSE delivered_at END WHERE key = %s",
        (status, next_attempt_at, last_status, error[:2000], status, now, key),
    )


async def orphan_pending(
    conn: psycopg.AsyncConnection[Any], notifier: str, receivers: Sequence[str], now: datetime
) -> list[str]:
    """Mark dead the pending notifications of receivers no longer configured; their keys."""
    cur = await conn.execute(
        "UPDATE notifications SET status = 'dead', last_error = 'receiver ' || receiver || "
        "' is no longer in the notifier configuration', next_attempt_at = %s "
        "WHERE notifier = %s AND status = 'pending' AND NOT (receiver = ANY(%s)) RETURNING key",
        (now, notifier, list(receivers)),
    )
    return [r[0] for r in await cur.fetchall()]


# -- silences ---------------------------------------------------------------------------------

_SILENCE_COLUMNS = (
    "id, tenant, matchers, starts_at, ends_at, created_by, comment, created_at, expired_at"
)


async def create_silence(
    conn: psycopg.AsyncConnection[Any], silence: Silence, tenant: str
) -> dict[str, Any]:
    """Store a silence (validated by the caller); return its row. A new id is drawn."""
    sid = silence.id or uuid.uuid4().hex
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"INSERT INTO silences (id, tenant, matchers, starts_at, ends_at, created_by, comment) "
            f"VALUES (%s, %s, %s::jsonb, %s, %s, %s, %s) RETURNING {_SILENCE_COLUMNS}",
            (
                sid,
                tenant,
                msgspec.json.encode(silence.matchers).decode(),
                silence.starts_at,
                silence.ends_at,
                silence.created_by,
                silence.comment,
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def list_silences(
    conn: psycopg.AsyncConnection[Any],
    *,
    tenant: str | None = None,
    active_at: datetime | None = None,
    include_expired: bool = True,
) -> list[dict[str, Any]]:
    """Silences, newest first; ``active_at`` keeps those muting at that instant."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_SILENCE_COLUMNS} FROM silences "
            "WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s) "
            "AND (%(at)s::timestamptz IS NULL OR (starts_at <= %(at)s AND ends_at > %(at)s)) "
            "AND (%(expired)s OR ends_at > now()) ORDER BY created_at DESC, id",
            {"tenant": tenant, "at": active_at, "expired": include_expired},
        )
        return await cur.fetchall()


def silence_of(row: dict[str, Any]) -> Silence:
    """The policy's ``Silence`` from a row of ``silences``."""
    return Silence(
        id=row["id"],
        matchers=list(row["matchers"]),
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        created_by=row["created_by"],
        comment=row["comment"],
    )


async def expire_silence(
    conn: psycopg.AsyncConnection[Any], sid: str, now: datetime, tenant: str | None = None
) -> dict[str, Any] | None:
    """End silence ``sid`` now (one not yet started ends at its start); None if unknown."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "UPDATE silences SET ends_at = greatest(starts_at, least(ends_at, %(now)s)), "
            "expired_at = coalesce(expired_at, %(now)s) "
            "WHERE id = %(id)s AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s) "
            f"RETURNING {_SILENCE_COLUMNS}",
            {"id": sid, "now": now, "tenant": tenant},
        )
        return await cur.fetchone()


# -- the alerts table ---------------------------------------------------------------------------


def insert_alert_change(conn: psycopg.Connection[Any], change: AlertChange) -> None:
    """Store one state change in ``alerts`` (sync: the partition helper is), idempotently.

    On plain PostgreSQL ``alerts`` is range-partitioned by day: the day's
    partition is made if it is missing (an ack may land on a day no partition
    was made ahead for).
    """
    row = conn.execute(
        "SELECT c.relkind FROM pg_class c WHERE c.oid = 'alerts'::regclass"
    ).fetchone()
    if row is not None and row[0] == "p":
        ensure_partitions(conn, "alerts", [change.at.astimezone(UTC).date()])
    conn.execute(
        "INSERT INTO alerts (alert_id, rule, series, state, at, tenant, details) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING",
        (
            change.alert_id,
            change.rule,
            change.series,
            change.state.value,
            change.at,
            change.tenant,
            msgspec.json.encode(change).decode(),
        ),
    )
