"""What a stream client asked for, cut down to what its principal may see.

Pure logic (no NATS, no HTTP): an ``Update`` is one message of a live
channel, with the attributes scope and filters look at; a ``StreamFilter``
decides, per update, whether a client gets it; ``scoped_filter`` builds one
from a principal and the query's filters, refusing (``FilterError``, which
becomes problem+json) what is unknown or out of scope. Event ids are
``<kind>-<stream sequence>``.

>>> from linkpulse.api.auth.roles import Principal, Role
>>> seller = Principal(id="k", role=Role.SELLER, tenant="acme", seller="s1")
>>> f = scoped_filter(seller, "metrics", metric="gmv")
>>> f.matches(Update(7, "acme", "s1", "gmv", "1m", b"{}")), f.matches(
...     Update(8, "acme", None, "gmv", "1m", b"{}"))
(True, False)
>>> parse_event_id("metrics", "metrics-41"), format_event_id("metrics", 41)
(41, 'metrics-41')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from linkpulse.api.auth.roles import Principal, Role
from linkpulse.bus.subjects import window_token
from linkpulse.operators.metrics import REGISTRY, parse_window_series_key
from linkpulse.operators.windows import DEFAULT_WINDOWS
from linkpulse.schemas.outputs import MetricWindow

__all__ = [
    "EVENT_NAMES",
    "FilterError",
    "StreamFilter",
    "Update",
    "format_event_id",
    "parse_event_id",
    "parse_update",
    "scoped_filter",
    "sse_frame",
]

METRIC_NAMES = frozenset(m.name for m in REGISTRY)
WINDOW_NAMES = frozenset(w.name for w in DEFAULT_WINDOWS)
_ID = re.compile(r"^(?P<kind>[a-z]+)-(?P<seq>\d{1,19})$")
_window_decoder = msgspec.json.Decoder(MetricWindow)


class FilterError(ValueError):
    """A filter or position the client sent is unknown or out of its scope."""

    def __init__(self, status: int, field: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.field = field
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Update:
    """One message of a channel: its stream sequence, scope attributes and JSON bytes."""

    seq: int
    tenant: str
    seller: str | None
    metric: str | None
    window: str | None
    data: bytes
    frame: bytes = b""  # the SSE frame, encoded once for every client (see sse_frame)


def parse_update(kind: str, tenant: str, seq: int, data: bytes) -> Update:
    """The ``Update`` of a message (ValueError if its payload is unusable).

    A window update carries its seller in ``dimensions``; an anomaly or alert
    in its series key (``tenant|metric|seller_id=...|window``).

    >>> u = parse_update("alerts", "acme", 3, b'{"series": "acme|orders|seller_id=s1|1m"}')
    >>> (u.seller, u.metric, u.window)
    ('s1', 'orders', '1m')
    >>> parse_update("anomalies", "acme", 4, b'{"series": "acme|gmv||1m"}').metric
    'gmv'
    """
    if kind == "metrics":
        try:
            w = _window_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            msg = f"not a MetricWindow: {e}"
            raise ValueError(msg) from e
        seller = w.dimensions.get("seller_id")
        return Update(seq, w.tenant, seller, w.metric, w.window, data, sse_frame(kind, seq, data))
    try:
        obj: Any = msgspec.json.decode(data)
    except msgspec.DecodeError as e:
        msg = f"not JSON: {e}"
        raise ValueError(msg) from e
    metric = seller = window = None
    series = obj.get("series") if isinstance(obj, dict) else None
    if isinstance(series, str):
        try:
            _, metric, dims, window = parse_window_series_key(series)
            seller = dims.get("seller_id")
        except ValueError:
            pass  # a series key we can't read: tenant-wide for scope (sellers don't see it)
    return Update(seq, tenant, seller, metric, window, data, sse_frame(kind, seq, data))


EVENT_NAMES = {"metrics": "metric", "anomalies": "anomaly", "alerts": "alert"}


def sse_frame(kind: str, seq: int, data: bytes) -> bytes:
    """The SSE frame of one update (id, event, data; one data line per line of JSON).

    >>> sse_frame("metrics", 7, b'{"a": 1}')
    b'id: metrics-7\\r\\nevent: metric\\r\\ndata: {"a": 1}\\r\\n\\r\\n'
    """
    lines = b"".join(b"data: " + line + b"\r\n" for line in data.splitlines() or [b""])
    head = f"id: {format_event_id(kind, seq)}\r\nevent: {EVENT_NAMES[kind]}\r\n".encode()
    return head + lines + b"\r\n"


def format_event_id(kind: str, seq: int) -> str:
    """The SSE id naming position ``seq`` of channel ``kind``."""
    return f"{kind}-{seq}"


def parse_event_id(kind: str, text: str) -> int:
    """The sequence a ``Last-Event-ID`` names; 400 if it is not one of this channel's ids."""
    m = _ID.match(text.strip())
    if m is None or m["kind"] != kind:
        detail = (
            f"Last-Event-ID {text[:80]!r} is not an id of this stream: expected "
            f"{kind}-<sequence>, as sent in the id: field of its events"
        )
        raise FilterError(400, "Last-Event-ID", detail)
    return int(m["seq"])


