"""The declarative metric registry: every live metric is one ``Metric`` entry.

A metric says which event types feed it, an optional filter, the value
expression (what to aggregate), its dimension sets (``()`` = per tenant,
``("seller_id",)`` = per tenant and seller) and how ``MetricWindow.value`` is
derived (``count``, ``sum``, ``mean``, ``min``, ``max``, ``distinct``, ``p50``,
``p95``, ``p99`` or ``ratio``). The aggregation family follows from ``value``.
Adding a metric is adding an entry here; no operator changes.

>>> m = REGISTRY.get("gmv")
>>> m.events, m.value, m.aggregation, m.dimensions
(('payment_settled',), 'sum', 'moments', ((), ('seller_id',)))
>>> series_key("acme", "gmv", dims_key({"seller_id": "s1"}))
'acme|gmv|seller_id=s1'
>>> parse_series_key("acme|gmv|seller_id=s1")
('acme', 'gmv', {'seller_id': 's1'})
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Final
from urllib.parse import quote, unquote

from linkpulse.schemas.events import EVENT_TYPES

LATE_EVENTS: Final = "late_events"
VALUE_KINDS: Final = {
    "count": "moments",
    "sum": "moments",
    "mean": "moments",
    "min": "moments",
    "max": "moments",
    "distinct": "distinct",
    "p50": "quantiles",
    "p95": "quantiles",
    "p99": "quantiles",
    "ratio": "ratio",
}
DIMENSION_FIELDS: Final = ("seller_id", "user_id", "currency")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

Predicate = Callable[[Any], bool]


def prop_equals(key: str, value: Any) -> Predicate:
    """Predicate: ``ev.properties[key] == value``."""
    return lambda ev: ev.properties.get(key) == value


@dataclass(frozen=True)
class Term:
    """One side of a ratio: events of these types (optionally filtered) count 1 each."""

    events: tuple[str, ...]
    where: Predicate | None = None

    def __post_init__(self) -> None:
        unknown = [t for t in self.events if t not in EVENT_TYPES]
        if not self.events or unknown:
            msg = f"a ratio term needs known event types, got {self.events}"
            raise ValueError(msg)


@dataclass(frozen=True)
class Metric:
    """One metric's definition (see the module docstring and ``docs/metrics.md``)."""

    name: str
    events: tuple[str, ...]
    value: str = "count"
    measure: Callable[[Any], Any] | None = None
    where: Predicate | None = None
    dimensions: tuple[tuple[str, ...], ...] = ((),)
    numerator: Term | None = None
    denominator: Term | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.numerator is not None and self.denominator is not None and not self.events:
            # a ratio is fed by the union of its terms' event types
            both = (*self.numerator.events, *self.denominator.events)
            object.__setattr__(self, "events", tuple(dict.fromkeys(both)))
        if not _NAME.match(self.name):
            msg = f"metric name must match {_NAME.pattern}, got {self.name!r}"
            raise ValueError(msg)
        if self.value not in VALUE_KINDS:
            msg = f"{self.name}: value must be one of {', '.join(VALUE_KINDS)}, got {self.value!r}"
            raise ValueError(msg)
        unknown = [t for t in self.events if t not in EVENT_TYPES]
        if unknown:
            msg = f"{self.name}: unknown event types {unknown}; known: {', '.join(EVENT_TYPES)}"
            raise ValueError(msg)
        if not self.events and self.name != LATE_EVENTS:
            msg = f"{self.name}: events must name at least one event type"
            raise ValueError(msg)
        if not self.dimensions or () not in self.dimensions:
            msg = f"{self.name}: dimensions must include () so every metric exists per tenant"
            raise ValueError(msg)
        for dims in self.dimensions:
            bad = [d for d in dims if d not in DIMENSION_FIELDS]
            if bad or len(dims) > 1:
                msg = f"{self.name}: a dimension set is () or one of {DIMENSION_FIELDS}, got {dims}"
                raise ValueError(msg)
        is_ratio = self.value == "ratio"
        if is_ratio != (self.numerator is not None and self.denominator is not None):
            msg = f"{self.name}: value='ratio' needs numerator and denominator, and only it"
            raise ValueError(msg)
        if self.value in ("sum", "mean", "min", "max", "p50", "p95", "p99", "distinct") and (
            self.measure is None
        ):
            msg = f"{self.name}: value={self.value!r} needs a measure (the value expression)"
            raise ValueError(msg)

    @property
    def aggregation(self) -> str:
        """The accumulator family: ``moments``, ``distinct``, ``quantiles`` or ``ratio``."""
        return VALUE_KINDS[self.value]


