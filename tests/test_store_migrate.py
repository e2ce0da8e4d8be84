"""Migrations: from empty, twice, from two processes at once, and a changed file refused."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from linkpulse.cli import app
from linkpulse.config import get_settings
from linkpulse.errors import MigrationError, StoreError
from linkpulse.store import EventWriter, Tier, detect, migrate, refresh, status, stored_tier
from linkpulse.store.capabilities import server_tier
from linkpulse.store.migrate import LOCK_KEY, MIGRATIONS_DIR, discover, render
from tests.test_store_writer import BASE, make_events

EXPECTED_TABLES = {
    "events", "metric_windows", "anomaly_scores", "alerts", "dead_letters", "events_1m",
    "events_1h", "events_1d", "lp_rollup_dirty", "lp_rollup_state", "lp_rollup_pending",
    "lp_schema_migrations",
}  # fmt: skip


def tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    ).fetchall()
    return {r[0] for r in rows}


def test_apply_from_empty_then_again_is_a_no_op(pg_dsn: str) -> None:
    done = migrate(pg_dsn)
    assert [m.version for m in done] == [m.version for m in discover()]
    with psycopg.connect(pg_dsn) as conn:
        tier = stored_tier(conn)
        assert tier is server_tier(conn)  # the server's best, unless forced
        first = conn.execute("SELECT version, applied_at FROM lp_schema_migrations").fetchall()
        if tier is Tier.PLAIN_POSTGRES:
            assert EXPECTED_TABLES <= tables(conn)
            assert conn.execute(
                "SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'events'::regclass"
            ).fetchone() == ("r",)
    assert migrate(pg_dsn) == []
    with psycopg.connect(pg_dsn) as conn:
        assert (
            conn.execute("SELECT version, applied_at FROM lp_schema_migrations").fetchall() == first
        )
        st = status(conn)
    assert all(s.applied_at is not None and not s.changed for s in st)


def test_status_lists_pending_before_migrating(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        st = status(conn)
    assert st and all(s.applied_at is None for s in st)


def test_two_processes_migrate_at_once_and_apply_once(pg_dsn: str) -> None:
    code = "import sys; from linkpulse.store import migrate; print(len(migrate(sys.argv[1])))"
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        # Hold the migrators' lock so both processes must queue on it.
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, pg_dsn],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            waiting = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
            if waiting == (2,):
                break
            time.sleep(0.1)
        assert waiting == (2,), "both migrators should be waiting on the advisory lock"
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    counts = sorted(int(o[0].strip().splitlines()[-1]) for o in outs)
    assert counts == [0, len(discover())]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM lp_schema_migrations").fetchone() == (
            len(discover()),
        )


def test_a_changed_applied_file_is_refused_by_name(pg_dsn: str, tmp_path: Path) -> None:
    for f in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(f, tmp_path / f.name)
    migrate(pg_dsn, directory=tmp_path)
    target = tmp_path / "0002_rollups.sql"
    target.write_text(target.read_text() + "\n-- a harmless-looking edit\n")
    with pytest.raises(MigrationError, match=r"0002_rollups\.sql was changed after it was applied"):
        migrate(pg_dsn, directory=tmp_path)
    with psycopg.connect(pg_dsn) as conn:
        assert [s.name for s in status(conn, tmp_path) if s.changed] == ["rollups"]


def test_a_new_file_is_applied_later_and_a_failing_one_names_itself(
    pg_dsn: str, tmp_path: Path
) -> None:
    for f in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(f, tmp_path / f.name)
    migrate(pg_dsn, directory=tmp_path)
    (tmp_path / "0099_extra.sql").write_text("CREATE TABLE extra (id int);\n")
    assert [m.name for m in migrate(pg_dsn, directory=tmp_path)] == ["extra"]
    (tmp_path / "0100_broken.sql").write_text("CREATE TABLE nope (id int;\n")
    with pytest.raises(MigrationError, match="0100_broken.sql failed"):
        migrate(pg_dsn, directory=tmp_path)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT max(version) FROM lp_schema_migrations").fetchone() == (99,)


def test_badly_named_file_and_unknown_tier_are_refused(pg_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "1_x.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lowercase_name"):
        discover(tmp_path)
    with pytest.raises(ValueError, match="unknown store tier"):
        Tier.parse("gold")


def test_forcing_a_tier_the_server_lacks_is_refused(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        best = server_tier(conn)
        if best is Tier.FULL_TIMESCALE:  # nothing above it: forcing the best is allowed
            assert detect(conn, "full") is Tier.FULL_TIMESCALE
            return
    with pytest.raises(StoreError, match=f"offers only {best.value}"):
        migrate(pg_dsn, tier="full_timescale")


def test_tier_sections_render_per_tier() -> None:
    sql = (MIGRATIONS_DIR / "0001_core.sql").read_text()
    assert "PARTITION BY RANGE (event_time)" in render(sql, Tier.PLAIN_POSTGRES)
    assert "create_hypertable('events'" not in render(sql, Tier.PLAIN_POSTGRES)
    assert "create_hypertable('events'" in render(sql, Tier.APACHE_TIMESCALE)
    rollups = (MIGRATIONS_DIR / "0002_rollups.sql").read_text()
    assert "timescaledb.continuous" in render(rollups, Tier.FULL_TIMESCALE)
    assert "timescaledb.continuous" not in render(rollups, Tier.APACHE_TIMESCALE)
    indexes = (MIGRATIONS_DIR / "0005_rollup_series_indexes.sql").read_text()
    assert "events_1m_series" in render(indexes, Tier.FULL_TIMESCALE)
    assert "events_1m_series" not in render(indexes, Tier.PLAIN_POSTGRES)
    assert "events_1m_series" not in render(indexes, Tier.APACHE_TIMESCALE)


SERIES_PLAN = """
EXPLAIN SELECT bucket, sum(events)::bigint FROM {rollup}
WHERE tenant = 'acme' AND type = 'page_view' AND bucket >= %s AND bucket < %s
GROUP BY bucket ORDER BY bucket
"""


def test_rollup_series_are_index_only_scans_on_every_tier(lane_dsn: str) -> None:
    """Issue 9 §2.4: a tenant's series by type needs no heap (0005 on the full tier).

    Scans other than by index are turned off so the plan shows what the indexes
    allow whatever the (small) table sizes; bench/bench_store.py measures the
    real plans and timings on 30 days of data.
    """
    migrate(lane_dsn)
    with EventWriter(lane_dsn) as w:
        w.write_events(make_events(2_000, seed=51, span_s=2 * 86400))
    with psycopg.connect(lane_dsn, autocommit=True) as conn:
        refresh(conn)
        conn.execute("VACUUM ANALYZE")  # index-only scans need the visibility map
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        for rollup in ("events_1m", "events_1h", "events_1d"):
            query = SERIES_PLAN.format(rollup=rollup)
            plan = "\n".join(
                r[0] for r in conn.execute(query, (BASE, BASE + timedelta(days=2))).fetchall()
            )
            assert "Index Only Scan" in plan, plan
            assert "Heap" not in plan and "Seq Scan" not in plan, plan


def db_status(monkeypatch: pytest.MonkeyPatch, dsn: str, *args: str) -> tuple[int, str]:
    """`linkpulse db status` in-process against ``dsn``: exit code and stdout."""
    monkeypatch.setenv("LINKPULSE_DATABASE_URL", dsn)
    get_settings.cache_clear()  # the CLI reads the settings once per process
    try:
        result = CliRunner().invoke(app, ["db", "status", *args])
    finally:
        get_settings.cache_clear()  # no later test sees this database
    return result.exit_code, result.stdout


def test_db_status_json_before_and_after_migrating(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = discover()
    code, out = db_status(monkeypatch, pg_dsn, "--json")
    assert code == 0, out
    body = json.loads(out)
    assert body["ok"] is True and body["tier"] is None
    assert body["server_tier"] in {t.value for t in Tier}
    assert (body["applied"], body["pending"], body["changed"]) == (0, len(files), 0)
    assert [m["version"] for m in body["migrations"]] == [m.version for m in files]
    assert {m["state"] for m in body["migrations"]} == {"pending"}
    assert body["tables"] == []

    migrate(pg_dsn, tier="plain")
    with EventWriter(pg_dsn) as w:
        w.write_events(make_events(300, seed=51))
    code, out = db_status(monkeypatch, pg_dsn, "--json")
    assert code == 0, out
    body = json.loads(out)
    assert body["tier"] == "plain"
    assert (body["applied"], body["pending"], body["changed"]) == (len(files), 0, 0)
    first = body["migrations"][0]
    assert first["state"] == "applied" and len(first["checksum"]) == 64
    assert datetime.fromisoformat(first["applied_at"]).tzinfo is not None
    by_name = {t["name"]: t for t in body["tables"]}
    assert EXPECTED_TABLES <= set(by_name)
    events = by_name["events"]
    assert events["kind"] == "partitioned" and events["parts"] > 0 and events["bytes"] > 0
    meta = by_name["lp_schema_migrations"]
    assert meta["kind"] == "table" and meta["parts"] == 0 and meta["bytes"] > 0

    # the table form shows the same, one row per line under a pipe
    code, out = db_status(monkeypatch, pg_dsn)
    assert code == 0, out
    assert "tier in use: plain" in out
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()]
    assert any(row[:2] == ["events", "partitioned"] and row[3] != "0 bytes" for row in rows), out


def test_db_status_json_when_the_store_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # bound, never listening: the connect is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        code, out = db_status(monkeypatch, f"postgresql://postgres@127.0.0.1:{port}/x", "--json")
    assert code == 1
    body = json.loads(out)
    assert body["ok"] is False and str(port) in body["error"] and body["hint"]
