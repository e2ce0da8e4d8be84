"""Per-batch pre-aggregation: decoded events -> partial accumulators per (series, pane).

Per-event Python work is the bottleneck of the whole dataflow, so the registry
is compiled once into one small closure per (event class, metric); a batch is
one loop that groups events by (class, tenant, pane) with a single dict
operation each, then each metric folds whole groups (list comprehensions,
``Counter``) into accumulators keyed by plain tuples, and the series-key
strings are built once per distinct key at the end of the batch. Events go
into 10 s panes (see ``windows``), never into each window.

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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
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
_Op = Callable[[list[Any], str, int, dict[Any, Any]], None]


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


def _make_op(m: Metric, event_type: str, new: Callable[[], Accumulator]) -> _Op:
    """One closure folding a group of events (one type, tenant and pane) into metric ``m``.

    Specialized per accumulator family and event type; the work per event is
    a few C-level passes (list comprehensions, ``Counter``), so the cost of a
    metric is paid per group, not per event.
    """
    name, where, measure = m.name, m.where, m.measure
    dims = tuple((d[0], attrgetter(d[0])) for d in m.dimensions if d)

    if m.aggregation == "ratio":
        assert m.numerator is not None and m.denominator is not None
        sides = [(event_type in t.events, t.where) for t in (m.numerator, m.denominator)]

        def ratio_op(evs: list[Any], tenant: str, pane: int, out: dict[Any, Any]) -> None:
            num, den = (
                (evs if w is None else [e for e in evs if w(e)]) if active else []
                for active, w in sides
            )
            if not (num or den):
                return
            _ratio(out, (name, tenant, "", "", pane), len(num), len(den))
            for d, get in dims:
                nums, dens = Counter(map(get, num)), Counter(map(get, den))
                for v in nums.keys() | dens.keys():
                    if v is not None:
                        _ratio(out, (name, tenant, d, v, pane), nums[v], dens[v])

        return ratio_op

    if m.aggregation == "moments" and measure is None:

        def count_op(evs: list[Any], tenant: str, pane: int, out: dict[Any, Any]) -> None:
            sel = evs if where is None else [e for e in evs if where(e)]
            if not sel:
                return
            _count(out, (name, tenant, "", "", pane), len(sel))
            for d, get in dims:
                for v, n in Counter(map(get, sel)).items():
                    if v is not None:
                        _count(out, (name, tenant, d, v, pane), n)

        return count_op

    assert measure is not None

    def measure_op(evs: list[Any], tenant: str, pane: int, out: dict[Any, Any]) -> None:
        sel = evs if where is None else [e for e in evs if where(e)]
        xs = list(map(measure, sel))
        _extend(out, (name, tenant, "", "", pane), [x for x in xs if x is not None], new)
        for d, get in dims:
            per: dict[str, list[Any]] = {}
            for v, x in zip(map(get, sel), xs, strict=True):
                if v is not None and x is not None:
                    group = per.get(v)
                    if group is None:
                        per[v] = [x]
                    else:
                        group.append(x)
            for v, group in per.items():
                _extend(out, (name, tenant, d, v, pane), group, new)

    return measure_op


def _count(out: dict[Any, Any], k: _RawKey, n: int) -> None:
    c = out.get(k)
    if c is None:
        c = out[k] = Moments()
        c.min = c.max = 1.0  # a counter only ever sees 1.0
    c.count += n
    c.sum += n


def _ratio(out: dict[Any, Any], k: _RawKey, num: int, den: int) -> None:
    r = out.get(k)
    if r is None:
        r = out[k] = Ratio()
    r.num += num
    r.den += den


def _extend(out: dict[Any, Any], k: _RawKey, xs: list[Any], new: Callable[[], Any]) -> None:
    if not xs:
        return
    a = out.get(k)
    if a is None:
        a = out[k] = new()
    a.extend(xs)


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
    late: dict[str, int] = {}
    max_t = -math.inf
    n = dropped = 0
    # One dict operation per event: group by (class, tenant, pane); metrics fold groups.
    groups: dict[tuple[type, str, int], list[Any]] = {}
    ev: Any = None
    try:
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
            k = (type(ev), ev.tenant, int(t // pane_s) * pane_s)
            group = groups.get(k)
            if group is None:
                groups[k] = [ev]
            else:
                group.append(ev)
    except AttributeError as e:
        # the check costs nothing on the happy path: only a bad batch pays for it
        msg = f"events: expected decoded linkpulse events (BaseEvent), got {type(ev).__name__}"
        raise TypeError(msg) from e
    raw: dict[Any, Any] = {}
    for (cls, tenant, pane), evs in groups.items():
        for op in ops.get(cls, ()):
            op(evs, tenant, pane, raw)
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
