"""The catalogue: every measure and dimension the query API can be asked for.

A measure is defined once, by kind and event types, and the compiler derives
its SQL for each source: on a rollup a count is ``sum(events)`` and a sum is
``sum(revenue)`` over the rows of its types; on raw events ``count(*)`` and
``sum(amount)``. A distinct count of users does not add up across rollup rows
(types, sellers, buckets), so ``active_users`` is read from ``users_1h`` (one
row per hour and user id: the distinct ids of any set of its rows are those of
the raw events behind them) or raw events; a ratio is the quotient of two
counts, computed after they are summed.
``late_events`` is known only to the flow, so it is read from its metric
windows. Nothing here is user input: names are checked against this table
before anything is compiled.

>>> MEASURES["gmv"].kind, MEASURES["gmv"].types
('sum', ('payment_settled',))
>>> MEASURES["active_users"].raw_only, MEASURES["late_events"].window_metric
(True, 'late_events')
>>> [d.name for d in DIMENSIONS.values() if d.max_grain_s == 3600]
['hour_of_day']
>>> catalog_body()["grains"]
['1m', '1h', '1d']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "DIMENSIONS",
    "GRAINS",
    "KPI_NAMES",
    "MEASURES",
    "Dimension",
    "Measure",
    "catalog_body",
]

Kind = Literal["count", "sum", "ratio", "distinct", "window"]


@dataclass(frozen=True)
class Measure:
    """One measure: a count or sum of events of ``types``, a ratio of two counts, or
    a distinct count of users (``types`` empty: every event type)."""

    name: str
    label: str
    unit: str  # currency, count, ratio, users
    kind: Kind
    description: str
    types: tuple[str, ...] = ()
    numerator: tuple[str, ...] = ()  # ratio: event types counted above the line
    denominator: tuple[str, ...] = ()  # ratio: event types counted below the line
    window_metric: str | None = None  # kind "window": the flow's metric name

    @property
    def raw_only(self) -> bool:
        """Distinct users: no ``events_*`` rollup row can be added to another (``users_1h``
        or raw events answer)."""
        return self.kind == "distinct"

    @property
    def value_type(self) -> str:
        """The JSON type of its values: ``int`` (counts) or ``float``."""
        return "int" if self.kind in ("count", "distinct") else "float"

    @property
    def all_types(self) -> tuple[str, ...]:
        """Every event type it reads (empty: all of them)."""
        return tuple(dict.fromkeys((*self.types, *self.numerator, *self.denominator)))


@dataclass(frozen=True)
class Dimension:
    """One group-by dimension; ``max_grain_s``: the coarsest rollup that still has it."""

    name: str
    label: str
    type: str  # text or int
    max_grain_s: int | None = None  # None: every source has it


_PAY = ("payment_settled", "payment_failed")
MEASURES: Final[dict[str, Measure]] = {
    m.name: m
    for m in (
        Measure("events", "Events", "count", "count", "events of every type"),
        Measure("orders", "Orders", "count", "count", "orders placed", ("order_placed",)),
        Measure(
            "gmv", "GMV", "currency", "sum", "sum of settled payment amounts", ("payment_settled",)
        ),
        Measure("page_views", "Page views", "count", "count", "pages shown", ("page_view",)),
        Measure("signups", "Sign-ups", "count", "count", "new users", ("user_signup",)),
        Measure("refunds", "Refunds", "count", "count", "refunds issued", ("refund_issued",)),
        Measure(
            "refund_amount",
            "Refunded",
            "currency",
            "sum",
            "sum of refunded amounts",
            ("refund_issued",),
        ),
        Measure("payments_failed", "Failed payments", "count", "count", "", ("payment_failed",)),
        Measure("payments_settled", "Settled payments", "count", "count", "", ("payment_settled",)),
        Measure(
            "payment_failure_rate",
            "Payment failure rate",
            "ratio",
            "ratio",
            "failed / (settled + failed) payments",
            numerator=("payment_failed",),
            denominator=_PAY,
        ),
        Measure(
            "conversion",
            "Conversion",
            "ratio",
            "ratio",
            "orders / page views (every page; the flow's conversion_rate counts product pages)",
            numerator=("order_placed",),
            denominator=("page_view",),
        ),
        Measure(
            "active_users",
            "Active users",
            "users",
            "distinct",
            "distinct user_id over events of any type (exact: users_1h, else raw events)",
        ),
        Measure(
            "late_events",
            "Late events",
            "count",
            "window",
            "events that reached the flow after its watermark (1-minute metric windows)",
            window_metric="late_events",
        ),
    )
}
# The headline numbers of /v1/kpis, in the order the dashboard shows them.
KPI_NAMES: Final = (
    "gmv",
    "orders",
    "conversion",
    "active_users",
    "payment_failure_rate",
    "refunds",
)

DIMENSIONS: Final[dict[str, Dimension]] = {
    d.name: d
    for d in (
        Dimension("seller_id", "Seller", "text"),
        Dimension("type", "Event type", "text"),
        Dimension("hour_of_day", "Hour of day (UTC, 0-23)", "int", 3600),
        Dimension("day_of_week", "Day of week (UTC, 0 = Sunday)", "int", 86400),
    )
}
GRAINS: Final = ("1m", "1h", "1d")


def catalog_body() -> dict[str, Any]:
    """The body of ``GET /v1/catalog``."""
    return {
        "measures": [
            {"name": m.name, "label": m.label, "unit": m.unit, "description": m.description}
            for m in MEASURES.values()
        ],
        "dimensions": [
            {"name": d.name, "label": d.label, "type": d.type} for d in DIMENSIONS.values()
        ],
        "grains": list(GRAINS),
    }
