"""Anomalies to inject: specs, parsing, resolution to absolute windows, labels.

A spec says what to break and when, relative to the run's start or at an
absolute time; resolving it against the run and the marketplace gives an
``Anomaly`` with fixed Unix-time bounds and targets, which the generator
applies and which is written to the labels file so detection can be scored.

>>> spec = parse_anomaly("failure_spike@10m+5m:globex=0.4")
>>> spec.kind, spec.start, spec.duration, spec.tenant, spec.magnitude
('failure_spike', '10m', 300.0, 'globex', 0.4)
>>> parse_anomaly("meteor_strike")
Traceback (most recent call last):
...
ValueError: --anomaly: unknown kind 'meteor_strike'; expected one of revenue_drop, \
failure_spike, traffic_surge, refund_burst, silent_stream, gradual_drift, seller_shift, \
pattern_change
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from linkpulse.schemas.events import EVENT_TYPES
from linkpulse.simulator.model import Marketplace

KINDS: Final = (
    "revenue_drop",
    "failure_spike",
    "traffic_surge",
    "refund_burst",
    "silent_stream",
    "gradual_drift",
    "seller_shift",
    "pattern_change",
)
# What each kind does to its metric when no magnitude is given:
# revenue_drop: fraction of GMV lost; failure_spike: failure rate during the window;
# traffic_surge: page-view multiplier; refund_burst: share of the seller's orders refunded;
# gradual_drift: share of the tenant's traffic lost by the window's end (linear ramp);
# seller_shift: share of the seller's orders lost; pattern_change: hours the daily curve moves.
DEFAULT_MAGNITUDE: Final = {
    "revenue_drop": 0.6,
    "failure_spike": 0.35,
    "traffic_surge": 6.0,
    "refund_burst": 0.6,
    "silent_stream": 1.0,
    "gradual_drift": 0.5,
    "seller_shift": 0.8,
    "pattern_change": 6.0,
}
# The metric each kind moves; counts are named "<event type>_count".
METRIC: Final = {
    "revenue_drop": "gmv",
    "failure_spike": "payment_failure_rate",
    "traffic_surge": "page_view_count",
    "refund_burst": "refund_issued_count",
    "gradual_drift": "page_view_count",
    "seller_shift": "order_placed_count",
    "pattern_change": "page_view_count",
}
# Kinds whose target is ``tenant/seller_id`` (the tenant's biggest seller by default).
SELLER_KINDS: Final = ("refund_burst", "seller_shift")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# The window's duration needs a unit, which tells it apart from an ISO start's "+00:00".
_SPEC = re.compile(
    r"^(?P<kind>[a-z_]+)"
    r"(?:@(?P<when>.+?\+(?:\d+(?:\.\d+)?[smhd])+)(?=[:=]|$))?"
    r"(?::(?P<target>[^=]+))?(?:=(?P<mag>.+))?$"
)


def parse_duration(text: str, option: str = "--duration") -> float:
    """Seconds in '90', '45s', '10m', '1h30m' or '2d'; ValueError naming ``option``.

    >>> parse_duration("1h30m"), parse_duration("90")
    (5400.0, 90.0)
    >>> parse_duration("soon")
    Traceback (most recent call last):
    ...
    ValueError: --duration: expected a duration like 90, 45s, 10m, 1h30m or 2d, got 'soon'
    """
    s = text.strip().lower()
    try:
        seconds = float(s)
    except ValueError:
        parts = _DURATION_PART.findall(s)
        if not parts or "".join(n + u for n, u in parts) != s:
            msg = f"{option}: expected a duration like 90, 45s, 10m, 1h30m or 2d, got {text!r}"
            raise ValueError(msg) from None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if seconds <= 0:
        msg = f"{option} must be > 0, got {text!r}"
        raise ValueError(msg)
    return seconds


def parse_time(text: str, option: str = "--start") -> datetime:
    """An aware UTC datetime from ISO 8601; a time without an offset is taken as UTC.

    >>> parse_time("2026-11-20T08:00:00Z").isoformat()
    '2026-11-20T08:00:00+00:00'
    """
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        msg = f"{option}: expected an ISO 8601 time like 2026-11-20T08:00:00Z, got {text!r}"
        raise ValueError(msg) from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


@dataclass(frozen=True)
class AnomalySpec:
    """What to inject; ``start`` is an offset ('10m') or ISO time, None for the default."""

    kind: str
    start: str | None = None
    duration: float | None = None
    tenant: str | None = None
    seller_id: str | None = None
    event_type: str | None = None
    magnitude: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            msg = f"--anomaly: unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}"
            raise ValueError(msg)
        if self.event_type is not None and self.event_type not in EVENT_TYPES:
            msg = (
                f"--anomaly {self.kind}: unknown event type {self.event_type!r}; "
                f"expected one of {', '.join(EVENT_TYPES)}"
            )
            raise ValueError(msg)
        if self.magnitude is not None:
            _check_magnitude(self.kind, self.magnitude)


def _check_magnitude(kind: str, m: float) -> None:
    if kind == "traffic_surge":
        ok, want = m > 1.0, "> 1 (a multiplier)"
    elif kind == "pattern_change":
        ok, want = 0.0 < m < 24.0, "in (0, 24) (hours the daily curve moves)"
    else:
        ok, want = 0.0 < m <= 1.0, "in (0, 1] (a fraction)"
    if not ok:
        msg = f"--anomaly {kind}: magnitude must be {want}, got {m}"
        raise ValueError(msg)


def parse_anomaly(text: str) -> AnomalySpec:
    """Parse ``KIND[@START+DURATION][:TARGET][=MAGNITUDE]``.

    DURATION has a unit ('10m'). START is an offset from the run's start
    ('30m') or an ISO time. TARGET is a tenant, ``tenant/seller_id`` for
    refund_burst and seller_shift, ``tenant/event_type`` for silent_stream.

    >>> parse_anomaly("silent_stream@2026-11-20T08:00:00+00:00+15m:acme/payment_settled")
    ... # doctest: +NORMALIZE_WHITESPACE
    AnomalySpec(kind='silent_stream', start='2026-11-20T08:00:00+00:00', duration=900.0,
                tenant='acme', seller_id=None, event_type='payment_settled', magnitude=None)
    """
    m = _SPEC.match(text.strip())
    if not m:
        msg = (
            f"--anomaly: expected KIND[@START+DURATION][:TARGET][=MAGNITUDE] with a unit on "
            f"DURATION, e.g. failure_spike@30m+10m:acme=0.4, got {text!r}"
        )
        raise ValueError(msg)
    kind = m["kind"]
    start = duration = None
    if m["when"]:
        # An ISO start may itself contain '+' (an offset), so split on the last one.
        head, sep, tail = m["when"].rpartition("+")
        if not sep:
            msg = f"--anomaly {kind}: expected @START+DURATION, e.g. @30m+10m, got {m['when']!r}"
            raise ValueError(msg)
        start, duration = head, parse_duration(tail, f"--anomaly {kind} duration")
        _check_start(kind, start)
    tenant = seller = event_type = None
    if m["target"]:
        tenant, _, rest = m["target"].partition("/")
        if rest:
            if kind == "silent_stream":
                event_type = rest
            elif kind in SELLER_KINDS:
                seller = rest
            else:
                msg = f"--anomaly {kind}: target is a tenant only, got {m['target']!r}"
                raise ValueError(msg)
    magnitude = None
    if m["mag"]:
        try:
            magnitude = float(m["mag"])
        except ValueError:
            msg = f"--anomaly {kind}: magnitude must be a number, got {m['mag']!r}"
            raise ValueError(msg) from None
    return AnomalySpec(kind, start, duration, tenant or None, seller, event_type, magnitude)


def _check_start(kind: str, start: str) -> None:
    if "T" in start:
        parse_time(start, f"--anomaly {kind} start")
    else:
        offset = start.strip()
        if offset not in ("0", "0s", "0m"):
            parse_duration(offset, f"--anomaly {kind} start")


def load_anomaly_file(path: Path) -> list[AnomalySpec]:
    """Specs from a JSON list of objects with the AnomalySpec field names."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        msg = f"--anomalies: cannot read {path}: {e}"
        raise ValueError(msg) from e
    if not isinstance(raw, list):
        msg = f"--anomalies: {path} must hold a JSON list of objects"
        raise ValueError(msg)
    specs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "kind" not in item:
            msg = f"--anomalies: item {i} of {path} must be an object with a 'kind'"
            raise ValueError(msg)
        fields = dict(item)
        if isinstance(fields.get("duration"), str):
            fields["duration"] = parse_duration(fields["duration"], f"--anomalies item {i}")
        if fields.get("start") is not None:
            fields["start"] = str(fields["start"])
            _check_start(fields["kind"], fields["start"])
        try:
            specs.append(AnomalySpec(**fields))
        except TypeError as e:
            msg = f"--anomalies: item {i} of {path}: {e}"
            raise ValueError(msg) from e
    return specs


