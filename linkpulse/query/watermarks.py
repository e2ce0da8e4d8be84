"""Data watermarks: one version per (source, tenant, time bucket), for exact cache invalidation.

Whoever writes a source (the events writer, the window, score and forecast
sinks, the rollup refresh, a backfill) *touches* the buckets its rows land in
after its commit: each touched bucket's version key gets a fresh random token.
The query cache reads the versions of the buckets a query's range covers (one
``MGET``) and puts them in the entry's key, so an entry is found again only
while none of the data it was computed from has changed, and a write changes
the key of exactly the entries whose ranges cover it: another tenant, another
source or another time range keeps its entries.

Two bucket sizes keep a long range cheap to read: a fine bucket
(``LINKPULSE_QUERY_CACHE_BUCKET_S``, an hour by default) and the UTC day. A
write touches both its fine bucket and its day; a query reads the day keys
for the whole days it covers and fine keys only for the ragged ends, so 30
days read at most 30 day keys and 2 x 23 hour keys, and invalidation stays
exact to the fine bucket.

Versions are random tokens, never counters, so a version key that expires or
is evicted never comes back with an old value: a reader that finds one
missing sets a fresh token (``SET NX``) before it computes, which makes every
entry stored before unreachable. Touching is fire and forget: ``touch_*``
only queues the rows (the keys are computed and sent on a background thread
with a short timeout), so a slow or absent Redis never slows or fails a write;
a lost touch is logged and leaves entries stale at most for the cache's TTL.

>>> from datetime import UTC, datetime
>>> t = lambda d, h, m=0: datetime(2026, 11, d, h, m, tzinfo=UTC)
>>> covering(t(1, 10, 30), t(1, 12), 3600)  # two hours, the first one partly
[('b', 498202), ('b', 498203)]
>>> keys = covering(t(1, 22), t(4, 1), 3600)  # 2 ragged hours at each end, 2 whole days
>>> [g for g, _ in keys]
['b', 'b', 'd', 'd', 'b']
>>> version_key("lp:", "events_1h", "acme", ("d", 20423))
'lp:wm:events_1h:acme:d:20423'
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from linkpulse.logging import get_logger

__all__ = [
    "DAY_S",
    "NOTIFY_CHANNEL",
    "EVENT_SOURCES",
    "ROLLUP_SOURCES",
    "SOURCES",
    "VERSION_TTL_S",
    "Bucket",
    "WatermarkBumper",
    "WatermarkTarget",
    "after_refresh",
    "check_bucket_s",
    "covering",
    "new_token",
    "refresh_payload",
    "touched",
    "version_key",
]

log = get_logger(__name__)

ROLLUP_SOURCES: Final = ("events_1m", "events_1h", "events_1d")
EVENT_SOURCES: Final = ("events", *ROLLUP_SOURCES)
# users_1h (distinct users): a read of it also covers raw events (routes.query.spans_of),
# so raw writes invalidate it without a touch of their own; its refresh touches it.
SOURCES: Final = (*EVENT_SOURCES, "users_1h", "metric_windows", "anomaly_scores", "forecasts")
DAY_S: Final = 86_400
# Versions outlive any entry's TTL many times over; when one expires anyway, a
# reader sets a fresh token (see the module doc), so the length is not critical.
VERSION_TTL_S: Final = 8 * DAY_S
_PENDING: Final = "wm:pending"  # full tier: buckets written since the last cagg refresh

Bucket = tuple[str, int]  # ("b", fine bucket index) or ("d", UTC day index), since the epoch


def check_bucket_s(bucket_s: int) -> int:
    """Validate a fine bucket size: a whole number of minutes that divides a day.

    >>> check_bucket_s(900)
    900
    >>> check_bucket_s(7000)
    Traceback (most recent call last):
    ...
    ValueError: bucket_s must be a multiple of 60 that divides 86400 (e.g. 900, 3600), got 7000
    """
    if bucket_s < 60 or bucket_s % 60 or DAY_S % bucket_s:
        msg = (
            f"bucket_s must be a multiple of 60 that divides 86400 (e.g. 900, 3600), got {bucket_s}"
        )
        raise ValueError(msg)
    return bucket_s


def _epoch_s(t: datetime) -> float:
    if t.tzinfo is None:
        msg = f"times must be timezone-aware, got {t!r}"
        raise ValueError(msg)
    return t.timestamp()


def _fine(a: float, b: float, bucket_s: int) -> list[Bucket]:
    """Fine buckets meeting [a, b) (epoch seconds)."""
    first, last = int(a // bucket_s), -int(-b // bucket_s)  # floor, ceil
    return [("b", n) for n in range(first, last)]


def covering(start: datetime, end: datetime, bucket_s: int) -> list[Bucket]:
    """The buckets whose versions a read of [start, end) depends on (none if empty).

    Whole UTC days are read as day buckets, the rest as fine buckets.

    >>> from datetime import UTC
    >>> len(covering(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), 3600))
    30
    """
    a, b = _epoch_s(start), _epoch_s(end)
    if b <= a:
        return []
    d0, d1 = -int(-a // DAY_S), int(b // DAY_S)  # whole days: [d0, d1)
    if d0 >= d1:
        return _fine(a, b, bucket_s)
    return [
        *_fine(a, d0 * DAY_S, bucket_s),
        *(("d", n) for n in range(d0, d1)),
        *_fine(d1 * DAY_S, b, bucket_s),
    ]


def touched(start: datetime, end: datetime | None, bucket_s: int) -> list[Bucket]:
    """The buckets a write of data over [start, end) changes (a point when ``end`` is None).

    A write changes its fine buckets and the days holding them.

    >>> from datetime import UTC
    >>> touched(datetime(2026, 11, 1, 10, 5, tzinfo=UTC), None, 3600)
    [('b', 498202), ('d', 20758)]
    >>> len(touched(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC), 3600))
    25
    """
    a = _epoch_s(start)
    b = _epoch_s(end) if end is not None else a
    b = max(b, a + 1e-6)  # a point, or an empty range, still lands in one bucket
    fine = _fine(a, b, bucket_s)
    days = [("d", n) for n in range(int(a // DAY_S), -int(-b // DAY_S))]
    return [*fine, *days]


def version_key(prefix: str, source: str, tenant: str, bucket: Bucket) -> str:
    """The Redis key of one bucket's version (parsed from the right: tenants may hold ':')."""
    return f"{prefix}wm:{source}:{tenant}:{bucket[0]}:{bucket[1]}"


