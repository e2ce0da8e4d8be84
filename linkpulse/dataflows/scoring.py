"""The scoring branch: every final 1-minute window scored once, empty steps included.

Wiring only; the detectors are ``linkpulse.online_ml``'s (``detector_for_window``,
``explain_root_cause``). Shapes are in the comment after each step.

* **Keyed by series, in its own stateful step.** Series are grouped by tenant
  (``route(tenant, SCORING_ROUTES)``), so a tenant's seller series sit beside
  its tenant-level series for the root cause; each series has its own
  detector in the route's state, apart from the windows' state.
* **Steps come from the stream's clock.** A window exists only if an event
  contributed to it, so the step cannot wait for windows: the windows step
  sends a ``RouteTick`` from each of its routes after the windows its
  watermark closed (``branch.RouteTick``), every scoring route hears every
  tick, and once *all* routes have passed a minute the minute is complete.
  Then every known series takes exactly one ``update``: the window's value,
  or ``None`` for a series that had data and now has none. Nothing here
  reads the wall clock, so a replay steps the same way.
* **Revisions are re-scored, never re-learned.** A final window whose minute
  was already stepped (late data) is scored with ``score_one`` against the
  series' current detector and published with ``revision = window revision +
  1`` (0 is the first score), so the store keeps the newest. Where it lands in
  the sequence of steps is fixed by the tick its route had sent before it,
  not by when it arrived, so the result does not depend on thread timing.
* **Idle series expire**: ``idle_expiry_s`` after its last window a series'
  state is dropped (and it starts afresh if it comes back).

>>> cfg = ScoringConfig(idle_expiry_s=600, joint=False, forecast_metrics=())
>>> logic = ScoringLogic(cfg, ("r00",), None)
>>> from datetime import UTC, datetime
>>> from linkpulse.schemas.outputs import MetricWindow
>>> def w(minute, value):
...     start = datetime(2026, 11, 24, 10, minute, tzinfo=UTC)
...     return MetricWindow(metric="orders", tenant="acme", dims_key="", dimensions={},
...         window="1m", window_start=start, window_end=start.replace(minute=minute + 1),
...         value=value, final=True)
>>> t0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC).timestamp()
>>> out, _ = logic.on_batch([w(0, 3.0), RouteTick("r00", t0 + 60)])
>>> [(s.series, s.value) for s in out]
[('acme|orders||1m', 3.0)]
>>> out, _ = logic.on_batch([RouteTick("r00", t0 + 180)])  # two minutes without orders
>>> [(s.time.minute, s.value) for s in out]
[(1, None), (2, None)]
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bytewax.operators as op
import msgspec
import yaml
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from linkpulse.config import Settings
from linkpulse.dataflows.branch import Core, RouteTick, TimelineItem
from linkpulse.dataflows.redis_sink import RedisLatestSink
from linkpulse.dataflows.score_sinks import ScoresNatsSink, UpsertSink
from linkpulse.logging import get_logger
from linkpulse.online_ml import (
    Detector,
    Forecaster,
    JointDetector,
    build_detector,
    build_joint_detector,
    detector_for_window,
    explain_root_cause,
    forecaster_for_window,
    load_spec,
)
from linkpulse.operators import REGISTRY, route
from linkpulse.operators.windows import WindowSpec
from linkpulse.query.watermarks import WatermarkTarget
from linkpulse.schemas.outputs import AnomalyScore, Forecast, MetricWindow

__all__ = [
    "SCORING_ROUTES",
    "ScoringBranch",
    "ScoringConfig",
    "ScoringLogic",
    "ScoringSinks",
    "scoring_config",
    "scoring_route",
]

log = get_logger(__name__)

# Tenants are spread over this many scoring routes whatever the worker count;
# changing it moves series between routes' states (part of the recovery layout).
SCORING_ROUTES = 16
STATE_VERSION = 2
Scored = AnomalyScore | Forecast


def scoring_route(tenant: str) -> str:
    """The key of the scoring route holding every series of ``tenant``.

    >>> scoring_route("acme") == scoring_route("acme")
    True
    """
    return f"s{route(tenant, SCORING_ROUTES):02d}"


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    """What the scoring branch scores and how long it remembers (validated)."""

    window: str = "1m"
    # Detector spec per metric (``online_ml.build_detector``); others get their kind's defaults.
    specs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # A series with no window for this long is forgotten (its state dropped).
    idle_expiry_s: float = 6 * 3600.0
    # Revised windows older than this (behind the scoring clock) are not re-scored.
    revision_horizon_s: float = 3600.0
    # Tenant-level scores at or above this get their top sellers named (root cause).
    root_cause_above: float = 0.9
    # One multivariate detector per tenant over its tenant-level metrics.
    joint: bool = True
    # Tenant-level metrics forecast: the next ``forecast_minutes`` minutes at every
    # step, the next ``forecast_hours`` hours at every hour boundary.
    forecast_metrics: tuple[str, ...] = ("gmv", "orders", "page_views")
    forecast_minutes: int = 60
    forecast_hours: int = 24

    def __post_init__(self) -> None:
        spec = WindowSpec.parse(self.window)
        if spec.is_sliding:
            msg = f"window must be a tumbling window like '1m', got {self.window!r}"
            raise ValueError(msg)
        for name in ("idle_expiry_s", "revision_horizon_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                msg = f"{name} must be a positive number of seconds, got {value!r}"
                raise ValueError(msg)
        unknown = [m for m in self.forecast_metrics if m not in REGISTRY]
        if unknown:
            msg = f"forecast_metrics: unknown metrics {unknown}"
            raise ValueError(msg)
        for name in ("forecast_minutes", "forecast_hours"):
            if not 1 <= getattr(self, name) <= 10_000:
                msg = f"{name} must be between 1 and 10000 steps, got {getattr(self, name)!r}"
                raise ValueError(msg)
        if not 0.0 <= self.root_cause_above <= 1.0:
            msg = f"root_cause_above must be a score in [0, 1], got {self.root_cause_above!r}"
            raise ValueError(msg)

    @property
    def step_s(self) -> float:
        """Seconds per step: the window's size."""
        return float(WindowSpec.parse(self.window).size_s)


