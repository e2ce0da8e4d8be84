"""Configuration and the two stateful steps of the live-metrics dataflow.

``MetricsConfig`` (frozen, validated) builds

* ``PreAggregator`` — one per input partition, before the keyed step: folds a
  batch of decoded events into pane partials and keeps the partition's
  watermark (late events are counted here);
* ``WindowAggregator`` — the keyed step: merges partials of the series routed
  to it (``preaggregate.route``) and emits ``MetricWindow`` updates;
* ``MetricsPipeline`` — both in one object, for one worker or for tests.

Every ``build*`` takes the ``resume_state`` (bytes) a previous ``snapshot()``
returned, so a Bytewax ``StatefulLogic`` wraps them directly.

>>> from datetime import UTC, datetime
>>> from linkpulse.schemas import decode_event
>>> clock = [datetime(2026, 11, 24, 10, 0, 30, tzinfo=UTC)]
>>> cfg = MetricsConfig(windows=("1m",), emit_interval_s=0, now_getter=lambda: clock[0])
>>> p = cfg.build()
>>> ev = decode_event(b'{"type": "user_signup", "event_id": "e1", "tenant": "acme",'
...     b' "event_time": "2026-11-24T10:00:20Z", "user_id": "u1"}')
>>> [(w.metric, w.value, w.final) for w in p.process([ev]) if w.metric == "signups"]
[('signups', 1.0, False)]
>>> clock[0] = datetime(2026, 11, 24, 10, 2, tzinfo=UTC)  # traffic stopped: idle advance
>>> [(w.metric, w.window, w.value, w.final) for w in p.tick() if w.metric == "signups"]
[('signups', '1m', 1.0, True)]
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from linkpulse.operators.accumulators import Accumulator, DistinctSpec, QuantileSpec
from linkpulse.operators.aggregator import WindowAggregator
from linkpulse.operators.metrics import REGISTRY, Registry
from linkpulse.operators.preaggregate import (
    PaneBatch,
    Plan,
    accumulator_factory,
    compile_plan,
    preaggregate,
)
from linkpulse.operators.watermark import Watermark
from linkpulse.operators.windows import WindowSpec, pane_of, pane_size, to_seconds
from linkpulse.schemas.outputs import MetricWindow


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class MetricsConfig:
    """Everything the metric operators need; validated on construction."""

    registry: Registry = REGISTRY
    windows: tuple[str, ...] = ("1m", "5m", "15m", "1h", "5m/10s", "15m/10s")
    dimension_windows: tuple[str, ...] | None = None  # None: the tumbling ones of `windows`
    allowed_lateness_s: float = 10.0
    idle_timeout_s: float | None = 5.0
    revision_horizon_s: float = 3600.0
    emit_interval_s: float = 1.0
    dimension_emit_interval_s: float = 10.0
    distinct: DistinctSpec = field(default_factory=DistinctSpec)
    quantiles: QuantileSpec = field(default_factory=QuantileSpec)
    now_getter: Callable[[], datetime] = utc_now

    def __post_init__(self) -> None:
        if not self.windows:
            msg = "windows must name at least one window, e.g. ('1m',)"
            raise ValueError(msg)
        _ = self.dimension_window_specs  # validates the subset
        names = [w.name for w in self.window_specs]
        if len(set(names)) != len(names):
            msg = f"windows must be distinct, got {list(self.windows)}"
            raise ValueError(msg)
        for name, value in (
            ("allowed_lateness_s", self.allowed_lateness_s),
            ("revision_horizon_s", self.revision_horizon_s),
            ("emit_interval_s", self.emit_interval_s),
            ("dimension_emit_interval_s", self.dimension_emit_interval_s),
        ):
            if not (value >= 0 and math.isfinite(value)):
                msg = f"{name} must be a finite number of seconds >= 0, got {value!r}"
                raise ValueError(msg)
        if self.idle_timeout_s is not None and not self.idle_timeout_s >= 0:
            msg = f"idle_timeout_s must be >= 0 or None, got {self.idle_timeout_s!r}"
            raise ValueError(msg)

    @cached_property
    def window_specs(self) -> tuple[WindowSpec, ...]:
        return tuple(WindowSpec.parse(w) for w in self.windows)

    @cached_property
    def dimension_window_specs(self) -> tuple[WindowSpec, ...]:
        if self.dimension_windows is None:
            return tuple(w for w in self.window_specs if not w.is_sliding)
        specs = tuple(WindowSpec.parse(w) for w in self.dimension_windows)
        extra = [w.name for w in specs if w not in self.window_specs]
        if extra:
            msg = f"dimension_windows must be a subset of windows, {extra} are not"
            raise ValueError(msg)
        return specs

    @cached_property
    def pane_s(self) -> int:
        return pane_size(self.window_specs)

    @cached_property
    def plan(self) -> Plan:
        return compile_plan(self.registry, self.distinct, self.quantiles)

    @cached_property
    def state_keys(self) -> dict[str, str]:
        """Per metric: accumulator family + parameters + definition, versioned."""
        keys = {}
        for m in self.registry:
            family = self.factories[m.name]().state_key
            keys[m.name] = f"{family}|{m.value}|{','.join(m.events)}|{m.dimensions}"
        return keys

    @cached_property
    def factories(self) -> dict[str, Callable[[], Accumulator]]:
        return {
            m.name: accumulator_factory(m, self.distinct, self.quantiles) for m in self.registry
        }

    def watermark(self, state: dict[str, Any] | None = None) -> Watermark:
        return Watermark(self.allowed_lateness_s, self.idle_timeout_s, state)

    def build_preaggregator(self, resume_state: bytes | None = None) -> PreAggregator:
        return PreAggregator(self, resume_state)

    def build_aggregator(self, resume_state: bytes | None = None) -> WindowAggregator:
        return WindowAggregator(
            registry=self.registry,
            windows=self.window_specs,
            dimension_windows=self.dimension_window_specs,
            pane_s=self.pane_s,
            factories=self.factories,
            state_keys=self.state_keys,
            watermark=self.watermark(),
            revision_horizon_s=self.revision_horizon_s,
            emit_interval_s=self.emit_interval_s,
            dimension_emit_interval_s=self.dimension_emit_interval_s,
            now_getter=self.now_getter,
            resume_state=resume_state,
        )

    def build(self, resume_state: bytes | None = None) -> MetricsPipeline:
        return MetricsPipeline(self, resume_state)


class PreAggregator:
    """One input partition's pre-aggregation step, with its watermark.

    An event older than the watermark at the start of its batch is late: it
    is counted in ``late_events`` and still aggregated (the aggregator
    revises the windows within the horizon), unless it is too old for any
    window to be revised, then it is only counted (``PaneBatch.dropped``).

    >>> from datetime import UTC, datetime
    >>> from linkpulse.schemas.events import UserSignup
    >>> now = datetime(2026, 11, 24, 10, 5, tzinfo=UTC)
    >>> pre = MetricsConfig(now_getter=lambda: now).build_preaggregator()
    >>> ev = UserSignup(event_id="e1", event_time=now, tenant="acme", user_id="u1")
    >>> old = UserSignup(event_id="e2", event_time=datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
    ...                  tenant="acme", user_id="u2")
    >>> pre.process([ev]).late, pre.process([old]).late  # 5 min behind a 10 s watermark
    (0, 1)
    """

    def __init__(self, config: MetricsConfig, resume_state: bytes | None = None) -> None:
        self._config = config
        state = pickle.loads(resume_state) if resume_state else None  # noqa: S301
        self._wm = config.watermark(state)
        biggest = max(w.size_s for w in config.window_specs)
        self._drop_after_s = config.revision_horizon_s + biggest

    @property
    def watermark(self) -> float:
        return self._wm.current(to_seconds(self._config.now_getter()))

    def process(self, events: Iterable[Any]) -> PaneBatch:
        cfg = self._config
        now = to_seconds(cfg.now_getter())
        wm = self._wm.current(now)
        newest = self._wm.max_event
        batch = preaggregate(
            events,
            cfg.plan,
            cfg.pane_s,
            late_before=wm,
            drop_before=wm - self._drop_after_s,
            late_pane=None if newest == -math.inf else pane_of(newest, cfg.pane_s),
        )
        if batch.max_event_time > -math.inf:
            self._wm.observe(batch.max_event_time, now)
        return batch

    def snapshot(self) -> bytes:
        return pickle.dumps(self._wm.snapshot())


class MetricsPipeline:
    """Pre-aggregation and window aggregation for one worker, in one object."""

    def __init__(self, config: MetricsConfig, resume_state: bytes | None = None) -> None:
        pre, agg = pickle.loads(resume_state) if resume_state else (None, None)  # noqa: S301
        self.pre = config.build_preaggregator(pre)
        self.agg = config.build_aggregator(agg)
        self.late_events = 0
        self.dropped_events = 0

    def process(self, events: Iterable[Any]) -> list[MetricWindow]:
        """One batch of decoded events -> the window updates now due."""
        batch = self.pre.process(events)
        self.late_events += batch.late
        self.dropped_events += batch.dropped
        return self.agg.add(batch.partials, batch.max_event_time)

    def tick(self) -> list[MetricWindow]:
        return self.agg.tick()

    def next_awake(self) -> datetime | None:
        return self.agg.next_awake()

    def close(self) -> list[MetricWindow]:
        return self.agg.close()

    def snapshot(self) -> bytes:
        return pickle.dumps((self.pre.snapshot(), self.agg.snapshot()))
