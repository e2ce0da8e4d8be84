"""Rollups events_1m / events_1h / events_1d: incremental refresh.

On the plain and Apache-only tiers the rollups are tables. The writer logs
each (tenant, minute) it inserted events into (``lp_rollup_dirty``) in the
same transaction as the events; a refresh claims that log (DELETE ...
RETURNING) and recomputes exactly those buckets of each rollup from the raw
events, so it costs what changed, late events included, not the whole
history. Claimed minutes become pending buckets of each rollup
(``lp_rollup_pending``), so a coarse rollup can be refreshed less often
(``min_interval_s``) without losing a touched bucket. ``lp_rollup_state`` keeps
each rollup's watermark: the latest ``marked_at`` (ingest time) it has covered.

Claiming by DELETE is what keeps concurrent writers safe: a writer marking a
bucket that a refresh is claiming waits for the refresh's row lock and then
re-inserts the mark, so its events (committed after the refresh's snapshot)
are rolled up by the next refresh, never lost. An advisory lock keeps two
refreshes from recomputing the same bucket at once.

On full TimescaleDB the rollups are continuous aggregates and a refresh is
``refresh_continuous_aggregate`` (TimescaleDB tracks the invalidated ranges).

``users_1h`` (migration 0014) is refreshed the same way: one row per (hour,
tenant, type, seller, user id), so an exact distinct count of users over any
hour-aligned range reads one row per user and hour, not one per event.

>>> [r.name for r in ROLLUP_SPECS]
['events_1m', 'events_1h', 'events_1d', 'users_1h']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from linkpulse.errors import StoreError
from linkpulse.store.capabilities import Tier
from linkpulse.store.migrate import stored_tier

if TYPE_CHECKING:
    from linkpulse.query.watermarks import Span, WatermarkBumper

__all__ = [
    "BUCKET_ORIGIN",
    "DEFAULT_MIN_INTERVAL_S",
    "ROLLUP_SPECS",
    "RefreshReport",
    "RollupSpec",
    "mark_all_dirty",
    "raw_windows",
    "rebuild",
    "refresh",
]

# Like the full tier's refresh policies: minutes every pass, hours every 5
# minutes, days every 30 minutes (a touched day is recomputed whole).
DEFAULT_MIN_INTERVAL_S: dict[str, float] = {
    "events_1m": 0.0,
    "events_1h": 300.0,
    "events_1d": 1800.0,
    "users_1h": 300.0,  # as events_1h: a KPI's active users as fresh as its other figures
}

# date_bin's origin; time_bucket aligns minute/hour/day buckets the same way.
BUCKET_ORIGIN = "2000-01-01 00:00:00+00"
_LOCK = 0x6C70_726F_6C6C  # "lproll"


@dataclass(frozen=True)
class RollupSpec:
    """One rollup: its table name, bucket width, and what a row holds.

    ``kind`` "events": counts per (bucket, tenant, type, seller); "users": one
    row per (bucket, tenant, type, seller, user id) for exact distinct users.
    """

    name: str
    width: timedelta
    kind: str = "events"


ROLLUP_SPECS = (
    RollupSpec("events_1m", timedelta(minutes=1)),
    RollupSpec("events_1h", timedelta(hours=1)),
    RollupSpec("events_1d", timedelta(days=1)),
    RollupSpec("users_1h", timedelta(hours=1), "users"),
)


@dataclass(frozen=True)
class RefreshReport:
    """What a refresh recomputed: minute buckets claimed and rows per rollup."""

    claimed: int
    buckets: dict[str, int]
    watermark: datetime | None


_CLAIM = """
CREATE TEMP TABLE IF NOT EXISTS lp_claimed (
    tenant text, bucket timestamptz, marked_at timestamptz) ON COMMIT DELETE ROWS;