def new_token() -> bytes:
    """A version nobody had before (64 random bits).

    >>> len(new_token()), new_token() != new_token()
    (16, True)
    """
    return os.urandom(8).hex().encode()


class _TenantTime(msgspec.Struct):
    """The two fields of a canonical event JSON the watermarks need (the rest is skipped)."""

    tenant: str
    event_time: str  # RFC 3339, as encode_event writes it: parsed once per distinct minute


_TENANT_TIMES = msgspec.json.Decoder(list[_TenantTime])


def _json_points(payloads: Sequence[bytes]) -> Iterable[tuple[str, datetime]]:
    """(tenant, minute) of each distinct minute of canonical event JSON documents.

    One msgspec decode of the batch as a JSON array (two fields read, times
    kept as text); each time is parsed once per distinct (tenant, minute,
    offset), and a batch of a live stream spans a few minutes.

    >>> ev = b'{"event_time":"2026-11-01T10:00:59.5+02:00","tenant":"a","x":[1]}'
    >>> list(_json_points([ev, b"", ev]))
    [('a', datetime.datetime(2026, 11, 1, 8, 0, tzinfo=datetime.timezone.utc))]
    """
    array = b"[" + b",".join(p for p in payloads if p) + b"]"  # no empty line breaks it
    minutes = set()
    for e in _TENANT_TIMES.decode(array):
        t = e.event_time
        minutes.add((e.tenant, t[:16], "Z" if t.endswith("Z") else t[-6:]))
    return (
        (tenant, datetime.fromisoformat(f"{minute}:00{offset}").astimezone(UTC))
        for tenant, minute, offset in minutes
    )


@dataclass(frozen=True)
class _Job:
    """Queued touches: sources, and a function giving (tenant, start, end or None)."""

    sources: tuple[str, ...]
    spans: Callable[[], Iterable[tuple[str, datetime, datetime | None]]]
    pending: bool = False  # also note the fine buckets for the next cagg refresh


class WatermarkTarget(msgspec.Struct, frozen=True):
    """Where writers touch watermarks: what a process needs to build its ``WatermarkBumper``.

    Plain data, so it crosses into sink partitions and writer processes.

    >>> WatermarkTarget("redis://127.0.0.1:6379/0", "lp:").bucket_s
    3600
    """

    url: str
    prefix: str
    bucket_s: int = 3600

    def bumper(self) -> WatermarkBumper:
        """A new bumper for this target (one per writer: it owns a thread and a connection)."""
        return WatermarkBumper(self.url, self.prefix, bucket_s=self.bucket_s)

    @classmethod
    def from_settings(cls, settings: Any, prefix: str | None = None) -> WatermarkTarget:
        """``settings``' Redis and bucket size, under ``prefix`` (default: the settings')."""
        return cls(
            settings.redis_url,
            settings.redis_key_prefix if prefix is None else prefix,
            settings.query_cache_bucket_s,
        )


