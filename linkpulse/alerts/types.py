"""The records alerting passes around: one alert's state change, and its states.

``AlertChange`` is what the rule step emits each time an alert (one rule on
one series) changes state; the ``alerts`` table stores one row per change,
the alerts subject (``<prefix>.alerts.<tenant>``) carries it as JSON, and the
notifier's policy (``linkpulse.alerts.policy``) groups, dedups, silences and
inhibits them by their ``labels``.

Two ids: ``fingerprint`` names the alert (rule + labels, the same for every
incident of that rule on that series, like Alertmanager's); ``alert_id`` names
one *incident*: the fingerprint and the stream time it went pending, so a
second incident of the same series is a new alert (a new PagerDuty
``dedup_key``) and a replay gives the same ids.

>>> from datetime import UTC, datetime
>>> labels = {"alertname": "high_failures", "tenant": "acme", "severity": "critical"}
>>> fingerprint(labels)
'44cfadec0216ebd2'
>>> incident_id(fingerprint(labels), datetime(2026, 11, 24, 10, 3, tzinfo=UTC))
'44cfadec0216ebd2-1795514580'
>>> AlertState.FIRING.is_active, AlertState.RESOLVED.is_active
(True, False)
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from datetime import datetime

import msgspec

__all__ = ["AlertChange", "AlertState", "fingerprint", "incident_id"]


class AlertState(enum.StrEnum):
    """Where one alert is: inactive → pending → firing (→ acknowledged) → resolved.

    ``inactive`` is only ever emitted for a pending alert whose condition
    cleared before its ``for`` ran out (it never fired: nothing to resolve).
    """

    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"

    @property
    def is_active(self) -> bool:
        """Firing or acknowledged: an incident someone was (or will be) paged for."""
        return self in (AlertState.FIRING, AlertState.ACKNOWLEDGED)


class AlertChange(msgspec.Struct, frozen=True, kw_only=True):
    """One state change of one alert (one rule on one series), with its context.

    ``at`` is stream time (the end of the window, or the clock tick, that
    caused the change), never the wall clock. ``active_at`` is when the
    incident went pending, ``fired_at`` when it went firing (None before).
    ``value`` is what the rule looked at (the window's value, the anomaly
    score, the relative change, the seconds without data); ``observed`` the
    metric's own value when that differs (the window value behind a score).
    ``expected``/``lower``/``upper`` are the expected value and band
    (detector's or forecast's; for a threshold rule ``upper`` (or ``lower``)
    is the threshold). ``explanation`` is the detector's sentence when the
    rule reads scores. ``labels`` identify the alert (``alertname``,
    ``tenant``, ``metric``, ``window``, ``severity``, the series' dimensions
    and the rule's own labels); ``summary``/``description`` are the rule's
    templates rendered. ``revision`` counts re-evaluations caused by late
    data (0 for a first evaluation).
    """

    alert_id: str
    fingerprint: str
    rule: str
    kind: str
    tenant: str
    series: str
    state: AlertState
    previous: AlertState
    at: datetime
    active_at: datetime
    fired_at: datetime | None = None
    value: float | None = None
    observed: float | None = None
    expected: float | None = None
    lower: float | None = None
    upper: float | None = None
    severity: str = "warning"
    labels: dict[str, str] = {}
    summary: str = ""
    description: str = ""
    explanation: str = ""
    revision: int = 0

    @property
    def is_active(self) -> bool:
        """True while the incident is firing or acknowledged."""
        return self.state.is_active


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable 16-hex id of a label set (order-independent)."""
    h = hashlib.sha256()
    for k in sorted(labels):
        h.update(k.encode())
        h.update(b"\xff")
        h.update(labels[k].encode())
        h.update(b"\xfe")
    return h.hexdigest()[:16]


def incident_id(fp: str, active_at: datetime) -> str:
    """The id of the incident of alert ``fp`` that went pending at ``active_at``."""
    return f"{fp}-{int(active_at.timestamp())}"