@dataclass(frozen=True)
class Anomaly:
    """A resolved anomaly: absolute window [start, end) in Unix seconds, fixed targets."""

    kind: str
    start: float
    end: float
    tenant: str
    magnitude: float
    seller_id: str | None = None
    event_type: str | None = None

    @property
    def metric(self) -> str:
        """The metric this anomaly moves, e.g. ``gmv`` or ``payment_settled_count``."""
        if self.kind == "silent_stream":
            return f"{self.event_type}_count"
        return METRIC[self.kind]

    def label(self) -> dict[str, Any]:
        """The labels-file entry: series ``tenant|metric|seller`` and the window in ISO."""
        return {
            "series": f"{self.tenant}|{self.metric}|{self.seller_id or ''}",
            "metric": self.metric,
            "tenant": self.tenant,
            "seller_id": self.seller_id,
            "event_type": self.event_type,
            "start": datetime.fromtimestamp(self.start, UTC).isoformat(),
            "end": datetime.fromtimestamp(self.end, UTC).isoformat(),
            "kind": self.kind,
            "magnitude": self.magnitude,
        }


def resolve(
    spec: AnomalySpec, run_start: float, run_duration: float | None, market: Marketplace
) -> Anomaly:
    """Fix the spec's window and targets for one run; defaults fit inside the run."""
    span = run_duration if run_duration is not None else 3600.0
    if spec.start is None:
        start = run_start + span * 0.5
    elif "T" in spec.start:
        start = parse_time(spec.start, f"--anomaly {spec.kind} start").timestamp()
    else:
        start = run_start + (0.0 if spec.start in ("0", "0s", "0m") else parse_duration(spec.start))
    duration = spec.duration if spec.duration is not None else min(600.0, span * 0.2)
    slug = spec.tenant or market.tenants[0].slug
    tenant = market.tenant(slug)
    if tenant is None:
        names = ", ".join(t.slug for t in market.tenants)
        msg = f"--anomaly {spec.kind}: unknown tenant {slug!r}; this run has {names}"
        raise ValueError(msg)
    seller_id = event_type = None
    if spec.kind in SELLER_KINDS:
        # By default the biggest seller, so the burst stands out from the seller's own noise.
        seller_id = spec.seller_id or tenant.sellers[0].seller_id
        if tenant.seller(seller_id) is None:
            msg = f"--anomaly {spec.kind}: tenant {slug!r} has no seller {seller_id!r}"
            raise ValueError(msg)
    if spec.kind == "silent_stream":
        event_type = spec.event_type or "payment_settled"
    magnitude = spec.magnitude if spec.magnitude is not None else DEFAULT_MAGNITUDE[spec.kind]
    end = start + duration
    if run_duration is not None:
        # A label for traffic that was never generated would count as a missed detection.
        run_end = run_start + run_duration
        if start >= run_end or end <= run_start:
            msg = (
                f"--anomaly {spec.kind}: window {_iso(start)} -> {_iso(end)} is outside the run "
                f"{_iso(run_start)} -> {_iso(run_end)}"
            )
            raise ValueError(msg)
        start, end = max(start, run_start), min(end, run_end)
    return Anomaly(spec.kind, start, end, slug, magnitude, seller_id, event_type)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def write_labels(path: Path, anomalies: list[Anomaly]) -> None:
    """Write the labels file (a JSON list), creating its folder; atomic via rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps([a.label() for a in anomalies], indent=2) + "\n")
    tmp.replace(path)
