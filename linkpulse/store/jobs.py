"""The store's scheduled jobs and their health, on every tier (what ``linkpulse doctor`` shows).

Two kinds of job keep the store in shape:

- **TimescaleDB background jobs** (full tier: the refresh, compression and
  retention policies, plus TimescaleDB's own housekeeping), read from
  ``timescaledb_information.jobs`` and ``job_stats``; the last error of each
  from ``job_errors`` where the server has it (TimescaleDB 2.9+).
- **linkpulse's own maintenance pass**, ``linkpulse db maintain`` (partitions,
  refresh and retention on the plain and Apache tiers, extra on the full
  tier). It records each run in ``lp_store_meta`` under ``job:db maintain``
  (start, finish, outcome, error, counts): see :func:`recorded`.

Health is a pure function of what was read (:func:`classify`), so its rules
are tested without a server:

>>> now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
>>> bad = Job("refresh events_1m", "timescaledb", job_id=1000, last_status="failed",
...           runs=40, failures=40, last_error="cannot drop portal")
>>> classify(bad, now).level
<Level.FAIL: 'fail'>
>>> classify(Job("retention events", "timescaledb", job_id=1001), now).status
'never run'
"""

from __future__ import annotations

import contextvars
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg

from linkpulse.logging import get_logger
from linkpulse.store.capabilities import Tier
from linkpulse.store.migrate import stored_tier

__all__ = [
    "MAINTAIN",
    "Health",
    "Job",
    "JobsReport",
    "Level",
    "check",
    "classify",
    "job_name",
    "next_record",
    "read_jobs",
    "record_run",
    "recorded",
]

log = get_logger(__name__)

MAINTAIN = "db maintain"
META_PREFIX = "job:"
# TimescaleDB numbers its own jobs (telemetry, job-history retention) below 1000.
FIRST_USER_JOB_ID = 1000
# A job whose next start is this much past due (beyond its interval) is overdue.
OVERDUE_GRACE = timedelta(minutes=5)
MAX_ERROR_CHARS = 500

P = ParamSpec("P")
R = TypeVar("R")


class Level(StrEnum):
    """How bad a job's state is: ``fail`` makes ``doctor`` exit non-zero."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Job:
    """What the store knows about one scheduled job. Times are aware UTC."""

    name: str
    source: str  # "timescaledb" or "linkpulse"
    job_id: int | None = None
    schedule: timedelta | None = None
    last_start: datetime | None = None
    last_finish: datetime | None = None
    last_success: datetime | None = None
    last_status: str | None = None  # "success", "failed", or None when no run finished
    runs: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    next_start: datetime | None = None
    paused: bool = False
    running: bool = False
    # Must it run for the store to stay in shape? (db maintain is optional on the full tier.)
    required: bool = True

    @property
    def internal(self) -> bool:
        """TimescaleDB's own housekeeping rather than one of the store's policies."""
        return self.source == "timescaledb" and (self.job_id or 0) < FIRST_USER_JOB_ID


@dataclass(frozen=True)
class Health:
    """A job's verdict: level, a short status word and what to do."""

    level: Level
    status: str
    hint: str = ""


def classify(job: Job, now: datetime) -> Health:
    """The health of ``job`` at ``now``.

    A job whose last run failed is ``fail`` (``warn`` for TimescaleDB's own
    housekeeping, e.g. telemetry on an offline server); paused, overdue or
    never-run required jobs are ``warn``; the rest ``ok``.

    >>> now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    >>> hour = timedelta(hours=1)
    >>> ok = Job("db maintain", "linkpulse", schedule=hour, last_start=now - hour / 2,
    ...          last_status="success", runs=3, failures=1)
    >>> classify(ok, now)
    Health(level=<Level.OK: 'ok'>, status='ok', hint='1 of 3 runs failed')
    >>> classify(replace(ok, last_start=now - 4 * hour), now).status
    'overdue'
    >>> tele = Job("Telemetry Reporter [1]", "timescaledb", job_id=1, last_status="failed")
    >>> classify(tele, now).level
    <Level.WARN: 'warn'>
    """
    if job.last_status == "failed":
        streak = (
            f"{job.consecutive_failures} failure(s) in a row, " if job.consecutive_failures else ""
        )
        error = job.last_error or "no error recorded: see the server log"
        level = Level.WARN if job.internal else Level.FAIL
        return Health(
            level, "failing", f"{streak}{job.failures} of {job.runs} runs failed: {error}"
        )
    if job.paused:
        return Health(
            Level.WARN, "paused", f"resume it: SELECT alter_job({job.job_id}, scheduled => true)"
        )
    if job.running:
        return Health(Level.OK, "running")
    if job.last_start is None:
        return _never_run(job, now)
    if _overdue(job, now):
        return Health(Level.WARN if job.required else Level.OK, "overdue", _overdue_hint(job))
    hint = f"{job.failures} of {job.runs} runs failed" if job.failures else ""
    return Health(Level.OK, "ok", hint)