class _Series:
    """One series' detector (and forecaster), and when it last had data (window start, s)."""

    __slots__ = ("detector", "dims_key", "forecaster", "last_data", "metric", "tenant")

    def __init__(
        self,
        w: MetricWindow,
        detector: Detector,
        forecaster: Forecaster | None,
        last_data: float,
    ) -> None:
        self.detector = detector
        self.forecaster = forecaster
        self.tenant = w.tenant
        self.metric = w.metric
        self.dims_key = w.dims_key
        self.last_data = last_data


def _ts(t: datetime) -> float:
    return t.timestamp()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class ScoringLogic(StatefulBatchLogic[TimelineItem, Scored, bytes]):
    """One scoring route: its tenants' series, their detectors, and the scoring clock.

    ``routes`` are the windows step's routes (the tick sources); the minute
    ``[s, s + step)`` is stepped once every one of them has ticked past
    ``s + step``. ``route_of`` names the route a window comes from (the flow
    passes ``live_metrics.window_route``; the default suits one route).
    """

    def __init__(
        self,
        config: ScoringConfig,
        routes: Sequence[str],
        resume_state: bytes | None,
        *,
        route_of: Callable[[MetricWindow], str] | None = None,
    ) -> None:
        self._cfg = config
        self._routes = tuple(routes)
        self._sources = frozenset(self._routes)
        first = self._routes[0]
        self._route_of = route_of or (lambda w: first)
        self._step = config.step_s
        self._ticks: dict[str, float] = {}
        self._done = -math.inf  # every step ending at or before this is stepped
        self._series: dict[str, _Series] = {}
        self._joint: dict[str, JointDetector] = {}  # tenant -> its joint detector
        # step start -> series key -> newest final window (not yet stepped)
        self._pending: dict[float, dict[str, MetricWindow]] = {}
        # (its route's tick when it came, series key, start, revision) -> window: re-scores due
        self._revisions: list[tuple[float, str, float, int, MetricWindow]] = []
        if resume_state is not None:
            self._restore(resume_state)

    # -- Bytewax ---------------------------------------------------------------------------

    def on_batch(self, values: list[TimelineItem]) -> tuple[Iterable[Scored], bool]:
        out: list[Scored] = []
        for item in values:
            if isinstance(item, RouteTick):
                if item.route in self._sources and item.at > self._ticks.get(item.route, -math.inf):
                    self._ticks[item.route] = item.at
                    self._advance(out)
            else:
                self._take(item, out)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        state = {
            "version": STATE_VERSION,
            "step": self._step,
            "ticks": dict(self._ticks),
            "done": self._done,
            "pending": self._pending,
            "revisions": self._revisions,
            # one blob per series: a detector whose state version changed is
            # dropped alone (it starts afresh), the others resume
            "series": {
                k: (
                    s.tenant,
                    s.metric,
                    s.dims_key,
                    s.last_data,
                    pickle.dumps((s.detector, s.forecaster)),
                )
                for k, s in self._series.items()
            },
            "joint": {t: pickle.dumps(j) for t, j in self._joint.items()},
        }
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    # -- internals -------------------------------------------------------------------------

    def _restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)  # noqa: S301 - our own snapshot from the recovery store
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            log.warning("scoring state of an unknown version dropped: series start afresh")
            return
        if state["step"] != self._step:
            log.warning("scoring step changed: series start afresh", was=state["step"])
            return
        self._ticks = state["ticks"]
        self._done = state["done"]
        self._pending = state["pending"]
        self._revisions = state["revisions"]
        for key, (tenant, metric, dims, last_data, blob) in state["series"].items():
            models = _unpickle(blob, key)
            if models is not None:
                s = _Series.__new__(_Series)
                s.detector, s.forecaster = models
                s.tenant, s.metric, s.dims_key, s.last_data = tenant, metric, dims, last_data
                self._series[key] = s
        for tenant, blob in state["joint"].items():
            joint = _unpickle(blob, f"{tenant}|joint")
            if joint is not None:
                self._joint[tenant] = joint

    def _take(self, w: MetricWindow, out: list[Scored]) -> None:
        if w.window != self._cfg.window or not w.final:
            return
        start = _ts(w.window_start)
        tick = self._ticks.get(self._route_of(w), -math.inf)
        if start + self._step > tick and start >= self._done:
            # its route has not declared this minute complete: a first final (or a
            # revision arriving before the minute was stepped: the newest wins)
            by_key = self._pending.setdefault(start, {})
            old = by_key.get(w.series_key)
            if old is None or w.revision >= old.revision:
                by_key[w.series_key] = w
        else:
            # late data revised (or made) a window of a minute already stepped
            self._revisions.append((tick, w.series_key, start, w.revision, w))
            if tick <= self._done:
                # its place (after the steps up to its route's tick) is now: a
                # re-score learns nothing, so doing it now or later is the same
                self._rescore(self._done, out)

    def _advance(self, out: list[Scored]) -> None:
        if len(self._ticks) < len(self._routes):
            return  # some route has not spoken yet: nothing is complete
        upto = min(self._ticks.values())
        step = self._step
        if self._done == -math.inf:
            if not self._pending:
                self._done = math.floor(upto / step) * step
                return
            self._done = min(self._pending)
        while self._done + step <= upto:
            start = self._done
            if not self._series:
                # no series to make empty steps for: jump to the next data, or the end
                first = min(self._pending, default=math.inf)
                if first > start:
                    self._done = min(first, math.floor(upto / step) * step)
                    continue
            self._rescore(start, out)
            self._step_once(start, out)
            self._done = start + step
        self._rescore(self._done, out)

    def _rescore(self, before: float, out: list[Scored]) -> None:
        """Re-score the revisions whose route had ticked by ``before`` (they sort first)."""
        if not self._revisions:
            return
        self._revisions.sort(key=lambda r: r[:4])
        cut = bisect.bisect_right([r[0] for r in self._revisions], before)
        due, self._revisions = self._revisions[:cut], self._revisions[cut:]
        for _, key, start, revision, w in due:
            s = self._series.get(key)
            if s is None or self._done - start > self._cfg.revision_horizon_s:
                continue  # a forgotten or unknown series, or too old to matter now
            score = s.detector.score_one(w.window_start, w.value, float(w.count))
            out.append(msgspec.structs.replace(score, revision=revision + 1))

    def _new_series(self, w: MetricWindow, start: float) -> _Series:
        cfg = self._cfg
        forecaster = None
        if not w.dims_key and w.metric in cfg.forecast_metrics:
            forecaster = forecaster_for_window(w)
        return _Series(w, detector_for_window(w, cfg.specs), forecaster, start)

    def _step_once(self, start: float, out: list[Scored]) -> None:
        cfg = self._cfg
        windows = self._pending.pop(start, {})
        t = _dt(start)
        for key, w in windows.items():
            if key not in self._series:
                self._series[key] = self._new_series(w, start)
        expired: list[str] = []
        scores: list[tuple[_Series, AnomalyScore]] = []
        forecasts: list[Forecast] = []
        tenant_values: dict[str, dict[str, float | None]] = {}
        tenant_counts: dict[str, dict[str, float | None]] = {}  # their events (the funnels')
        next_t = _dt(start + self._step)
        hour_ends = (start + self._step) % 3600.0 == 0.0
        for key in sorted(self._series):
            s = self._series[key]
            got = windows.get(key)
            x: float | None
            n: float | None
            if got is not None:
                s.last_data = start
                x, n = got.value, float(got.count)  # n: the trials behind a ratio
            elif start - s.last_data >= cfg.idle_expiry_s:
                expired.append(key)
                continue
            else:
                x, n = None, None  # the series had data and now has none: an empty step
            scores.append((s, s.detector.update(t, x, n)))
            if not s.dims_key:
                tenant_values.setdefault(s.tenant, {})[s.metric] = x
                tenant_counts.setdefault(s.tenant, {})[s.metric] = n
            if s.forecaster is not None:
                s.forecaster.update(t, x)
                forecasts.append(s.forecaster.forecast(next_t, steps=cfg.forecast_minutes))
                if hour_ends:
                    forecasts.append(
                        s.forecaster.forecast(next_t, steps=cfg.forecast_hours, step="1h")
                    )
        for key in expired:
            del self._series[key]
        out.extend(self._with_root_cause(scores))
        if cfg.joint:
            for tenant in sorted(tenant_values):
                joint = self._joint.get(tenant)
                if joint is None:
                    joint = self._joint[tenant] = build_joint_detector(tenant, window=cfg.window)
                out.append(joint.update(t, tenant_values[tenant], tenant_counts[tenant]))
            for tenant in [k for k in self._joint if k not in tenant_values]:
                del self._joint[tenant]  # no tenant-level series left: the tenant is idle
        out.extend(forecasts)

    def _with_root_cause(self, scores: list[tuple[_Series, AnomalyScore]]) -> list[AnomalyScore]:
        """Tenant-level scores above the bar name the sellers behind them."""
        parts: dict[tuple[str, str], list[AnomalyScore]] = {}
        for s, score in scores:
            if s.dims_key:
                parts.setdefault((s.tenant, s.metric), []).append(score)
        out = []
        for s, score in scores:
            if not s.dims_key and score.score >= self._cfg.root_cause_above:
                score = explain_root_cause(score, parts.get((s.tenant, s.metric), []))
            out.append(score)
        return out


