"""Daily range partitions for the plain-PostgreSQL tier: made ahead, dropped when old.

Partitions are named ``<table>_pYYYYMMDD`` and hold one UTC day. The writer
also makes the day it needs when an event falls outside the made range (a
late or backfilled event), so a write never fails for want of a partition.

>>> partition_name("events", date(2026, 11, 24))
'events_p20261124'
>>> day_of("events_p20261124")
datetime.date(2026, 11, 24)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

__all__ = [
    "PARTITIONED",
    "create_ahead",
    "day_of",
    "drop_older_than",
    "ensure_partitions",
    "list_partitions",
    "partition_name",
]

# table -> partition column; every time-partitioned table of the store.
PARTITIONED: dict[str, str] = {
    "events": "event_time",
    "metric_windows": "window_start",
    "anomaly_scores": "time",
    "forecasts": "time",
    "alerts": "at",
    "dead_letters": "received_at",
}
_LOCK = 0x6C70_7061_7274  # "lppart": serialises partition DDL between writers
_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})$")


def partition_name(table: str, day: date) -> str:
    """The name of ``table``'s partition for ``day``."""
    return f"{table}_p{day:%Y%m%d}"


def day_of(name: str) -> date | None:
    """The day a partition name stands for, or None for a name not made here."""
    m = _NAME.match(name)
    if m is None:
        return None
    return datetime.strptime(m["day"], "%Y%m%d").replace(tzinfo=UTC).date()


def list_partitions(conn: psycopg.Connection, table: str) -> list[str]:
    """Names of ``table``'s partitions, oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY c.relname",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def ensure_partitions(conn: psycopg.Connection, table: str, days: Iterable[date]) -> int:
    """Make ``table``'s partitions for ``days`` that don't exist; return how many were made.

    Runs in the caller's transaction; an advisory lock keeps two writers from
    racing on the same DDL.
    """
    wanted = sorted(set(days))
    if not wanted:
        return 0
    existing = set(list_partitions(conn, table))
    missing = [d for d in wanted if partition_name(table, d) not in existing]
    if not missing:
        return 0
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
    made = 0
    for day in missing:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        cur = conn.execute(
            "SELECT to_regclass(%s) IS NULL", (partition_name(table, day),)
        ).fetchone()
        if cur is None or not cur[0]:
            continue
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(partition_name(table, day)),
                sql.Identifier(table),
                sql.Literal(start),
                sql.Literal(start + timedelta(days=1)),
            )
        )
        made += 1
    return made


def insert_rows(
    conn: psycopg.Connection,
    table: str,
    statement: str,
    rows: Sequence[Sequence[Any]],
    days: Iterable[date],
) -> None:
    """``executemany(statement, rows)`` in one transaction; a missing day partition is made once.

    ``days`` are the days the rows fall in. On the plain tier a row of a day with
    no partition fails the batch with CheckViolation: make the partitions, retry.
    A hypertable never raises it (TimescaleDB makes chunks itself).
    """
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(statement, rows)
    except psycopg.errors.CheckViolation:
        with conn.transaction():
            ensure_partitions(conn, table, days)
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(statement, rows)


def create_ahead(
    conn: psycopg.Connection, *, days_ahead: int, now: datetime | None = None, days_back: int = 1
) -> int:
    """Make every partitioned table's partitions from ``days_back`` ago to ``days_ahead``."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    days = [today + timedelta(days=i) for i in range(-days_back, days_ahead + 1)]
    return sum(ensure_partitions(conn, table, days) for table in PARTITIONED)


def drop_older_than(conn: psycopg.Connection, table: str, horizon: datetime) -> list[str]:
    """Drop ``table``'s partitions whose whole day is before ``horizon``; return their names."""
    dropped = []
    for name in list_partitions(conn, table):
        day = day_of(name)
        if day is None:
            continue
        end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        if end <= horizon:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            dropped.append(name)
    return dropped
