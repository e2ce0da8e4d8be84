"""The audit log's own volumes, scored like any other series: a key that suddenly reads
far more than it usually does raises an anomaly.

Each principal gets three per-minute series from ``audit_log``: requests
(``audit_requests``), rows or events sent (``audit_items``) and refused
requests (``audit_refusals``), keyed like the flow's window series
(``tenant|audit_items|principal=<id>|1m``). They are scored by the project's
count detector (``build_detector(kind="count")``, the one the flow gives event
counts), and the scores go where the flow's go: the ``anomaly_scores`` table
and the anomalies subject, so ``/v1/stream/anomalies`` and ``GET
/v1/anomalies`` show them.

``VolumeScorer`` is the pure part; ``AuditWatch`` runs it in the API. The
audit log is shared by every API process, so one of them (whoever holds a
PostgreSQL advisory lock) reads the closed minutes from the table and scores
them; on start it replays ``history`` of the log so the detectors are warm.

>>> from datetime import UTC, datetime
>>> s = VolumeScorer()
>>> m = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
>>> scores = s.feed(m, [Volume("acme", "lp_0a1b2c3d", requests=4, items=400, refusals=0)])
>>> [x.series for x in scores]  # doctest: +NORMALIZE_WHITESPACE
['acme|audit_requests|principal=lp_0a1b2c3d|1m', 'acme|audit_items|principal=lp_0a1b2c3d|1m',
 'acme|audit_refusals|principal=lp_0a1b2c3d|1m']
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import msgspec
import psycopg
import psycopg_pool

from linkpulse.aio import cancel_and_wait
from linkpulse.bus.subjects import anomaly_subject
from linkpulse.config import Settings
from linkpulse.logging import get_logger
from linkpulse.schemas.outputs import AnomalyScore

if TYPE_CHECKING:
    from linkpulse.online_ml import ScalarDetector
from linkpulse.store.partitions import insert_rows

__all__ = ["VOLUMES", "AuditWatch", "Volume", "VolumeScorer", "volume_series"]

log = get_logger(__name__)

VOLUMES: Final = ("audit_requests", "audit_items", "audit_refusals")
MINUTE: Final = timedelta(minutes=1)
# A principal silent this long is forgotten (a revoked or retired key stops being scored).
FORGET_AFTER: Final = timedelta(days=2)
# Any fixed 64-bit number: the lock that elects the one API process scoring the audit log.
LEADER_LOCK: Final = 0x6C70_6175_6469_7477  # "lpaudiw"


@dataclass(frozen=True)
class Volume:
    """One principal's audit volumes in one minute."""

    tenant: str
    principal: str
    requests: int
    items: int
    refusals: int


def volume_series(tenant: str, volume: str, principal: str) -> str:
    """The series key of one audit volume (the four-part key of the flow's windows).

    >>> volume_series("acme", "audit_requests", "lp_0a1b2c3d")
    'acme|audit_requests|principal=lp_0a1b2c3d|1m'
    """
    return f"{tenant}|{volume}|principal={principal}|1m"


class VolumeScorer:
    """A count detector per (principal, volume); minutes with no entry count as zero.

    Minutes must come in order; a principal's series starts at its first entry.
    """

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        # The detectors (River) load here, not when the API imports this module.
        from linkpulse.online_ml import build_detector

        self._build = build_detector
        self._spec = spec or {"kind": "count", "period_s": 60.0}
        self._detectors: dict[tuple[str, str], dict[str, ScalarDetector]] = {}
        self._last_seen: dict[tuple[str, str], datetime] = {}
        self.minute: datetime | None = None  # the last minute fed

    def feed(self, minute: datetime, volumes: Iterable[Volume]) -> list[AnomalyScore]:
        """Score ``minute`` for every known principal (zero when absent from ``volumes``)."""
        if self.minute is not None and minute <= self.minute:
            msg = f"minute {minute.isoformat()} is not after {self.minute.isoformat()}"
            raise ValueError(msg)
        seen = {(v.tenant, v.principal): v for v in volumes}
        for key in seen:
            self._last_seen[key] = minute
            if key not in self._detectors:
                self._detectors[key] = {
                    name: self._build(self._spec, series=volume_series(key[0], name, key[1]))
                    for name in VOLUMES
                }
        out: list[AnomalyScore] = []
        for key in list(self._detectors):
            if minute - self._last_seen[key] > FORGET_AFTER:
                del self._detectors[key], self._last_seen[key]
                continue
            v = seen.get(key)
            values = (v.requests, v.items, v.refusals) if v else (0, 0, 0)
            for name, x in zip(VOLUMES, values, strict=True):
                out.append(self._detectors[key][name].update(minute, float(x)))
        self.minute = minute
        return out

    @property
    def principals(self) -> int:
        """How many principals are being scored."""
        return len(self._detectors)


