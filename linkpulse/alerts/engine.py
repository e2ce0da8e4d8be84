"""Rule evaluation: one state machine per rule and series, fed by windows, scores and the clock.

Pure and deterministic: nothing reads the wall clock, time is the stream's
(a window's end, a score's step end, a clock tick), so a replay of the same
inputs emits the same ``AlertChange``s. The dataflow step
(``linkpulse.dataflows.alerting``) keeps a ``RuleEngine`` per route and
snapshots it; ``linkpulse alerts test`` drives one directly.

The state machine, per rule and series (``Track``)::

    inactive/resolved --cond--> pending --cond for `for`--> firing --not held--> resolved
              (for: 0 goes straight to firing)   |                 (after keep_firing_for)
                                       not cond -> inactive

``cond`` is the firing condition; ``held`` is what keeps a firing alert
firing: the condition itself, or with ``recovery`` the hysteresis band (fire
above 5%, resolve only below 3%). ``keep_firing_for`` keeps it firing that long
after ``held`` last was true (flapping damped). A firing alert can be
acknowledged (``acknowledge``); it stays acknowledged until it resolves.

**Revisions.** Each track keeps its recent samples (``revision_horizon_s``)
and the machine as it was before them. A window revised by late data (or a
re-scored step) replaces its sample and the machine is replayed from there;
what differs from before is emitted: a resolve of an incident that should
never have fired, or a firing found on corrected data (``revision`` > 0).

**Staleness.** A series whose samples stop (no window for ``stale_steps``
steps, seen on a clock tick of its route) is evaluated as not breaching, so a
firing threshold alert resolves when its traffic stops instead of firing
forever (an ``absence`` rule is the one that pages on missing data).

>>> from datetime import UTC, datetime, timedelta
>>> from linkpulse.alerts.rules import parse_rules
>>> from linkpulse.schemas.outputs import MetricWindow
>>> rules = parse_rules('''
... rules:
...   - {name: slow, kind: threshold, metric: orders, op: "<", threshold: 2, for: 2m}
... ''')
>>> eng = RuleEngine(rules)
>>> t0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
>>> def w(i, v):
...     s = t0 + timedelta(minutes=i)
...     return MetricWindow(metric="orders", tenant="acme", dims_key="", dimensions={},
...         window="1m", window_start=s, window_end=s + timedelta(minutes=1), value=v, final=True)
>>> [(c.state.value, c.at.minute)
...  for i, v in enumerate([5, 1, 1, 1, 3]) for c in eng.on_window(w(i, v))]
[('pending', 2), ('firing', 4), ('resolved', 5)]
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import operator
import pickle
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from linkpulse.alerts.durations import format_duration
from linkpulse.alerts.rules import Rule, RuleKind, RuleSet, render
from linkpulse.alerts.types import AlertChange, AlertState, fingerprint, incident_id
from linkpulse.operators.metrics import parse_window_series_key
from linkpulse.schemas.outputs import AnomalyScore, Forecast, MetricWindow

__all__ = ["EngineConfig", "RuleEngine", "Sample", "Track", "series_parts"]

STATE_VERSION = 1
_ACTIVE = (AlertState.FIRING, AlertState.ACKNOWLEDGED)
_OPEN = (AlertState.PENDING, AlertState.FIRING, AlertState.ACKNOWLEDGED)
# a machine in these states stays as it is on a sample that does not breach (see _advance)
_QUIET = (AlertState.INACTIVE, AlertState.RESOLVED)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# The window series key's parser lives with the key's definition (operators.metrics).
series_parts = parse_window_series_key


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How far back revisions re-evaluate, when a silent series is stale, when it is forgotten."""

    revision_horizon_s: float = 3600.0
    stale_steps: int = 3
    stale_min_s: float = 180.0
    score_stale_s: float = 900.0
    idle_expiry_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        for name in ("revision_horizon_s", "stale_min_s", "score_stale_s", "idle_expiry_s"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                msg = f"{name} must be a positive number of seconds, got {v!r}"
                raise ValueError(msg)
        if self.stale_steps < 1:
            msg = f"stale_steps must be at least 1, got {self.stale_steps!r}"
            raise ValueError(msg)


@dataclasses.dataclass(slots=True)
class Sample:
    """One evaluation of a rule on a series at stream time ``at`` (epoch seconds)."""

    at: float
    cond: bool
    held: bool
    value: float | None = None
    observed: float | None = None
    expected: float | None = None
    lower: float | None = None
    upper: float | None = None
    explanation: str = ""
    revision: int = 0


@dataclasses.dataclass(slots=True, frozen=True)
class _Machine:
    state: AlertState = AlertState.INACTIVE
    active_at: float | None = None
    fired_at: float | None = None
    clear_since: float | None = None  # firing, but not held since then (keep_firing_for)


def _advance(m: _Machine, s: Sample, rule: Rule) -> _Machine:
    """The machine after sample ``s`` (pure)."""
    st = m.state
    if st in (AlertState.INACTIVE, AlertState.RESOLVED):
        if not s.cond:
            return m
        if rule.for_s <= 0:
            return _Machine(AlertState.FIRING, s.at, s.at)
        return _Machine(AlertState.PENDING, s.at)
    if st is AlertState.PENDING:
        if not s.cond:
            return _Machine(AlertState.INACTIVE, m.active_at)
        assert m.active_at is not None
        if s.at - m.active_at >= rule.for_s:
            return _Machine(AlertState.FIRING, m.active_at, s.at)
        return m
    # firing (or acknowledged: the track keeps that apart). As Prometheus does,
    # keep_firing_for counts from the first evaluation that no longer held.
    if s.held:
        return m if m.clear_since is None else dataclasses.replace(m, clear_since=None)
    since = m.clear_since if m.clear_since is not None else s.at
    if s.at - since >= rule.keep_firing_for_s:
        return _Machine(AlertState.RESOLVED, m.active_at, m.fired_at)
    return m if m.clear_since == since else dataclasses.replace(m, clear_since=since)


_CMP: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class _Compiled:
    """What a window update needs of one rule, worked out once per rule set, not per update.

    ``every``: no tenant scope and no matcher (the rule covers every series, no
    check to run); for thresholds the comparison, the band and the recovery
    test (``Rule.breaches``/``Rule.holds`` without their per-call lookups).
    """

    __slots__ = (
        "every",
        "held_above",
        "kind",
        "lower",
        "name",
        "recovery",
        "rule",
        "test",
        "upper",
    )

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.name = rule.name
        self.kind = rule.kind
        self.every = rule.tenant is None and not rule.where
        self.test = _CMP[rule.op]
        below = rule.op in ("<", "<=")
        self.lower = rule.threshold if below else None
        self.upper = None if below else rule.threshold
        self.recovery = rule.recovery
        self.held_above = not below


class Track:
    """One rule on one series: the machine, its recent samples and who it is (labels)."""

    __slots__ = (
        "acked",
        "base",
        "fp",
        "history",
        "labels",
        "last",
        "last_at",
        "machine",
        "route",
        "rule",
        "series",
        "tenant",
    )

    def __init__(self, rule: Rule, series: str, tenant: str, dims: dict[str, str], route: str):
        self.rule = rule.name
        self.series = series
        self.tenant = tenant
        self.route = route
        _, metric, _, window = (None, rule.metric, None, rule.window)
        self.labels = {
            **dims,
            **rule.labels,
            "alertname": rule.name,
            "tenant": tenant,
            "metric": metric,
            "window": window,
            "severity": rule.severity,
        }
        self.fp = fingerprint(self.labels)
        self.machine = _Machine()
        self.base = _Machine()  # the machine before ``history``'s first sample
        self.history: deque[Sample] = deque()
        self.acked: set[str] = set()
        self.last_at = -math.inf
        self.last: Sample | None = None  # the newest sample (context of the changes)


class RuleEngine:
    """Every rule of a ``RuleSet`` on every series it covers (see the module docstring)."""

    def __init__(self, rules: RuleSet, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self._horizon_s = self.config.revision_horizon_s
        self._rules = rules
        self._by_name = rules.by_name()
        self._tracks: dict[tuple[str, str], Track] = {}
        # rate of change: series -> {window start: value}
        self._values: dict[str, dict[float, float]] = {}
        # forecast rules: series -> newest forecast
        self._forecasts: dict[str, Forecast] = {}
        # absence: (rule, series) -> end of the newest window seen
        self._seen: dict[tuple[str, str], float] = {}
        self._clock = -math.inf
        # windows route ("" for score-fed tracks) -> its tracks' keys (ticks look at theirs)
        self._by_route: dict[str, set[tuple[str, str]]] = {}
        self._scores_looked = -math.inf
        # (metric, window) -> its rules compiled, and whether one is a rate of change
        self._plans: dict[tuple[str, str], tuple[tuple[_Compiled, ...], bool]] = {}

    # -- rules ---------------------------------------------------------------------------------

    @property
    def rules(self) -> RuleSet:
        """The rules in force."""
        return self._rules

    def set_rules(self, rules: RuleSet) -> list[AlertChange]:
        """Put ``rules`` in force; open alerts of rules that are gone (or changed kind) resolve."""
        out: list[AlertChange] = []
        new = rules.by_name()
        for key, t in list(self._tracks.items()):
            old_rule, rule = self._by_name.get(t.rule), new.get(t.rule)
            gone = rule is None or old_rule is None or rule.kind is not old_rule.kind
            moved = (
                rule is not None
                and old_rule is not None
                and ((rule.metric, rule.window) != (old_rule.metric, old_rule.window))
            )
            if gone or moved:
                if old_rule is not None and t.machine.state in _OPEN:
                    closed = (
                        AlertState.RESOLVED if t.machine.state in _ACTIVE else AlertState.INACTIVE
                    )
                    last = t.last or Sample(t.last_at, False, False)
                    last = dataclasses.replace(last, explanation="the rule was removed or changed")
                    out.append(self._change(old_rule, t, t.machine, closed, last, t.last_at))
                self._drop(key)
        self._seen = {k: v for k, v in self._seen.items() if k[0] in new}
        self._rules, self._by_name = rules, new
        self._plans.clear()
        return out

    # -- inputs --------------------------------------------------------------------------------

    def _plan(self, metric: str, window: str) -> tuple[tuple[_Compiled, ...], bool]:
        key = (metric, window)
        plan = self._plans.get(key)
        if plan is None:
            rules = self._rules.for_series(metric, window)
            rate = any(r.kind is RuleKind.RATE_OF_CHANGE for r in rules)
            plan = self._plans[key] = (tuple(_Compiled(r) for r in rules), rate)
        return plan

    def on_window(self, w: MetricWindow, route: str = "") -> list[AlertChange]:
        """A window update: final windows (first or revised) are evaluated; live ones ignored."""
        if not w.final:
            return []
        plan, has_rate = self._plan(w.metric, w.window)
        if not plan:
            return []
        out: list[AlertChange] = []
        key = w.series_key
        tenant, dims, v = w.tenant, w.dimensions, w.value
        start, end = w.window_start.timestamp(), w.window_end.timestamp()
        prev: float | None = None
        nxt: tuple[float, float] | None = None
        if has_rate and v is not None:
            values = self._values.setdefault(key, {})
            step = end - start if w.window.find("/") < 0 else float(plan[0].rule.step_s)
            values[start] = v
            prev = values.get(start - step)
            later = values.get(start + step)
            if later is not None:
                nxt = (start + step, later)
            horizon = start - self.config.revision_horizon_s - step
            if len(values) > 4 and min(values) < horizon:
                for s in [s for s in values if s < horizon]:
                    del values[s]
        tracks = self._tracks
        for c in plan:
            rule = c.rule
            if not c.every and not rule.applies_to(tenant, dims):
                continue
            kind = c.kind
            if kind is RuleKind.THRESHOLD:
                # the common case, inline: one comparison, no lookups (see _Compiled)
                if v is None:
                    continue
                breached = c.test(v, rule.threshold)
                rec = c.recovery
                if rec is None:
                    held = breached
                else:
                    held = v >= rec if c.held_above else v <= rec
                sample = Sample(
                    end,
                    breached,
                    held,
                    v,
                    v,
                    None,
                    c.lower,
                    c.upper,
                    _threshold_why(rule, v) if breached else "",
                    w.revision,
                )
            elif kind is RuleKind.ABSENCE:
                out.extend(self._saw(rule, w, route, end))
                continue
            else:
                maybe = self._window_sample(rule, w, end, prev, key)
                if maybe is None:
                    continue
                sample = maybe
            t = tracks.get((c.name, key))
            if t is None:
                t = self._track(rule, key, tenant, dims, route)
            changes = self._offer(rule, t, sample)
            if changes:
                out.extend(changes)
            if nxt is not None and kind is RuleKind.RATE_OF_CHANGE and v is not None:
                # the next window's change was measured from this one: it is revised too
                again = _rate_sample(rule, nxt[1], v, nxt[0] + (end - start), w.revision)
                if again is not None:
                    out.extend(self._offer(rule, t, again))
        return out

    def on_score(self, score: AnomalyScore) -> list[AlertChange]:
        """An anomaly score (first or re-scored): anomaly rules of its metric evaluate it."""
        try:
            tenant, metric, dims, window = series_parts(score.series)
        except ValueError:
            return []
        rules = self._rules.for_series(metric, window)
        out: list[AlertChange] = []
        for rule in rules:
            if rule.kind is not RuleKind.ANOMALY or not rule.applies_to(tenant, dims):
                continue
            at = score.time.timestamp() + rule.step_s
            direction_ok = rule.direction == "any" or score.direction == rule.direction
            cond = score.warm and direction_ok and score.score >= rule.threshold
            recovery = rule.recovery if rule.recovery is not None else rule.threshold
            held = score.warm and direction_ok and score.score >= recovery
            sample = Sample(
                at,
                cond,
                held,
                value=score.score,
                observed=score.value,
                expected=score.expected,
                lower=score.lower,
                upper=score.upper,
                explanation=score.explanation,
                revision=score.revision,
            )
            out.extend(self._offer(rule, self._track(rule, score.series, tenant, dims, ""), sample))
        return out

    def on_forecast(self, forecast: Forecast) -> None:
        """Keep the newest forecast of a series for the forecast rules (emits nothing)."""
        if forecast.step != "1m":
            return
        old = self._forecasts.get(forecast.series)
        if old is None or forecast.issued_at >= old.issued_at:
            self._forecasts[forecast.series] = forecast

    def on_tick(self, at: float, route: str | None = None) -> list[AlertChange]:
        """The stream clock: every window of ``route`` ending by ``at`` was seen.

        Absence rules and stale series of that route are evaluated; with
        ``route=None`` (one clock for everything) every track is.
        """
        out: list[AlertChange] = []
        self._clock = max(self._clock, at)
        cfg = self.config
        if route is None:
            keys = list(self._tracks)
        else:
            # only the tracks of that route: a tick costs its route's series, not all
            keys = list(self._by_route.get(route, ()))
            if at - self._scores_looked >= 60.0:
                # score-fed tracks follow no windows route: looked at once a minute
                self._scores_looked = at
                keys.extend(self._by_route.get("", ()))
        for key in keys:
            t = self._tracks.get(key)
            rule = self._by_name.get(key[0])
            if t is None or rule is None:
                continue
            if rule.kind is RuleKind.ABSENCE:
                last = self._seen.get(key)
                if last is None:
                    continue
                gap = at - last
                if gap > cfg.idle_expiry_s + rule.absent_for_s:
                    closing = Sample(at, False, False, value=gap, explanation="series forgotten")
                    out.extend(self._offer(rule, t, closing))
                    del self._seen[key]
                    self._drop(key)
                    continue
                absent = gap >= rule.absent_for_s
                why = f"no {rule.metric} data for {format_duration(gap)}" if absent else ""
                sample = Sample(at, absent, absent, value=gap, explanation=why)
                out.extend(self._offer(rule, t, sample))
                continue
            if rule.kind is RuleKind.ANOMALY:
                stale_s = cfg.score_stale_s
            else:
                stale_s = max(cfg.stale_steps * rule.step_s, cfg.stale_min_s)
            quiet = at - t.last_at
            if t.machine.state in _OPEN and quiet >= stale_s:
                why = f"no data for {format_duration(quiet)}"
                out.extend(self._offer(rule, t, Sample(at, False, False, explanation=why)))
            elif t.machine.state not in _OPEN and quiet >= cfg.idle_expiry_s:
                self._drop(key)
                self._values.pop(t.series, None)
        return out

    def _drop(self, key: tuple[str, str]) -> None:
        t = self._tracks.pop(key, None)
        if t is not None:
            self._by_route.get(t.route, set()).discard(key)

    def acknowledge(self, alert_id: str, at: float) -> AlertChange | None:
        """Acknowledge a firing alert (None when no firing alert has that id)."""
        for t in self._tracks.values():
            m = t.machine
            if m.state is AlertState.FIRING and m.active_at is not None:
                if incident_id(t.fp, _dt(m.active_at)) != alert_id:
                    continue
                rule = self._by_name[t.rule]
                t.acked.add(alert_id)
                t.machine = dataclasses.replace(m, state=AlertState.ACKNOWLEDGED)
                last = t.last or Sample(at, True, True)
                return self._change(rule, t, t.machine, AlertState.ACKNOWLEDGED, last, at, m.state)
        return None

    def open_alerts(self) -> list[AlertChange]:
        """Every pending, firing or acknowledged alert as its latest change (sorted by id)."""
        out = []
        for t in self._tracks.values():
            rule = self._by_name.get(t.rule)
            if rule is None or t.machine.state not in _OPEN:
                continue
            last = t.last or Sample(t.last_at, True, True)
            out.append(self._change(rule, t, t.machine, t.machine.state, last, t.last_at))
        return sorted(out, key=lambda c: c.alert_id)

    # -- snapshot --------------------------------------------------------------------------

    _FIELDS = (
        "series",
        "tenant",
        "route",
        "labels",
        "fp",
        "machine",
        "base",
        "acked",
        "last_at",
        "last",
    )

    def snapshot(self) -> bytes:
        """The whole state, for the dataflow's recovery store."""
        tracks = {
            k: {**{f: getattr(t, f) for f in self._FIELDS}, "history": list(t.history)}
            for k, t in self._tracks.items()
        }
        state = {
            "version": STATE_VERSION,
            "tracks": tracks,
            "values": self._values,
            "forecasts": self._forecasts,
            "seen": self._seen,
            "clock": self._clock,
            "scores_looked": self._scores_looked,
        }
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes) -> bool:
        """Resume from ``snapshot()``'s bytes; False (and a fresh start) if they are unusable."""
        try:
            state: Any = pickle.loads(blob)  # noqa: S301 - our own snapshot from the recovery store
        except (pickle.UnpicklingError, AttributeError, ValueError, EOFError, TypeError):
            return False
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return False
        for key, saved in state["tracks"].items():
            if key[0] not in self._by_name:
                continue  # a rule that is gone: its alerts are not carried over
            t = Track.__new__(Track)
            t.rule = key[0]
            for f in self._FIELDS:
                setattr(t, f, saved[f])
            t.history = deque(saved["history"])
            self._tracks[key] = t
            self._by_route.setdefault(t.route, set()).add(key)
        self._values = state["values"]
        self._forecasts = state["forecasts"]
        self._seen = {k: v for k, v in state["seen"].items() if k[0] in self._by_name}
        self._clock = state["clock"]
        self._scores_looked = state["scores_looked"]
        return True

    # -- internals -------------------------------------------------------------------------

    def _track(
        self, rule: Rule, series: str, tenant: str, dims: dict[str, str], route: str
    ) -> Track:
        key = (rule.name, series)
        t = self._tracks.get(key)
        if t is None:
            t = self._tracks[key] = Track(rule, series, tenant, dims, route)
            self._by_route.setdefault(route, set()).add(key)
        return t

    def _saw(self, rule: Rule, w: MetricWindow, route: str, end: float) -> list[AlertChange]:
        key = (rule.name, w.series_key)
        t = self._track(rule, w.series_key, w.tenant, w.dimensions, route)
        self._seen[key] = max(self._seen.get(key, -math.inf), end)
        if t.machine.state in _OPEN:
            at = max(end, t.last_at)
            return self._offer(
                rule, t, Sample(at, False, False, value=0.0, explanation="data again")
            )
        return []

    def _window_sample(
        self, rule: Rule, w: MetricWindow, end: float, prev: float | None, key: str
    ) -> Sample | None:
        v = w.value
        if v is None:
            return None
        if rule.kind is RuleKind.THRESHOLD:
            band = (rule.threshold, None) if rule.op in ("<", "<=") else (None, rule.threshold)
            breached = rule.breaches(v)
            return Sample(
                end,
                breached,
                rule.holds(v),
                value=v,
                observed=v,
                lower=band[0],
                upper=band[1],
                explanation=_threshold_why(rule, v) if breached else "",
                revision=w.revision,
            )
        if rule.kind is RuleKind.RATE_OF_CHANGE:
            if prev is None:
                return None
            return _rate_sample(rule, v, prev, end, w.revision)
        if rule.kind is RuleKind.FORECAST:
            f = self._forecasts.get(key)
            if f is None:
                return None
            start = w.window_start
            i = bisect.bisect_left([p.time for p in f.points], start)
            if i >= len(f.points) or f.points[i].time != start:
                return None
            p = f.points[i]
            lo, hi = (p.lower80, p.upper80) if rule.interval == 80 else (p.lower95, p.upper95)
            above, below = v > hi, v < lo
            out = {"any": above or below, "up": above, "down": below}[rule.direction]
            why = ""
            if out:
                side = "above" if above else "below"
                why = (
                    f"{rule.metric} {v:.4g} is {side} the forecast's {rule.interval}% "
                    f"interval {lo:.4g}-{hi:.4g}"
                )
            return Sample(
                end,
                out,
                out,
                value=v,
                observed=v,
                expected=p.mean,
                lower=lo,
                upper=hi,
                explanation=why,
                revision=w.revision,
            )
        return None

    def _offer(self, rule: Rule, t: Track, s: Sample) -> list[AlertChange]:
        """Feed one sample: in order it steps the machine; a past one replays it."""
        hist = t.history
        keep = rule.kind is not RuleKind.ABSENCE
        if not hist or s.at > hist[-1].at:
            before = t.machine
            if s.cond or before.state not in _QUIET:
                after = _advance(before, s, rule)
                if after.state is AlertState.FIRING and before.state is AlertState.ACKNOWLEDGED:
                    after = dataclasses.replace(after, state=AlertState.ACKNOWLEDGED)
            else:
                after = before  # what _advance returns: a quiet machine, no breach
            t.machine = after
            if s.at > t.last_at:
                t.last_at = s.at
            t.last = s
            if keep:
                hist.append(s)
                horizon = s.at - self._horizon_s
                while hist and hist[0].at < horizon:
                    gone = hist.popleft()
                    if gone.cond or t.base.state not in _QUIET:
                        t.base = _advance(t.base, gone, rule)
            else:
                t.base = after
            if after is before or after == before:
                return []
            return self._diff(rule, t, before, after, s, s.at)
        # a revision of a step already evaluated (or a late first one inside the horizon)
        if not keep or s.at < hist[0].at:
            return []
        times = [x.at for x in hist]
        i = bisect.bisect_left(times, s.at)
        if i < len(hist) and hist[i].at == s.at:
            hist[i] = s
        else:
            hist.insert(i, s)
        before = t.machine
        m = t.base
        for x in hist:
            m = _advance(m, x, rule)
        if m.state is AlertState.FIRING and m.active_at is not None:
            if incident_id(t.fp, _dt(m.active_at)) in t.acked:
                m = dataclasses.replace(m, state=AlertState.ACKNOWLEDGED)
        t.machine = m
        if m == before:
            return []
        latest = hist[-1]
        t.last = latest
        ctx = dataclasses.replace(latest, revision=max(s.revision, latest.revision))
        return self._diff(rule, t, before, m, ctx, latest.at)

    def _diff(
        self, rule: Rule, t: Track, before: _Machine, after: _Machine, s: Sample, at: float
    ) -> list[AlertChange]:
        out: list[AlertChange] = []
        same = before.active_at == after.active_at
        if before.state in _ACTIVE and (not same or after.state not in _ACTIVE):
            out.append(self._change(rule, t, before, AlertState.RESOLVED, s, at, before.state))
        elif before.state is AlertState.PENDING and (not same or after.state not in _OPEN):
            out.append(self._change(rule, t, before, AlertState.INACTIVE, s, at, before.state))
        if after.state in _OPEN and (not same or after.state is not before.state):
            prev = before.state if same else AlertState.INACTIVE
            out.append(self._change(rule, t, after, after.state, s, at, prev))
        return out

    def _change(
        self,
        rule: Rule,
        t: Track,
        m: _Machine,
        state: AlertState,
        s: Sample,
        at: float,
        previous: AlertState | None = None,
    ) -> AlertChange:
        active_at = m.active_at if m.active_at is not None else at
        band = None
        if s.lower is not None and s.upper is not None:
            band = f"{s.lower:.4g}-{s.upper:.4g}"
        elif s.upper is not None:
            band = f"at most {s.upper:.4g}"
        elif s.lower is not None:
            band = f"at least {s.lower:.4g}"
        values = {
            "value": s.value,
            "observed": s.observed,
            "expected": s.expected,
            "lower": s.lower,
            "upper": s.upper,
            "band": band,
            "threshold": rule.threshold,
            "recovery": rule.recovery,
            "explanation": s.explanation,
            "rule": rule.name,
            "severity": rule.severity,
            "tenant": t.tenant,
            "metric": rule.metric,
            "window": rule.window,
            "series": t.series,
            "for": format_duration(rule.for_s),
        }
        return AlertChange(
            alert_id=incident_id(t.fp, _dt(active_at)),
            fingerprint=t.fp,
            rule=rule.name,
            kind=rule.kind.value,
            tenant=t.tenant,
            series=t.series,
            state=state,
            previous=previous if previous is not None else m.state,
            at=_dt(at),
            active_at=_dt(active_at),
            fired_at=_dt(m.fired_at) if m.fired_at is not None else None,
            value=s.value,
            observed=s.observed,
            expected=s.expected,
            lower=s.lower,
            upper=s.upper,
            severity=rule.severity,
            labels=dict(t.labels),
            summary=render(rule.summary, values, t.labels),
            description=render(rule.description, values, t.labels),
            explanation=s.explanation,
            revision=s.revision,
        )


_OP_WORDS = {">": "above", ">=": "at or above", "<": "below", "<=": "at or below"}


def _threshold_why(rule: Rule, v: float) -> str:
    """One sentence for a breached threshold, with the hysteresis when there is one.

    >>> from linkpulse.alerts.rules import parse_rules
    >>> (r,) = parse_rules("rules: [{name: f, kind: threshold, metric: payment_failure_rate,"
    ...                    " op: '>', threshold: 0.2, recovery: 0.1}]").rules
    >>> _threshold_why(r, 0.35)
    'payment_failure_rate 0.35 is above the threshold 0.2 (the alert holds until 0.1)'
    """
    why = f"{rule.metric} {v:.4g} is {_OP_WORDS[rule.op]} the threshold {rule.threshold:.4g}"
    if rule.recovery is not None:
        why += f" (the alert holds until {rule.recovery:.4g})"
    return why


def _rate_sample(rule: Rule, v: float, prev: float, end: float, revision: int) -> Sample | None:
    if rule.change == "relative":
        if prev == 0:
            return None  # a change from zero has no relative size
        x = (v - prev) / abs(prev)
    else:
        x = v - prev
    why = f"{rule.metric} went from {prev:.4g} to {v:.4g}"
    # Rule.breaches/holds, inline (one per rate rule and window update)
    cond = _CMP[rule.op](x, rule.threshold)
    rec = rule.recovery
    held = cond if rec is None else (x >= rec if rule.op in (">", ">=") else x <= rec)
    return Sample(
        end,
        cond,
        held,
        value=x,
        observed=v,
        expected=prev,
        explanation=why,
        revision=revision,
    )


def evaluate_all(engine: RuleEngine, items: Iterable[Any]) -> list[AlertChange]:
    """Feed windows, scores, forecasts and clock ticks (epoch seconds) in order (tests, replays)."""
    out: list[AlertChange] = []
    for item in items:
        if isinstance(item, MetricWindow):
            out.extend(engine.on_window(item))
        elif isinstance(item, AnomalyScore):
            out.extend(engine.on_score(item))
        elif isinstance(item, Forecast):
            engine.on_forecast(item)
        elif isinstance(item, int | float):
            out.extend(engine.on_tick(float(item)))
        else:
            msg = (
                f"cannot evaluate {type(item).__name__}: expected a window, score, forecast or tick"
            )
            raise TypeError(msg)
    return out
