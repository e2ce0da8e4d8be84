"""NATS subject names: one place that knows how subjects are built.

Every subject starts with the configured prefix, so several deployments (or
tests) can share one NATS server. Events are partitioned by tenant and type so
a consumer can subscribe to exactly what it needs:

>>> event_subject("linkpulse", "acme", "order_placed")
'linkpulse.events.acme.order_placed'
>>> events_filter("linkpulse")
'linkpulse.events.>'
>>> dead_letter_subject("linkpulse", "http")
'linkpulse.deadletters.http'
>>> metric_subject("linkpulse", "gmv", "acme", "5m/10s")
'linkpulse.metrics.gmv.acme.5m_10s'
>>> anomaly_subject("linkpulse", "acme"), forecast_subject("linkpulse", "acme")
('linkpulse.anomalies.acme', 'linkpulse.forecasts.acme')
"""

from __future__ import annotations

import re

__all__ = [
    "anomaly_subject",
    "dead_letter_subject",
    "dead_letters_filter",
    "event_subject",
    "events_filter",
    "forecast_subject",
    "metric_subject",
    "window_token",
]

# One subject token: no separators, wildcards or whitespace (they would change
# which subscriptions match, or make the subject invalid). Matched whole
# (fullmatch): with match, "$" also matches before a trailing newline.
_TOKEN = re.compile(r"[^.*>\s]+")


def _token(name: str, value: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        msg = (
            f"{name} must be one NATS subject token (no '.', '*', '>' or whitespace, "
            f"not empty), got {value!r}"
        )
        raise ValueError(msg)
    return value


def _prefix(prefix: str) -> str:
    # The prefix may itself be dotted ("acme.prod"), but each part must be a token.
    for part in prefix.split("."):
        _token("subject prefix", part)
    return prefix


def window_token(window: str) -> str:
    """A window spec made subject-safe: ``"5m/10s"`` becomes ``"5m_10s"``.

    >>> window_token("1h")
    '1h'
    """
    return _token("window", window.replace("/", "_"))


def event_subject(prefix: str, tenant: str, event_type: str) -> str:
    """The subject one event is published on: ``{prefix}.events.{tenant}.{type}``."""
    return f"{_prefix(prefix)}.events.{_token('tenant', tenant)}.{_token('event type', event_type)}"


def events_filter(prefix: str) -> str:
    """The wildcard matching every event subject (the events stream's subjects)."""
    return f"{_prefix(prefix)}.events.>"


def dead_letter_subject(prefix: str, source: str = "ingest") -> str:
    """Where inputs that could not be used go, per source (``http``, ``nats``, ...)."""
    return f"{_prefix(prefix)}.deadletters.{_token('dead-letter source', source)}"


def dead_letters_filter(prefix: str) -> str:
    """The wildcard matching every dead-letter subject (the DLQ stream's subjects)."""
    return f"{_prefix(prefix)}.deadletters.>"


def metric_subject(prefix: str, metric: str, tenant: str, window: str) -> str:
    """Where a window aggregate is published: ``{prefix}.metrics.{metric}.{tenant}.{window}``."""
    return (
        f"{_prefix(prefix)}.metrics.{_token('metric', metric)}."
        f"{_token('tenant', tenant)}.{window_token(window)}"
    )


def anomaly_subject(prefix: str, tenant: str) -> str:
    """Where a tenant's anomaly scores are published: ``{prefix}.anomalies.{tenant}``."""
    return f"{_prefix(prefix)}.anomalies.{_token('tenant', tenant)}"


def forecast_subject(prefix: str, tenant: str) -> str:
    """Where a tenant's forecasts are published: ``{prefix}.forecasts.{tenant}``."""
    return f"{_prefix(prefix)}.forecasts.{_token('tenant', tenant)}"