@dataclass(frozen=True)
class Registry:
    """An ordered, validated set of metrics with unique names."""

    metrics: tuple[Metric, ...]
    _by_name: dict[str, Metric] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Metric] = {}
        for m in self.metrics:
            if m.name in by_name:
                msg = f"metric {m.name!r} is defined twice in the registry"
                raise ValueError(msg)
            by_name[m.name] = m
        object.__setattr__(self, "_by_name", by_name)

    def get(self, name: str) -> Metric:
        try:
            return self._by_name[name]
        except KeyError:
            msg = f"unknown metric {name!r}; known: {', '.join(self._by_name)}"
            raise KeyError(msg) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Metric]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def with_metrics(self, extra: Iterable[Metric]) -> Registry:
        """A new registry with ``extra`` appended."""
        return Registry((*self.metrics, *extra))


_amount = attrgetter("amount")
_user = attrgetter("user_id")
_SELLER: Final = ((), ("seller_id",))

REGISTRY: Final = Registry(
    (
        Metric("orders", ("order_placed",), dimensions=_SELLER, description="orders placed"),
        Metric(
            "gmv",
            ("payment_settled",),
            value="sum",
            measure=_amount,
            dimensions=_SELLER,
            description="gross merchandise value: sum of settled payment amounts",
        ),
        Metric(
            "payment_failure_rate",
            (),
            value="ratio",
            numerator=Term(("payment_failed",)),
            denominator=Term(("payment_settled", "payment_failed")),
            dimensions=_SELLER,
            description="failed / (settled + failed) payments",
        ),
        Metric("refunds", ("refund_issued",), dimensions=_SELLER, description="refunds issued"),
        Metric(
            "refund_amount",
            ("refund_issued",),
            value="sum",
            measure=_amount,
            dimensions=_SELLER,
            description="sum of refunded amounts",
        ),
        Metric("signups", ("user_signup",), description="new users"),
        Metric("page_views", ("page_view",), description="pages shown"),
        Metric(
            "conversion_rate",
            (),
            value="ratio",
            numerator=Term(("order_placed",)),
            denominator=Term(("page_view",), where=prop_equals("page", "product")),
            description="orders / product page views",
        ),
        Metric(
            "active_users",
            EVENT_TYPES,
            value="distinct",
            measure=_user,
            description="distinct user_id over any event (HyperLogLog)",
        ),
        Metric(
            "order_value",
            ("order_placed",),
            value="p50",
            measure=_amount,
            dimensions=_SELLER,
            description="order amounts: p50 (value), p95, p99 (DDSketch), mean, min, max",
        ),
        Metric(LATE_EVENTS, (), description="events that arrived after the watermark"),
    )
)


def dims_key(dimensions: dict[str, str]) -> str:
    """Canonical text of a dimension dict: ``k=v`` sorted, ``,``-joined, values %-escaped.

    >>> dims_key({}), dims_key({"seller_id": "a,b|c"})
    ('', 'seller_id=a%2Cb%7Cc')
    """
    return ",".join(f"{k}={quote(v, safe='')}" for k, v in sorted(dimensions.items()))


def dim_value(value: str) -> str:
    """One dimension value escaped as in ``dims_key`` (fast path for one dimension)."""
    return quote(value, safe="")


def series_key(tenant: str, metric: str, dims: str) -> str:
    """The routing key of one series across all its windows: ``tenant|metric|dims_key``."""
    return f"{tenant}|{metric}|{dims}"


def parse_series_key(key: str) -> tuple[str, str, dict[str, str]]:
    """``tenant|metric|dims_key`` -> (tenant, metric, dimensions)."""
    parts = key.split("|", 2)
    if len(parts) != 3:
        msg = f"series key must be 'tenant|metric|dims_key', got {key!r}"
        raise ValueError(msg)
    tenant, metric, dk = parts
    dims: dict[str, str] = {}
    if dk:
        for pair in dk.split(","):
            k, sep, v = pair.partition("=")
            if not sep:
                msg = f"dims_key must be k=v pairs joined by ',', got {dk!r}"
                raise ValueError(msg)
            dims[k] = unquote(v)
    return tenant, metric, dims


def parse_window_series_key(key: str) -> tuple[str, str, dict[str, str], str]:
    """``tenant|metric|dims_key|window`` (``MetricWindow.series_key``) -> its four parts.

    Anomaly scores and alerts name their series this way.

    >>> parse_window_series_key("acme|gmv|seller_id=s-1|1m")
    ('acme', 'gmv', {'seller_id': 's-1'}, '1m')
    >>> parse_window_series_key("acme|orders||5m/10s")
    ('acme', 'orders', {}, '5m/10s')
    """
    head, sep, window = key.rpartition("|")
    if not sep or head.count("|") != 2:
        msg = f"series key must be 'tenant|metric|dims_key|window', got {key!r}"
        raise ValueError(msg)
    tenant, metric, dims = parse_series_key(head)
    return tenant, metric, dims, window
