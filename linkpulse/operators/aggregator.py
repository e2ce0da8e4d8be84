"""The keyed window state machine: pane partials in, ``MetricWindow`` updates out.

``WindowAggregator`` holds, per series (``tenant|metric|dims_key``), the
partials received since the last flush, the 10 s panes (for sliding windows),
and one accumulator per tumbling window. On each call it

1. queues incoming partials (cheap: one merge per (series, pane) per batch);
2. at most once per ``emit_interval_s``, or when the watermark crosses a pane
   boundary, commits the queued partials into panes and tumbling windows;
3. emits a ``final`` value for each window the watermark passed, a
   ``revision + 1`` for each already-final window that late data changed while
   it is within ``revision_horizon_s`` after its end (older ones are not
   touched: the store's rollups account for them), and, once per emit
   interval, non-final values of changed open windows (for sliding windows,
   the newest one) for live tiles;
4. discards windows, panes and whole series once the horizon has passed.

It is pure: time comes from ``now_getter`` and all state ``snapshot()``s to
picklable plain data. Build it with ``MetricsConfig.build_aggregator``; see
``linkpulse.operators.pipeline`` for an example.
"""

from __future__ import annotations

import math
import pickle
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from linkpulse.operators.accumulators import Accumulator
from linkpulse.operators.metrics import Metric, Registry, dims_key, parse_series_key
from linkpulse.operators.watermark import Watermark
from linkpulse.operators.windows import WindowSpec, pane_of, to_datetime, to_seconds
from linkpulse.schemas.outputs import MetricWindow

STATE_VERSION: Final = 1
WKey = tuple[int, int]  # (window spec index, window start)


