"""`linkpulse doctor` and the store's scheduled jobs (linkpulse/store/jobs.py).

- The health rules (pure) on hand-made job records.
- Plain PostgreSQL: `db maintain` records every pass in lp_store_meta; doctor
  shows "never run", then the successful pass, then a pass that really failed
  (a rollup table it refreshes was dropped) with its error, and exits 1.
- TimescaleDB (the WASM lane): doctor lists the store's policies from
  timescaledb_information.jobs as "never run" (the WASM build has no
  background workers, so no job ever runs, and `run_job` records no stats).
  For the failing case we write what TimescaleDB's scheduler writes after a
  failed run into TimescaleDB's own catalog (bgw_job_stat and
  bgw_job_stat_history, the tables behind job_stats and job_errors), with the
  error the issue saw on PostgreSQL 15.20; doctor reads it through the public
  views and exits 1.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from linkpulse.cli import app
from linkpulse.config import Settings
from linkpulse.store import jobs
from linkpulse.store.capabilities import Tier
from linkpulse.store.jobs import Job, Level, classify, next_record, read_jobs
from linkpulse.store.maintain import run_once
from linkpulse.store.migrate import migrate
from linkpulse.store.tiers import apply_policies

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
SYSTEM = {
    "LINKPULSE_NATS_URL": "nats://127.0.0.1:4222",
    "LINKPULSE_REDIS_URL": "redis://127.0.0.1:6379/0",
}
PORTAL_ERROR = 'cannot drop portal "" while it is being set up'


# ---------------------------------------------------------------- pure rules


def ts_job(**kw: Any) -> Job:
    base: dict[str, Any] = {"job_id": 1000, "schedule": MINUTE, "next_start": NOW + MINUTE}
    return Job("refresh events_1m", "timescaledb", **(base | kw))


def maintain_job(**kw: Any) -> Job:
    return Job(jobs.MAINTAIN, "linkpulse", schedule=MINUTE, **kw)


@pytest.mark.parametrize(
    ("job", "level", "status", "hint_part"),
    [
        pytest.param(ts_job(), Level.OK, "never run", "", id="ts-new"),
        pytest.param(
            ts_job(next_start=NOW - timedelta(minutes=10)),
            Level.WARN,
            "never run",
            "scheduler",
            id="ts-never-run-overdue",
        ),
        pytest.param(
            ts_job(
                last_start=NOW - MINUTE,
                last_status="failed",
                runs=9,
                failures=9,
                last_error=PORTAL_ERROR,
            ),
            Level.FAIL,
            "failing",
            f"9 of 9 runs failed: {PORTAL_ERROR}",
            id="ts-failing",
        ),
        pytest.param(
            ts_job(last_start=NOW - MINUTE, last_status="failed", runs=1, failures=1),
            Level.FAIL,
            "failing",
            "see the server log",
            id="ts-failing-no-error-text",
        ),
        pytest.param(
            Job("Telemetry Reporter [1]", "timescaledb", job_id=1, last_status="failed"),
            Level.WARN,
            "failing",
            "",
            id="ts-internal-failing",
        ),
        pytest.param(
            ts_job(last_start=NOW - MINUTE, last_status="success", runs=5, failures=2),
            Level.OK,
            "ok",
            "2 of 5 runs failed",
            id="ts-recovered",
        ),
        pytest.param(ts_job(paused=True), Level.WARN, "paused", "alter_job(1000", id="ts-paused"),
        pytest.param(
            ts_job(running=True, next_start=NOW - timedelta(hours=1)),
            Level.OK,
            "running",
            "",
            id="ts-running",
        ),
        pytest.param(maintain_job(), Level.WARN, "never run", "--loop", id="maintain-never"),
        pytest.param(
            maintain_job(required=False), Level.OK, "never run", "not needed", id="maintain-full"
        ),
        pytest.param(
            maintain_job(last_start=NOW - 4 * MINUTE, last_status="success", runs=1),
            Level.WARN,
            "overdue",
            "LINKPULSE_STORE_MAINTAIN_INTERVAL_S",
            id="maintain-overdue",
        ),
        pytest.param(
            maintain_job(last_start=NOW - 2 * MINUTE, last_status="success", runs=1),
            Level.OK,
            "ok",
            "",
            id="maintain-ok",
        ),
        pytest.param(
            maintain_job(
                last_start=NOW - MINUTE,
                last_status="failed",
                runs=3,
                failures=2,
                consecutive_failures=2,
                last_error="boom",
            ),
            Level.FAIL,
            "failing",
            "2 failure(s) in a row, 2 of 3 runs failed: boom",
            id="maintain-failing",
        ),
    ],
)
def test_classify(job: Job, level: Level, status: str, hint_part: str) -> None:
    health = classify(job, NOW)
    assert (health.level, health.status) == (level, status)
    assert hint_part in health.hint


def test_run_record_counts_runs_failures_and_streaks() -> None:
    rec: dict[str, Any] | None = None
    outcomes = [None, "a", "b", None, "c"]
    for i, error in enumerate(outcomes):
        rec = next_record(rec, NOW + i * MINUTE, NOW + i * MINUTE + timedelta(seconds=1), error)
    assert rec is not None
    assert (rec["runs"], rec["failures"], rec["consecutive_failures"]) == (5, 3, 1)
    assert rec["last_status"] == "failed" and rec["last_error"] == "c"
    # The last success is kept through later failures.
    assert rec["last_success"] == (NOW + 3 * MINUTE + timedelta(seconds=1)).isoformat()
    assert len(next_record(None, NOW, NOW, "x" * 5000)["last_error"]) == jobs.MAX_ERROR_CHARS


# ---------------------------------------------------------------- doctor, real stores


def doctor(monkeypatch: pytest.MonkeyPatch, dsn: str, tmp_path: Any, *args: str) -> tuple[int, str]:
    """`linkpulse doctor` in-process against the system NATS and Redis and ``dsn``.

    The output is stdout and stderr together, except with ``--json``: stdout only.
    """
    for name, value in SYSTEM.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LINKPULSE_DATABASE_URL", dsn)
    result = CliRunner().invoke(app, ["doctor", "--state-dir", str(tmp_path / "state"), *args])
    return result.exit_code, result.stdout if "--json" in args else result.output


def json_jobs(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["name"]: job for job in body["jobs"]}


def job_line(output: str, name: str) -> str:
    """The jobs-table row of ``name`` (one row per line: the output is not a terminal)."""
    lines = [line for line in output.splitlines() if f" {name} " in line]
    assert len(lines) == 1, f"expected one row for {name!r} in:\n{output}"
    return lines[0]


@pytest.mark.integration
def test_doctor_reports_db_maintain_runs_on_plain_postgres(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    code, out = doctor(monkeypatch, pg_dsn, tmp_path)
    assert code == 0, out
    assert "store not migrated yet" in out

    migrate(pg_dsn)
    code, out = doctor(monkeypatch, pg_dsn, tmp_path)
    assert code == 0, out
    row = job_line(out, "db maintain")
    assert "never run" in row and "linkpulse db maintain --loop" in row

    settings = Settings(database_url=pg_dsn)
    run_once(pg_dsn, settings)
    code, out = doctor(monkeypatch, pg_dsn, tmp_path)
    assert code == 0, out
    row = job_line(out, "db maintain")
    assert " ok " in row and "s ago)" in row
    assert [c.strip() for c in row.split("│")][6:8] == ["1", "0"]  # runs, failures

    # A pass that really fails: a rollup table it refreshes is gone.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE events_1h CASCADE")
    with pytest.raises(Exception, match="events_1h"):
        run_once(pg_dsn, settings)
    code, out = doctor(monkeypatch, pg_dsn, tmp_path)
    assert code == 1, out
    row = job_line(out, "db maintain")
    assert "failing" in row and "1 failure(s) in a row, 1 of 2 runs failed" in row
    assert "events_1h" in row
    assert "failing scheduled jobs: db maintain: " in " ".join(out.split())

    code, out = doctor(monkeypatch, pg_dsn, tmp_path, "--json")
    assert code == 1
    body = json.loads(out)
    maintain = json_jobs(body)["db maintain"]
    assert body["ok"] is False and maintain["health"]["level"] == "fail"
    assert (maintain["runs"], maintain["failures"], maintain["schedule"]) == (2, 1, 60.0)
    assert "events_1h" in maintain["last_error"]
    assert body["problems"][0]["message"].startswith("failing scheduled jobs: db maintain: ")

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        (found,) = read_jobs(conn, maintain_every=MINUTE)
    assert (found.runs, found.failures, found.last_status) == (2, 1, "failed")
    assert found.last_success is not None and found.last_finish is not None
    assert found.last_success < found.last_finish


@pytest.mark.integration
def test_each_pass_is_recorded_once_and_never_hides_its_error(pg_dsn: str) -> None:
    migrate(pg_dsn)
    settings = Settings(database_url=pg_dsn)
    run_once(pg_dsn, settings)  # connects, then runs on that connection: one run
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        run_once(conn, settings)
        (found,) = read_jobs(conn, maintain_every=MINUTE)
    assert (found.runs, found.failures, found.consecutive_failures) == (2, 0, 0)

    @jobs.recorded("probe job")
    def fails_to_connect(conn_or_dsn: psycopg.Connection | str) -> None:
        raise psycopg.OperationalError("server went away")

    # The record cannot be written either (nothing listens there): the pass's
    # own error still comes out, not the recording's.
    with pytest.raises(psycopg.OperationalError, match="server went away"):
        fails_to_connect("postgresql://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(psycopg.OperationalError, match="server went away"):
        fails_to_connect(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM lp_store_meta WHERE key = 'job:probe job'").fetchone()
    assert row is not None
    assert json.loads(row[0])["last_error"] == "server went away"


def scheduler_failed_every_job(conn: psycopg.Connection[Any], error: str) -> list[int]:
    """Write what TimescaleDB's scheduler records after a failed run, for every job.

    The WASM build has no background worker to run (and fail) a job, so this is
    the only way there to have a failed run in job_stats and job_errors; the
    row shapes are TimescaleDB's own (bgw_job_stat, bgw_job_stat_history).
    """
    ids = [r[0] for r in conn.execute("SELECT job_id FROM timescaledb_information.jobs")]
    for job_id in ids:
        conn.execute(
            """
            INSERT INTO _timescaledb_internal.bgw_job_stat AS s
              (job_id, last_start, last_finish, next_start, last_successful_finish,
               last_run_success, total_runs, total_duration, total_duration_failures,
               total_successes, total_failures, total_crashes, consecutive_failures,
               consecutive_crashes, flags)
            VALUES (%(id)s, now() - interval '70 s', now() - interval '69 s',
                    now() + interval '1 min', '-infinity', false, 3, interval '3 s',
                    interval '3 s', 0, 3, 0, 3, 0, 0)
            ON CONFLICT (job_id) DO UPDATE SET
              last_start = EXCLUDED.last_start, last_finish = EXCLUDED.last_finish,
              last_run_success = false, total_runs = 3, total_failures = 3
            """,
            {"id": job_id},
        )
        conn.execute(
            "INSERT INTO _timescaledb_internal.bgw_job_stat_history"
            " (job_id, pid, execution_start, execution_finish, succeeded, data)"
            " VALUES (%s, 4242, now() - interval '70 s', now() - interval '69 s', false,"
            " jsonb_build_object('error_data', jsonb_build_object("
            "   'message', %s::text, 'sqlerrcode', 'XX000')))",
            (job_id, error),
        )
    return ids


@pytest.mark.timescale
@pytest.mark.integration
def test_doctor_lists_timescaledb_jobs_and_fails_when_they_fail(
    ts_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    migrate(ts_dsn)
    with psycopg.connect(ts_dsn, autocommit=True) as conn:
        apply_policies(
            conn, Tier.FULL_TIMESCALE, raw_days=90, rollup_days=730, compress_after_days=7
        )
        listed = read_jobs(conn, maintain_every=MINUTE)
    names = {j.name for j in listed if j.source == "timescaledb" and not j.internal}
    assert {
        "refresh events_1m",
        "refresh events_1h",
        "refresh events_1d",
        "compression events",
        "retention events",
    } <= names
    assert all(j.runs == 0 and j.last_start is None for j in listed)

    code, out = doctor(monkeypatch, ts_dsn, tmp_path)
    assert code == 0, out
    for name in ("refresh events_1m", "compression events", "retention events_1d"):
        assert "never run" in job_line(out, name)
    # On the full tier the policies do the upkeep: a never-run `db maintain` is fine.
    assert "not needed" in job_line(out, "db maintain")
    # A pass on this server is recorded like on plain PostgreSQL.
    run_once(ts_dsn, Settings(database_url=ts_dsn))
    with psycopg.connect(ts_dsn, autocommit=True) as conn:
        maintain = [j for j in read_jobs(conn, maintain_every=MINUTE) if j.source == "linkpulse"]
    assert [(j.name, j.runs, j.failures, j.last_status) for j in maintain] == [
        (jobs.MAINTAIN, 1, 0, "success")
    ]

    with psycopg.connect(ts_dsn, autocommit=True) as conn:
        failed = scheduler_failed_every_job(conn, PORTAL_ERROR)
    assert len(failed) >= len(names)
    code, out = doctor(monkeypatch, ts_dsn, tmp_path)
    assert code == 1, out
    row = job_line(out, "refresh events_1m")
    assert "failing" in row and f"3 of 3 runs failed: {PORTAL_ERROR} (SQLSTATE XX000)" in row
    assert "s ago)" in row  # the last run's time, from job_stats
    flat = " ".join(out.split())
    assert "failing scheduled jobs: " in flat and f"compression events: {PORTAL_ERROR}" in flat

    code, out = doctor(monkeypatch, ts_dsn, tmp_path, "--json")
    assert code == 1
    body = json.loads(out)
    by_name = json_jobs(body)
    assert names <= by_name.keys()
    for name in names:
        job = by_name[name]
        assert job["health"]["level"] == "fail" and job["last_status"] == "failed", job
        assert job["last_error"] == f"{PORTAL_ERROR} (SQLSTATE XX000)"
        datetime.fromisoformat(job["last_start"])  # ISO 8601
    assert by_name["Job History Log Retention Policy [3]"]["health"]["level"] == "warn"
