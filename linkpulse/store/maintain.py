"""One maintenance pass, and a loop: refresh rollups, make partitions, apply retention.

The service runs ``run_forever`` on a schedule; ``linkpulse db maintain``
runs ``run_once``. Each step is cheap when there is nothing to do.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from linkpulse.config import Settings, get_settings
from linkpulse.errors import StoreError
from linkpulse.logging import get_logger
from linkpulse.query.watermarks import WatermarkBumper, WatermarkTarget
from linkpulse.store.archive import ArchiveReport, archiver_of, horizons_of
from linkpulse.store.capabilities import Tier
from linkpulse.store.jobs import MAINTAIN, record_run, recorded
from linkpulse.store.migrate import stored_tier
from linkpulse.store.partitions import create_ahead
from linkpulse.store.retention import RetentionReport, apply_retention
from linkpulse.store.rollups import DEFAULT_MIN_INTERVAL_S, RefreshReport, refresh
from linkpulse.store.tiers import compress_old_chunks

__all__ = ["MaintainReport", "run_forever", "run_once"]

log = get_logger(__name__)


@dataclass
class MaintainReport:
    """What one pass did."""

    tier: str
    refresh: RefreshReport | None = None
    partitions_made: int = 0
    compressed: list[str] = field(default_factory=list)
    retention: RetentionReport = field(default_factory=RetentionReport)
    archive: ArchiveReport | None = None  # with LINKPULSE_ARCHIVE_TARGET set
    seconds: float = 0.0

    @property
    def chunks_compressed(self) -> int:
        """How many chunks this pass compressed (already compressed ones are not counted)."""
        return len(self.compressed)


@recorded(MAINTAIN)  # each pass's start, end and error, for `linkpulse doctor`
def run_once(
    conn_or_dsn: psycopg.Connection | str,
    settings: Settings | None = None,
    *,
    now: datetime | None = None,
    watermarks: WatermarkBumper | None = None,
) -> MaintainReport:
    """Run every maintenance step once; ``conn`` (if given) must be autocommit.

    ``watermarks``: where the refresh touches the buckets it recomputed (the query cache).
    """
    settings = settings or get_settings()
    if isinstance(conn_or_dsn, str):
        with psycopg.connect(conn_or_dsn, autocommit=True) as conn:
            return run_once(conn, settings, now=now, watermarks=watermarks)
    conn = conn_or_dsn
    started = time.perf_counter()
    try:
        tier = stored_tier(conn)
        if tier is None:
            msg = "the store has no schema yet: run `linkpulse db migrate` first"
            raise StoreError(msg)
        report = MaintainReport(tier.value)
        if not tier.is_timescale:
            with conn.transaction():
                report.partitions_made = create_ahead(
                    conn, days_ahead=settings.store_partitions_ahead_days, now=now
                )
        now = now or datetime.now(UTC)
        # Refresh first (the rollups take in what retention is about to drop),
        # then retention, then compression of what is left, so a chunk is
        # never compressed only to be dropped.
        report.refresh = refresh(
            conn, tier, min_interval_s=DEFAULT_MIN_INTERVAL_S, watermarks=watermarks
        )
        # Archive what retention is about to drop (it then drops only what checks out).
        archiver = archiver_of(settings)
        if archiver is not None:
            horizons = horizons_of(
                now,
                raw_days=settings.store_raw_retention_days,
                rollup_days=settings.store_rollup_retention_days,
            )
            report.archive = archiver.archive_due(conn, tier, horizons)
        with conn.transaction():
            report.retention = apply_retention(
                conn,
                tier,
                raw_days=settings.store_raw_retention_days,
                rollup_days=settings.store_rollup_retention_days,
                now=now,
                archive=archiver,
            )
        if tier is Tier.FULL_TIMESCALE:
            report.compressed = compress_old_chunks(
                conn,
                settings.store_compress_after_days,
                raw_days=settings.store_raw_retention_days,
                now=now,
            )
    except psycopg.Error as e:
        msg = f"store maintenance failed: {e}"
        raise StoreError(msg) from e
    report.seconds = time.perf_counter() - started
    log.info(
        "store_maintained",
        tier=report.tier,
        partitions=report.partitions_made,
        compressed=report.chunks_compressed,
        dropped=len(report.retention.dropped),
        seconds=round(report.seconds, 3),
    )
    return report


CONNECT_TIMEOUT_S = 10
# Failed passes kept for the job record while the store is unreachable (a week
# of one-minute passes); older ones are forgotten, the newest kept.
MAX_MISSED = 10_000


@dataclass(frozen=True)
class _Missed:
    """A pass that failed where its failure could not be recorded (no store to write to)."""

    started: datetime
    finished: datetime
    error: str


def run_forever(
    dsn: str,
    settings: Settings | None = None,
    *,
    interval_s: float | None = None,
    stop: threading.Event | None = None,
    max_passes: int | None = None,
    wait: Callable[[float], object] | None = None,
) -> int:
    """Run a pass every ``interval_s`` until ``stop`` is set (or ``max_passes`` ran).

    Returns the passes run. A failed pass, the store being unreachable
    included, is logged and retried at the next interval (the database may be
    restarting); the loop itself never dies of it. Passes that failed while the
    store was unreachable are added to the job record (``linkpulse doctor``)
    by the first pass that reaches it again, so an outage shows in the
    failure counts. ``wait(seconds)`` sleeps between passes (default: wait on
    ``stop``, so setting it ends the sleep at once).
    """
    settings = settings or get_settings()
    interval = interval_s if interval_s is not None else settings.store_maintain_interval_s
    if interval <= 0:
        msg = f"interval_s must be positive, got {interval}"
        raise ValueError(msg)
    if max_passes is not None and max_passes < 1:
        msg = f"max_passes must be at least 1, got {max_passes}"
        raise ValueError(msg)
    stop = stop or threading.Event()
    pause = wait or stop.wait
    missed: deque[_Missed] = deque(maxlen=MAX_MISSED)
    passes = failed_in_a_row = 0
    watermarks = WatermarkTarget.from_settings(settings).bumper()  # the query cache's
    while not stop.is_set():
        error = _one_pass(dsn, settings, missed, watermarks)
        passes += 1
        if error is None:
            failed_in_a_row = 0
        else:
            failed_in_a_row += 1
            log.error(
                "store_maintain_failed",
                error=error,
                failed_in_a_row=failed_in_a_row,
                retry_in_s=interval,
            )
        if max_passes is not None and passes >= max_passes:
            break
        pause(interval)
    watermarks.close()
    return passes


def _one_pass(
    dsn: str, settings: Settings, missed: deque[_Missed], watermarks: WatermarkBumper | None = None
) -> str | None:
    """Run one pass on a connection of its own; the error's text if it failed."""
    started = datetime.now(UTC)
    conn: psycopg.Connection | None = None
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        with conn:
            _record_missed(conn, missed)
            run_once(conn, settings, watermarks=watermarks)  # records its run (jobs.recorded)
        return None
    except (psycopg.Error, StoreError) as e:
        error = " ".join(str(e).split()) or type(e).__name__
        if conn is None or conn.broken:
            # No connection to record it on (never made, or lost mid-pass):
            # keep it for the next pass that reaches the store.
            missed.append(_Missed(started, datetime.now(UTC), error))
        return error


def _record_missed(conn: psycopg.Connection, missed: deque[_Missed]) -> None:
    """Add the passes that failed unrecorded to the job record, oldest first."""
    while missed:
        m = missed[0]
        if not record_run(conn, MAINTAIN, m.started, m.finished, m.error):
            return  # not migrated yet: nowhere to record them, keep them
        missed.popleft()
