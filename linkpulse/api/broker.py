"""The API's one NATS connection, opened in the lifespan and kept alive.

If NATS is down when the API starts, the API still starts (liveness stays
green, readiness red, ingest answers 503 "retry") and keeps trying to connect
in the background; once connected, nats-py reconnects by itself.
"""

from __future__ import annotations

import asyncio

from linkpulse.aio import cancel_and_wait
from linkpulse.bus import EventPublisher
from linkpulse.config import Settings
from linkpulse.errors import IngestError
from linkpulse.logging import get_logger

__all__ = ["BrokerLink"]

log = get_logger(__name__)


class BrokerLink:
    """Holds the publisher once connected; ``require()`` it or get an IngestError."""

    def __init__(self, settings: Settings, *, retry_every_s: float = 2.0) -> None:
        self._settings = settings
        self._retry_every_s = retry_every_s
        self._publisher: EventPublisher | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error = "not connected yet"

    @property
    def ready(self) -> bool:
        """Connected to NATS right now."""
        return self._publisher is not None and self._publisher.is_connected

    @property
    def status(self) -> str:
        """A one-line description for the readiness endpoint."""
        if self.ready:
            return f"connected to {self._settings.nats_url}"
        if self._publisher is not None:
            return f"reconnecting to {self._settings.nats_url}"
        return self._last_error

    async def _try_connect(self) -> bool:
        try:
            self._publisher = await EventPublisher.connect(self._settings, name="linkpulse-api")
        except IngestError as e:
            self._last_error = str(e)
            return False
        log.info("api connected to nats", url=self._settings.nats_url)
        return True

    async def _keep_trying(self) -> None:
        while not await self._try_connect():
            await asyncio.sleep(self._retry_every_s)

    async def start(self) -> None:
        """Connect now if possible, else keep trying in the background."""
        if not await self._try_connect():
            log.warning("nats unreachable; api starts not ready", error=self._last_error)
            self._task = asyncio.create_task(self._keep_trying(), name="nats-connect")

    def require(self) -> EventPublisher:
        """The connected publisher, or IngestError saying NATS is unavailable."""
        if self._publisher is None or not self._publisher.is_connected:
            msg = f"NATS is unavailable ({self.status})"
            raise IngestError(msg)
        return self._publisher

    async def stop(self) -> None:
        """Stop retrying and close the connection."""
        await cancel_and_wait(self._task)
        if self._publisher is not None:
            await self._publisher.close()
            self._publisher = None
