"""The query result cache: answers in Redis, keyed by query, scope and data watermarks.

``QueryCache.answer`` serves a query's JSON body from Redis when the
normalised (kind, query, scope) and the versions of every bucket the query
reads (``Reads``, ``linkpulse.query.watermarks``) match an entry; else it
computes the body, stores it for ``ttl_s`` and returns it. New data or a
revision touches the versions of the buckets it lands in, so it changes the
key of exactly the entries that read them; others keep theirs.

Redis is never needed for a correct answer: an error or a slow reply
(``op_timeout_s``) computes the answer uncached and opens a short circuit
(``retry_s``) during which Redis is not asked at all, so an outage costs one
timeout, not one per request. Identical misses in flight at once compute once
(the others count as ``shared``).

>>> normalise({"b": None, "a": [3, 1], "t": datetime(2026, 11, 1, 1, tzinfo=UTC)})
b'{"a":[3,1],"t":"2026-11-01T01:00:00Z"}'
>>> etag_of(b"{}")
'"2afb9b83f9314e5d029766197f539792"'
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from linkpulse.logging import get_logger
from linkpulse.query.watermarks import (
    SOURCES,
    VERSION_TTL_S,
    check_bucket_s,
    covering,
    new_token,
    version_key,
)

if TYPE_CHECKING:
    from linkpulse.api.metrics import ApiMetrics
    from linkpulse.query.slowlog import SlowLog

__all__ = ["Answer", "QueryCache", "Reads", "etag_of", "normalise"]

T = TypeVar("T")

log = get_logger(__name__)

_KEY_VERSION: Final = "1"  # bump when the entry format or normalisation changes
_MISSING: Final = b""


@dataclass(frozen=True)
class Reads:
    """One source range a query reads, for invalidation.

    >>> day = lambda n: datetime(2026, 11, n, tzinfo=UTC)
    >>> Reads("events_1h", "acme", day(2), day(1))
    Traceback (most recent call last):
    ...
    ValueError: Reads end 2026-11-01 00:00:00+00:00 is before its start 2026-11-02 00:00:00+00:00
    """

    source: str  # one of watermarks.SOURCES
    tenant: str  # the scope's tenant
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            msg = f"Reads source must be one of {', '.join(SOURCES)}, got {self.source!r}"
            raise ValueError(msg)
        if self.end < self.start:
            msg = f"Reads end {self.end} is before its start {self.start}"
            raise ValueError(msg)


@dataclass(frozen=True)
class Answer:
    """A query's body, its strong ETag (quoted, of the body) and whether Redis served it."""

    body: bytes
    etag: str
    hit: bool


def etag_of(body: bytes) -> str:
    """A strong ETag of ``body``: a content hash, so equal bodies always match."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data with one spelling per meaning (orjson default hook).

    Never raises: a type it does not know is spelled by its type and ``str`` (a
    key must not turn a good query into an error).

    >>> from decimal import Decimal
    >>> normalise({"a": Decimal("1.50"), "t": datetime(2026, 11, 1)})
    b'{"a":"Decimal:1.50","t":"2026-11-01T00:00:00"}'
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:  # naive: kept as given (the routes only pass aware times)
            return value.isoformat()
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return _drop_none(dump(mode="json"))
    return f"{type(value).__name__}:{value}"


def _drop_none(value: Any) -> Any:
    # An absent optional and an explicit null ask the same question.
    if isinstance(value, Mapping):
        return {str(k): _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value]
    return value


def normalise(query: Mapping[str, Any]) -> bytes:
    """A query's canonical bytes: keys sorted, nulls dropped, times in UTC, lists kept in order."""
    return orjson.dumps(
        _drop_none(query),
        default=_plain,
        option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME,
    )


