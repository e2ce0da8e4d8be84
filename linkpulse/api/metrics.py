"""Prometheus metrics of the API: ingest outcomes, request latency, the query cache.

Each app gets its own ``CollectorRegistry`` so two apps in one process (tests,
embedding) never collide. Labels are bounded on purpose: no tenant, and a
rejected event's field is folded into a fixed set (an unknown field a client
invents must not create a new time series).

>>> m = ApiMetrics()
>>> m.count_event("page_view", "accepted")
>>> m.count_rejected("page_view", "nonsense_field_42")
>>> b'field="other"' in m.exposition()
True
"""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST as _CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from linkpulse.schemas import EVENT_TYPES
from linkpulse.schemas.events import PROPERTY_RULES, BaseEvent

__all__ = ["CONTENT_TYPE_LATEST", "ApiMetrics", "LatencyMiddleware", "field_label", "type_label"]

CONTENT_TYPE_LATEST: Final = _CONTENT_TYPE

_KNOWN_FIELDS: Final[frozenset[str]] = frozenset(
    {"$", "type", *BaseEvent.__struct_fields__}
    | {f"properties.{key}" for rules in PROPERTY_RULES.values() for key, *_ in rules}
)
_KNOWN_TYPES: Final[frozenset[str]] = frozenset(EVENT_TYPES)


def field_label(field: str) -> str:
    """A bounded label for a rejected event's field.

    >>> field_label("amount"), field_label("properties.page"), field_label("x.y")
    ('amount', 'properties.page', 'other')
    """
    if field in _KNOWN_FIELDS:
        return field
    if field.startswith("properties."):
        return "properties.*"
    return "other"


def type_label(event_type: object) -> str:
    """A bounded label for an event type (``unknown`` for anything not a known type).

    >>> type_label("order_placed"), type_label("hack"), type_label(None)
    ('order_placed', 'unknown', 'unknown')
    """
    return event_type if isinstance(event_type, str) and event_type in _KNOWN_TYPES else "unknown"


class ApiMetrics:
    """The API's Prometheus collectors, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "linkpulse_ingest_events",
            "Events received by POST /v1/events, by outcome",
            ["event_type", "status"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "linkpulse_ingest_rejected_events",
            "Events rejected by validation, by event type and offending field",
            ["event_type", "field"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "linkpulse_ingest_batch_events",
            "Events per ingest request",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 5000, 10000),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "linkpulse_http_request_duration_seconds",
            "HTTP request latency, by method, route template and status",
            ["method", "route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        # The query cache and slow-query log (linkpulse/query/, docs/caching.md).
        self.cache_requests = Counter(
            "linkpulse_query_cache_requests",
            "Query answers by cache result: hit, miss, shared (an identical miss's answer), "
            "error (Redis failed: computed), bypass (Redis away or caching off: computed)",
            ["kind", "result"],
            registry=self.registry,
        )
        self.cache_entry_bytes = Histogram(
            "linkpulse_query_cache_entry_bytes",
            "Sizes of the answers stored in the query cache",
            ["kind"],
            buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
            registry=self.registry,
        )
        self.query_seconds = Histogram(
            "linkpulse_query_duration_seconds",
            "Time computing query answers (cache misses and uncached answers), by kind",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.cache_warmed = Counter(
            "linkpulse_query_cache_warmed",
            "Dashboard queries run by the cache warmer after rollup refreshes",
            registry=self.registry,
        )
        self.slow_queries = Counter(
            "linkpulse_query_slow",
            "Queries slower than LINKPULSE_QUERY_SLOW_S (kept in the slow-query log), by kind",
            ["kind"],
            registry=self.registry,
        )

    def count_event(self, event_type: str, status: str, n: int = 1) -> None:
        """Count ``n`` events of a type with an outcome (accepted, duplicate, rejected)."""
        self.events.labels(type_label(event_type), status).inc(n)

    def count_rejected(self, event_type: object, field: str) -> None:
        """Count one rejected event under its type and (bounded) field."""
        label = type_label(event_type)
        self.events.labels(label, "rejected").inc()
        self.rejected.labels(label, field_label(field)).inc()

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class LatencyMiddleware:
    """Pure ASGI middleware timing each HTTP request (streams pass through untouched)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            # The route template, never the raw path: paths would be unbounded labels.
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_seconds.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )
