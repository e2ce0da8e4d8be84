"""Retention drops only what is older than each horizon; maintenance makes partitions ahead."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg

from linkpulse.config import load_settings
from linkpulse.schemas.outputs import MetricWindow
from linkpulse.store import EventWriter, Tier, migrate, refresh, run_forever, run_once
from linkpulse.store.partitions import list_partitions, partition_name
from linkpulse.store.retention import apply_retention
from tests.test_store_writer import make_events

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_retention_drops_only_what_is_older_than_the_horizon(pg_dsn: str) -> None:
    migrate(pg_dsn)
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
        refresh(conn, Tier.PLAIN_POSTGRES)
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
        assert report.rollup_rows_deleted == 0
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
    migrate(pg_dsn)
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
    stop = threading.Event()
    passes: list[int] = []
    t = threading.Thread(
        target=lambda: passes.append(run_forever(pg_dsn, settings, interval_s=0.05, stop=stop))
    )
    t.start()
    stop.wait(0.3)
    stop.set()
    t.join(timeout=10)
    assert passes and passes[0] >= 2
