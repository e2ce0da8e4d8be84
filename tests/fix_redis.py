"""Redis fixtures: each test gets its own key prefix, whose keys are deleted afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

REDIS_URL = os.environ.get("LINKPULSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START_HINT = (
    "Redis is not reachable at {url}: {err!r}. Start it with 'redis-server --daemonize yes "
    '--bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis '
    "--logfile /var/log/redis/ci.log', or run 'linkpulse up'."
)


@pytest.fixture
def redis_prefix() -> str:
    return f"lpt:{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def redis_client(redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the real Redis; keys under ``redis_prefix`` are removed afterwards."""
    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        await client.ping()
    except Exception as e:
        await client.aclose()
        pytest.fail(START_HINT.format(url=REDIS_URL, err=e), pytrace=False)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
