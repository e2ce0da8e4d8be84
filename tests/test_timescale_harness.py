"""The TimescaleDB test server really is TimescaleDB, and does what the store needs.

Everything goes through psycopg 3 over TCP to ``tests/timescale/server.mjs``.
``tests/timescale/README.md`` lists what works and what does not.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.fix_timescale import TimescaleServerError, ensure_installed, timescale_connect

pytestmark = pytest.mark.timescale

T0 = datetime(2026, 11, 1, tzinfo=UTC)
TENANTS = ("acme", "globex", "initech")


def sample_rows(hours: int = 72, per_hour: int = 4) -> list[tuple[datetime, str, float]]:
    """Deterministic readings every 15 minutes for three tenants over ``hours``."""
    rows = []
    for i in range(hours * per_hour):
        ts = T0 + timedelta(minutes=60 // per_hour * i)
        for k, tenant in enumerate(TENANTS):
            rows.append((ts, tenant, float((i * 7 + k * 13) % 50)))
    return rows


def insert_values(conn: psycopg.Connection[Any], table: str, rows: list[tuple[Any, ...]]) -> None:
    """One multi-row INSERT (COPY is not available on this server)."""
    width = len(rows[0])
    placeholders = ",".join("(" + ",".join(["%s"] * width) + ")" for _ in rows)
    params = [v for row in rows for v in row]
    conn.execute(f"INSERT INTO {table} VALUES {placeholders}", params)


def make_metrics(conn: psycopg.Connection[Any]) -> list[tuple[datetime, str, float]]:
    conn.execute(
        "CREATE TABLE metrics (ts timestamptz NOT NULL, tenant text NOT NULL,"
        " value double precision NOT NULL)"
    )
    conn.execute("SELECT create_hypertable('metrics', by_range('ts', INTERVAL '1 day'))")
    rows = sample_rows()
    insert_values(conn, "metrics", rows)
    return rows


def test_extension_is_timescaledb_2_23_with_full_license(
    timescale_conn: psycopg.Connection[Any],
) -> None:
    version = timescale_conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    assert version is not None
    assert version[0].startswith("2.23.")
    license_ = timescale_conn.execute("SELECT current_setting('timescaledb.license')").fetchone()
    assert license_ is not None
    assert license_[0] != "apache"
    assert license_[0] == "timescale"


def test_hypertable_and_continuous_aggregate_match_group_by(
    timescale_conn: psycopg.Connection[Any],
) -> None:
    conn = timescale_conn
    rows = make_metrics(conn)
    chunks = conn.execute("SELECT count(*) FROM show_chunks('metrics')").fetchone()
    assert chunks == (3,)  # 72 hours in daily chunks

    conn.execute(
        "CREATE MATERIALIZED VIEW metrics_1h WITH (timescaledb.continuous) AS"
        " SELECT time_bucket(INTERVAL '1 hour', ts) AS bucket, tenant,"
        " count(*) AS n, sum(value) AS total, max(value) AS peak"
        " FROM metrics GROUP BY bucket, tenant WITH NO DATA"
    )
    conn.execute(
        "SELECT add_continuous_aggregate_policy('metrics_1h', start_offset => NULL,"
        " end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 minute')"
    )
    jobs = conn.execute(
        "SELECT count(*) FROM timescaledb_information.jobs"
        " WHERE proc_name = 'policy_refresh_continuous_aggregate'"
    ).fetchone()
    assert jobs == (1,)
    # WITH NO DATA and no background worker: empty until refreshed by hand.
    assert conn.execute("SELECT count(*) FROM metrics_1h").fetchone() == (0,)

    conn.execute("CALL refresh_continuous_aggregate('metrics_1h', NULL, NULL)")
    got = conn.execute(
        "SELECT bucket, tenant, n, total, peak FROM metrics_1h ORDER BY bucket, tenant"
    ).fetchall()
    want = conn.execute(
        "SELECT time_bucket(INTERVAL '1 hour', ts) AS b, tenant, count(*), sum(value), max(value)"
        " FROM metrics GROUP BY b, tenant ORDER BY b, tenant"
    ).fetchall()
    assert got == want
    assert len(got) == 72 * len(TENANTS)
    assert sum(r[2] for r in got) == len(rows)
    assert sum(r[3] for r in got) == pytest.approx(sum(r[2] for r in rows))


def test_compression_keeps_rows_readable(timescale_conn: psycopg.Connection[Any]) -> None:
    conn = timescale_conn
    make_metrics(conn)
    before = conn.execute("SELECT ts, tenant, value FROM metrics ORDER BY ts, tenant").fetchall()
    conn.execute(
        "ALTER TABLE metrics SET (timescaledb.compress,"
        " timescaledb.compress_segmentby = 'tenant', timescaledb.compress_orderby = 'ts DESC')"
    )
    conn.execute("SELECT add_compression_policy('metrics', compress_after => INTERVAL '1 day')")
    first = conn.execute(
        "SELECT c FROM show_chunks('metrics') AS c ORDER BY c::text LIMIT 1"
    ).fetchone()
    assert first is not None
    conn.execute("SELECT compress_chunk(%s::regclass)", [first[0]])

    compressed = conn.execute(
        "SELECT count(*) FILTER (WHERE is_compressed), count(*)"
        " FROM timescaledb_information.chunks WHERE hypertable_name = 'metrics'"
    ).fetchone()
    assert compressed == (1, 3)
    after = conn.execute("SELECT ts, tenant, value FROM metrics ORDER BY ts, tenant").fetchall()
    assert after == before
    by_tenant = conn.execute(
        "SELECT tenant, count(*) FROM metrics WHERE ts < %s GROUP BY tenant ORDER BY tenant",
        [T0 + timedelta(days=1)],
    ).fetchall()
    assert by_tenant == [(t, 96) for t in TENANTS]


def test_retention_policy_and_drop_chunks(timescale_conn: psycopg.Connection[Any]) -> None:
    conn = timescale_conn
    make_metrics(conn)
    dropped = conn.execute(
        "SELECT count(*) FROM drop_chunks('metrics', older_than => %s::timestamptz)",
        [T0 + timedelta(days=2)],
    ).fetchone()
    assert dropped == (2,)
    left = conn.execute("SELECT min(ts), count(*) FROM metrics").fetchone()
    assert left == (T0 + timedelta(days=2), 24 * 4 * len(TENANTS))

    # No background worker runs the policy, but CALL run_job does, by hand.
    job = conn.execute(
        "SELECT add_retention_policy('metrics', drop_after => INTERVAL '10 days')"
    ).fetchone()
    assert job is not None
    listed = conn.execute(
        "SELECT proc_name FROM timescaledb_information.jobs WHERE job_id = %s", [job[0]]
    ).fetchone()
    assert listed == ("policy_retention",)
    assert datetime.now(UTC) > T0 + timedelta(days=13)  # so the last chunk is old enough
    conn.execute("CALL run_job(%s)", [job[0]])
    assert conn.execute("SELECT count(*) FROM show_chunks('metrics')").fetchone() == (0,)


def test_roles_grants_and_security_barrier_view(timescale_conn: psycopg.Connection[Any]) -> None:
    conn = timescale_conn
    make_metrics(conn)
    conn.execute("CREATE ROLE analyst NOLOGIN")
    conn.execute(
        "CREATE VIEW tenant_metrics WITH (security_barrier) AS"
        " SELECT ts, tenant, value FROM metrics"
        " WHERE tenant = current_setting('linkpulse.tenant', true)"
    )
    conn.execute("GRANT SELECT ON tenant_metrics TO analyst")

    conn.execute("SET ROLE analyst")
    assert conn.execute("SELECT current_user").fetchone() == ("analyst",)
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute("SELECT count(*) FROM metrics")
    # The same, through a chunk: the chunk schema is not granted either.
    chunk = conn.execute(
        "SELECT format('%I.%I', chunk_schema, chunk_name)"
        " FROM timescaledb_information.chunks LIMIT 1"
    ).fetchone()
    assert chunk is not None
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute(f"SELECT count(*) FROM {chunk[0]}")
    assert conn.execute("SELECT count(*) FROM tenant_metrics").fetchone() == (0,)
    conn.execute("SELECT set_config('linkpulse.tenant', 'acme', false)")
    seen = conn.execute("SELECT tenant, count(*) FROM tenant_metrics GROUP BY 1").fetchall()
    assert seen == [("acme", 72 * 4)]
    conn.execute("RESET ROLE")
    assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_insert_on_conflict_do_nothing_on_hypertable(
    timescale_conn: psycopg.Connection[Any],
) -> None:
    conn = timescale_conn
    conn.execute(
        "CREATE TABLE events (event_id uuid NOT NULL, event_time timestamptz NOT NULL,"
        " tenant text NOT NULL, UNIQUE (event_id, event_time))"
    )
    conn.execute("SELECT create_hypertable('events', by_range('event_time', INTERVAL '1 day'))")
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(10)]
    rows = [(ids[i], T0 + timedelta(hours=i * 6), "acme") for i in range(10)]
    sql = "INSERT INTO events VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
    with conn.cursor() as cur:
        cur.execute(sql, rows[0])
        assert cur.rowcount == 1
        cur.execute(sql, rows[0])
        assert cur.rowcount == 0
        cur.executemany(sql, rows)  # nine new, one duplicate
    assert conn.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone() == (
        10,
        10,
    )


def test_executemany_pipeline_and_large_statements(timescale_conn: psycopg.Connection[Any]) -> None:
    conn = timescale_conn
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, body text NOT NULL)")
    # Many small messages and some larger than 8 KB: the server once ran only
    # the first ~8 KB of such a batch and then hung (see server.mjs).
    sizes = (3, 40, 3000, 9000)
    rows = [(i, "r" * sizes[i % len(sizes)]) for i in range(500)]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO t VALUES (%s, %s)", rows)
        cur.executemany(
            "INSERT INTO t VALUES (%s, %s) RETURNING id", [(1000, "a"), (1001, "b")], returning=True
        )
        returned = []
        while True:
            returned.append(cur.fetchone())
            if not cur.nextset():
                break
        assert returned == [(1000,), (1001,)]
    with conn.pipeline():
        first = conn.execute("SELECT count(*) FROM t")
        second = conn.execute("SELECT %s::int * 2", [21])
    assert first.fetchone() == (502,)
    total = conn.execute("SELECT sum(length(body)) FROM t WHERE id < 500").fetchone()
    assert total == (sum(len(body) for _, body in rows),)
    assert second.fetchone() == (42,)
    # A statement far larger than one TCP read (~2 MB) arrives whole.
    big = [(10_000 + i, "x" * 1000) for i in range(2000)]
    insert_values(conn, "t", big)
    stored = conn.execute("SELECT count(*), sum(length(body)) FROM t WHERE id >= 10000")
    assert stored.fetchone() == (2000, 2_000_000)
    assert len(conn.execute("SELECT body FROM t WHERE id >= 10000").fetchall()) == 2000


def test_transactions_roll_back(timescale_dsn: str) -> None:
    with timescale_connect(timescale_dsn, autocommit=False) as conn:
        conn.execute("CREATE TABLE t (a int)")
        conn.commit()
        conn.execute("INSERT INTO t VALUES (1)")
        conn.rollback()
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (2)")
            with pytest.raises(errors.DivisionByZero), conn.transaction():
                conn.execute("INSERT INTO t VALUES (3)")
                conn.execute("SELECT 1 / 0")
        assert conn.execute("SELECT array_agg(a) FROM t").fetchone() == ([2],)


def test_each_connection_starts_with_a_clean_session(timescale_dsn: str) -> None:
    # PGlite is one backend shared by all connections: the server resets it.
    leaky = timescale_connect(timescale_dsn, autocommit=False)
    leaky.execute("CREATE ROLE analyst NOLOGIN")
    leaky.commit()
    for i in range(6):  # psycopg prepares "_pg3_0" server-side after 5 runs
        leaky.execute("SELECT %s::int", [i])
    leaky.execute("CREATE TABLE uncommitted (a int)")
    leaky.execute("SET ROLE analyst")
    leaky.execute("SET linkpulse.tenant = 'acme'")
    leaky.close()  # inside an open transaction

    with timescale_connect(timescale_dsn) as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        assert conn.execute("SELECT current_setting('linkpulse.tenant', true)").fetchone() in {
            (None,),
            ("",),
        }
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('uncommitted')").fetchone() == (None,)
        assert [conn.execute("SELECT %s::int", [i]).fetchone() for i in range(6)] == [
            (i,) for i in range(6)
        ]
        # search_path survives the reset: TimescaleDB's functions still resolve.
        conn.execute("CREATE TABLE h (ts timestamptz NOT NULL)")
        assert conn.execute("SELECT count(*) FROM create_hypertable('h', 'ts')").fetchone() == (1,)


def test_client_that_gave_up_while_queued_does_not_block_the_next(timescale_dsn: str) -> None:
    with timescale_connect(timescale_dsn) as first:
        # One connection at a time: a second one waits in the queue, and times out.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(timescale_dsn, connect_timeout=1)
        assert first.execute("SELECT 1").fetchone() == (1,)
    # The abandoned client is first in the queue; the server drops it (~2 s).
    with timescale_connect(timescale_dsn, connect_timeout=15) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_copy_from_stdin_fails_cleanly(timescale_dsn: str) -> None:
    with timescale_connect(timescale_dsn) as conn:
        conn.execute("CREATE TABLE t (a int)")
        with pytest.raises(errors.FeatureNotSupported, match="COPY FROM STDIN"):  # noqa: SIM117
            with conn.cursor().copy("COPY t FROM STDIN") as copy:
                copy.write_row((1,))
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_missing_node_fails_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(TimescaleServerError, match=r"bash tests/timescale/install\.sh"):
        ensure_installed()