def _unpickle(blob: bytes, what: str) -> Any:
    """A model from its snapshot, or None when its state version changed (it starts afresh)."""
    try:
        return pickle.loads(blob)  # noqa: S301 - our own snapshot from the recovery store
    except (ValueError, pickle.UnpicklingError, AttributeError) as e:
        log.warning("model state not restored: starts afresh", series=what, error=str(e))
        return None


def scoring_config(
    detectors: Path | None = None, idle_expiry_s: float = 6 * 3600.0
) -> ScoringConfig:
    """The config of ``linkpulse run dataflow``: detector specs per metric from a YAML file.

    The file maps metric names to ``build_detector`` specs; a metric the
    registry does not know, or a spec ``build_detector`` refuses, is a
    ``ValueError`` naming it, before the flow starts.

    >>> scoring_config(None, 600).idle_expiry_s
    600
    """
    specs: dict[str, dict[str, Any]] = {}
    if detectors is not None:
        try:
            loaded = yaml.safe_load(detectors.read_text())
        except (OSError, yaml.YAMLError) as e:
            msg = f"--detectors {detectors}: cannot read it as YAML: {e}"
            raise ValueError(msg) from e
        if not isinstance(loaded, dict):
            msg = f"--detectors {detectors}: expected a mapping metric -> spec, got {loaded!r}"
            raise ValueError(msg)
        for metric, spec in loaded.items():
            if metric not in REGISTRY:
                known = ", ".join(m.name for m in REGISTRY)
                msg = f"--detectors {detectors}: unknown metric {metric!r}; known: {known}"
                raise ValueError(msg)
            specs[metric] = load_spec(spec)
            build_detector(specs[metric])  # refuse a bad spec now, by name
    return ScoringConfig(specs=specs, idle_expiry_s=idle_expiry_s)