def _never_run(job: Job, now: datetime) -> Health:
    if job.source == "linkpulse":
        if not job.required:
            return Health(Level.OK, "never run", "not needed: TimescaleDB's policies do its work")
        return Health(
            Level.WARN,
            "never run",
            "run `linkpulse db maintain --loop` (or `linkpulse db maintain` from cron)",
        )
    if _overdue(job, now):
        return Health(Level.WARN, "never run", _overdue_hint(job))
    return Health(Level.OK, "never run", "")


def _overdue(job: Job, now: datetime) -> bool:
    if job.source == "linkpulse":
        # The pass has no server-side schedule: overdue after three missed intervals.
        return (
            job.schedule is not None
            and job.last_start is not None
            and now - job.last_start > 3 * job.schedule
        )
    grace = max(job.schedule or timedelta(0), OVERDUE_GRACE)
    return job.next_start is not None and now - job.next_start > grace


def _overdue_hint(job: Job) -> str:
    if job.source == "linkpulse":
        return (
            "is `linkpulse db maintain --loop` running? (run from cron, set "
            "LINKPULSE_STORE_MAINTAIN_INTERVAL_S to its period)"
        )
    return (
        "past its next start: is TimescaleDB's scheduler running? "
        "(timescaledb.max_background_workers, and the extension in shared_preload_libraries)"
    )


def job_name(proc_name: str, target: str | None, application_name: str) -> str:
    """A short name for a TimescaleDB job: what it does and to which table.

    >>> job_name("policy_refresh_continuous_aggregate", "events_1m", "Refresh Policy [1000]")
    'refresh events_1m'
    >>> job_name("policy_job_stat_history_retention", None, "Job History Log Retention [3]")
    'Job History Log Retention [3]'
    """
    verb = {
        "policy_refresh_continuous_aggregate": "refresh",
        "policy_compression": "compression",
        "policy_retention": "retention",
        "policy_reorder": "reorder",
    }.get(proc_name)
    if verb is None or target is None:
        return application_name or proc_name
    return f"{verb} {target}"


# ---------------------------------------------------------------- reading


_TIMESCALE_JOBS = """
SELECT j.job_id, j.application_name, j.proc_name, j.hypertable_name, j.schedule_interval,
       j.scheduled,
       CASE WHEN isfinite(s.last_run_started_at) THEN s.last_run_started_at END,
       CASE WHEN isfinite(s.last_successful_finish) THEN s.last_successful_finish END,
       s.last_run_duration, s.last_run_status, s.job_status,
       CASE WHEN isfinite(coalesce(s.next_start, j.next_start))
            THEN coalesce(s.next_start, j.next_start) END,
       coalesce(s.total_runs, 0), coalesce(s.total_failures, 0)
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
ORDER BY j.job_id
"""

_TIMESCALE_ERRORS = """
SELECT DISTINCT ON (job_id) job_id, err_message, sqlerrcode
FROM timescaledb_information.job_errors
WHERE err_message IS NOT NULL
ORDER BY job_id, start_time DESC NULLS LAST
"""


def _timescale_jobs(conn: psycopg.Connection) -> list[Job]:
    has_jobs = conn.execute("SELECT to_regclass('timescaledb_information.jobs')").fetchone()
    if not has_jobs or has_jobs[0] is None:
        return []
    errors: dict[int, str] = {}
    has_errors = conn.execute("SELECT to_regclass('timescaledb_information.job_errors')").fetchone()
    if has_errors and has_errors[0] is not None:
        for job_id, message, code in conn.execute(_TIMESCALE_ERRORS).fetchall():
            errors[job_id] = f"{message} (SQLSTATE {code})" if code else str(message)
    jobs = []
    for row in conn.execute(_TIMESCALE_JOBS).fetchall():
        (job_id, app, proc, target, every, scheduled, start, success, duration, status) = row[:10]
        job_status, next_start, runs, failures = row[10:]
        jobs.append(
            Job(
                job_name(proc, target, app),
                "timescaledb",
                job_id=job_id,
                schedule=every,
                last_start=start,
                last_finish=start + duration if start is not None and duration else None,
                last_success=success,
                last_status=status.lower() if status else None,
                runs=int(runs),
                failures=int(failures),
                last_error=errors.get(job_id, "")[:MAX_ERROR_CHARS],
                next_start=next_start,
                paused=not scheduled,
                running=job_status == "Running",
            )
        )
    return jobs