class WatermarkBumper:
    """Touches version keys after writes, off the caller's thread (see the module doc).

    ``flush()`` waits until what was queued is sent (tests, and a writer
    closing); ``close()`` flushes briefly and stops the thread. ``sent`` and
    ``failed`` count keys set and touches lost, for tests and logs.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        bucket_s: int = 3600,
        timeout_s: float = 0.5,
        retry_after_s: float = 0.5,
        max_queued: int = 10_000,
    ) -> None:
        self.prefix = prefix
        self.retry_after_s = retry_after_s
        self.bucket_s = check_bucket_s(bucket_s)
        # Imported here: the raw-events writer process imports this module at start,
        # and redis costs it a noticeable part of its start-up.
        import redis

        self._retryable: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queued)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._unfinished = 0
        self._last_warning = 0.0
        self.sent = 0
        self.failed = 0

    # -- what writers call -------------------------------------------------------------------

    def touch_json(
        self, sources: Sequence[str], payloads: Sequence[bytes], *, pending: bool = False
    ) -> None:
        """Events given as canonical JSON were stored (decoded on the background thread)."""
        if payloads:
            batch = list(payloads)
            self._put(
                _Job(
                    tuple(sources),
                    lambda: ((t, at, None) for t, at in _json_points(batch)),
                    pending,
                )
            )

    def touch_rows(
        self,
        sources: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        tenant: int,
        at: int,
        end: int | None = None,
        pending: bool = False,
    ) -> None:
        """Rows were stored; column ``tenant`` holds the tenant, column ``at`` the time.

        ``end``: the column ending each row's span (a window's end), if any.
        """
        if rows:
            batch = list(rows)

            def spans() -> Iterable[tuple[str, datetime, datetime | None]]:
                return ((r[tenant], r[at], None if end is None else r[end]) for r in batch)

            self._put(_Job(tuple(sources), spans, pending))

    def events_stored(self, items: Sequence[Any], *, as_json: bool, realtime: bool) -> None:
        """Events were stored: rows (``EVENT_COLUMNS``) or canonical JSON (``as_json``).

        ``realtime``: the rollups are real-time continuous aggregates (the full
        tier), whose answers change with the raw events at once; their buckets
        are also noted for the next refresh (``take_pending``), which
        materialises late ones.
        """
        sources = EVENT_SOURCES if realtime else ("events",)
        if as_json:
            self.touch_json(sources, items, pending=realtime)
        else:
            self.touch_rows(sources, items, tenant=0, at=2, pending=realtime)

    def touch_spans(
        self, sources: Sequence[str], spans: Iterable[tuple[str, datetime, datetime | None]]
    ) -> None:
        """Data of (tenant, start, end) spans changed (end None: a point in time)."""
        batch = list(spans)
        if batch:
            self._put(_Job(tuple(sources), lambda: batch))

    def take_pending(self) -> list[tuple[str, datetime, datetime]]:
        """Take the fine buckets noted since the last take, as (tenant, start, end) spans.

        Synchronous (the full tier's rollup refresh takes them before it
        refreshes and touches them after); an unreachable Redis gives none.
        """
        key = self.prefix + _PENDING
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.smembers(key)
            pipe.delete(key)
            members, _ = pipe.execute()
        except self._errors as e:
            self._warn("taking pending watermarks failed", e)
            return []
        width = timedelta(seconds=self.bucket_s)
        out = []
        for m in members:
            tenant, _, n = m.decode().rpartition("\x1f")
            start = datetime.fromtimestamp(int(n) * self.bucket_s, tz=UTC)
            out.append((tenant, start, start + width))
        return out

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued touch is sent (or lost); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._unfinished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout_s: float = 3.0) -> None:
        """Send what is queued (briefly), stop the thread, close the connection."""
        self.flush(timeout_s)
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                self._queue.put(None, timeout=timeout_s)
            except queue.Full:
                pass
            thread.join(timeout_s)
        self._client.close()

    # -- the background thread ---------------------------------------------------------------

    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lp-watermarks", daemon=True)
                self._thread.start()
            self._unfinished += 1
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._done(1)
            self.failed += 1
            self._warn("watermark queue full: a touch was dropped", None)

    def _done(self, n: int) -> None:
        with self._idle:
            self._unfinished -= n
            if not self._unfinished:
                self._idle.notify_all()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            while True:  # coalesce whatever else is queued into one round trip
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._send(jobs)
                    return
                jobs.append(more)
            self._send(jobs)

    def keys_of(self, jobs: Sequence[_Job]) -> tuple[set[str], set[str]]:
        """The version keys and pending members ``jobs`` touch (the thread's work, no I/O)."""
        keys: set[str] = set()
        pending: set[str] = set()
        for job in jobs:
            # Points (most rows) reduced to distinct fine buckets before any key is made.
            points: set[tuple[str, int]] = set()
            buckets: set[tuple[str, Bucket]] = set()
            for tenant, start, end in job.spans():
                if end is None:
                    points.add((tenant, int(start.timestamp() // self.bucket_s)))
                else:
                    buckets.update((tenant, b) for b in touched(start, end, self.bucket_s))
            per_day = DAY_S // self.bucket_s
            for tenant, n in points:
                buckets.update(((tenant, ("b", n)), (tenant, ("d", n // per_day))))
            for source in job.sources:
                keys.update(version_key(self.prefix, source, t, b) for t, b in buckets)
            if job.pending:
                pending.update(f"{t}\x1f{b[1]}" for t, b in buckets if b[0] == "b")
        return keys, pending

    def _send(self, jobs: list[_Job]) -> None:
        try:
            keys, pending = self.keys_of(jobs)
            token = new_token()
            try:
                self._set(keys, pending, token)
            except self._retryable:
                # Once more after a pause: a blip (or a busy server) must not
                # leave answers stale; the writer never waits for this thread.
                time.sleep(self.retry_after_s)
                self._set(keys, pending, token)
            self.sent += len(keys)
        except Exception as e:  # noqa: BLE001 - never let a touch break anything; logged
            self.failed += len(jobs)
            self._warn("touching watermarks failed: cached answers may be stale until their TTL", e)
        finally:
            self._done(len(jobs))

    def _set(self, keys: set[str], pending: set[str], token: bytes) -> None:
        pipe = self._client.pipeline(transaction=False)  # a pipeline is spent by execute()
        for key in keys:
            pipe.set(key, token, ex=VERSION_TTL_S)
        if pending:
            pipe.sadd(self.prefix + _PENDING, *pending)
            pipe.expire(self.prefix + _PENDING, VERSION_TTL_S)
        pipe.execute()

    def _warn(self, what: str, e: BaseException | None) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10:  # an outage logs once per 10 s, not per batch
            self._last_warning = now
            log.warning(what, error=None if e is None else str(e), lost=self.failed)


NOTIFY_CHANNEL: Final = "linkpulse_rollups"
_NOTIFY_MAX_TENANTS: Final = 200  # NOTIFY payloads stop at 8000 bytes: more means "all"

Span = tuple[str, datetime, datetime]


def refresh_payload(rollups: Iterable[str], tenants: Iterable[str] | None) -> str:
    """The ``linkpulse_rollups`` NOTIFY payload: rollups refreshed, tenants touched (null: any).

    >>> refresh_payload(["events_1m"], ["b", "a", "a"])
    '{"rollups":["events_1m"],"tenants":["a","b"]}'
    """
    names = sorted(set(tenants)) if tenants is not None else None
    if names is not None and len(names) > _NOTIFY_MAX_TENANTS:
        names = None
    return msgspec.json.encode({"rollups": list(rollups), "tenants": names}).decode()


def after_refresh(
    conn: Any,
    bumper: WatermarkBumper | None,
    touched: Mapping[str, Sequence[Span]] | None,
) -> None:
    """After a rollup refresh committed: touch what it recomputed and NOTIFY the API.

    ``touched``: rollup name -> (tenant, start, end) spans it recomputed; None
    when unknown (the full tier without a bumper): the payload then says any
    tenant. ``conn`` must be in autocommit mode; a failed NOTIFY is logged,
    never raised (the refresh itself succeeded).
    """
    if bumper is not None and touched:
        for name, spans in touched.items():
            bumper.touch_spans([name], spans)
    if touched is not None and not any(touched.values()):
        return  # nothing changed: nothing to warm
    rollups = sorted(touched) if touched is not None else list(ROLLUP_SOURCES)
    tenants = {t for spans in touched.values() for t, _, _ in spans} if touched else None
    try:
        conn.execute(
            "SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, refresh_payload(rollups, tenants))
        )
    except Exception as e:  # noqa: BLE001 - the refresh committed; warming is a nicety
        log.warning("announcing a rollup refresh failed", error=str(e))
