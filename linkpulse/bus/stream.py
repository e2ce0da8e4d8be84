"""JetStream streams: the durable events stream and its dead-letter stream.

``ensure_streams`` is idempotent: it creates what is missing and updates what
drifted from the settings, so every process (API, dataflow, CLI) can call it at
start without coordinating.
"""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from linkpulse.bus.subjects import dead_letters_filter, events_filter
from linkpulse.config import Settings
from linkpulse.errors import IngestError
from linkpulse.logging import get_logger

__all__ = ["dead_letter_stream_name", "ensure_streams", "stream_configs"]

log = get_logger(__name__)

# Fields ensure_streams owns; anything else (replicas, placement, ...) an
# operator set by hand is left alone.
_MANAGED = ("subjects", "storage", "max_age", "max_bytes", "duplicate_window", "discard")


def dead_letter_stream_name(settings: Settings) -> str:
    """The dead-letter stream's name: the events stream's name plus ``_DLQ``.

    >>> dead_letter_stream_name(Settings(stream_name="EV"))
    'EV_DLQ'
    """
    return f"{settings.stream_name}_DLQ"


def stream_configs(settings: Settings) -> tuple[StreamConfig, StreamConfig]:
    """The (events, dead letters) stream configurations the settings ask for.

    >>> events, dlq = stream_configs(Settings(stream_name="EV", subject_prefix="lp"))
    >>> events.subjects, dlq.name, dlq.subjects
    (['lp.events.>'], 'EV_DLQ', ['lp.deadletters.>'])
    """
    prefix = settings.subject_prefix
    # The duplicate window may not exceed max_age (the server refuses it).
    dup_window = min(settings.stream_duplicate_window_s, settings.stream_max_age_s)

    def limited(name: str, description: str, subject: str) -> StreamConfig:
        return StreamConfig(
            name=name,
            description=description,
            subjects=[subject],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.stream_max_age_s,
            max_bytes=settings.stream_max_bytes,
            duplicate_window=dup_window,
            discard=DiscardPolicy.OLD,
        )

    events = limited(settings.stream_name, "linkpulse raw events", events_filter(prefix))
    dlq = limited(
        dead_letter_stream_name(settings),
        "linkpulse dead letters: inputs that could not be used, with the reason",
        dead_letters_filter(prefix),
    )
    return events, dlq


def _drift(current: StreamConfig, wanted: StreamConfig) -> dict[str, tuple[Any, Any]]:
    """Managed fields whose value on the server differs from the wanted one."""
    out = {}
    for name in _MANAGED:
        have, want = getattr(current, name), getattr(wanted, name)
        if isinstance(want, float) and have is not None and abs(float(have) - want) < 1e-6:
            continue
        if have != want:
            out[name] = (have, want)
    return out


async def _ensure(js: JetStreamContext, wanted: StreamConfig) -> None:
    name = wanted.name
    try:
        try:
            info = await js.stream_info(name)  # type: ignore[arg-type]
        except nats.js.errors.NotFoundError:
            await js.add_stream(wanted)
            log.info("stream created", stream=name, subjects=wanted.subjects)
            return
        drift = _drift(info.config, wanted)
        if not drift:
            return
        if "storage" in drift:
            have, want = drift["storage"]
            msg = (
                f"stream {name} has storage {have}, linkpulse needs {want}; JetStream cannot "
                f"change storage in place: back it up and delete it (nats stream rm {name})"
            )
            raise IngestError(msg)
        update = info.config.evolve(**{k: w for k, (_, w) in drift.items()})
        await js.update_stream(update)
        log.info("stream updated", stream=name, changed=sorted(drift))
    except IngestError:
        raise
    except (nats.errors.Error, TimeoutError) as e:
        msg = f"could not create or update JetStream stream {name}: {e!r}"
        raise IngestError(msg) from e


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Create or update the events stream and the dead-letter stream; safe to repeat."""
    for config in stream_configs(settings):
        await _ensure(js, config)
