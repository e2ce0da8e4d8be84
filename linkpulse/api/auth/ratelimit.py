"""Per-principal rate limits: a token bucket in Redis, updated by one Lua script.

The script runs atomically in Redis, so any number of API processes share one
bucket per principal without races. Each role has its own rate (requests per
second) and burst (bucket size), from ``LINKPULSE_RATE_LIMITS``. When Redis is
unreachable, requests are let through (and counted): a cache outage must not
take the API down with it.

>>> parse_limits("ingest=500/1000, viewer=5/10")["viewer"]
Limit(rate=5.0, burst=10.0)
>>> parse_limits("root=1/1")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: LINKPULSE_RATE_LIMITS: unknown role 'root'; expected one of admin, ...
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions

from linkpulse.api.auth.roles import Principal, parse_role
from linkpulse.logging import get_logger

__all__ = ["Limit", "RateLimiter", "parse_limits"]

log = get_logger(__name__)

# KEYS[1] bucket; ARGV: rate/s, burst, now (s, float), cost.
# Returns {allowed (0/1), seconds until `cost` tokens are there (as a string)}.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
if now > at then tokens = math.min(burst, tokens + (now - at) * rate) end
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', math.max(now, at))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
"""


@dataclass(frozen=True)
class Limit:
    """``rate`` requests per second on average, up to ``burst`` at once."""

    rate: float
    burst: float


def parse_limits(text: str) -> dict[str, Limit]:
    """``role=rate/burst`` pairs, comma-separated; ValueError naming the bad part."""
    out: dict[str, Limit] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            role_name, spec = part.split("=", 1)
            rate_text, burst_text = spec.split("/", 1)
            role = parse_role(role_name)
            rate, burst = float(rate_text), float(burst_text)
        except ValueError as e:
            detail = (
                str(e) if "unknown role" in str(e) else f"expected role=rate/burst, got {part!r}"
            )
            msg = f"LINKPULSE_RATE_LIMITS: {detail}"
            raise ValueError(msg) from None
        if not (rate > 0 and burst >= 1 and math.isfinite(rate) and math.isfinite(burst)):
            msg = f"LINKPULSE_RATE_LIMITS: {part!r} needs rate > 0 and burst >= 1"
            raise ValueError(msg)
        out[role.value] = Limit(rate, burst)
    return out


class RateLimiter:
    """``await check(principal)`` returns 0 when allowed, else seconds to wait."""

    def __init__(self, client: aioredis.Redis, limits: dict[str, Limit], key_prefix: str) -> None:
        self._client = client
        self._limits = limits
        self._prefix = key_prefix
        self._script = client.register_script(_TOKEN_BUCKET)
        self.redis_failures = 0

    async def check(self, principal: Principal, cost: float = 1) -> float:
        """Take ``cost`` tokens from the principal's bucket; 0.0 if allowed, else the wait."""
        limit = self._limits.get(principal.role.value)
        if limit is None:  # no limit configured for this role
            return 0.0
        key = f"{self._prefix}ratelimit:{principal.id}"
        try:
            allowed, wait = await self._script(
                keys=[key], args=[limit.rate, limit.burst, time.time(), cost]
            )
        except (redis.exceptions.RedisError, OSError) as e:
            self.redis_failures += 1
            log.warning("rate limit not checked: redis unreachable", error=repr(e))
            return 0.0
        return 0.0 if int(allowed) == 1 else max(float(wait), 0.001)
