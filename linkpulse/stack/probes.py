"""Health checks that speak each service's real protocol, and what each server offers.

A probe never raises for an unreachable server: it returns a :class:`Probe`
with ``ok=False`` and the error, because "down" is an answer here, not a bug.

- NATS: connect, read the server version from its INFO, ask JetStream for the
  account info (fails when the server runs without ``-js``).
- Redis: PING, then ``INFO server`` for ``redis_version``.
- PostgreSQL: ``select 1``, ``server_version``, and whether TimescaleDB is
  installed in the database or only available on the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import nats
import psycopg
import redis

from linkpulse.nats_auth import nats_py_auth
from linkpulse.stack.urls import redact

TIMESCALE_PLAIN = "not available: plain PostgreSQL tier"


@dataclass(frozen=True)
class Probe:
    """The answer of one health check.

    >>> Probe("redis", "redis://127.0.0.1:1/0", ok=False, error="refused").summary
    'unreachable: refused'
    """

    service: str
    url: str
    ok: bool
    version: str = ""
    error: str = ""
    # Service-specific facts, e.g. {"jetstream": "enabled"} or {"timescaledb": "..."}.
    details: dict[str, str] = field(default_factory=dict)
    # True when the server answers but lacks something linkpulse requires (JetStream).
    degraded: bool = False

    @property
    def summary(self) -> str:
        if not self.ok:
            return f"unreachable: {self.error}"
        return "degraded" if self.degraded else "ok"


async def _nats_probe(url: str, timeout: float) -> Probe:
    async def quiet(_: Exception) -> None:
        # nats-py logs every failed attempt with a traceback; the Probe carries the error.
        return None

    try:
        # max_reconnect_attempts=0 would retry forever on a refused connection.
        servers = [u.strip() for u in url.split(",")]
        nc = await nats.connect(
            servers,
            **nats_py_auth(servers),
            connect_timeout=timeout,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.05,
            error_cb=quiet,
        )
    except Exception as e:  # nats-py raises several unrelated types for "no server"
        return Probe("nats", redact(url), ok=False, error=_one_line(e))
    try:
        v = nc.connected_server_version
        version = f"{v.major}.{v.minor}.{v.patch}"
        try:
            info = await nc.jetstream(timeout=timeout).account_info()
        except Exception as e:  # no JetStream: NoRespondersError or ServiceUnavailableError
            return Probe(
                "nats",
                redact(url),
                ok=True,
                version=version,
                details={"jetstream": f"disabled ({type(e).__name__})"},
                degraded=True,
            )
        return Probe(
            "nats",
            redact(url),
            ok=True,
            version=version,
            details={"jetstream": f"enabled ({info.streams} streams)"},
        )
    finally:
        await nc.close()


def probe_nats(url: str, timeout: float = 2.0) -> Probe:
    """Connect to NATS and check JetStream.

    >>> probe_nats("nats://127.0.0.1:1", timeout=0.5).ok
    False
    """
    try:
        return asyncio.run(asyncio.wait_for(_nats_probe(url, timeout), timeout * 3))
    except TimeoutError:
        return Probe("nats", redact(url), ok=False, error=f"no answer within {timeout * 3:.0f}s")


def probe_redis(url: str, timeout: float = 2.0) -> Probe:
    """PING Redis and read its version.

    >>> probe_redis("redis://127.0.0.1:1/0", timeout=0.5).ok
    False
    """
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        with client:
            client.ping()
            info = client.info("server")
    except (redis.RedisError, OSError, ValueError) as e:
        return Probe("redis", redact(url), ok=False, error=_one_line(e))
    return Probe("redis", redact(url), ok=True, version=str(info.get("redis_version", "?")))


def probe_postgres(dsn: str, timeout: float = 2.0) -> Probe:
    """Run ``select 1``; report the version and the TimescaleDB tier.

    >>> probe_postgres("postgresql://postgres@127.0.0.1:1/test", timeout=1).ok
    False
    """
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, round(timeout)), autocommit=True) as conn:
            conn.execute("select 1").fetchone()
            row = conn.execute("show server_version").fetchone()
            version = str(row[0]).split()[0] if row else "?"
            timescale = _timescale_tier(conn)
    except (psycopg.Error, OSError) as e:
        return Probe("postgres", redact(dsn), ok=False, error=_one_line(e))
    return Probe(
        "postgres", redact(dsn), ok=True, version=version, details={"timescaledb": timescale}
    )


def _timescale_tier(conn: psycopg.Connection) -> str:
    installed = conn.execute(
        "select extversion from pg_extension where extname = 'timescaledb'"
    ).fetchone()
    if installed:
        license_row = conn.execute("select current_setting('timescaledb.license', true)").fetchone()
        license_name = license_row[0] if license_row and license_row[0] else "unknown"
        return f"installed {installed[0]} (license: {license_name})"
    available = conn.execute(
        "select default_version from pg_available_extensions where name = 'timescaledb'"
    ).fetchone()
    if available:
        return f"available {available[0]}, not installed: run CREATE EXTENSION timescaledb"
    return TIMESCALE_PLAIN


PROBES: dict[str, Callable[[str, float], Probe]] = {
    "nats": probe_nats,
    "redis": probe_redis,
    "postgres": probe_postgres,
}


def probe(service: str, url: str, timeout: float = 2.0) -> Probe:
    """Run the probe for ``service`` (one of nats, redis, postgres)."""
    return PROBES[service](url, timeout)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]
