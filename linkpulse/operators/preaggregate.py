"""Per-batch pre-aggregation: decoded events -> partial accumulators per (series, pane).

Per-event Python work is the bottleneck of the whole dataflow, so the registry
is compiled once into one small closure per (event class, metric); a batch is a
single loop that updates accumulators in a dict keyed by plain tuples, and the
series-key strings are built once per distinct key at the end of the batch.
Events go into 10 s panes (see ``windows``), never into each window.

``PreAggregator`` adds the partition's watermark: events older than it at the
start of the batch are counted in ``late_events`` (in the pane of the newest
event time seen, which is still open), and those too old for any window to be
revised are dropped from the partials, never silently: ``PaneBatch.dropped``.

>>> from datetime import UTC, datetime
>>> from linkpulse.schemas import decode_event
>>> ev = decode_event(b'{"type": "order_placed", "event_id": "e1", "tenant": "acme",'
...     b' "event_time": "2026-11-24T10:00:05Z", "user_id": "u1", "seller_id": "s1",'
...     b' "amount": 20.0, "currency": "USD", "properties": {"order_id": "o1"}}')
>>> plan = compile_plan(REGISTRY)
>>> batch = preaggregate([ev], plan, pane_s=10)
>>> sorted(k for k, _ in batch.partials)[:3]
['acme|active_users|', 'acme|conversion_rate|', 'acme|order_value|']
>>> batch.partials[("acme|orders|seller_id=s1", 1795514400)].count
1
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from linkpulse.operators.accumulators import (
    Accumulator,
    DistinctSpec,
    Moments,
    QuantileSpec,
    Ratio,
)
from linkpulse.operators.metrics import (
    LATE_EVENTS,
    REGISTRY,
    Metric,
    Registry,
    dim_value,
    series_key,
)
from linkpulse.schemas.events import EVENT_CLASS_BY_TYPE

PartialKey = tuple[str, int]
"""(series key ``tenant|metric|dims_key``, pane start in epoch seconds)."""
_RawKey = tuple[str, str, str, str, int]  # (metric, tenant, dim name, raw dim value, pane)
_Op = Callable[[Any, int, dict[Any, Any]], None]


@dataclass
class PaneBatch:
    """What one batch of events contributes: partials plus bookkeeping for the watermark."""

    partials: dict[PartialKey, Accumulator] = field(default_factory=dict)
    max_event_time: float = -math.inf
    events: int = 0
    late: int = 0
    dropped: int = 0


def route(key: str, workers: int) -> int:
    """Stable worker index for a series key (crc32, never ``hash()``).

    >>> route("acme|orders|", 4) == route("acme|orders|", 4)
    True
    """
    return zlib.crc32(key.encode()) % workers


def accumulator_factory(
    metric: Metric, distinct: DistinctSpec, quantiles: QuantileSpec
) -> Callable[[], Accumulator]:
    """A callable making an empty accumulator of the metric's family."""
    kind = metric.aggregation
    if kind == "moments":
        return Moments
    if kind == "ratio":
        return Ratio
    if kind == "distinct":
        return distinct.initialize
    return quantiles.initialize


@dataclass(frozen=True)
class Plan:
    """The registry compiled for the per-event loop (build with ``compile_plan``)."""

    registry: Registry
    ops: dict[type, tuple[_Op, ...]]
    distinct: DistinctSpec
    quantiles: QuantileSpec


def compile_plan(
    registry: Registry = REGISTRY,
    distinct: DistinctSpec | None = None,
    quantiles: QuantileSpec | None = None,
) -> Plan:
    """Compile ``registry`` into per-event-class closures."""
    distinct = distinct or DistinctSpec()
    quantiles = quantiles or QuantileSpec()
    ops: dict[type, list[_Op]] = {}
    for m in registry:
        new = accumulator_factory(m, distinct, quantiles)
        for t in m.events:
            ops.setdefault(EVENT_CLASS_BY_TYPE[t], []).append(_make_op(m, t, new))
    return Plan(registry, {k: tuple(v) for k, v in ops.items()}, distinct, quantiles)


def _counter() -> Moments:
    # A counter partial only ever sees 1.0, so min/max are set once here.
    m = Moments()
    m.min = m.max = 1.0
    return m