@dataclasses.dataclass(frozen=True)
class ScoringSinks:
    """Where scores go; a ``None`` leaves that output out (``from_settings``: production)."""

    scores_store: Sink[Any] | None = None  # AnomalyScore
    scores_nats: Sink[Any] | None = None  # AnomalyScore and Forecast
    scores_redis: Sink[Any] | None = None  # AnomalyScore
    forecasts_store: Sink[Any] | None = None  # Forecast

    @classmethod
    def from_settings(
        cls, settings: Settings, *, redis_key_prefix: str = "linkpulse:", redis_ttl_s: int = 7200
    ) -> ScoringSinks:
        """Production's: ``anomaly_scores``, the scores stream, the latest score in Redis."""
        wm = WatermarkTarget.from_settings(settings, redis_key_prefix)  # the query cache's
        return cls(
            scores_store=UpsertSink(
                settings.database_url,
                "anomaly_scores",
                outage_s=settings.store_outage_s,
                watermarks=wm,
            ),
            scores_nats=ScoresNatsSink(settings),
            scores_redis=RedisLatestSink(
                settings.redis_url, key_prefix=redis_key_prefix, ttl_s=redis_ttl_s, kind="score"
            ),
            forecasts_store=UpsertSink(
                settings.database_url, "forecasts", outage_s=settings.store_outage_s, watermarks=wm
            ),
        )


