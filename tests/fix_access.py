"""Fixtures for the access and stream tests: a migrated database, keys of every role,
the real API under uvicorn with auth on, the dataflow's sinks as a publisher of window
updates, and a small SSE reader over httpx.

Import the fixtures by name in a test module (``from tests.fix_access import ...``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from linkpulse.api.auth.keys import KeyStore
from linkpulse.api.auth.roles import Role
from linkpulse.api.hub import StreamHub
from linkpulse.config import Settings
from linkpulse.dataflows.nats_sink import MetricUpdatesSink
from linkpulse.dataflows.redis_sink import RedisLatestSink
from linkpulse.operators.metrics import dims_key
from linkpulse.schemas.outputs import MetricWindow
from tests.api_server import ApiServer
from tests.fix_db import migrate_with_roles
from tests.fix_redis import REDIS_URL

# name -> (role, tenant, seller): one key per role of tenant acme, plus the keys the
# scope tests need (another seller, another tenant).
KEY_SPECS: dict[str, tuple[Role, str, str | None]] = {
    "admin": (Role.ADMIN, "acme", None),
    "operator": (Role.OPERATOR, "acme", None),
    "analyst": (Role.ANALYST, "acme", None),
    "viewer": (Role.VIEWER, "acme", None),
    "ingest": (Role.INGEST, "acme", None),
    "seller": (Role.SELLER, "acme", "s1"),
    "seller2": (Role.SELLER, "acme", "s2"),
    "beta_viewer": (Role.VIEWER, "beta", None),
}


@dataclass
class Keys:
    """The secrets of the keys made for a test, by name, and their ids."""

    secrets: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[name]}"}


@pytest.fixture
def access_settings(pg_dsn: str, nats_settings: Settings, redis_prefix: str) -> Settings:
    """Settings of a test's own database (migrated, analyst roles set up), stream, subjects
    and Redis prefix."""
    migrate_with_roles(pg_dsn)  # the default (cluster-wide) roles
    return Settings(
        **{
            **nats_settings.model_dump(),
            "database_url": pg_dsn,
            "redis_url": REDIS_URL,
            "redis_key_prefix": redis_prefix,
            "auth_cache_s": 0.5,
            "stream_revalidate_s": 1.0,
            "audit_flush_s": 0.2,
            # generous: the matrix makes many requests per key
            "rate_limits": ",".join(f"{r.value}=1000/1000" for r in Role),
        }
    )


async def make_key(dsn: str, name: str, *, expires_at: datetime | None = None) -> tuple[str, str]:
    """Create the key ``KEY_SPECS[name]``; return (secret, id)."""
    role, tenant, seller = KEY_SPECS[name]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        key, record = await KeyStore(conn).create(
            role=role, tenant=tenant, seller=seller, name=name, expires_at=expires_at
        )
    return key.secret, record.key_id


@pytest.fixture
async def keys(access_settings: Settings) -> Keys:
    """One key per entry of KEY_SPECS, plus a revoked and an expired viewer key."""
    out = Keys()
    for name in KEY_SPECS:
        out.secrets[name], out.ids[name] = await make_key(access_settings.database_url, name)
    secret, key_id = await make_key(access_settings.database_url, "viewer")
    async with await psycopg.AsyncConnection.connect(
        access_settings.database_url, autocommit=True
    ) as conn:
        await KeyStore(conn).revoke(key_id)
    out.secrets["revoked"], out.ids["revoked"] = secret, key_id
    past = datetime.now(UTC) - timedelta(minutes=1)
    out.secrets["expired"], out.ids["expired"] = await make_key(
        access_settings.database_url, "viewer", expires_at=past
    )
    return out


def wait_streams_ready(url: str, headers: dict[str, str]) -> None:
    """Poll until the hub is subscribed (a stream request stops answering 503)."""
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=url, timeout=10) as c:
        while True:
            with c.stream("GET", "/v1/stream/alerts", headers=headers) as resp:
                if resp.status_code == 200:
                    return
                assert resp.status_code == 503, resp.read()
            assert time.monotonic() < deadline, "the stream hub never connected to NATS"
            time.sleep(0.1)


T0 = datetime(2026, 11, 24, 10, tzinfo=UTC)


def window(
    i: int, *, seller: str | None = None, tenant: str = "acme", pad: int = 0
) -> MetricWindow:
    """Window update number ``i`` of gmv/1m (value i), optionally a seller's."""
    dims = {"seller_id": seller} if seller else {}
    if pad:
        dims["currency"] = "x" * pad  # bulk, for the slow-client test
    start = T0 + timedelta(minutes=i)
    return MetricWindow(
        metric="gmv",
        tenant=tenant,
        dims_key=dims_key(dims),
        dimensions=dims,
        window="1m",
        window_start=start,
        window_end=start + timedelta(minutes=1),
        value=float(i),
        count=i,
    )


