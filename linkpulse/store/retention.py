"""Retention: raw data and rollups each kept for their own horizon.

Raw events, dead letters, anomaly scores and forecasts follow the raw horizon; metric
windows, alerts and the rollups the (longer) rollup horizon, except ``users_1h``, which
holds user ids and so follows the raw horizon (its rows never outlive their raw events,
so an erase can always recompute them). Plain PostgreSQL
drops whole daily partitions (and deletes old rollup rows); TimescaleDB drops
chunks with ``drop_chunks`` (the full tier also has retention policies, which
its job scheduler runs; running ``drop_chunks`` here as well is harmless).

>>> sorted(HORIZON_OF)[:2]
['alerts', 'anomaly_scores']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from linkpulse.store.capabilities import Tier
from linkpulse.store.partitions import PARTITIONED, drop_older_than

if TYPE_CHECKING:
    from linkpulse.store.archive import Archiver

__all__ = ["HORIZON_OF", "ROLLUPS", "ROLLUP_HORIZON", "RetentionReport", "apply_retention"]

HORIZON_OF: dict[str, str] = {
    "events": "raw",
    "dead_letters": "raw",
    "anomaly_scores": "raw",
    "forecasts": "raw",
    "metric_windows": "rollup",
    "alerts": "rollup",
}
ROLLUPS = ("events_1m", "events_1h", "events_1d", "users_1h")
_WIDTH = {
    "events_1m": timedelta(minutes=1),
    "events_1h": timedelta(hours=1),
    "events_1d": timedelta(days=1),
    "users_1h": timedelta(hours=1),
}
# Each rollup's horizon ("raw" or "rollup"); users_1h holds user ids.
ROLLUP_HORIZON = {r: "raw" if r == "users_1h" else "rollup" for r in ROLLUPS}


@dataclass
class RetentionReport:
    """What one retention pass removed."""

    dropped: list[str] = field(default_factory=list)
    rollup_rows_deleted: int = 0
    kept: list[str] = field(default_factory=list)  # due, but their archive did not check out


def apply_retention(
    conn: psycopg.Connection,
    tier: Tier,
    *,
    raw_days: int,
    rollup_days: int,
    now: datetime | None = None,
    archive: Archiver | None = None,
) -> RetentionReport:
    """Remove what is older than each table's horizon; keep everything newer.

    With ``archive``, its tables lose only the pieces whose archive checks out
    (store/archive.py; ``linkpulse db maintain`` archives them first).
    """
    now = now or datetime.now(UTC)
    horizons = {"raw": now - timedelta(days=raw_days), "rollup": now - timedelta(days=rollup_days)}
    report = RetentionReport()
    for table in PARTITIONED:
        horizon = horizons[HORIZON_OF[table]]
        if archive is not None and table in archive.tables:
            dropped, kept = archive.drop_verified(conn, tier, table, horizon)
            report.dropped += dropped
            report.kept += kept
        elif tier.is_timescale:
            rows = conn.execute(
                "SELECT drop_chunks(%s::regclass, older_than => %s)", (table, horizon)
            ).fetchall()
            report.dropped += [str(r[0]) for r in rows]
        else:
            report.dropped += drop_older_than(conn, table, horizon)
    for rollup in ROLLUPS:
        horizon = horizons[ROLLUP_HORIZON[rollup]]
        if tier is Tier.FULL_TIMESCALE:
            rows = conn.execute(
                "SELECT drop_chunks(%s::regclass, older_than => %s)", (rollup, horizon)
            ).fetchall()
            report.dropped += [str(r[0]) for r in rows]
        else:
            # only buckets that end at or before the horizon: nothing newer goes
            cur = conn.execute(
                sql.SQL("DELETE FROM {} WHERE bucket <= {}").format(
                    sql.Identifier(rollup), sql.Literal(horizon - _WIDTH[rollup])
                )
            )
            report.rollup_rows_deleted += cur.rowcount
    return report
