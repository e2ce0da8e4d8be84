"""Readable words for one alert: what, where, value against its band, and a link.

Every contact point says the same four things, so they are worded once here.

>>> from datetime import UTC, datetime
>>> t = datetime(2026, 11, 24, 10, 3, tzinfo=UTC)
>>> a = AlertChange(alert_id="f-1", fingerprint="f", rule="payment_failures", kind="anomaly",
...     tenant="acme", series="acme|payment_failure_rate|seller_id=s1|1m", state=AlertState.FIRING,
...     previous=AlertState.PENDING, at=t, active_at=t, value=0.97, observed=0.18, expected=0.02,
...     lower=0.0, upper=0.05, severity="critical",
...     labels={"alertname": "payment_failures", "metric": "payment_failure_rate",
...     "window": "1m", "seller_id": "s1"}, summary="Payment failures spiking")
>>> d = describe(a, "http://lp.local")
>>> d.what, d.where
('Payment failures spiking', 'tenant acme · payment_failure_rate (1m) · seller_id=s1')
>>> d.value
'0.18 (expected 0.02, band 0–0.05, score 0.97)'
>>> d.link
'http://lp.local/v1/alerts/f-1'
"""

from __future__ import annotations

import dataclasses

from linkpulse.alerts.types import AlertChange, AlertState

__all__ = ["Described", "describe", "number"]

# labels already said in "where" or "what"; the rest are the series' dimensions
_NAMED = {"alertname", "tenant", "metric", "window", "severity"}


def number(x: float | None) -> str:
    """A value in 4 significant digits (``-`` for none)."""
    if x is None:
        return "-"
    return f"{x:.4g}"


@dataclasses.dataclass(frozen=True)
class Described:
    """The words a receiver shows for one alert."""

    status: str  # FIRING, ACKNOWLEDGED, RESOLVED
    what: str
    where: str
    value: str
    link: str
    explanation: str


def describe(a: AlertChange, link_base: str = "") -> Described:
    """Words for alert ``a``; ``link_base`` is where the API is reached (the link's start)."""
    metric = a.labels.get("metric", a.series.split("|")[1] if "|" in a.series else a.series)
    window = a.labels.get("window", "")
    dims = [f"{k}={v}" for k, v in sorted(a.labels.items()) if k not in _NAMED]
    where = " · ".join([f"tenant {a.tenant}", f"{metric} ({window})" if window else metric, *dims])
    shown = a.observed if a.observed is not None else a.value
    parts = []
    if a.expected is not None:
        parts.append(f"expected {number(a.expected)}")
    if a.lower is not None or a.upper is not None:
        parts.append(f"band {number(a.lower)}–{number(a.upper)}")
    if a.observed is not None and a.value is not None and a.value != a.observed:
        parts.append(f"score {number(a.value)}")
    value = number(shown) + (f" ({', '.join(parts)})" if parts else "")
    status = "RESOLVED" if a.state is AlertState.RESOLVED else a.state.value.upper()
    return Described(
        status=status,
        what=a.summary or a.labels.get("alertname", a.rule),
        where=where,
        value=value,
        link=f"{link_base.rstrip('/')}/v1/alerts/{a.alert_id}",
        explanation=a.explanation or a.description,
    )
