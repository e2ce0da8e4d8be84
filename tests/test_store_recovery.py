"""A writer whose connection is killed mid-batch reconnects; nothing is lost or doubled."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from linkpulse.store import EventWriter, migrate, refresh
from tests.test_store_writer import ROLLUP_SQL, make_events, rollup_rows

FIND_ACTIVE = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND state = 'active' AND (query ILIKE '%%events%%')
"""


@pytest.mark.parametrize("use_copy", [True, False], ids=["copy", "insert"])
def test_connection_killed_mid_batch_loses_and_doubles_nothing(pg_dsn: str, use_copy: bool) -> None:
    migrate(pg_dsn)
    events = make_events(60_000, seed=11)
    result: dict[str, object] = {}
    writer = EventWriter(pg_dsn, batch_size=20_000, use_copy=use_copy)

    def run() -> None:
        try:
            result["inserted"] = writer.write_events(events)
        except Exception as e:  # surfaced by the assertion below
            result["error"] = e

    killed = 0
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 60
        while thread.is_alive() and time.monotonic() < deadline and killed == 0:
            for (pid,) in admin.execute(FIND_ACTIVE).fetchall():
                ok = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
                killed += bool(ok and ok[0])
            time.sleep(0.002)
        thread.join(timeout=120)
        writer.close()
        assert "error" not in result, result
        assert killed >= 1, "the test never caught a batch in flight"
        assert writer.retries >= 1
        total, distinct = admin.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM events"
        ).fetchone()  # type: ignore[misc]
        assert (total, distinct) == (60_000, 60_000)
        # the rollups miss nothing either (on the plain tiers: the writer's
        # bucket log was committed with each retried batch)
        refresh(admin)
        assert (
            rollup_rows(admin, "events_1m") == admin.execute(ROLLUP_SQL, ("1 minute",)).fetchall()
        )


def test_a_store_outage_pauses_the_writer_which_then_resumes_exactly(pg_dsn: str) -> None:
    # A real outage: the database refuses every connection for ~3 s and its
    # sessions are terminated; a writer with an outage budget rides it out.
    from linkpulse.store.writer import retries_for

    migrate(pg_dsn)
    events = make_events(30_000, seed=12)
    writer = EventWriter(pg_dsn, batch_size=5_000, max_retries=retries_for(20))
    writer.write_events(events[:5_000])  # connected before the outage
    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["inserted"] = writer.write_events(events)
        except Exception as e:  # surfaced by the assertion below
            result["error"] = e

    from tests.fix_db import admin_connect

    with admin_connect() as admin:
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (dbname,),
        )
        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(3)
        assert thread.is_alive(), "the writer gave up (or finished) during the outage"
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        thread.join(60)
    writer.close()
    assert "error" not in result, result
    assert result["inserted"] == 25_000  # the first 5,000 were already stored
    assert writer.retries > 0
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (30_000,)