_VOLUMES_SQL = """
SELECT date_trunc('minute', at) AS minute, tenant, principal, count(*),
       coalesce(sum(items), 0), count(*) FILTER (WHERE outcome = 'refused')
FROM audit_log
WHERE at >= %(since)s AND at < %(until)s AND tenant IS NOT NULL
GROUP BY 1, 2, 3
ORDER BY 1
"""

# The flow's row format (score_rows); a minute scored twice (two leaders in turn) is kept once.
_INSERT_SCORE = (
    "INSERT INTO anomaly_scores (series, time, score, model, tenant, details)"
    " VALUES (%s, %s, %s, %s, %s, %s::jsonb)"
    " ON CONFLICT (series, model, time) DO NOTHING"
)


def minutes_between(since: datetime, until: datetime) -> list[datetime]:
    """The minute starts in ``[since, until)``, ``since`` rounded down to its minute.

    >>> t = datetime(2026, 12, 1, 10, 0, 30, tzinfo=UTC)
    >>> [m.strftime("%H:%M") for m in minutes_between(t, t + timedelta(minutes=2))]
    ['10:00', '10:01', '10:02']
    """
    m = since.replace(second=0, microsecond=0)
    out = []
    while m < until:
        out.append(m)
        m += MINUTE
    return out


class AuditWatch:
    """Scores the audit log's closed minutes in the API process holding the leader lock."""

    def __init__(
        self,
        settings: Settings,
        pool: psycopg_pool.AsyncConnectionPool,
        publish: Any = None,
        *,
        history: timedelta = timedelta(days=2),
        poll_s: float = 30.0,
        settle_s: float = 5.0,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._publish = publish  # async (subject, payload, msg_id) -> None, or None
        self._history = history
        self._poll_s = poll_s
        self._settle_s = settle_s  # audit rows of a minute are flushed by then
        self._scorer: VolumeScorer | None = None  # made when first needed (it loads River)
        self.scored = 0  # scores written (tests, logs)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-watch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    @property
    def scorer(self) -> VolumeScorer:
        if self._scorer is None:
            self._scorer = VolumeScorer()
        return self._scorer

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)  # a first poll later: the API starts light
            try:
                # Its own connection: the lock lives as long as this session, and the
                # shared pool stays free for requests.
                async with await psycopg.AsyncConnection.connect(
                    self._settings.database_url, autocommit=True, connect_timeout=10
                ) as lock_conn:
                    cur = await lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))
                    row = await cur.fetchone()
                    if row and row[0]:
                        log.info("audit watch leading", principals=self.scorer.principals)
                        await self._lead()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as e:
                log.warning("audit watch paused", error=str(e))

    async def _lead(self) -> None:
        """Score closed minutes as they close, while this process holds the lock."""
        while True:
            await self.step()
            await asyncio.sleep(self._poll_s)

    async def step(self, now: datetime | None = None) -> int:
        """Score every closed minute not scored yet; returns how many scores were written."""
        now = now or datetime.now(UTC)
        until = (now - timedelta(seconds=self._settle_s)).replace(second=0, microsecond=0)
        last = self.scorer.minute
        replaying = last is None
        since = until - self._history if last is None else last + MINUTE
        if since >= until:
            return 0
        # A replay warms the detectors on the history; only its last minutes are written
        # (an earlier leader wrote the rest).
        write_from = until - timedelta(minutes=10) if replaying else since
        async with self._pool.connection() as conn:
            cur = await conn.execute(_VOLUMES_SQL, {"since": since, "until": until})
            rows = await cur.fetchall()
        by_minute: dict[datetime, list[Volume]] = {}
        for minute, tenant, principal, requests, items, refusals in rows:
            by_minute.setdefault(minute, []).append(
                Volume(tenant, principal, int(requests), int(items), int(refusals))
            )
        scores: list[AnomalyScore] = []
        for minute in minutes_between(since, until):
            fed = self.scorer.feed(minute, by_minute.get(minute, ()))
            if minute >= write_from:
                scores.extend(fed)
        await self._write(scores)
        return len(scores)

    def _insert(self, rows: list[tuple[Any, ...]], days: set[date]) -> None:
        with psycopg.connect(self._settings.database_url, connect_timeout=10) as conn:
            insert_rows(conn, "anomaly_scores", _INSERT_SCORE, rows, days)

    async def _write(self, scores: Sequence[AnomalyScore]) -> None:
        if not scores:
            return
        from linkpulse.dataflows.score_sinks import score_msg_id, score_rows  # the flow's format

        rows = score_rows(scores)
        await asyncio.to_thread(self._insert, rows, {sc.time.date() for sc in scores})
        self.scored += len(scores)
        if self._publish is not None:
            for s in scores:
                if s.warm:  # the flow publishes every score; these are many and mostly cold
                    tenant = s.series.split("|", 1)[0]
                    await self._publish(
                        anomaly_subject(self._settings.subject_prefix, tenant),
                        msgspec.json.encode(s),
                        score_msg_id(s),
                    )
