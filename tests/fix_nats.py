"""NATS fixtures: each test gets its own stream name and subject prefix.

The server comes from ``LINKPULSE_TEST_NATS_URL`` (default: the local NATS).
If it can't be reached the fixture fails, saying how to start it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from linkpulse.bus.live import live_channels
from linkpulse.config import Settings

NATS_URL = os.environ.get("LINKPULSE_TEST_NATS_URL", "nats://127.0.0.1:4222")
START_HINT = (
    "NATS is not reachable at {url}: {err!r}. Start it with 'start-stop-daemon --start "
    "--oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js "
    "-sd /var/lib/nats-server -l /var/log/nats-server.log', or run 'linkpulse up'."
)


async def _quiet(_: Exception) -> None:
    """The connect error is reported by the fixture; don't also log each attempt."""


async def connect_nats() -> Client:
    try:
        # allow_reconnect=False: with the server down, fail now instead of retrying forever
        return await asyncio.wait_for(
            nats.connect(
                NATS_URL,
                connect_timeout=3,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                error_cb=_quiet,
            ),
            timeout=10,
        )
    except Exception as e:  # nats raises several unrelated types when the server is down
        pytest.fail(START_HINT.format(url=NATS_URL, err=e), pytrace=False)


@pytest.fixture
def nats_settings() -> Settings:
    """Settings whose stream and subjects belong to this test alone."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        nats_url=NATS_URL,
        stream_name=f"LPTEST_{tag.upper()}",
        subject_prefix=f"lpt{tag}",
    )


@pytest.fixture
async def nc(nats_settings: Settings) -> AsyncIterator[Client]:
    """A connection to the real NATS; the test's stream is deleted afterwards."""
    client = await connect_nats()
    try:
        yield client
    finally:
        # ensure_streams also makes "<stream>_DLQ" (the dead letters), the API's stream hub
        # the live channels' streams ("<stream>_UPDATES", ...): remove them all.
        live = [c.stream for c in live_channels(nats_settings)]
        for name in (nats_settings.stream_name, f"{nats_settings.stream_name}_DLQ", *live):
            try:
                await client.jetstream().delete_stream(name)
            except NotFoundError:
                pass
        await client.close()
