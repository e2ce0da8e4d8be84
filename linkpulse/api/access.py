"""The access layer's lifecycle: database pools, Redis, guard, audit log, stream hub.

``create_app`` builds one ``AccessLayer`` and starts it in the lifespan; it
puts the ``Guard`` (for ``Need``) and the stream hub on ``app.state``. Nothing
here fails the start when a service is down: key lookups answer 503 until the
database is back, rate limits are skipped while Redis is away, streams wait
for NATS.

>>> check_auth_bind(Settings(auth="off"), "127.0.0.1")
>>> check_auth_bind(Settings(auth="off"), "0.0.0.0")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
linkpulse.errors.ConfigError: LINKPULSE_AUTH=off is only allowed on a loopback address ...
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import psycopg_pool
import redis.asyncio as aioredis
from fastapi import FastAPI

from linkpulse.api.analyst_db import AnalystDb, api_pool
from linkpulse.api.audit import AuditLog
from linkpulse.api.auth.authenticator import Authenticator
from linkpulse.api.auth.guard import Guard
from linkpulse.api.auth.ratelimit import RateLimiter, parse_limits
from linkpulse.api.auth.tokens import JwtVerifier
from linkpulse.api.hub import StreamHub
from linkpulse.config import Settings
from linkpulse.errors import ConfigError
from linkpulse.logging import get_logger

if TYPE_CHECKING:
    from linkpulse.api.audit_watch import AuditWatch

__all__ = ["AccessLayer", "check_auth_bind", "is_loopback"]

log = get_logger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine.

    >>> is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: may resolve anywhere
        return False


def check_auth_bind(settings: Settings, host: str) -> None:
    """Refuse ``LINKPULSE_AUTH=off`` on an address other machines can reach."""
    if settings.auth == "off" and not is_loopback(host):
        msg = (
            f"LINKPULSE_AUTH=off is only allowed on a loopback address (127.0.0.1, ::1), "
            f"not {host!r}: anyone who can reach it would be admin. Create keys with "
            "`linkpulse keys create` and leave LINKPULSE_AUTH on"
        )
        raise ConfigError(msg)


class AccessLayer:
    """Opens and closes what principals, audit and streams need."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            self._limits = parse_limits(settings.rate_limits)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        self._verifier = JwtVerifier.from_settings(settings)
        self.pool: psycopg_pool.AsyncConnectionPool | None = None
        self.redis: aioredis.Redis | None = None
        self.audit: AuditLog | None = None
        self.hub: StreamHub | None = None
        self.analyst_db: AnalystDb | None = None
        self.audit_watch: AuditWatch | None = None

    async def start(self, app: FastAPI) -> None:
        """Open the pool and Redis (lazily), start the audit flusher and the hub."""
        s = self.settings
        # LINKPULSE_DB_POOL_*: sized for the server (one connection per use: max_idle_s=0)
        self.pool = api_pool(s.database_url, s, min_size=s.db_pool_min, name="linkpulse-api")
        await self.pool.open(wait=False)
        self.redis = aioredis.from_url(s.redis_url, socket_connect_timeout=1, socket_timeout=1)
        self.audit = AuditLog(self.pool, flush_s=s.audit_flush_s)
        self.audit.start()
        self.analyst_db = AnalystDb(s, self.pool)  # scoped reads: queries, SQL, exports
        await self.analyst_db.start()
        app.state.analyst_db = self.analyst_db
        authenticator = Authenticator(
            pool=self.pool, verifier=self._verifier, cache_s=s.auth_cache_s
        )
        limiter = RateLimiter(self.redis, self._limits, s.redis_key_prefix)
        guard = Guard(authenticator, limiter, self.audit, auth_on=s.auth == "on")
        app.state.guard = guard
        self.hub = StreamHub(s, guard=guard, redis=self.redis)
        app.state.hub = self.hub
        await self.hub.start()
        if s.audit_watch:  # the audit log's volumes scored like any other series
            from linkpulse.api.audit_watch import AuditWatch  # loads the detectors: only if on

            self.audit_watch = AuditWatch(s, self.pool, self.hub.publish)
            self.audit_watch.start()
        if s.auth == "off":
            log.warning("authentication is off: every caller is admin (loopback only)")

    async def stop(self) -> None:
        """Close streams, write the last audit rows, close the connections."""
        if self.audit_watch is not None:
            await self.audit_watch.stop()
        if self.hub is not None:
            await self.hub.stop()
        if self.audit is not None:
            await self.audit.stop()
        if self.analyst_db is not None:
            await self.analyst_db.stop()
        if self.redis is not None:
            await self.redis.aclose()
        if self.pool is not None:
            await self.pool.close()
