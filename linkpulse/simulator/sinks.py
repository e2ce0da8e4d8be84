"""Where simulated events go: NATS JetStream, an NDJSON file, or nowhere (dry run).

>>> import asyncio
>>> sink = NullSink()
>>> asyncio.run(sink.send([])), sink.describe()
(None, 'nowhere (dry run)')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

import msgspec

from linkpulse.config import Settings
from linkpulse.schemas.events import BaseEvent

if TYPE_CHECKING:
    from linkpulse.bus.publisher import EventPublisher

_encoder = msgspec.json.Encoder()


class EventSink(Protocol):
    """Takes batches of events in order; ``close`` flushes."""

    async def send(self, events: Sequence[BaseEvent]) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> str: ...


class NullSink:
    """Drops everything (``--dry-run``): the run still counts and reports."""

    async def send(self, events: Sequence[BaseEvent]) -> None:
        return None

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return "nowhere (dry run)"


class FileSink:
    """Appends one JSON event per line (NDJSON, the ingest API's batch format)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fh: IO[bytes] = path.open("wb")
        except OSError as e:
            msg = f"--output: cannot write {path}: {e.strerror}"
            raise ValueError(msg) from e

    async def send(self, events: Sequence[BaseEvent]) -> None:
        # Blocking writes are fine here: the file sink is for backfills, not a server loop.
        self._fh.write(_encoder.encode_lines(events))

    async def close(self) -> None:
        self._fh.close()

    def describe(self) -> str:
        return str(self._path)


class NatsSink:
    """Publishes through the shared ``EventPublisher`` (idempotent on event id)."""

    def __init__(self, publisher: EventPublisher) -> None:
        self._publisher = publisher

    @classmethod
    async def connect(cls, settings: Settings) -> NatsSink:
        """Connect the publisher (creates the stream if it is missing)."""
        from linkpulse.bus.publisher import EventPublisher

        return cls(await EventPublisher.connect(settings, name="linkpulse-simulate"))

    async def send(self, events: Sequence[BaseEvent]) -> None:
        await self._publisher.publish(events)

    async def close(self) -> None:
        await self._publisher.close()

    def describe(self) -> str:
        s = self._publisher.settings
        return f"NATS {s.nats_url} stream {s.stream_name} ({s.subject_prefix}.events.>)"