def _linkpulse_jobs(conn: psycopg.Connection, tier: Tier, schedule: timedelta | None) -> list[Job]:
    row = conn.execute(
        "SELECT value FROM lp_store_meta WHERE key = %s", (META_PREFIX + MAINTAIN,)
    ).fetchone()
    # db maintain does the partitions, refresh and retention below the full tier.
    required = tier is not Tier.FULL_TIMESCALE
    return [_from_record(MAINTAIN, row[0] if row else None, schedule, required)]


def _from_record(name: str, raw: str | None, schedule: timedelta | None, required: bool) -> Job:
    """The Job a stored run record describes (no record: never run).

    >>> _from_record("db maintain", "{not json", None, True).last_error
    'unreadable run record in lp_store_meta: {not json'
    """
    job = Job(name, "linkpulse", schedule=schedule, required=required)
    if raw is None:
        return job
    try:
        rec = json.loads(raw)
        return replace(
            job,
            last_start=_time(rec.get("last_start")),
            last_finish=_time(rec.get("last_finish")),
            last_success=_time(rec.get("last_success")),
            last_status=rec.get("last_status"),
            runs=int(rec.get("runs", 0)),
            failures=int(rec.get("failures", 0)),
            consecutive_failures=int(rec.get("consecutive_failures", 0)),
            last_error=str(rec.get("last_error") or ""),
        )
    except (ValueError, TypeError, AttributeError):
        return replace(
            job, last_status="failed", last_error=f"unreadable run record in lp_store_meta: {raw}"
        )


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass(frozen=True)
class JobsReport:
    """Every scheduled job of one store with its health, or why none could be read."""

    jobs: list[tuple[Job, Health]] = field(default_factory=list)
    note: str = ""  # e.g. "store not migrated yet", or the error that stopped the reading

    @property
    def failing(self) -> list[Job]:
        """The jobs whose health is ``fail``."""
        return [job for job, health in self.jobs if health.level is Level.FAIL]


def read_jobs(conn: psycopg.Connection, *, maintain_every: timedelta | None = None) -> list[Job]:
    """Every scheduled job of the store ``conn`` points at (TimescaleDB's, then linkpulse's).

    ``maintain_every`` is how often ``db maintain`` is meant to run
    (``LINKPULSE_STORE_MAINTAIN_INTERVAL_S``). An unmigrated store has none
    of linkpulse's (only TimescaleDB's own, if the extension is there).
    """
    jobs = _timescale_jobs(conn)
    tier = stored_tier(conn)
    if tier is not None:
        jobs += _linkpulse_jobs(conn, tier, maintain_every)
    return jobs


def check(
    dsn: str, *, maintain_every: timedelta | None = None, now: datetime | None = None
) -> JobsReport:
    """Read and classify the store's jobs; a server or permission error becomes the note."""
    now = now or datetime.now(UTC)
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            jobs = read_jobs(conn, maintain_every=maintain_every)
            migrated = stored_tier(conn) is not None
    except psycopg.Error as e:
        return JobsReport(note=f"could not read the scheduled jobs: {' '.join(str(e).split())}")
    note = "" if migrated else "store not migrated yet: run `linkpulse db migrate`"
    return JobsReport([(job, classify(job, now)) for job in jobs], note)


# ---------------------------------------------------------------- recording