class Publisher:
    """The dataflow's sinks, used as the dataflow uses them."""

    def __init__(self, settings: Settings) -> None:
        self.nats = MetricUpdatesSink(settings).build("metrics", 0, 1)
        self.redis = RedisLatestSink(
            settings.redis_url, key_prefix=settings.redis_key_prefix
        ).build("redis", 0, 1)

    def send(self, windows: list[MetricWindow]) -> None:
        self.nats.write_batch(windows)
        self.redis.write_batch(windows)

    def close(self) -> None:
        self.nats.close()
        self.redis.close()


@pytest.fixture
def publisher(access_settings: Settings) -> Iterator[Publisher]:
    """The dataflow's NATS and Redis sinks, on the test's subjects and prefix."""
    p = Publisher(access_settings)
    yield p
    p.close()


def hub_of(server: ApiServer) -> StreamHub:
    """The stream hub of a running test server (leak checks look at it)."""
    hub: StreamHub = server.server.config.app.state.hub
    return hub


@pytest.fixture
def served(
    access_settings: Settings, keys: Keys, unused_tcp_port: int, nc: object, redis_client: object
) -> Iterator[tuple[str, ApiServer]]:
    """The API (auth on, hub connected) and its server object; yields (base URL, server)."""
    server = ApiServer(access_settings, unused_tcp_port)
    with server as url:
        wait_streams_ready(url, keys.headers("admin"))
        yield url, server


@pytest.fixture
def access_api(
    access_settings: Settings, keys: Keys, unused_tcp_port: int, nc: object, redis_client: object
) -> Iterator[str]:
    """The API with auth on, its hub connected; yields its base URL."""
    # `nc` and `redis_client` first: their teardown (streams, keys) runs after the server's.
    with ApiServer(access_settings, unused_tcp_port) as url:
        wait_streams_ready(url, keys.headers("admin"))
        yield url


@dataclass
class SseEvent:
    """One SSE event as a client sees it."""

    event: str
    id: str | None
    data: str

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.data)


class SseReader:
    """Reads events from an open ``text/event-stream`` response (comments skipped)."""

    def __init__(self, resp: httpx.Response) -> None:
        self.resp = resp
        self._lines = resp.aiter_lines()
        self.retry: int | None = None
        self.comments: list[str] = []

    async def next(self, timeout: float = 20) -> SseEvent:
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> SseEvent:
        fields: dict[str, list[str]] = {}
        async for line in self._lines:
            if line == "":
                if "data" in fields or "event" in fields:
                    return SseEvent(
                        event=(fields.get("event") or ["message"])[-1],
                        id=(fields.get("id") or [None])[-1],
                        data="\n".join(fields.get("data", [])),
                    )
                fields = {}
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry":
                self.retry = int(value)
                continue
            fields.setdefault(name, []).append(value)
        raise EOFError("the stream ended")

    async def until(self, event: str, timeout: float = 20) -> SseEvent:
        """The next event named ``event`` (others before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            ev = await self.next(max(deadline - time.monotonic(), 0.01))
            if ev.event == event:
                return ev


@pytest.fixture
async def http(access_api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=access_api, timeout=20) as c:
        yield c
