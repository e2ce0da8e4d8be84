"""Prometheus metrics of the dataflow, served by ``start_metrics_server``.

Every connector records into these module-level collectors; one HTTP
endpoint per process exposes them (``/metrics`` on ``settings.metrics_port``).

>>> EVENTS_IN.labels("doctest.events.>").inc(3)
>>> EVENTS_IN.labels("doctest.events.>")._value.get()
3.0
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "CONSUMER_LAG",
    "DEAD_LETTERS",
    "EVENTS_IN",
    "LATE_EVENTS",
    "SINK_BATCH",
    "SINK_FAILURES",
    "SINK_LATENCY",
    "SOURCE_BATCH",
    "SOURCE_RESTARTS",
    "WATERMARK_DELAY",
    "WINDOW_UPDATES",
    "start_metrics_server",
    "timed_sink",
]

_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000)

EVENTS_IN = Counter("linkpulse_dataflow_events_in", "Messages read from JetStream", ["partition"])
DEAD_LETTERS = Counter(
    "linkpulse_dataflow_dead_letters", "Messages that failed validation", ["field"]
)
LATE_EVENTS = Counter(
    "linkpulse_dataflow_late_events", "Events behind the watermark (windows revised)"
)
WINDOW_UPDATES = Counter(
    "linkpulse_dataflow_window_updates", "Metric window updates emitted", ["window"]
)
CONSUMER_LAG = Gauge(
    "linkpulse_dataflow_consumer_lag",
    "Messages in the stream not yet emitted by the source",
    ["partition"],
)
WATERMARK_DELAY = Gauge(
    "linkpulse_dataflow_watermark_delay_seconds", "Wall clock minus the event-time watermark"
)
SOURCE_BATCH = Histogram(
    "linkpulse_dataflow_source_batch_size", "Messages per source batch", buckets=_BATCH_BUCKETS
)
SOURCE_RESTARTS = Counter(
    "linkpulse_dataflow_source_restarts",
    "Consumers re-created after a gap, missed heartbeats, an error status or a lost connection",
    ["partition"],
)
SINK_BATCH = Histogram(
    "linkpulse_dataflow_sink_batch_size", "Items per sink write", ["sink"], buckets=_BATCH_BUCKETS
)
SINK_LATENCY = Histogram(
    "linkpulse_dataflow_sink_seconds",
    "Time to write one batch to a sink",
    ["sink"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SINK_FAILURES = Counter(
    "linkpulse_dataflow_sink_failures", "Sink writes that failed (and were skipped)", ["sink"]
)

_server_lock = threading.Lock()
_server_port: int | None = None


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` on ``port`` once per process (later calls are no-ops).

    Port 0 disables the endpoint. Returns the port served (or 0).
    """
    global _server_port
    if port == 0:
        return 0
    with _server_lock:
        if _server_port is None:
            start_http_server(port, addr=addr)
            _server_port = port
        return _server_port


@contextmanager
def timed_sink(sink: str, size: int) -> Iterator[None]:
    """Record one sink write's batch size and duration.

    >>> with timed_sink("doctest", 3):
    ...     pass
    """
    SINK_BATCH.labels(sink).observe(size)
    start = time.perf_counter()
    try:
        yield
    finally:
        SINK_LATENCY.labels(sink).observe(time.perf_counter() - start)
