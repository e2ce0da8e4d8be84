"""NATS JetStream wiring: subject names, stream setup, the event publisher.

Everything that publishes to or sets up NATS goes through here, so subject
layout and stream configuration live in one place.
"""

from __future__ import annotations

from linkpulse.bus.connection import connect_nats
from linkpulse.bus.publisher import (
    EventPublisher,
    EventTooLargeError,
    PublishError,
    PublishResult,
    encode_dead_letter,
)
from linkpulse.bus.stream import dead_letter_stream_name, ensure_streams, stream_configs
from linkpulse.bus.subjects import (
    dead_letter_subject,
    dead_letters_filter,
    event_subject,
    events_filter,
    metric_subject,
    window_token,
)

__all__ = [
    "EventPublisher",
    "EventTooLargeError",
    "PublishError",
    "PublishResult",
    "connect_nats",
    "dead_letter_stream_name",
    "dead_letter_subject",
    "dead_letters_filter",
    "encode_dead_letter",
    "ensure_streams",
    "event_subject",
    "events_filter",
    "metric_subject",
    "stream_configs",
    "window_token",
]
