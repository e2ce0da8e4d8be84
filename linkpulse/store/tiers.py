"""TimescaleDB policies of the full tier: refresh, compression, retention.

Policies carry settings (horizons, compression age), so they are set here,
not in migration files; ``apply_policies`` replaces each policy so a changed
setting takes effect. The Apache-only and plain tiers have no policies:
``linkpulse db maintain`` does their refresh and retention.

>>> policy_statements(Tier.PLAIN_POSTGRES, raw_days=90, rollup_days=730, compress_after_days=7)
[]
>>> len(policy_statements(Tier.FULL_TIMESCALE, raw_days=90, rollup_days=730,
...                       compress_after_days=7))
30
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from linkpulse.store.capabilities import Tier
from linkpulse.store.partitions import PARTITIONED
from linkpulse.store.retention import HORIZON_OF, ROLLUP_HORIZON

__all__ = ["apply_policies", "policy_statements"]

_REFRESH_EVERY = {
    "events_1m": "1 minute", "events_1h": "5 minutes", "events_1d": "30 minutes",
    "users_1h": "5 minutes",
}  # fmt: skip
_END_OFFSET = {"events_1m": "1 minute", "events_1h": "1 hour", "events_1d": "1 day",
               "users_1h": "1 hour"}  # fmt: skip


def _cagg_horizon(cagg: str, *, raw: timedelta, rollup: timedelta) -> timedelta:
    """How long a continuous aggregate's chunks are kept.

    A rollup holding user ids (users_1h) goes a day (one chunk, migration 0016) inside
    the raw horizon: its chunks are dropped before the raw chunks an erase would
    recompute them from, whichever of the two retention jobs runs first.

    >>> _cagg_horizon("users_1h", raw=timedelta(days=90), rollup=timedelta(days=730)).days
    89
    """
    if ROLLUP_HORIZON[cagg] == "raw":
        return max(raw - timedelta(days=1), timedelta(days=1))
    return rollup


def policy_statements(
    tier: Tier,
    *,
    raw_days: int,
    rollup_days: int,
    compress_after_days: int,
    archived: Iterable[str] = (),
) -> list[sql.SQL | sql.Composed]:
    """The statements that (re)create the full tier's policies; none on lower tiers.

    ``archived`` tables get no retention policy: ``db maintain`` archives their
    chunks and drops each only once its archive checks out (linkpulse.store.archive).
    """
    if tier is not Tier.FULL_TIMESCALE:
        return []
    raw, rollup = timedelta(days=raw_days), timedelta(days=rollup_days)
    out: list[sql.SQL | sql.Composed] = []
    for cagg, every in _REFRESH_EVERY.items():
        name = sql.Literal(cagg)
        out.append(
            sql.SQL("SELECT remove_continuous_aggregate_policy({}, if_exists => true)").format(name)
        )
        # start_offset stays inside the raw horizon: refreshing a range whose raw
        # events were dropped would empty the aggregate there.
        out.append(
            sql.SQL(
                "SELECT add_continuous_aggregate_policy({}, start_offset => {}, "
                "end_offset => {}::interval, schedule_interval => {}::interval)"
            ).format(
                name,
                sql.Literal(raw - timedelta(days=1)),
                sql.Literal(_END_OFFSET[cagg]),
                sql.Literal(every),
            )
        )
        out.append(sql.SQL("SELECT remove_retention_policy({}, if_exists => true)").format(name))
        out.append(
            sql.SQL("SELECT add_retention_policy({}, drop_after => {})").format(
                name, sql.Literal(_cagg_horizon(cagg, raw=raw, rollup=rollup))
            )
        )
    out.append(sql.SQL("SELECT remove_compression_policy('events', if_exists => true)"))
    out.append(
        sql.SQL("SELECT add_compression_policy('events', compress_after => {})").format(
            sql.Literal(timedelta(days=compress_after_days))
        )
    )
    kept_by_archive = set(archived)
    for table in PARTITIONED:
        horizon = raw if HORIZON_OF[table] == "raw" else rollup
        out.append(
            sql.SQL("SELECT remove_retention_policy({}, if_exists => true)").format(
                sql.Literal(table)
            )
        )
        if table in kept_by_archive:
            continue
        out.append(
            sql.SQL("SELECT add_retention_policy({}, drop_after => {})").format(
                sql.Literal(table), sql.Literal(horizon)
            )
        )
    return out


def apply_policies(
    conn: psycopg.Connection,
    tier: Tier,
    *,
    raw_days: int,
    rollup_days: int,
    compress_after_days: int,
    archived: Iterable[str] = (),
) -> int:
    """Create or replace the policies of ``tier``; return how many statements ran."""
    stmts = policy_statements(
        tier,
        raw_days=raw_days,
        rollup_days=rollup_days,
        compress_after_days=compress_after_days,
        archived=archived,
    )
    with conn.transaction():
        for stmt in stmts:
            conn.execute(stmt)
    return len(stmts)


_TO_COMPRESS = """
SELECT format('%%I.%%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks
WHERE hypertable_schema = current_schema() AND hypertable_name = 'events' AND NOT is_compressed
  AND range_end <= %(compress_before)s AND range_end > %(drop_before)s
ORDER BY range_start
"""


def compress_old_chunks(
    conn: psycopg.Connection,
    older_than_days: int,
    *,
    raw_days: int,
    now: datetime | None = None,
) -> list[str]:
    """Compress the raw-event chunks that the compression policy would; return their names.

    Only chunks not compressed yet, wholly older than ``older_than_days``, and
    not due for retention (a chunk that ends before the raw horizon is about
    to be dropped: compressing it would be wasted work).
    """
    now = now or datetime.now(UTC)
    params = {
        "compress_before": now - timedelta(days=older_than_days),
        "drop_before": now - timedelta(days=raw_days),
    }
    chunks = [r[0] for r in conn.execute(_TO_COMPRESS, params).fetchall()]
    for chunk in chunks:
        conn.execute("SELECT compress_chunk(%s::regclass, if_not_compressed => true)", (chunk,))
    return chunks
