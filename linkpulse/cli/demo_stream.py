"""The demo's API client: keys made for the run, and a live SSE subscriber.

``linkpulse demo`` creates an admin, a viewer (for the dashboard's URL) and
an ingest key (expiring in a day, named ``demo``) so the API it starts is
used the way a deployment uses it, and follows ``/v1/stream/metrics`` with
the admin key, resuming with ``Last-Event-ID`` when the connection drops: the
panel shows how many window updates arrived over SSE.

>>> w = StreamWatch("http://127.0.0.1:1", "k")
>>> w.feed("id: metrics-7"), w.feed("event: metric"), w.feed("data: {}"), w.feed("")
(None, None, None, None)
>>> w.updates, w.last_id
(1, 'metrics-7')
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from linkpulse.api.auth.keys import KeyStore
from linkpulse.api.auth.roles import Role

__all__ = ["StreamWatch", "demo_keys"]

_RECONNECT_S = 1.0


async def demo_keys(conn: psycopg.AsyncConnection, tenant: str = "acme") -> dict[str, str]:
    """An admin, a viewer and an ingest key for this run (secrets by role), valid for a day."""
    until = datetime.now(UTC) + timedelta(days=1)
    out = {}
    for role in (Role.ADMIN, Role.VIEWER, Role.INGEST):
        key, _ = await KeyStore(conn).create(
            role=role, tenant=tenant, name="demo", expires_at=until
        )
        out[role.value] = key.secret
    return out


class StreamWatch:
    """Counts the window updates of ``/v1/stream/metrics``; reconnects and resumes."""

    def __init__(self, api_url: str, key: str) -> None:
        self._url = f"{api_url}/v1/stream/metrics"
        self._key = key
        self.updates = 0
        self.last_id: str | None = None
        self.error: str | None = None
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, line: str) -> None:
        """Take one line of the stream."""
        if line.startswith("id:"):
            self._id = line[3:].strip()
        elif line.startswith("event:"):
            self._event = line[6:].strip()
        elif line == "":
            if self._event == "metric":
                self.updates += 1
            if self._id:
                self.last_id = self._id
            self._event = self._id = None

    async def run(self) -> None:
        """Follow the stream until cancelled (the API may not be up yet: retry)."""
        async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=60)) as client:
            while True:
                headers = {"Authorization": f"Bearer {self._key}"}
                if self.last_id:
                    headers["Last-Event-ID"] = self.last_id
                try:
                    async with client.stream("GET", self._url, headers=headers) as resp:
                        if resp.status_code != 200:
                            self.error = f"HTTP {resp.status_code}"
                        else:
                            self.error = None
                            async for line in resp.aiter_lines():
                                self.feed(line)
                except httpx.HTTPError as e:
                    self.error = type(e).__name__
                await asyncio.sleep(_RECONNECT_S)