"""
_CLAIM_INSERT = """
WITH d AS (DELETE FROM lp_rollup_dirty RETURNING tenant, bucket, marked_at)
INSERT INTO lp_claimed SELECT tenant, bucket, marked_at FROM d
"""
_TOUCHED = """
CREATE TEMP TABLE IF NOT EXISTS lp_touched_buckets (
    tenant text, bucket timestamptz, marked_at timestamptz, PRIMARY KEY (tenant, bucket)
) ON COMMIT DELETE ROWS;
"""
# Each claimed minute becomes one pending bucket per rollup.
_PEND = """
INSERT INTO lp_rollup_pending (rollup, tenant, bucket, marked_at)
SELECT %s, tenant, date_bin({w}, bucket, {o}), max(marked_at) FROM lp_claimed GROUP BY 2, 3
ON CONFLICT (rollup, tenant, bucket)
DO UPDATE SET marked_at = greatest(lp_rollup_pending.marked_at, excluded.marked_at)
"""
_TAKE_PENDING = """
WITH p AS (DELETE FROM lp_rollup_pending WHERE rollup = %s RETURNING tenant, bucket, marked_at)
INSERT INTO lp_touched_buckets SELECT tenant, bucket, marked_at FROM p
"""
# LATERAL: one index range scan of events per touched bucket (with run-time
# partition pruning), whatever the planner thinks of the temp table's size, so
# the cost follows the number of touched buckets, not the table.
_RECOMPUTE = """
INSERT INTO {rollup} (bucket, tenant, type, seller_id, events, revenue, distinct_users)
SELECT t.bucket, t.tenant, a.type, a.seller_id, a.events, a.revenue, a.distinct_users
FROM lp_touched_buckets t
CROSS JOIN LATERAL (
    SELECT e.type, e.seller_id, count(*) AS events, sum(e.amount) AS revenue,
           count(DISTINCT e.user_id) AS distinct_users
    FROM events e
    WHERE e.tenant = t.tenant AND e.event_time >= t.bucket AND e.event_time < t.bucket + {width}
    GROUP BY e.type, e.seller_id
) a
"""
_RECOMPUTE_USERS = """
INSERT INTO {rollup} (bucket, tenant, type, seller_id, user_id, events)
SELECT t.bucket, t.tenant, a.type, a.seller_id, a.user_id, a.events
FROM lp_touched_buckets t
CROSS JOIN LATERAL (
    SELECT e.type, e.seller_id, e.user_id, count(*) AS events
    FROM events e
    WHERE e.tenant = t.tenant AND e.event_time >= t.bucket AND e.event_time < t.bucket + {width}
      AND e.user_id IS NOT NULL
    GROUP BY e.type, e.seller_id, e.user_id
) a
"""


def refresh(
    conn: psycopg.Connection,
    tier: Tier | None = None,
    *,
    min_interval_s: Mapping[str, float] | None = None,
    watermarks: WatermarkBumper | None = None,
) -> RefreshReport:
    """Bring the rollups up to date; ``conn`` must be in autocommit mode.

    ``tier`` defaults to the one the database was migrated with.

    ``min_interval_s`` (rollup name -> seconds) skips a rollup refreshed less
    than that long ago; its touched buckets stay pending for a later pass
    (``maintain`` uses ``DEFAULT_MIN_INTERVAL_S``). By default every rollup is
    refreshed.

    After the commit, the buckets recomputed are touched in ``watermarks``
    (the query cache's invalidation) and ``NOTIFY linkpulse_rollups`` says
    which rollups and tenants changed (the API warms its dashboard queries).
    """
    from linkpulse.query.watermarks import after_refresh

    tier = tier or _stored(conn)
    if tier is Tier.FULL_TIMESCALE:
        # Buckets written since the last refresh (noted by the writers): the ones it may change.
        pending = watermarks.take_pending() if watermarks is not None else None
        report = _refresh_caggs(conn)
        after_refresh(conn, watermarks, None if pending is None else dict.fromkeys(_NAMES, pending))
        return report
    touched: dict[str, list[Span]] = {}
    fine = timedelta(seconds=watermarks.bucket_s if watermarks is not None else 3600)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute(_CLAIM)
        conn.execute(_TOUCHED)
        claimed = conn.execute(_CLAIM_INSERT).rowcount
        wm_row = conn.execute("SELECT max(marked_at) FROM lp_claimed").fetchone()
        watermark = wm_row[0] if wm_row else None
        origin = sql.Literal(BUCKET_ORIGIN)
        for spec in ROLLUP_SPECS:
            conn.execute(sql.SQL(_PEND).format(w=sql.Literal(spec.width), o=origin), (spec.name,))
        buckets: dict[str, int] = {}
        for spec in ROLLUP_SPECS:
            wait = (min_interval_s or {}).get(spec.name, 0.0)
            due = conn.execute(
                "SELECT refreshed_at IS NULL OR refreshed_at <= now() - make_interval(secs => %s)"
                " FROM lp_rollup_state WHERE rollup = %s",
                (wait, spec.name),
            ).fetchone()
            if wait > 0 and due is not None and not due[0]:
                buckets[spec.name] = 0
                continue
            conn.execute("TRUNCATE lp_touched_buckets")
            n = conn.execute(_TAKE_PENDING, (spec.name,)).rowcount
            conn.execute(
                sql.SQL(
                    "DELETE FROM {r} x USING lp_touched_buckets t "
                    "WHERE x.tenant = t.tenant AND x.bucket = t.bucket"
                ).format(r=sql.Identifier(spec.name))
            )
            conn.execute(
                sql.SQL(_RECOMPUTE_USERS if spec.kind == "users" else _RECOMPUTE).format(
                    rollup=sql.Identifier(spec.name), width=sql.Literal(spec.width)
                )
            )
            buckets[spec.name] = n
            touched[spec.name] = _touched_spans(conn, max(spec.width, fine)) if n else []
            conn.execute(
                "UPDATE lp_rollup_state SET refreshed_at = now(), last_buckets = %s, "
                "total_buckets = total_buckets + %s, watermark = greatest(watermark, "
                "(SELECT max(marked_at) FROM lp_touched_buckets)) WHERE rollup = %s",
                (n, n, spec.name),
            )
    after_refresh(conn, watermarks, touched)
    return RefreshReport(claimed, buckets, watermark)


_NAMES = tuple(spec.name for spec in ROLLUP_SPECS)


def _touched_spans(conn: psycopg.Connection, width: timedelta) -> list[Span]:
    """The (tenant, start, end) spans of width ``width`` holding this rollup's touched buckets."""
    rows = conn.execute(
        "SELECT DISTINCT tenant, date_bin(%s, bucket, %s::timestamptz) FROM lp_touched_buckets",
        (width, BUCKET_ORIGIN),
    ).fetchall()
    return [(tenant, start, start + width) for tenant, start in rows]


_RAW_CHUNKS = """
SELECT range_start, range_end FROM timescaledb_information.chunks
WHERE hypertable_schema = current_schema() AND hypertable_name = 'events'
ORDER BY range_start
"""


def raw_windows(ranges: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Merge chunk ranges (sorted by start) into the contiguous windows they cover.

    >>> from datetime import UTC
    >>> d = lambda n: datetime(2026, 11, n, tzinfo=UTC)
    >>> [(a.day, b.day) for a, b in raw_windows([(d(1), d(2)), (d(2), d(3)), (d(5), d(6))])]
    [(1, 3), (5, 6)]
    """
    out: list[tuple[datetime, datetime]] = []
    for start, end in ranges:
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _inscribed(window: tuple[datetime, datetime], width: timedelta) -> tuple[datetime, datetime]:
    """The whole buckets of ``width`` inside ``window`` (aligned like time_bucket).

    >>> from datetime import UTC
    >>> w = (datetime(2026, 11, 1, 6, tzinfo=UTC), datetime(2026, 11, 3, 1, tzinfo=UTC))
    >>> [t.isoformat() for t in _inscribed(w, timedelta(days=1))]
    ['2026-11-02T00:00:00+00:00', '2026-11-03T00:00:00+00:00']
    """
    origin = datetime.fromisoformat(BUCKET_ORIGIN)
    start = origin + -((origin - window[0]) // width) * width  # rounded up
    end = origin + ((window[1] - origin) // width) * width  # rounded down
    return start, end


def _stored(conn: psycopg.Connection) -> Tier:
    tier = stored_tier(conn)
    if tier is None:
        msg = "the store has no schema yet: run `linkpulse db migrate` first"
        raise StoreError(msg)
    return tier


def _refresh_caggs(conn: psycopg.Connection) -> RefreshReport:
    """Refresh each continuous aggregate over the windows whose raw chunks still exist.

    Never over a dropped chunk's range: TimescaleDB logs the drop as an
    invalidation, and a refresh there would recompute the buckets from no
    raw events, i.e. delete them (the rollups outlive the raw events).
    refresh_continuous_aggregate must run outside a transaction block.

    What a refresh recomputes is what TimescaleDB logged as invalidated: one
    range per transaction, from the oldest to the newest event time it wrote.
    So a batch of late events spread over 30 days invalidates (and makes the
    next refresh recompute) all 30 days of every aggregate, where the plain
    tier recomputes only the touched buckets (see docs/store.md).
    """
    windows = raw_windows(conn.execute(_RAW_CHUNKS).fetchall())
    buckets = {}
    for spec in ROLLUP_SPECS:
        for window in windows:
            start, end = _inscribed(window, spec.width)
            if start >= end:
                continue
            conn.execute(
                sql.SQL("CALL refresh_continuous_aggregate({}, {}, {})").format(
                    sql.Literal(spec.name), sql.Literal(start), sql.Literal(end)
                )
            )
        conn.execute(
            "UPDATE lp_rollup_state SET refreshed_at = now(), watermark = now() WHERE rollup = %s",
            (spec.name,),
        )
        buckets[spec.name] = -1  # TimescaleDB does not say how many it recomputed
    return RefreshReport(0, buckets, None)


_REBUILD = """
INSERT INTO {rollup} (bucket, tenant, type, seller_id, events, revenue, distinct_users)
SELECT date_bin({width}, event_time, {origin}), tenant, type, seller_id,
       count(*), sum(amount), count(DISTINCT user_id)
FROM events GROUP BY 1, 2, 3, 4
"""
# In (bucket, tenant) order, as a refresh writes it: a range's index-only scan then checks
# few visibility-map pages (a hash aggregate's order alternates between them per row).
_REBUILD_USERS = """
INSERT INTO {rollup} (bucket, tenant, type, seller_id, user_id, events)
SELECT date_bin({width}, event_time, {origin}), tenant, type, seller_id, user_id, count(*)
FROM events WHERE user_id IS NOT NULL GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2
"""


def rebuild(
    conn: psycopg.Connection, tier: Tier | None = None, *, only: Sequence[str] | None = None
) -> RefreshReport:
    """Recompute every rollup from all raw events in one pass (after a bulk load or restore).

    Cheaper than an incremental refresh when most buckets changed. Claims the
    dirty log first, like ``refresh``, so concurrent writers stay safe.
    ``tier`` defaults to the one the database was migrated with. On the full
    tier this is a refresh over the raw events still stored (as ``refresh``).

    ``only`` (rollup names) rebuilds just those, e.g. a rollup a new migration
    added to a store whose other rollups are current; the dirty log and the
    other rollups' pending buckets are left for the next ``refresh``.
    """
    tier = tier or _stored(conn)
    if tier is Tier.FULL_TIMESCALE:
        return _refresh_caggs(conn)
    specs = [s for s in ROLLUP_SPECS if only is None or s.name in only]
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        claimed = 0
        if only is None:
            claimed = conn.execute("DELETE FROM lp_rollup_dirty").rowcount
            conn.execute("DELETE FROM lp_rollup_pending")
        else:
            conn.execute("DELETE FROM lp_rollup_pending WHERE rollup = ANY(%s)", (list(only),))
        buckets = {}
        for spec in specs:
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(spec.name)))
            buckets[spec.name] = conn.execute(
                sql.SQL(_REBUILD_USERS if spec.kind == "users" else _REBUILD).format(
                    rollup=sql.Identifier(spec.name),
                    width=sql.Literal(spec.width),
                    origin=sql.Literal(BUCKET_ORIGIN),
                )
            ).rowcount
            conn.execute(
                "UPDATE lp_rollup_state SET refreshed_at = now(), watermark = now(), "
                "last_buckets = %s WHERE rollup = %s",
                (buckets[spec.name], spec.name),
            )
        for spec in specs:  # index-only scans need the visibility map
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(spec.name)))
    return RefreshReport(claimed, buckets, None)


def mark_all_dirty(conn: psycopg.Connection, since: datetime | None = None) -> int:
    """Mark every minute holding events (since ``since``) for recompute.

    For data loaded around the writer (bulk SQL, restores): the next refresh
    then rebuilds those buckets.
    """
    where = sql.SQL("WHERE event_time >= {}").format(sql.Literal(since)) if since else sql.SQL("")
    return conn.execute(
        sql.SQL(
            "INSERT INTO lp_rollup_dirty (tenant, bucket) "
            "SELECT DISTINCT tenant, date_bin('1 minute', event_time, {o}) FROM events {w} "
            "ON CONFLICT (tenant, bucket) DO UPDATE SET marked_at = now()"
        ).format(o=sql.Literal(BUCKET_ORIGIN), w=where)
    ).rowcount