def _make_op(m: Metric, event_type: str, new: Callable[[], Accumulator]) -> _Op:
    """One closure updating every dimension set of metric ``m`` for one event of a type.

    Specialized per accumulator family and event type, so the per-event path
    is a few dict operations with no dispatch on strings.
    """
    name, where, measure = m.name, m.where, m.measure
    dims = tuple(d[0] for d in m.dimensions if d)

    if m.aggregation == "ratio":
        assert m.numerator is not None and m.denominator is not None
        terms = [
            (t.where, side)
            for t, side in ((m.numerator, 0), (m.denominator, 1))
            if event_type in t.events
        ]

        def ratio_op(ev: Any, pane: int, out: dict[Any, Any]) -> None:
            num = den = 0
            for w, side in terms:
                if w is None or w(ev):
                    if side:
                        den = 1
                    else:
                        num = 1
            if not (num or den):
                return
            k = (name, ev.tenant, "", "", pane)
            r = out.get(k)
            if r is None:
                r = out[k] = Ratio()
            r.num += num
            r.den += den
            for d in dims:
                v = getattr(ev, d)
                if v is not None:
                    k = (name, ev.tenant, d, v, pane)
                    r = out.get(k)
                    if r is None:
                        r = out[k] = Ratio()
                    r.num += num
                    r.den += den

        return ratio_op

    if m.aggregation == "moments" and measure is None:

        def count_op(ev: Any, pane: int, out: dict[Any, Any]) -> None:
            if where is not None and not where(ev):
                return
            k = (name, ev.tenant, "", "", pane)
            c = out.get(k)
            if c is None:
                c = out[k] = _counter()
            c.count += 1
            c.sum += 1.0
            for d in dims:
                v = getattr(ev, d)
                if v is not None:
                    k = (name, ev.tenant, d, v, pane)
                    c = out.get(k)
                    if c is None:
                        c = out[k] = _counter()
                    c.count += 1
                    c.sum += 1.0

        return count_op

    assert measure is not None

    def measure_op(ev: Any, pane: int, out: dict[Any, Any]) -> None:
        if where is not None and not where(ev):
            return
        x = measure(ev)
        if x is None:
            return
        k = (name, ev.tenant, "", "", pane)
        a = out.get(k)
        if a is None:
            a = out[k] = new()
        a.add(x)
        for d in dims:
            v = getattr(ev, d)
            if v is not None:
                k = (name, ev.tenant, d, v, pane)
                a = out.get(k)
                if a is None:
                    a = out[k] = new()
                a.add(x)

    return measure_op


def preaggregate(
    events: Iterable[Any],
    plan: Plan,
    pane_s: int = 10,
    late_before: float = -math.inf,
    drop_before: float = -math.inf,
    late_pane: int | None = None,
) -> PaneBatch:
    """Fold a batch of decoded events into partials keyed by (series key, pane start).

    Events with ``event_time < late_before`` are counted as late (in
    ``late_events`` at ``late_pane``, default the pane of the batch's newest
    event); those before ``drop_before`` are counted but not aggregated.
    """
    ops = plan.ops
    raw: dict[Any, Any] = {}
    late: dict[str, int] = {}
    max_t = -math.inf
    n = dropped = 0
    for ev in events:
        n += 1
        t = ev.event_time.timestamp()
        if t > max_t:
            max_t = t
        if t < late_before:
            late[ev.tenant] = late.get(ev.tenant, 0) + 1
            if t < drop_before:
                dropped += 1
                continue
        pane = int(t // pane_s) * pane_s
        for op in ops.get(type(ev), ()):
            op(ev, pane, raw)
    batch = PaneBatch(max_event_time=max_t, events=n, late=sum(late.values()), dropped=dropped)
    names: dict[tuple[str, str, str, str], str] = {}
    parts = batch.partials
    for (metric, tenant, dim, value, pane), acc in raw.items():
        nk = (metric, tenant, dim, value)
        skey = names.get(nk)
        if skey is None:
            dk = f"{dim}={_escape(value)}" if dim else ""
            skey = names[nk] = series_key(tenant, metric, dk)
        parts[(skey, pane)] = acc
    if late and LATE_EVENTS in plan.registry:
        if late_pane is None:
            late_pane = int(max_t // pane_s) * pane_s
        for tenant, count in late.items():
            m = Moments()
            m.count, m.sum, m.min, m.max = count, float(count), 1.0, 1.0
            parts[(series_key(tenant, LATE_EVENTS, ""), late_pane)] = m
    return batch


def _escape(value: str) -> str:
    # Same escaping as metrics.dims_key, skipped for the common safe ids.
    return value if value.isalnum() else dim_value(value)


def merge_partials(
    into: dict[PartialKey, Accumulator], more: Mapping[PartialKey, Accumulator]
) -> dict[PartialKey, Accumulator]:
    """Merge ``more`` into ``into`` (adopting objects it lacks) and return ``into``."""
    for k, acc in more.items():
        mine = into.get(k)
        if mine is None:
            into[k] = acc
        else:
            mine.merge(acc)
    return into


def split_by_route(
    partials: Mapping[PartialKey, Accumulator], workers: int
) -> list[dict[PartialKey, Accumulator]]:
    """Partition partials by ``route(series key)`` for ``workers`` downstream aggregators."""
    out: list[dict[PartialKey, Accumulator]] = [{} for _ in range(workers)]
    for k, acc in partials.items():
        out[route(k[0], workers)][k] = acc
    return out