class QueryCache:
    """Query answers in Redis under ``prefix``; see the module doc.

    ``redis`` None (or an unreachable one) means every answer is computed.
    ``metrics`` (the API's) counts hits, misses and errors, and observes
    entry sizes and compute times; ``slowlog`` records computes slower than
    its threshold. ``max_entry_bytes`` larger bodies are answered, not stored.
    """

    def __init__(
        self,
        redis: aioredis.Redis | None,
        *,
        prefix: str,
        ttl_s: float,
        bucket_s: int = 3600,
        max_entry_bytes: int = 1 << 20,
        op_timeout_s: float = 1.0,
        retry_s: float = 5.0,
        metrics: ApiMetrics | None = None,
        slowlog: SlowLog | None = None,
    ) -> None:
        if ttl_s < 0 or max_entry_bytes < 0 or op_timeout_s <= 0 or retry_s < 0:
            msg = (
                "ttl_s, max_entry_bytes and retry_s must be 0 or more and op_timeout_s more "
                f"than 0, got {ttl_s}, {max_entry_bytes}, {retry_s}, {op_timeout_s}"
            )
            raise ValueError(msg)
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.bucket_s = check_bucket_s(bucket_s)
        self.max_entry_bytes = max_entry_bytes
        self.op_timeout_s = op_timeout_s
        self.retry_s = retry_s
        self.metrics = metrics
        self.slowlog = slowlog
        self._down_until = 0.0
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self.joined = 0  # misses that shared another's compute (tests, logs)

    # -- the public call -----------------------------------------------------------------------

    async def answer(
        self,
        *,
        kind: str,
        query: Mapping[str, Any],
        scope: tuple[str, str | None],
        reads: Sequence[Reads],
        compute: Callable[[], Awaitable[bytes]],
        principal: str | None = None,
        ttl_s: float | None = None,
    ) -> Answer:
        """Serve from Redis when the normalised (kind, query, scope) and the watermarks of
        every Reads match; else compute, store, return. Redis down: compute, never raise.

        ``principal`` names the caller in the slow-query log; ``ttl_s`` overrides the
        cache's TTL for this entry (0: do not store).
        """
        ttl = self.ttl_s if ttl_s is None else ttl_s
        client = self._client() if ttl > 0 else None
        if client is None:
            return await self._uncached(kind, query, compute, principal, "bypass")
        try:
            key = await self._with_timeout(self._entry_key(client, kind, query, scope, reads))
            stored = await self._with_timeout(client.get(key))
        except (RedisError, OSError, TimeoutError) as e:
            self._fail(e)
            return await self._uncached(kind, query, compute, principal, "error")
        except TypeError as e:  # a query orjson can't spell (a huge int): answered, not cached
            log.warning("query cache: no key for this query; answering uncached", error=str(e))
            return await self._uncached(kind, query, compute, principal, "bypass")
        if stored is not None:
            tag, _, cached = cast(bytes, stored).partition(b"\n")
            self._count(kind, "hit")
            return Answer(cached, tag.decode(), hit=True)
        running = self._inflight.get(key)
        if running is not None:  # the same miss is being computed: share its answer
            self.joined += 1
            body = await asyncio.shield(running)
            self._count(kind, "shared")
            return Answer(body, etag_of(body), hit=False)
        body = await self._compute_and_store(client, key, kind, query, compute, principal, ttl)
        self._count(kind, "miss")
        return Answer(body, etag_of(body), hit=False)

    # -- keys ----------------------------------------------------------------------------------

    def version_keys(self, reads: Sequence[Reads]) -> list[str]:
        """The version keys of every bucket ``reads`` cover, sorted (what a lookup reads)."""
        return sorted(
            {
                version_key(self.prefix, r.source, r.tenant, b)
                for r in reads
                for b in covering(r.start, r.end, self.bucket_s)
            }
        )

    async def _versions(
        self, client: aioredis.Redis, reads: Sequence[Reads]
    ) -> list[tuple[str, bytes]]:
        keys = self.version_keys(reads)
        if not keys:
            return []
        values = cast(list[bytes | None], await client.mget(keys))
        missing = [k for k, v in zip(keys, values, strict=True) if v is None]
        if missing:
            # Never key an entry on an absent version: one that expired or was
            # evicted would read as absent again after a write came and went.
            token = new_token()
            pipe = client.pipeline(transaction=False)
            for k in missing:
                pipe.set(k, token, ex=VERSION_TTL_S, nx=True)
            pipe.mget(missing)
            *_, now = await pipe.execute()
            found = dict(zip(missing, now, strict=True))
            values = [
                found.get(k, v) if v is None else v for k, v in zip(keys, values, strict=True)
            ]
        return [(k, v if v is not None else _MISSING) for k, v in zip(keys, values, strict=True)]

    async def _entry_key(
        self,
        client: aioredis.Redis,
        kind: str,
        query: Mapping[str, Any],
        scope: tuple[str, str | None],
        reads: Sequence[Reads],
    ) -> str:
        versions = await self._versions(client, reads)
        h = hashlib.blake2b(digest_size=20)
        for part in (_KEY_VERSION, kind, orjson.dumps(list(scope)).decode()):
            h.update(part.encode() + b"\x00")
        h.update(normalise(query) + b"\x00")
        for k, v in versions:
            h.update(k.encode() + b"=" + v + b"\x00")
        return f"{self.prefix}qc:{kind}:{h.hexdigest()}"

    # -- computing and storing -----------------------------------------------------------------

    async def _compute_and_store(
        self,
        client: aioredis.Redis,
        key: str,
        kind: str,
        query: Mapping[str, Any],
        compute: Callable[[], Awaitable[bytes]],
        principal: str | None,
        ttl: float,
    ) -> bytes:
        """Compute and store a miss; identical misses arriving until it is stored share it."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut  # no await since the caller looked: no other leader
        try:
            body = await self._timed(kind, query, compute, principal)
            if len(body) <= self.max_entry_bytes:
                await self._store(client, key, etag_of(body), body, ttl, kind)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        else:
            fut.set_result(body)
            return body
        finally:
            del self._inflight[key]

    async def _uncached(
        self,
        kind: str,
        query: Mapping[str, Any],
        compute: Callable[[], Awaitable[bytes]],
        principal: str | None,
        result: str,
    ) -> Answer:
        body = await self._timed(kind, query, compute, principal)
        self._count(kind, result)
        return Answer(body, etag_of(body), hit=False)

    async def _timed(
        self,
        kind: str,
        query: Mapping[str, Any],
        compute: Callable[[], Awaitable[bytes]],
        principal: str | None,
    ) -> bytes:
        started = time.perf_counter()
        body = await compute()
        elapsed = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.query_seconds.labels(kind).observe(elapsed)
        if self.slowlog is not None:
            await self.slowlog.record(
                kind=kind, statement=normalise(query).decode(), seconds=elapsed, principal=principal
            )
        return body

    async def _store(
        self, client: aioredis.Redis, key: str, etag: str, body: bytes, ttl: float, kind: str
    ) -> None:
        try:
            await self._with_timeout(
                client.set(key, etag.encode() + b"\n" + body, px=int(ttl * 1000))
            )
        except (RedisError, OSError, TimeoutError) as e:
            self._fail(e)
            return
        if self.metrics is not None:
            self.metrics.cache_entry_bytes.labels(kind).observe(len(body))

    # -- Redis health --------------------------------------------------------------------------

    def _client(self) -> aioredis.Redis | None:
        if self.redis is None or time.monotonic() < self._down_until:
            return None
        return self.redis

    async def _with_timeout(self, aw: Awaitable[T]) -> T:
        return await asyncio.wait_for(aw, self.op_timeout_s)

    def _fail(self, e: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            log.warning(
                "query cache: Redis failed; answering uncached",
                error=repr(e),
                retry_in_s=self.retry_s,
            )
        self._down_until = time.monotonic() + self.retry_s

    def _count(self, kind: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_requests.labels(kind, result).inc()
