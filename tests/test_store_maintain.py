"""`db maintain --loop` (``maintain.run_forever``) through a store outage, on the real PostgreSQL.

The loop's DSN names a database that does not exist for the first passes (the
server answers, the connect fails); it keeps going, logs each failure, and the
first pass that reaches the store adds the failed passes to the job record in
``lp_store_meta`` (what ``linkpulse doctor`` shows). A closed port: every pass
fails, the loop still runs them all.
"""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql
from structlog.testing import capture_logs

from linkpulse.config import load_settings
from linkpulse.store import migrate, run_forever
from linkpulse.store.jobs import MAINTAIN, Level, classify, read_jobs
from tests.fix_db import ADMIN_DSN, admin_connect, dsn_with_dbname

pytestmark = pytest.mark.integration

SETTINGS = load_settings(store_partitions_ahead_days=1)


@pytest.fixture(autouse=True)
def _uncached_maintain_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    # configure_logging caches each logger on first use, so after another test
    # (or the CLI) has logged, maintain's module logger no longer sees
    # structlog's capture_logs: give it a fresh one for the test.
    import structlog

    from linkpulse.store import maintain

    monkeypatch.setattr(maintain, "log", structlog.get_logger("linkpulse.store.maintain"))


def failures_logged(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "store_maintain_failed"]


def test_loop_survives_a_missing_database_and_records_the_outage() -> None:
    name = f"lp_test_outage_{uuid.uuid4().hex[:12]}"
    dsn = dsn_with_dbname(ADMIN_DSN, name)
    waits: list[float] = []
    seen: dict[str, Any] = {}

    def wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # two passes failed: the database comes back, migrated
            with admin_connect() as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            migrate(dsn, tier="plain")
        if len(waits) == 3:  # the third pass reached it
            with psycopg.connect(dsn, autocommit=True) as conn:
                seen["job"] = next(j for j in read_jobs(conn) if j.name == MAINTAIN)

    began = datetime.now(UTC)
    try:
        with capture_logs() as logs:
            passes = run_forever(dsn, SETTINGS, interval_s=30, max_passes=4, wait=wait)
    finally:
        with admin_connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    assert passes == 4 and waits == [30, 30, 30]
    failed = failures_logged(logs)
    assert [e["failed_in_a_row"] for e in failed] == [1, 2]
    assert all(name in e["error"] and "does not exist" in e["error"] for e in failed), failed
    assert all(e["log_level"] == "error" and e["retry_in_s"] == 30 for e in failed)
    # the two unreachable passes were recorded by the first one that got through
    job = seen["job"]
    assert (job.runs, job.failures, job.consecutive_failures) == (3, 2, 0)
    assert job.last_status == "success"
    assert job.last_start is not None and job.last_start >= began
    health = classify(job, datetime.now(UTC))
    assert health.level is Level.OK and health.hint == "2 of 3 runs failed"


def test_loop_keeps_going_while_the_port_is_closed() -> None:
    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        dsn = f"postgresql://postgres@127.0.0.1:{port}/test"
        with capture_logs() as logs:
            passes = run_forever(dsn, SETTINGS, interval_s=5, max_passes=3, wait=lambda _: None)
    assert passes == 3
    failed = failures_logged(logs)
    assert [e["failed_in_a_row"] for e in failed] == [1, 2, 3]
    assert all(str(port) in e["error"] for e in failed), failed


def test_loop_refuses_a_bad_pass_count() -> None:
    with pytest.raises(ValueError, match="max_passes must be at least 1, got 0"):
        run_forever("postgresql://unused", SETTINGS, interval_s=1, max_passes=0)
