"""TimescaleDB conformance lane: the FULL tier on a real TimescaleDB 2.23 (pglite build).

Every migration in the full tier, writes through the writer's non-COPY path,
continuous aggregates refreshed and queried, a chunk compressed, the same
numbers as the plain-PostgreSQL tier for the same events, and the analyst
views and grants. The server takes one connection at a time: each step opens
and closes its own.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from linkpulse.config import load_settings
from linkpulse.store import EventWriter, Tier, migrate, refresh, roles, run_once, stored_tier
from linkpulse.store.migrate import table_sizes
from linkpulse.store.partitions import PARTITIONED
from linkpulse.store.retention import ROLLUPS
from linkpulse.store.tiers import apply_policies
from tests.fix_timescale import TimescaleServer, TimescaleServerError, ensure_installed
from tests.test_store_writer import BASE, make_events

pytestmark = [pytest.mark.timescale, pytest.mark.integration]

ROLLUP_QUERY = (
    "SELECT bucket, tenant, type, seller_id, events, revenue, distinct_users FROM {} "
    "ORDER BY 1, 2, 3, 4 NULLS FIRST"
)


def rollups(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: conn.execute(ROLLUP_QUERY.format(name)).fetchall()  # type: ignore[arg-type]
        for name in ("events_1m", "events_1h", "events_1d")
    }


def test_full_tier_matches_plain_tier(ts_dsn: str, pg_dsn: str) -> None:
    events = make_events(3_000, seed=31, span_s=2 * 86400)
    late = make_events(200, seed=32, start=BASE - timedelta(days=3), prefix="late")

    applied = migrate(ts_dsn)
    assert len(applied) >= 3
    with psycopg.connect(ts_dsn, autocommit=True) as conn:
        assert stored_tier(conn) is Tier.FULL_TIMESCALE
        hypertables = {
            r[0]
            for r in conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables"
            ).fetchall()
        }
        assert {
            "events",
            "metric_windows",
            "anomaly_scores",
            "alerts",
            "dead_letters",
        } <= hypertables
        caggs = conn.execute(
            "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"
            " ORDER BY 1"
        ).fetchall()
        assert caggs == [
            ("events_1d", False),
            ("events_1h", False),
            ("events_1m", False),
            ("users_1h", False),
        ]
        assert (
            apply_policies(
                conn, Tier.FULL_TIMESCALE, raw_days=90, rollup_days=730, compress_after_days=7
            )
            > 0
        )
        jobs = conn.execute(
            "SELECT proc_name, count(*) FROM timescaledb_information.jobs "
            "WHERE hypertable_name IS NOT NULL GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert dict(jobs) == {
            "policy_compression": 1,
            "policy_refresh_continuous_aggregate": len(ROLLUPS),
            # one per time-partitioned table and one per rollup
            "policy_retention": len(PARTITIONED) + len(ROLLUPS),
        }

    with EventWriter(ts_dsn, batch_size=1000) as w:
        assert w.tier is Tier.FULL_TIMESCALE
        assert w.write_events(events) == 3000
        assert w.write_events(events[:500] + late) == 200  # replays skipped, late stored
        assert w._copy is False  # the WASM build has no COPY: the INSERT path was used
    with EventWriter(pg_dsn, batch_size=1000) as w:
        migrate(pg_dsn, tier="plain")  # the reference: rollup tables, whatever the server
        w.write_events(events)
        w.write_events(events[:500] + late)

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        refresh(conn)
        plain = rollups(conn)
    with psycopg.connect(ts_dsn, autocommit=True) as conn:
        # real-time aggregation answers before any refresh...
        assert rollups(conn) == plain
        refresh(conn)
        # ...and the materialized rollups give the same numbers after it
        assert rollups(conn) == plain
        # the materialized part alone holds every bucket now
        for name in ("events_1m", "events_1h", "events_1d"):
            conn.execute(
                f"ALTER MATERIALIZED VIEW {name} SET (timescaledb.materialized_only = true)"
            )
        assert rollups(conn) == plain
        for name in ("events_1m", "events_1h", "events_1d"):
            conn.execute(
                f"ALTER MATERIALIZED VIEW {name} SET (timescaledb.materialized_only = false)"
            )
        total = conn.execute("SELECT count(*), sum(amount) FROM events").fetchone()
        chunk = conn.execute("SELECT c FROM show_chunks('events') c ORDER BY c LIMIT 1").fetchone()
        assert chunk is not None
        conn.execute("SELECT compress_chunk(%s::regclass)", (chunk[0],))
        assert conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'events' AND is_compressed"
        ).fetchone() == (1,)
        assert conn.execute("SELECT count(*), sum(amount) FROM events").fetchone() == total
        assert rollups(conn) == plain
    # a replay into the compressed chunk is still stored once
    with EventWriter(ts_dsn) as w:
        assert w.write_events(late) == 0
    report = run_once(ts_dsn, load_settings(store_raw_retention_days=3650))
    assert report.tier == "full_timescale" and report.retention.dropped == []
    with psycopg.connect(ts_dsn, autocommit=True) as conn:
        assert rollups(conn) == plain
        # what `db status` lists: hypertables with their chunks (the compressed one
        # included), continuous aggregates with their materialized chunks
        sizes = {t.name: t for t in table_sizes(conn)}
    assert sizes["events"].kind == "hypertable"
    assert sizes["events"].parts >= 3 and sizes["events"].bytes > 0
    assert sizes["events_1h"].kind == "continuous aggregate" and sizes["events_1h"].bytes > 0
    assert sizes["lp_schema_migrations"].kind == "table"


def test_analyst_views_and_grants_on_timescaledb(ts_dsn: str) -> None:
    migrate(ts_dsn)
    with EventWriter(ts_dsn) as w:
        w.write_events(make_events(500, seed=33))
    tag = uuid.uuid4().hex[:8]
    analyst, login = f"lp_analyst_{tag}", f"lp_sql_{tag}"
    with psycopg.connect(ts_dsn, autocommit=True) as conn:
        refresh(conn)
        roles.setup(conn, analyst_role=analyst, sql_login=login)
        secret = roles.scope_secret(conn)
        expected = conn.execute(
            "SELECT count(*) FROM events WHERE tenant = 'acme' AND seller_id = 's1'"
        ).fetchone()
        chunk = conn.execute(
            "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'events' LIMIT 1"
        ).fetchone()
        mat = conn.execute(
            "SELECT format('%I.%I', materialization_hypertable_schema, "
            "materialization_hypertable_name) FROM timescaledb_information.continuous_aggregates"
            " LIMIT 1"
        ).fetchone()
        assert chunk and mat
        with roles.analyst_session(
            conn, analyst_role=analyst, secret=secret, tenant="acme", seller_id="s1"
        ) as c:
            assert c.execute("SELECT count(*) FROM analyst.events").fetchone() == expected
            for view in ("events_1m", "events_1h", "events_1d", "users_1h"):
                assert c.execute(
                    f"SELECT DISTINCT tenant, seller_id FROM analyst.{view}"
                ).fetchall() == [("acme", "s1")]
        for forbidden in (
            "SELECT 1 FROM public.events LIMIT 1",
            "SELECT 1 FROM public.events_1m LIMIT 1",
            f"SELECT 1 FROM {chunk[0]} LIMIT 1",
            f"SELECT 1 FROM {mat[0]} LIMIT 1",
            "SELECT secret FROM lp_private.scope_secret",
        ):
            with (
                roles.analyst_session(
                    conn, analyst_role=analyst, secret=secret, tenant="acme"
                ) as c,
                pytest.raises(psycopg.errors.InsufficientPrivilege),
            ):
                c.execute(forbidden)
        with roles.analyst_session(conn, analyst_role=analyst, secret=secret, tenant="acme") as c:
            c.execute("SELECT set_config('linkpulse.tenant', 'globex', true)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT count(*) FROM analyst.events_1h")
        roles.drop_roles(conn, login, analyst)


def test_forced_apache_tier_uses_hypertables_and_rollup_tables(ts_dsn: str) -> None:
    events = make_events(1_500, seed=34, span_s=2 * 86400)
    migrate(ts_dsn, tier="apache_timescale")
    with EventWriter(ts_dsn, batch_size=500) as w:
        assert w.tier is Tier.APACHE_TIMESCALE
        assert w.write_events(events + events[:100]) == 1_500
    with psycopg.connect(ts_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM timescaledb_information.continuous_aggregates"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'events'"
        ).fetchone() == (1,)
        report = refresh(conn)
        assert report.claimed > 0
        got = rollups(conn)
        want = conn.execute(
            "SELECT time_bucket(INTERVAL '1 hour', event_time), tenant, type, seller_id, count(*),"
            " sum(amount), count(DISTINCT user_id) FROM events GROUP BY 1, 2, 3, 4"
            " ORDER BY 1, 2, 3, 4 NULLS FIRST"
        ).fetchall()
        assert got["events_1h"] == want
    report = run_once(ts_dsn, load_settings(store_raw_retention_days=1))
    assert report.tier == "apache_timescale"
    assert report.retention.dropped  # drop_chunks removed the old raw chunks
    with psycopg.connect(ts_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM events WHERE event_time < now() - interval '2 days'"
        ).fetchone() == (0,)


def test_a_server_that_never_gets_ready_is_reported_with_its_exit_code_and_log() -> None:
    """The fixture's own failure path: the timeout message and the server log,
    not "I/O operation on closed file" (the log was once read after stop() closed it)."""
    ensure_installed()
    server = TimescaleServer()
    server.proc.kill()  # dies before printing READY, as a crashed or hung start would
    server.proc.wait(timeout=30)
    with pytest.raises(TimescaleServerError) as failed:
        server.wait_ready(timeout=30)
    text = str(failed.value)
    assert "did not become ready within 30 s (exit code -9)" in text, text
    assert "Server log:" in text, text
    assert server.proc.stdout is not None and server.proc.stdout.closed  # stopped, cleaned up