class _Series:
    """Everything one series keeps; plain attributes so it snapshots as a dict."""

    __slots__ = (
        "due",
        "final_rev",
        "level",
        "live",
        "max_pane",
        "metric",
        "open_tum",
        "panes",
        "pending",
        "revise",
        "slide_done",
        "slide_live",
        "tum",
    )

    def __init__(self, metric: str, level: int, n_sliding: int) -> None:
        self.metric = metric
        self.level = level  # 0: tenant-level series, 1: series with dimensions
        self.pending: dict[int, Accumulator] = {}
        self.panes: dict[int, Accumulator] = {}
        self.tum: dict[WKey, Accumulator] = {}
        self.final_rev: dict[WKey, int] = {}  # windows emitted final -> last revision
        self.open_tum: set[WKey] = set()
        self.live: set[WKey] = set()
        self.revise: set[WKey] = set()
        self.slide_done: list[float] = [-math.inf] * n_sliding
        self.slide_live = False
        self.max_pane = -(2**62)
        self.due = math.inf  # earliest watermark at which closing or expiry has work

    def dump(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def load(cls, d: dict[str, Any]) -> _Series:
        s = cls.__new__(cls)
        for k in cls.__slots__:
            setattr(s, k, d[k])
        return s


@dataclass(frozen=True)
class _Layout:
    """The windows one level of series (tenant-level or with dimensions) gets."""

    tumbling: tuple[tuple[int, int], ...]  # (window index, size)
    sliding: tuple[tuple[int, int, WindowSpec], ...]  # (slot in slide_done, window index, spec)
    max_slide: int
    interval: float  # live emit interval


class WindowAggregator:
    """Merges pane partials for many series and emits window updates.

    Use ``add(partials, max_event_time)`` per pre-aggregated batch, ``tick()``
    when ``next_awake()`` says so (idle advance), and ``close()`` at end of
    input. ``snapshot()`` is the Bytewax recovery state; pass it back as
    ``resume_state`` to ``MetricsConfig.build_aggregator``.

    >>> from datetime import UTC, datetime
    >>> from linkpulse.operators import MetricsConfig, Moments
    >>> now = datetime(2026, 11, 24, 10, 0, 30, tzinfo=UTC)
    >>> cfg = MetricsConfig(windows=("1m",), emit_interval_s=0, now_getter=lambda: now)
    >>> agg = cfg.build_aggregator()
    >>> pane = int(datetime(2026, 11, 24, 10, 0, 20, tzinfo=UTC).timestamp())
    >>> partial = Moments.of([1.0, 1.0])  # two events, pre-aggregated
    >>> [(w.series_key, w.value, w.final) for w in agg.add({("acme|orders|", pane): partial},
    ...                                                    max_event_time=pane + 5)]
    [('acme|orders||1m', 2.0, False)]
    >>> [(w.value, w.final) for w in agg.close()]
    [(2.0, True)]
    >>> agg.is_empty()
    True
    """

    def __init__(
        self,
        *,
        registry: Registry,
        windows: tuple[WindowSpec, ...],
        dimension_windows: tuple[WindowSpec, ...],
        pane_s: int,
        factories: Mapping[str, Callable[[], Accumulator]],
        state_keys: Mapping[str, str],
        watermark: Watermark,
        revision_horizon_s: float,
        emit_interval_s: float,
        dimension_emit_interval_s: float,
        now_getter: Callable[[], datetime],
        resume_state: bytes | None = None,
    ) -> None:
        self._registry = registry
        self._windows = windows
        self._pane_s = pane_s
        self._names = [w.name for w in windows]
        sliding = [(i, w) for i, w in enumerate(windows) if w.is_sliding]
        self._n_sliding = len(sliding)
        self._layouts: tuple[_Layout, ...] = tuple(
            _Layout(
                tumbling=tuple(
                    (i, w.size_s) for i, w in enumerate(windows) if not w.is_sliding and w in ws
                ),
                sliding=tuple((j, i, w) for j, (i, w) in enumerate(sliding) if w in ws),
                max_slide=max((w.size_s for _, w in sliding if w in ws), default=0),
                interval=interval,
            )
            for ws, interval in (
                (windows, emit_interval_s),
                (dimension_windows, dimension_emit_interval_s),
            )
        )
        self._factories = factories
        self._state_keys = dict(state_keys)
        self._wm = watermark
        self._horizon = revision_horizon_s
        self._now_getter = now_getter
        self._series: dict[str, _Series] = {}
        self._meta: dict[str, tuple[Metric, str, str, dict[str, str]]] = {}
        self._dirty: tuple[set[str], set[str]] = (set(), set())  # per level
        self._live_pending: tuple[set[str], set[str]] = (set(), set())
        self._last_live = [-math.inf, -math.inf]
        self._next_boundary = -math.inf  # crossing a pane boundary commits every series
        self._min_due = math.inf  # lowest _Series.due: a watermark below it closes nothing
        self._datetimes: dict[int, datetime] = {}  # window bounds are few: reuse them
        self.dropped_partials = 0  # partials whose every window was beyond the horizon
        if resume_state is not None:
            self._restore(resume_state)

    # -- public API -------------------------------------------------------------------------

    @property
    def watermark(self) -> float:
        """The current watermark (epoch seconds) by the injected clock."""
        return self._wm.current(self._now())

    def add(
        self, partials: Mapping[tuple[str, int], Accumulator], max_event_time: float | None = None
    ) -> list[MetricWindow]:
        """Take a batch of partials (ownership passes to the aggregator) and emit what is due.

        ``max_event_time`` is the newest event time behind the partials (from
        ``PaneBatch``); without it the newest pane start is used.
        """
        series, dirty = self._series, self._dirty
        for (skey, pane), acc in partials.items():
            s = series.get(skey)
            if s is None:
                s = self._new_series(skey)
            pending = s.pending
            if not pending:  # pending is empty exactly while the series is clean
                dirty[s.level].add(skey)
            pend = pending.get(pane)
            if pend is None:
                pending[pane] = acc
            else:
                pend.merge(acc)
        if max_event_time is None:
            max_event_time = max((pane for _, pane in partials), default=-math.inf)
        now = self._now()
        wm = self._wm.observe(max_event_time, now) if max_event_time > -math.inf else None
        return self._advance(now, self._wm.current(now) if wm is None else wm)

    def tick(self) -> list[MetricWindow]:
        """Advance by the clock alone: idle watermark advance and due live updates."""
        now = self._now()
        return self._advance(now, self._wm.current(now))

    def next_awake(self) -> datetime | None:
        """When ``tick()`` next has something to do (``None``: only new input will)."""
        now = self._now()
        times: list[float] = []
        for level, layout in enumerate(self._layouts):
            if self._dirty[level] or self._live_pending[level]:
                times.append(max(now, self._last_live[level] + layout.interval))
        if self._min_due < math.inf:
            t = self._wm.when_reaches(self._min_due, now)
            if t is not None:
                times.append(t)
        return to_datetime(min(times)) if times else None

    def close(self) -> list[MetricWindow]:
        """End of input: emit every window as final and drop all series state."""
        out = self._advance(self._now(), math.inf, force=True)
        self._series.clear()
        self._meta.clear()
        self._min_due = math.inf
        return out

    def is_empty(self) -> bool:
        """True when no series holds state (a keyed runtime may discard this object)."""
        return not self._series

    def series_keys(self) -> list[str]:
        """Keys of the series currently holding state."""
        return list(self._series)

    def snapshot(self) -> bytes:
        """Recovery state: an immutable pickled copy (accumulators pickle via ``__reduce__``)."""
        state = {
            "version": STATE_VERSION,
            "layout": self._layout_id(),
            "state_keys": dict(self._state_keys),
            "watermark": self._wm.snapshot(),
            "last_live": self._last_live,
            "next_boundary": self._next_boundary,
            "series": {k: s.dump() for k, s in self._series.items()},
        }
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    # -- internals --------------------------------------------------------------------------

    def _layout_id(self) -> list[Any]:
        return [
            self._names,
            [[lay.tumbling, [x[:2] for x in lay.sliding]] for lay in self._layouts],
        ]

    def _now(self) -> float:
        return to_seconds(self._now_getter())

    def _new_series(self, skey: str) -> _Series:
        tenant, name, dims = parse_series_key(skey)
        metric = self._registry.get(name)
        self._meta[skey] = (metric, tenant, dims_key(dims), dims)
        level = 1 if dims else 0
        s = self._series[skey] = _Series(name, level, self._n_sliding)
        return s

    def _restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)  # noqa: S301 - our own snapshot from the recovery store
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return  # unknown layout: start empty rather than misread it
        self._wm.__init__(  # type: ignore[misc]
            self._wm.allowed_lateness_s, self._wm.idle_timeout_s, state["watermark"]
        )
        self._last_live = list(state["last_live"])
        self._next_boundary = state["next_boundary"]
        if state["layout"] != self._layout_id():
            return  # windows or panes changed: old window state would be misread
        old_keys: dict[str, str] = state["state_keys"]
        for skey, d in state["series"].items():
            name = d["metric"]
            # a changed accumulator family or parameter never reuses old state
            if name in self._registry and old_keys.get(name) == self._state_keys.get(name):
                self._new_series(skey)
                self._series[skey] = _Series.load(d)
                if d["pending"]:
                    self._dirty[d["level"]].add(skey)
                if d["live"] or d["slide_live"]:
                    self._live_pending[d["level"]].add(skey)
        self._min_due = min((s.due for s in self._series.values()), default=math.inf)

    def _advance(self, now: float, wm: float, force: bool = False) -> list[MetricWindow]:
        out: list[MetricWindow] = []
        live_due = [
            force or now - self._last_live[level] >= layout.interval
            for level, layout in enumerate(self._layouts)
        ]
        boundary = wm >= self._next_boundary
        if not (live_due[0] or live_due[1] or boundary):
            return out
        # Series with dimensions commit on their own (slower) cadence: pending partials
        # coalesce meanwhile. Any closing needs everything committed first.
        committed: list[str] = []
        commit_wm = self._wm.current(now) if force else wm  # close() commits, then ends all
        for level, dirty in enumerate(self._dirty):
            if live_due[level] or boundary:
                for skey in dirty:
                    self._commit(skey, commit_wm)
                committed.extend(dirty)
                dirty.clear()
        closing = wm >= self._min_due
        due = [k for k, s in self._series.items() if s.due <= wm] if closing else []
        for skey in due:
            self._close(skey, wm, commit_wm, out)
        for skey in committed:
            self._emit_revisions(skey, out)
        for level, due_now in enumerate(live_due):
            if due_now:
                for skey in self._live_pending[level]:
                    self._emit_live(skey, out)
                self._live_pending[level].clear()
                self._last_live[level] = now
        for skey in due:
            self._expire(skey, wm)
        if closing:
            self._min_due = min((s.due for s in self._series.values()), default=math.inf)
        if boundary and wm < math.inf:
            self._next_boundary = pane_of(wm, self._pane_s) + self._pane_s
        return out

    def _commit(self, skey: str, wm: float) -> None:
        s = self._series[skey]
        new = self._factories[s.metric]
        horizon = self._horizon
        layout = self._layouts[s.level]
        for pane, acc in s.pending.items():
            used = False
            for i, size in layout.tumbling:
                ws = pane - pane % size
                end = ws + size
                if end + horizon <= wm:
                    continue  # past the revision horizon: its state is gone
                used = True
                key = (i, ws)
                w = s.tum.get(key)
                if w is None:
                    w = s.tum[key] = new()
                    if end > wm:
                        s.open_tum.add(key)
                        if end < s.due:
                            s.due = end
                w.merge(acc)
                if key in s.open_tum:
                    s.live.add(key)
                else:
                    s.revise.add(key)
                    if end + horizon < s.due:  # so its state is discarded in time
                        s.due = end + horizon
            if layout.sliding and pane + layout.max_slide + horizon > wm:
                used = True
                p = s.panes.get(pane)
                if p is None:
                    s.panes[pane] = acc
                else:
                    p.merge(acc)
                for j, i, spec in layout.sliding:
                    done = s.slide_done[j]
                    for ws in spec.starts_containing(pane):
                        end = ws + spec.size_s
                        if end > done:
                            s.slide_live = True
                        elif end + horizon > wm:
                            s.revise.add((i, ws))
                if pane > s.max_pane:
                    s.max_pane = pane
                if pane + self._pane_s < s.due:
                    s.due = pane + self._pane_s
            if not used:
                self.dropped_partials += 1
        s.pending.clear()
        if s.due < self._min_due:
            self._min_due = s.due
        if s.live or s.slide_live:
            self._live_pending[s.level].add(skey)

    def _close(self, skey: str, wm: float, state_wm: float, out: list[MetricWindow]) -> None:
        """Emit finals for windows ending by ``wm``; ``state_wm`` decides what has expired."""
        s = self._series[skey]
        for key in sorted(s.open_tum):
            i, ws = key
            if ws + self._windows[i].size_s <= wm:
                s.open_tum.discard(key)
                s.live.discard(key)
                s.final_rev[key] = 0
                out.append(self._window(skey, i, ws, s.tum[key], 0, True))
        if s.panes:
            keys = sorted(s.panes)
            for j, i, spec in self._layouts[s.level].sliding:
                size, step = spec.size_s, spec.step_s
                end = s.slide_done[j] + step if s.slide_done[j] > -math.inf else -math.inf
                while end <= wm:
                    lo = bisect_left(keys, end - size) if end > -math.inf else 0
                    if lo == len(keys):
                        break
                    if end == -math.inf or keys[lo] >= end:  # empty window: jump to the next pane
                        end = (keys[lo] // step + 1) * step
                        continue
                    ws = int(end - size)
                    if end + self._horizon > state_wm:  # else too old to publish: state is gone
                        s.final_rev[(i, ws)] = 0
                        acc = self._compose(s, keys, ws, end)
                        out.append(self._window(skey, i, ws, acc, 0, True))
                    end += step
                if wm > s.slide_done[j]:
                    s.slide_done[j] = wm if wm == math.inf else (wm // step) * step

    def _expire(self, skey: str, wm: float) -> None:
        s, horizon = self._series[skey], self._horizon
        for key in [k for k in s.final_rev if k[1] + self._windows[k[0]].size_s + horizon <= wm]:
            del s.final_rev[key]
            s.tum.pop(key, None)
            s.revise.discard(key)
        cutoff = wm - self._layouts[s.level].max_slide - horizon
        for p in [p for p in s.panes if p <= cutoff]:
            del s.panes[p]
        if not (s.pending or s.panes or s.tum or s.revise):
            del self._series[skey]
            self._meta.pop(skey, None)
            self._live_pending[s.level].discard(skey)
            return
        s.due = self._next_due(s)

    def _next_due(self, s: _Series) -> float:
        """Earliest watermark at which ``_close``/``_expire`` would change something."""
        due = math.inf
        sizes, horizon = self._windows, self._horizon
        for i, ws in s.open_tum:
            due = min(due, ws + sizes[i].size_s)
        for i, ws in s.final_rev:
            due = min(due, ws + sizes[i].size_s + horizon)
        if s.panes:
            layout = self._layouts[s.level]
            newest = max(s.panes)
            for j, _, spec in layout.sliding:
                if newest + spec.size_s > s.slide_done[j]:
                    due = min(due, s.slide_done[j] + spec.step_s)
            due = min(due, min(s.panes) + layout.max_slide + horizon)
        return due

    def _compose(self, s: _Series, keys: list[int], start: int, end: float) -> Accumulator:
        acc = self._factories[s.metric]()
        for k in range(bisect_left(keys, start), bisect_left(keys, end)):
            acc.merge(s.panes[keys[k]])
        return acc

    def _emit_revisions(self, skey: str, out: list[MetricWindow]) -> None:
        s = self._series.get(skey)
        if s is None or not s.revise:
            return
        keys = sorted(s.panes)
        for i, ws in sorted(s.revise):
            spec = self._windows[i]
            acc = (
                self._compose(s, keys, ws, ws + spec.size_s) if spec.is_sliding else s.tum[(i, ws)]
            )
            rev = s.final_rev.get((i, ws), -1) + 1
            s.final_rev[(i, ws)] = rev
            out.append(self._window(skey, i, ws, acc, rev, True))
        s.revise.clear()

    def _emit_live(self, skey: str, out: list[MetricWindow]) -> None:
        s = self._series.get(skey)
        if s is None:
            return
        for i, ws in sorted(s.live):
            out.append(self._window(skey, i, ws, s.tum[(i, ws)], 0, False))
        s.live.clear()
        if s.slide_live:
            keys = sorted(s.panes)
            for j, i, spec in self._layouts[s.level].sliding:
                end = (s.max_pane // spec.step_s + 1) * spec.step_s
                if end > s.slide_done[j]:
                    ws = end - spec.size_s
                    out.append(self._window(skey, i, ws, self._compose(s, keys, ws, end), 0, False))
            s.slide_live = False

    def _dt(self, t: int) -> datetime:
        dt = self._datetimes.get(t)
        if dt is None:
            if len(self._datetimes) > 100_000:
                self._datetimes.clear()
            dt = self._datetimes[t] = to_datetime(t)
        return dt

    def _window(
        self, skey: str, i: int, ws: int, acc: Accumulator, rev: int, final: bool
    ) -> MetricWindow:
        metric, tenant, dk, dims = self._meta[skey]
        spec = self._windows[i]
        f = acc.fields()
        kind = metric.value
        if kind == "count":
            value: float | None = float(f["count"])
        elif kind == "ratio":
            value = f["mean"]
        else:
            value = f.get(kind)
        return MetricWindow(
            metric=metric.name,
            tenant=tenant,
            dims_key=dk,
            dimensions=dict(dims),
            window=self._names[i],
            window_start=self._dt(ws),
            window_end=self._dt(ws + spec.size_s),
            value=value,
            revision=rev,
            final=final,
            **f,
        )
