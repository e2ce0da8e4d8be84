"""The slow-query log: statement, duration and principal of every query slower than a threshold.

``SlowLog.record`` is called with each computed query's time (the query
cache does it for every answer it computes; the SQL endpoint can call it
itself). A slow one is logged (``slow_query``, structured), counted on
``/metrics`` (``linkpulse_query_slow``, by kind) and kept in a capped Redis
list (``<prefix>slowlog``, newest first, ``keep`` entries), which
``recent()`` reads. Redis trouble never fails the query: the entry is then
only logged.

>>> entry = SlowQuery("series", "{}", 1.25, "key:k1", "2026-12-01T10:00:00Z")
>>> SlowQuery.decode(entry.encode()) == entry
True
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, cast

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from linkpulse.logging import get_logger

if TYPE_CHECKING:
    from linkpulse.api.metrics import ApiMetrics

__all__ = ["SlowLog", "SlowQuery"]

log = get_logger(__name__)

MAX_STATEMENT: Final = 4000  # characters kept of a statement


class SlowQuery(msgspec.Struct, frozen=True):
    """One slow query: kind, statement (SQL or normalised JSON query), seconds, who, when."""

    kind: str
    statement: str
    seconds: float
    principal: str | None
    at: str  # ISO 8601, UTC

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, raw: bytes) -> SlowQuery:
        return msgspec.json.decode(raw, type=cls)


class SlowLog:
    """Slow queries in logs, metrics and a capped Redis list; see the module doc."""

    def __init__(
        self,
        redis: aioredis.Redis | None,
        *,
        prefix: str,
        threshold_s: float,
        keep: int = 1000,
        op_timeout_s: float = 1.0,
        metrics: ApiMetrics | None = None,
    ) -> None:
        if threshold_s < 0 or keep < 1:
            msg = f"threshold_s must be 0 or more and keep 1 or more, got {threshold_s}, {keep}"
            raise ValueError(msg)
        self.redis = redis
        self.key = f"{prefix}slowlog"
        self.threshold_s = threshold_s
        self.keep = keep
        self.op_timeout_s = op_timeout_s
        self.metrics = metrics

    async def record(
        self, *, kind: str, statement: str, seconds: float, principal: str | None
    ) -> bool:
        """Keep the query if it took ``threshold_s`` or longer; True if it did."""
        if seconds < self.threshold_s:
            return False
        entry = SlowQuery(
            kind,
            statement[:MAX_STATEMENT],
            round(seconds, 6),
            principal,
            datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        )
        log.warning(
            "slow_query",
            kind=kind,
            seconds=entry.seconds,
            principal=principal,
            statement=entry.statement,
        )
        if self.metrics is not None:
            self.metrics.slow_queries.labels(kind).inc()
        if self.redis is not None:
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.lpush(self.key, entry.encode())
                pipe.ltrim(self.key, 0, self.keep - 1)
                await asyncio.wait_for(pipe.execute(), self.op_timeout_s)
            except (RedisError, OSError, TimeoutError) as e:
                log.warning("slow-query log: Redis failed; the entry is only logged", error=repr(e))
        return True

    async def recent(self, limit: int = 100) -> list[SlowQuery]:
        """The newest ``limit`` slow queries kept in Redis (none when Redis is away)."""
        if self.redis is None:
            return []
        try:
            raw = await asyncio.wait_for(
                self.redis.lrange(self.key, 0, limit - 1), self.op_timeout_s
            )
        except (RedisError, OSError, TimeoutError):
            return []
        return [SlowQuery.decode(cast(bytes, r)) for r in raw]
