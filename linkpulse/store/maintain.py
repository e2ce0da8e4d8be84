"""One maintenance pass, and a loop: refresh rollups, make partitions, apply retention.

The service runs ``run_forever`` on a schedule; ``linkpulse db maintain``
runs ``run_once``. Each step is cheap when there is nothing to do.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from linkpulse.config import Settings, get_settings
from linkpulse.errors import StoreError
from linkpulse.logging import get_logger
from linkpulse.store.capabilities import Tier
from linkpulse.store.jobs import MAINTAIN, recorded
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
) -> MaintainReport:
    """Run every maintenance step once; ``conn`` (if given) must be autocommit."""
    settings = settings or get_settings()
    if isinstance(conn_or_dsn, str):
        with psycopg.connect(conn_or_dsn, autocommit=True) as conn:
            return run_once(conn, settings, now=now)
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
        report.refresh = refresh(conn, tier, min_interval_s=DEFAULT_MIN_INTERVAL_S)
        with conn.transaction():
            report.retention = apply_retention(
                conn,
                tier,
                raw_days=settings.store_raw_retention_days,
                rollup_days=settings.store_rollup_retention_days,
                now=now,
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


def run_forever(
    dsn: str,
    settings: Settings | None = None,
    *,
    interval_s: float | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run ``run_once`` every ``interval_s`` until ``stop`` is set; return the passes run.

    A failed pass is logged and retried at the next interval (the database may
    be restarting); the loop itself never dies of it.
    """
    settings = settings or get_settings()
    interval = interval_s if interval_s is not None else settings.store_maintain_interval_s
    if interval <= 0:
        msg = f"interval_s must be positive, got {interval}"
        raise ValueError(msg)
    stop = stop or threading.Event()
    passes = 0
    while not stop.is_set():
        try:
            run_once(dsn, settings)
        except StoreError as e:
            log.error("store_maintain_failed", error=str(e))
        passes += 1
        stop.wait(interval)
    return passes
