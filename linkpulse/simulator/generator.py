"""Pure traffic generation: seed + time range + rate -> time-ordered events.

Root actions arrive as a Poisson process whose rate follows the seasonality
curve; each schedules its events (page views, the order, its payment, maybe a
refund hours later) on a calendar queue, and events leave it in time order. All
randomness comes from one private ``random.Random(seed)``, so the same
config gives the same events, ids included.

>>> from datetime import UTC, datetime
>>> cfg = TrafficConfig(rate=50, start=datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp(),
...                     duration=60)
>>> events = list(generate(cfg))
>>> 1500 < len(events) < 4500, events[0].type, events[0].tenant
(True, 'page_view', 'acme')
>>> [e.event_id for e in events[:3]] == [e.event_id for e in list(generate(cfg))[:3]]
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from linkpulse.schemas.events import EVENT_CLASS_BY_TYPE, BaseEvent
from linkpulse.simulator import funnel as F
from linkpulse.simulator.anomalies import Anomaly
from linkpulse.simulator.model import (
    MarketConfig,
    Marketplace,
    build_marketplace,
    seasonal_multiplier,
)
from linkpulse.simulator.schedule import Schedule
from linkpulse.simulator.sessions import SessionWriter

BASE_FAILURE_RATE: Final = 0.025
"""The share of payments that fail in normal traffic (``--failure-rate``'s default)."""

# Warm-up before the run's start: two simulated minutes, at most ~200k discarded events.
WARMUP_S = 120.0
WARMUP_EVENTS = 200_000.0


@dataclass(frozen=True)
class TrafficConfig:
    """One run's traffic: mean ``rate`` events/s from Unix time ``start``.

    ``duration`` None runs forever (live mode). The rate is the mean before
    seasonality; over whole weeks the achieved mean equals it.

    >>> TrafficConfig(rate=-3, start=0.0, duration=None)
    Traceback (most recent call last):
    ...
    ValueError: --rate must be > 0, got -3
    """

    rate: float
    start: float
    duration: float | None
    seed: int = 42
    seasonality: bool = True
    failure_rate: float = BASE_FAILURE_RATE
    refund_rate: float = 0.03
    market: MarketConfig = field(default_factory=MarketConfig)

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            msg = f"--rate must be > 0, got {self.rate:g}"
            raise ValueError(msg)
        if self.duration is not None and not self.duration > 0:
            msg = f"--duration must be > 0 seconds, got {self.duration:g}"
            raise ValueError(msg)
        for name in ("failure_rate", "refund_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                msg = f"--{name.replace('_', '-')} must be in [0, 1), got {value:g}"
                raise ValueError(msg)

    @property
    def end(self) -> float:
        """Unix time where the run stops (inf in live mode)."""
        return math.inf if self.duration is None else self.start + self.duration


def generate(
    cfg: TrafficConfig,
    market: Marketplace | None = None,
    anomalies: Sequence[Anomaly] = (),
) -> Iterator[BaseEvent]:
    """Yield the run's events in event-time order; the marketplace is built from the seed."""
    if market is None:
        market = build_marketplace(cfg.market)
    return _Generator(cfg, market, anomalies).run()


class _Generator:
    """Root-arrival loop and the schedule; sessions are built by SessionWriter."""

    def __init__(self, cfg: TrafficConfig, market: Marketplace, anomalies: Sequence[Anomaly]):
        self._cfg = cfg
        self._market = market
        self._schedule: Schedule[BaseEvent] = Schedule()
        self._writer = SessionWriter(cfg, market, anomalies, self._schedule)
        self._anomalies = sorted(anomalies, key=lambda a: (a.start, a.kind, a.tenant))
        self._boundaries = sorted({a.start for a in anomalies} | {a.end for a in anomalies})
        self._silent: dict[tuple[str, type[BaseEvent]], list[tuple[float, float]]] = {}
        for a in anomalies:
            if a.kind == "silent_stream" and a.event_type is not None:
                key = (a.tenant, EVENT_CLASS_BY_TYPE[a.event_type])
                self._silent.setdefault(key, []).append((a.start, a.end))
        self._root_rate = cfg.rate / F.expected_events_per_root(cfg.failure_rate, cfg.refund_rate)
        # Traffic surge: extra browse-only sessions, `surge_frac` of the normal root rate.
        self._surge_frac = 0.0
        self._surge_cum: list[float] = []
        self._surge_tenants: list[int] = []
        self._bursting: set[int] = set()

    def _update_regime(self, t: float) -> None:
        """Recompute what the active anomalies change in the root process at time t."""
        tenants = self._market.tenants
        total_weight = self._market.tenant_cum[-1]
        self._surge_frac, self._surge_cum, self._surge_tenants = 0.0, [], []
        for i, a in enumerate(self._anomalies):
            active = a.start <= t < a.end
            if a.kind == "traffic_surge" and active:
                ti = next(j for j, ten in enumerate(tenants) if ten.slug == a.tenant)
                share = tenants[ti].weight / total_weight
                self._surge_frac += F.P_SESSION * share * (a.magnitude - 1.0)
                self._surge_cum.append(self._surge_frac)
                self._surge_tenants.append(ti)
            elif a.kind == "refund_burst":
                if active and i not in self._bursting:
                    self._bursting.add(i)
                    self._writer.start_refund_burst(a, t)
                elif not active:
                    self._bursting.discard(i)

    def run(self) -> Iterator[BaseEvent]:
        cfg, rng, writer = self._cfg, self._writer.rng, self._writer
        pop_bucket_before = self._schedule.pop_bucket_before
        end, first = cfg.end, cfg.start
        # Start sessions a little before `start` and drop what falls before it, so the
        # stream is in its steady state from the first second (sessions last minutes).
        t = first - min(WARMUP_S, WARMUP_EVENTS / cfg.rate)
        boundaries = [*self._boundaries, math.inf]
        b = 0
        season, season_until = 1.0, -math.inf
        silent = self._silent
        expovariate, random = rng.expovariate, rng.random
        while True:
            if t >= season_until:
                # The curve moves slowly: evaluating it once a simulated minute is enough.
                season = seasonal_multiplier(t) if cfg.seasonality else 1.0
                season_until = (t // 60.0 + 1.0) * 60.0
            rate = self._root_rate * season * (1.0 + self._surge_frac)
            t_next = t + expovariate(rate)
            # Seconds before floor(t_next) are complete: anything scheduled from now on
            # is at t_next or later.
            horizon = math.floor(t_next) if t_next < end else end
            while (items := pop_bucket_before(horizon)) is not None:
                for ts, _, ev in items:
                    if ts < first or ts >= end or (silent and _silenced(silent, ev, ts)):
                        continue
                    yield ev
            if t_next >= end:
                return
            t = t_next
            while t >= boundaries[b]:
                self._update_regime(t)
                b += 1
            u = random() * (1.0 + self._surge_frac)
            if u < 1.0:
                writer.root(t, u)
            else:
                k = _first_above(self._surge_cum, u - 1.0)
                writer.session(t, self._surge_tenants[k], buy=False)


def _first_above(cum: list[float], x: float) -> int:
    for i, c in enumerate(cum):
        if x < c:
            return i
    return len(cum) - 1


def _silenced(
    silent: dict[tuple[str, type[BaseEvent]], list[tuple[float, float]]], ev: BaseEvent, ts: float
) -> bool:
    windows = silent.get((ev.tenant, type(ev)))
    return windows is not None and any(s <= ts < e for s, e in windows)


def utc_from_ts(ts: float) -> datetime:
    """Aware UTC datetime from Unix seconds."""
    return datetime.fromtimestamp(ts, UTC)
