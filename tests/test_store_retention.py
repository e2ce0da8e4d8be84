"""Retention drops only what is older than each horizon; maintenance makes partitions ahead."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg

from linkpulse.config import load_settings
from linkpulse.schemas.outputs import MetricWindow
from linkpulse.store import EventWriter, Tier, migrate, refresh, run_forever, run_once, stored_tier
from linkpulse.store.jobs import MAINTAIN, read_jobs
from linkpulse.store.partitions import list_partitions, partition_name
from linkpulse.store.retention import apply_retention
from tests.test_store_writer import ROLLUP_SQL, make_events, rollup_rows

WIDTHS = {"events_1m": "1 minute", "events_1h": "1 hour", "events_1d": "1 day"}

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_retention_drops_only_what_is_older_than_the_horizon(pg_dsn: str) -> None:
    migrate(pg_dsn, tier="plain")  # daily partitions and rollup tables: the plain tier's own
    start = NOW - timedelta(days=12)
    events = make_events(3_000, seed=2, start=start, span_s=12 * 86400)  # 12 days up to NOW
    windows = [
        MetricWindow(
            metric="orders",
            tenant="acme",
            dims_key="",
            dimensions={},
            window="1h",
            window_start=NOW - timedelta(days=d),
            window_end=NOW - timedelta(days=d),
            value=1.0,
        )
        for d in range(0, 40, 3)
    ]
    with EventWriter(pg_dsn) as w:
        w.write_events(events)
        w.upsert_metric_windows(windows)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        refresh(conn)
        raw_horizon = NOW - timedelta(days=5)
        rollup_horizon = NOW - timedelta(days=30)
        keep_events = conn.execute(
            "SELECT count(*) FROM events WHERE event_time >= %s", (raw_horizon,)
        ).fetchone()
        # partitions straddling the horizon stay: only whole days before it go
        old_day_events = conn.execute(
            "SELECT count(*) FROM events WHERE event_time < date_trunc('day', %s::timestamptz)",
            (raw_horizon,),
        ).fetchone()
        assert old_day_events is not None and old_day_events[0] > 0
        rollup_before = conn.execute("SELECT count(*) FROM events_1m").fetchone()
        users_old = conn.execute(
            "SELECT count(*) FROM users_1h WHERE bucket + interval '1 hour' <= %s", (raw_horizon,)
        ).fetchone()
        assert users_old is not None and users_old[0] > 0
        with conn.transaction():
            report = apply_retention(conn, Tier.PLAIN_POSTGRES, raw_days=5, rollup_days=30, now=NOW)
        assert partition_name("events", (NOW - timedelta(days=7)).date()) in report.dropped
        assert partition_name("events", raw_horizon.date()) not in report.dropped
        assert (
            conn.execute(
                "SELECT count(*) FROM events WHERE event_time >= %s", (raw_horizon,)
            ).fetchone()
            == keep_events
        )
        assert conn.execute(
            "SELECT count(*) FROM events WHERE event_time < date_trunc('day', %s::timestamptz)",
            (raw_horizon,),
        ).fetchone() == (0,)
        # rollups and metric windows follow the longer horizon: all 12 days of rollups kept
        assert conn.execute("SELECT count(*) FROM events_1m").fetchone() == rollup_before
        # ...except users_1h, which holds user ids: the raw horizon, never outliving its events
        assert report.rollup_rows_deleted == users_old[0]
        assert conn.execute(
            "SELECT count(*) FROM users_1h WHERE bucket + interval '1 hour' <= %s", (raw_horizon,)
        ).fetchone() == (0,)
        starts = [
            r[0]
            for r in conn.execute("SELECT window_start FROM metric_windows ORDER BY 1").fetchall()
        ]
        assert min(starts) >= rollup_horizon - timedelta(days=1)
        assert len(starts) == sum(
            1 for w in windows if w.window_start >= rollup_horizon - timedelta(days=1)
        )
        # a second pass with a short rollup horizon deletes only old rollup buckets
        with conn.transaction():
            r2 = apply_retention(conn, Tier.PLAIN_POSTGRES, raw_days=5, rollup_days=3, now=NOW)
        assert r2.rollup_rows_deleted > 0
        assert conn.execute(
            "SELECT count(*) FROM events_1d WHERE bucket + interval '1 day' <= %s",
            (NOW - timedelta(days=3),),
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM events_1h WHERE bucket >= %s", (NOW - timedelta(days=3),)
        ).fetchone() != (0,)


def test_maintain_makes_partitions_ahead_refreshes_and_loops(pg_dsn: str) -> None:
    migrate(pg_dsn, tier="plain")  # partitions made ahead: the plain tier's own
    settings = load_settings(store_partitions_ahead_days=3, store_raw_retention_days=30)
    with EventWriter(pg_dsn) as w:
        w.write_events(
            make_events(200, seed=8, start=datetime.now(UTC) - timedelta(hours=2), span_s=3600)
        )
    report = run_once(pg_dsn, settings)
    assert report.tier == "plain"
    assert report.refresh is not None and report.refresh.claimed > 0
    assert report.partitions_made >= 3
    with psycopg.connect(pg_dsn) as conn:
        names = list_partitions(conn, "events")
        ahead = partition_name("events", (datetime.now(UTC) + timedelta(days=3)).date())
        assert ahead in names
        assert conn.execute("SELECT sum(events) FROM events_1d").fetchone() == (200,)
    # The loop: a pass counter and an injected sleep instead of a wall-clock bound.
    waits: list[float] = []
    assert run_forever(pg_dsn, settings, interval_s=60, max_passes=3, wait=waits.append) == 3
    assert waits == [60, 60]  # slept between passes, not after the last
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        job = next(j for j in read_jobs(conn) if j.name == MAINTAIN)
    assert (job.runs, job.failures, job.last_status) == (4, 0, "success")  # run_once + 3
    # stop ends the loop before the next pass, even with no pass limit
    stop = threading.Event()
    assert run_forever(pg_dsn, settings, interval_s=60, stop=stop, wait=lambda _: stop.set()) == 1


# -- on both lanes: the tier is the database's --------------------------------------------------


def group_by(conn: psycopg.Connection, width: str) -> list[tuple[object, ...]]:
    return conn.execute(ROLLUP_SQL, (width,)).fetchall()


def test_maintain_keeps_rollups_whose_raw_events_were_dropped(lane_dsn: str) -> None:
    """Issue 9 §2.1: a later pass must not empty the buckets of dropped raw chunks."""
    migrate(lane_dsn)
    now = datetime.now(UTC)
    old = make_events(600, seed=41, start=now - timedelta(days=12), span_s=2 * 86400, prefix="o")
    recent = make_events(600, seed=42, start=now - timedelta(hours=9), span_s=6 * 3600)
    with EventWriter(lane_dsn) as w:
        w.write_events(old + recent)
    with psycopg.connect(lane_dsn, autocommit=True) as conn:
        before = {name: group_by(conn, width) for name, width in WIDTHS.items()}
    settings = load_settings(store_raw_retention_days=5)
    first = run_once(lane_dsn, settings)
    assert first.retention.dropped  # the old raw days are gone...
    with EventWriter(lane_dsn) as w:  # ...and new events come in, for another tenant
        w.write_events(
            make_events(300, seed=43, start=now - timedelta(hours=2), span_s=3600, prefix="n",
                        tenants=("initech",))
        )  # fmt: skip
    run_once(lane_dsn, settings)
    with psycopg.connect(lane_dsn, autocommit=True) as conn:
        refresh(conn)  # every rollup due, whatever its interval
        assert conn.execute(
            "SELECT count(*) FROM events WHERE event_time < %s", (now - timedelta(days=9),)
        ).fetchone() == (0,)
        for name, width in WIDTHS.items():
            new = [r for r in group_by(conn, width) if r[1] == "initech"]
            assert new, name
            got = sorted(rollup_rows(conn, name), key=_order)
            assert got == sorted(before[name] + new, key=_order), name


def _order(row: tuple[object, ...]) -> tuple[object, ...]:
    return (row[0], row[1], row[2], row[3] is not None, row[3] or "")


def test_maintain_compresses_each_chunk_once_and_none_it_drops(lane_dsn: str) -> None:
    """Issue 9 §2.3: only real work is reported; a chunk due for retention is not compressed."""
    migrate(lane_dsn)
    now = datetime.now(UTC)
    with EventWriter(lane_dsn) as w:
        w.write_events(
            make_events(1_500, seed=44, start=now - timedelta(days=12), span_s=12 * 86400)
        )
    settings = load_settings(store_raw_retention_days=10, store_compress_after_days=3)
    first = run_once(lane_dsn, settings)
    second = run_once(lane_dsn, settings)
    assert second.compressed == [] and second.chunks_compressed == 0
    with psycopg.connect(lane_dsn, autocommit=True) as conn:
        if stored_tier(conn) is not Tier.FULL_TIMESCALE:
            assert first.compressed == []  # no compression below the full tier
            return
        chunks = conn.execute(
            "SELECT format('%I.%I', chunk_schema, chunk_name), is_compressed, range_end"
            " FROM timescaledb_information.chunks WHERE hypertable_name = 'events'"
        ).fetchall()
    compressed = {name for name, done, _ in chunks if done}
    assert first.compressed and set(first.compressed) == compressed
    assert not set(first.compressed) & set(first.retention.dropped)
    assert all(done for _, done, end in chunks if end <= now - timedelta(days=3))
    assert min(end for _, _, end in chunks) > now - timedelta(days=10)


def test_archived_tables_get_no_retention_policy_on_the_full_tier() -> None:
    from linkpulse.store.capabilities import Tier
    from linkpulse.store.tiers import policy_statements

    def adds(archived: tuple[str, ...]) -> list[str]:
        stmts = policy_statements(
            Tier.FULL_TIMESCALE,
            raw_days=90,
            rollup_days=730,
            compress_after_days=7,
            archived=archived,
        )
        return [repr(s) for s in stmts if "add_retention_policy" in repr(s)]

    every = adds(())
    kept = adds(("events",))
    assert any("'events'" in s for s in every)
    assert not any("'events'" in s for s in kept)  # maintain drops it once archived
    assert len(kept) == len(every) - 1  # the others keep theirs