@dataclass(frozen=True)
class StreamFilter:
    """Which updates of one channel a client receives (scope and filters combined)."""

    kind: str
    tenant: str | None  # None: every tenant (admins only)
    seller: str | None = None
    metric: str | None = None
    window: str | None = None

    def matches(self, u: Update) -> bool:
        """Whether update ``u`` goes to this client."""
        return (
            (self.tenant is None or u.tenant == self.tenant)
            and (self.seller is None or u.seller == self.seller)
            and (self.metric is None or u.metric == self.metric)
            and (self.window is None or u.window == self.window)
        )

    def subject(self, prefix: str) -> str:
        """The narrowest subject holding every update this filter matches (for replay).

        >>> StreamFilter("metrics", "acme", window="5m/10s").subject("lp")
        'lp.metrics.*.acme.5m_10s'
        """
        tenant = self.tenant or "*"
        if self.kind == "metrics":
            window = window_token(self.window) if self.window else "*"
            return f"{prefix}.metrics.{self.metric or '*'}.{tenant}.{window}"
        return f"{prefix}.{self.kind}.{tenant}"

    def describe(self) -> dict[str, str]:
        """The filter as a dict (for the audit log's scope)."""
        return {k: v for k, v in vars(self).items() if v is not None}


def scoped_filter(
    principal: Principal,
    kind: str,
    *,
    tenant: str | None = None,
    seller: str | None = None,
    metric: str | None = None,
    window: str | None = None,
) -> StreamFilter:
    """The filter for ``principal`` asking for these filters; ``FilterError`` if refused."""
    if metric is not None and metric not in METRIC_NAMES:
        known = ", ".join(sorted(METRIC_NAMES))
        raise FilterError(400, "metric", f"unknown metric {metric!r}; known metrics: {known}")
    if window is not None and (kind != "metrics" or window not in WINDOW_NAMES):
        known = ", ".join(w.name for w in DEFAULT_WINDOWS)
        detail = (
            f"unknown window {window!r}; known windows: {known}"
            if kind == "metrics"
            else f"the {kind} stream has no window filter"
        )
        raise FilterError(400, "window", detail)
    if principal.all_tenants:
        scope_tenant = tenant
    else:
        if tenant is not None and tenant != principal.tenant:
            detail = f"principal {principal.id} may only read tenant {principal.tenant!r}"
            raise FilterError(403, "tenant", detail)
        scope_tenant = principal.tenant
    if principal.role is Role.SELLER:
        if seller is not None and seller != principal.seller:
            detail = f"principal {principal.id} may only read seller {principal.seller!r}"
            raise FilterError(403, "seller", detail)
        seller = principal.seller
    return StreamFilter(kind, scope_tenant, seller, metric, window)
