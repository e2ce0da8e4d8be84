"""Backfill to 1-minute series: simulated traffic through the project's own window operators.

What ``linkpulse eval anomalies`` scores: the simulator generates the days
of traffic (with labeled anomalies), ``linkpulse.operators.MetricsPipeline``
computes the final 1-minute windows exactly as the flow does, and the values
are laid out as one dense list per series (``None`` where the series had no
window that minute: the empty steps the flow reports too).

>>> from datetime import UTC, datetime
>>> start = datetime(2026, 11, 16, tzinfo=UTC).timestamp()
>>> data = backfill(BackfillConfig(start=start, minutes=30, rate=5.0, seed=1, tenants=1,
...                                sellers=5))
>>> len(data.series["acme|page_views||1m"]), data.minutes
(30, 30)
>>> sum(v or 0 for v in data.series["acme|page_views||1m"]) > 100
True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from linkpulse.operators import REGISTRY, MetricsConfig, Registry
from linkpulse.schemas.events import BaseEvent
from linkpulse.schemas.outputs import MetricWindow
from linkpulse.simulator.anomalies import SELLER_KINDS, Anomaly
from linkpulse.simulator.generator import TrafficConfig, generate
from linkpulse.simulator.model import MarketConfig, Marketplace, build_marketplace

# The metrics the evaluation scores (the ones the detectors watch).
EVAL_METRICS = ("orders", "gmv", "payment_failure_rate", "refunds", "page_views", "active_users")
_BATCH = 5000


@dataclass(frozen=True)
class BackfillConfig:
    """One simulated backfill: ``minutes`` of traffic from Unix time ``start`` (minute-aligned)."""

    start: float
    minutes: int
    rate: float = 10.0
    seed: int = 42
    tenants: int = 3
    sellers: int = 50
    metrics: Sequence[str] = EVAL_METRICS
    anomalies: tuple[Anomaly, ...] = ()

    def __post_init__(self) -> None:
        if self.start % 60 != 0:
            msg = f"start must be on a whole minute, got {self.start!r}"
            raise ValueError(msg)
        if self.minutes < 1:
            msg = f"minutes must be >= 1, got {self.minutes!r}"
            raise ValueError(msg)
        unknown = [m for m in self.metrics if m not in REGISTRY]
        if unknown:
            msg = f"metrics: unknown {unknown}; known: {', '.join(m.name for m in REGISTRY)}"
            raise ValueError(msg)

    @property
    def traffic(self) -> TrafficConfig:
        market = MarketConfig(tenants=self.tenants, sellers=self.sellers, seed=self.seed)
        return TrafficConfig(
            rate=self.rate, start=self.start, duration=self.minutes * 60.0, seed=self.seed,
            market=market,
        )  # fmt: skip


@dataclass
class Backfill:
    """Dense 1-minute series by series key (``tenant|metric|dims_key|1m``), and the labels."""

    start: float
    minutes: int
    series: dict[str, list[float | None]] = field(default_factory=dict)
    # per ratio series: each minute's trials (the denominator, MetricWindow.count)
    trials: dict[str, list[float | None]] = field(default_factory=dict)
    anomalies: tuple[Anomaly, ...] = ()
    events: int = 0


def backfill(cfg: BackfillConfig) -> Backfill:
    """Generate ``cfg``'s traffic and window it with the metric operators (see the module)."""
    traffic = cfg.traffic
    market = build_marketplace(traffic.market)
    registry = Registry(tuple(m for m in REGISTRY if m.name in cfg.metrics))
    clock = [datetime.fromtimestamp(cfg.start, UTC)]
    pipeline = MetricsConfig(
        registry=registry,
        windows=("1m",),
        emit_interval_s=0.0,
        idle_timeout_s=None,
        now_getter=lambda: clock[0],
    ).build()
    out = Backfill(cfg.start, cfg.minutes, anomalies=cfg.anomalies)
    ratios = {m.name for m in registry if m.value == "ratio"}
    batch: list[BaseEvent] = []

    def collect(windows: Sequence[MetricWindow]) -> None:
        for w in windows:
            if not w.final or w.revision:
                continue
            i = int((w.window_start.timestamp() - cfg.start) // 60)
            if 0 <= i < cfg.minutes:
                values = out.series.get(w.series_key)
                if values is None:
                    values = out.series[w.series_key] = [None] * cfg.minutes
                values[i] = w.value
                if w.metric in ratios:
                    counts = out.trials.get(w.series_key)
                    if counts is None:
                        counts = out.trials[w.series_key] = [None] * cfg.minutes
                    counts[i] = float(w.count)

    # A batch never spans a minute boundary: one batch covering many minutes lost windows in
    # the aggregator (seen with a 6-metric registry), and the flow's batches are short too.
    minute_end = cfg.start + 60.0
    for ev in generate(traffic, market, cfg.anomalies):
        t = ev.event_time.timestamp()
        if batch and (t >= minute_end or len(batch) >= _BATCH):
            clock[0] = batch[-1].event_time
            collect(pipeline.process(batch))
            out.events += len(batch)
            batch = []
        if t >= minute_end:
            minute_end = (t // 60.0 + 1.0) * 60.0
        batch.append(ev)
    if batch:
        clock[0] = batch[-1].event_time
        collect(pipeline.process(batch))
        out.events += len(batch)
    collect(pipeline.close())
    return out


# (duration in minutes, magnitude) of each kind in the evaluation schedule: realistic sizes,
# long enough for the slow kinds to develop.
EVAL_SHAPES: Final = {
    "revenue_drop": (30, 0.6),
    "failure_spike": (15, 0.35),
    "traffic_surge": (20, 3.0),
    "refund_burst": (20, 0.6),
    "silent_stream": (15, 1.0),
    "gradual_drift": (240, 0.5),
    "seller_shift": (120, 0.8),
    "pattern_change": (720, 6.0),
}


def eval_schedule(
    seed: int, start: float, days: int, market: Marketplace, *, per_kind: int = 2,
    warmup_days: int = 3, kinds: Sequence[str] = tuple(EVAL_SHAPES),
) -> tuple[Anomaly, ...]:  # fmt: skip
    """``per_kind`` anomalies of every kind at seeded times after ``warmup_days``.

    No two anomalies of one tenant are closer than two hours, so each label is
    its own incident.

    >>> from linkpulse.simulator.model import MarketConfig, Marketplace, build_marketplace
    >>> m = build_marketplace(MarketConfig(tenants=3, sellers=10))
    >>> sched = eval_schedule(1, 0.0, 14, m)
    >>> len(sched), sorted({a.kind for a in sched}) == sorted(EVAL_SHAPES)
    (16, True)
    """
    if days <= warmup_days:
        msg = f"days must be more than the {warmup_days} warm-up days, got {days}"
        raise ValueError(msg)
    rng = random.Random(f"linkpulse-eval:{seed}")
    taken: dict[str, list[tuple[float, float]]] = {}
    out: list[Anomaly] = []
    lo, hi = start + warmup_days * 86400.0, start + days * 86400.0
    for kind in [k for k in kinds for _ in range(per_kind)]:
        minutes, magnitude = EVAL_SHAPES[kind]
        for _attempt in range(1000):
            tenant = market.tenants[rng.randrange(len(market.tenants))]
            begin = lo + rng.randrange(int((hi - lo) / 60) - minutes - 60) * 60.0
            end = begin + minutes * 60.0
            spans = taken.setdefault(tenant.slug, [])
            if all(end + 7200 <= s or begin >= e + 7200 for s, e in spans):
                break
        else:
            msg = f"cannot place {kind} without overlap in {days} days; use more days"
            raise ValueError(msg)
        spans.append((begin, end))
        seller = None
        if kind in SELLER_KINDS:
            seller = tenant.sellers[rng.randrange(min(3, len(tenant.sellers)))].seller_id
        event_type = "payment_settled" if kind == "silent_stream" else None
        out.append(Anomaly(kind, begin, end, tenant.slug, magnitude, seller, event_type))
    return tuple(sorted(out, key=lambda a: a.start))