def next_record(
    prev: dict[str, Any] | None, started: datetime, finished: datetime, error: str | None
) -> dict[str, Any]:
    """The run record after one more run (``error`` None means it succeeded).

    >>> t0 = datetime(2026, 12, 1, tzinfo=UTC)
    >>> r = next_record(None, t0, t0 + timedelta(seconds=2), "boom")
    >>> r["runs"], r["failures"], r["consecutive_failures"], r["last_success"]
    (1, 1, 1, None)
    >>> r = next_record(r, t0, t0 + timedelta(seconds=1), None)
    >>> r["runs"], r["failures"], r["consecutive_failures"], r["last_status"], r["last_error"]
    (2, 1, 0, 'success', '')
    """
    prev = prev or {}
    failed = error is not None
    return {
        "last_start": started.isoformat(),
        "last_finish": finished.isoformat(),
        "last_status": "failed" if failed else "success",
        "last_success": prev.get("last_success") if failed else finished.isoformat(),
        "last_error": (error or "")[:MAX_ERROR_CHARS],
        "runs": int(prev.get("runs", 0)) + 1,
        "failures": int(prev.get("failures", 0)) + int(failed),
        "consecutive_failures": int(prev.get("consecutive_failures", 0)) + 1 if failed else 0,
    }


def record_run(
    conn: psycopg.Connection, name: str, started: datetime, finished: datetime, error: str | None
) -> bool:
    """Add one run of job ``name`` to its record in ``lp_store_meta``; False if not migrated.

    Row-locked read-modify-write, so concurrent runs each count.
    """
    key = META_PREFIX + name
    with conn.transaction():
        exists = conn.execute("SELECT to_regclass('lp_store_meta') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return False
        conn.execute(
            "INSERT INTO lp_store_meta (key, value) VALUES (%s, '{}') ON CONFLICT (key) DO NOTHING",
            (key,),
        )
        row = conn.execute(
            "SELECT value FROM lp_store_meta WHERE key = %s FOR UPDATE", (key,)
        ).fetchone()
        try:
            prev = json.loads(row[0]) if row else None
        except ValueError:
            prev = None  # a damaged record starts over rather than blocking the pass
        value = json.dumps(
            next_record(prev if isinstance(prev, dict) else None, started, finished, error)
        )
        conn.execute("UPDATE lp_store_meta SET value = %s WHERE key = %s", (value, key))
    return True


@dataclass
class _Run:
    """The run being recorded in this context, and whether a call has taken the recording."""

    taken: bool = False


_current: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("lp_job_run", default=None)


def recorded(
    name: str,
) -> Callable[
    [Callable[Concatenate[psycopg.Connection | str, P], R]],
    Callable[Concatenate[psycopg.Connection | str, P], R],
]:
    """Decorate a pass whose first argument is a connection or DSN: record every run.

    Each run is recorded once (start, finish, outcome, the error's text), by
    the outermost call that has a connection, on that connection, so a pass
    given a DSN that connects and calls itself costs no extra connection; when
    no call got one (the connect failed), by the outermost call on its DSN.
    Recording never hides the pass's own outcome: if it fails (the database
    went away), it is logged.
    """

    def wrap(
        fn: Callable[Concatenate[psycopg.Connection | str, P], R],
    ) -> Callable[Concatenate[psycopg.Connection | str, P], R]:
        @functools.wraps(fn)
        def run(conn_or_dsn: psycopg.Connection | str, /, *args: P.args, **kwargs: P.kwargs) -> R:
            current = _current.get()
            takes = not isinstance(conn_or_dsn, str)
            if current is not None and (current.taken or not takes):
                return fn(conn_or_dsn, *args, **kwargs)  # a nested call; another one records
            run_ = current or _Run()
            run_.taken = run_.taken or takes
            token = _current.set(run_) if current is None else None
            started = datetime.now(UTC)
            error: str | None = None
            try:
                return fn(conn_or_dsn, *args, **kwargs)
            except Exception as e:
                error = " ".join(str(e).split()) or type(e).__name__
                raise
            finally:
                if token is not None:
                    _current.reset(token)
                if takes or not run_.taken:
                    _save(conn_or_dsn, name, started, error)

        return run

    return wrap


def _save(
    conn_or_dsn: psycopg.Connection | str, name: str, started: datetime, error: str | None
) -> None:
    finished = datetime.now(UTC)
    try:
        if isinstance(conn_or_dsn, str):
            with psycopg.connect(conn_or_dsn, autocommit=True, connect_timeout=5) as conn:
                record_run(conn, name, started, finished, error)
        else:
            record_run(conn_or_dsn, name, started, finished, error)
    except psycopg.Error as e:
        log.warning("job_run_not_recorded", job=name, error=" ".join(str(e).split()))