def _only(kind: type[Any]) -> Callable[[Any], Any]:
    return lambda item: item if isinstance(item, kind) else None


_SCORING_KEYS = [f"s{i:02d}" for i in range(SCORING_ROUTES)]


def _to_scoring_routes(item: tuple[str, TimelineItem]) -> list[tuple[str, TimelineItem]]:
    value = item[1]
    if isinstance(value, RouteTick):
        return [(k, value) for k in _SCORING_KEYS]  # every scoring route hears every clock
    return [(scoring_route(value.tenant), value)]


@dataclasses.dataclass(frozen=True)
class ScoringBranch:
    """Final windows -> ``AnomalyScore`` per series and step, and ``Forecast``s -> sinks."""

    config: ScoringConfig
    sinks: ScoringSinks
    name: str = "scoring"

    def attach(self, core: Core) -> None:
        cfg, routes, route_of = self.config, core.routes, core.window_route
        window = cfg.window
        wanted = op.filter(
            "scoring_input",
            core.timeline,
            lambda kv: isinstance(kv[1], RouteTick) or (kv[1].final and kv[1].window == window),
        )
        # (route, MetricWindow final of the scored window | RouteTick)
        keyed = op.flat_map("scoring_by_tenant", wanted, _to_scoring_routes)
        # (scoring route, MetricWindow | RouteTick): ticks to every scoring route
        scored = op.stateful_batch(
            "scoring", keyed, lambda s: ScoringLogic(cfg, routes, s, route_of=route_of)
        )
        # (scoring route, AnomalyScore | Forecast)
        both = op.key_rm("scored", scored)
        # AnomalyScore | Forecast
        scores = op.filter_map("scores", both, _only(AnomalyScore))
        # AnomalyScore
        forecasts = op.filter_map("forecasts", both, _only(Forecast))
        # Forecast
        core.published["scores"] = scores
        core.published["forecasts"] = forecasts
        sinks = self.sinks
        if sinks.scores_store is not None:
            op.output("scores_store", scores, sinks.scores_store)
        if sinks.scores_nats is not None:
            op.output("scores_nats", both, sinks.scores_nats)
        if sinks.scores_redis is not None:
            op.output("scores_redis", scores, sinks.scores_redis)
        if sinks.forecasts_store is not None:
            op.output("forecasts_store", forecasts, sinks.forecasts_store)
