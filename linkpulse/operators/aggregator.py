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
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

from linkpulse.operators.accumulators import Accumulator
from linkpulse.operators.metrics import Metric, Registry, dims_key, parse_series_key
from linkpulse.operators.series import Layout, Series, SeriesWindows
from linkpulse.operators.watermark import Watermark
from linkpulse.operators.windows import WindowSpec, pane_of, to_datetime, to_seconds
from linkpulse.schemas.outputs import MetricWindow

STATE_VERSION: Final = 1


class WindowAggregator(SeriesWindows):
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
        self._layouts: tuple[Layout, ...] = tuple(
            Layout(
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
        self._series: dict[str, Series] = {}
        self._meta: dict[str, tuple[Metric, str, str, dict[str, str]]] = {}
        self._dirty: tuple[set[str], set[str]] = (set(), set())  # per level
        self._live_pending: tuple[set[str], set[str]] = (set(), set())
        self._last_live = [-math.inf, -math.inf]
        self._next_boundary = -math.inf  # crossing a pane boundary commits every series
        # The watermark of the previous call: a window that ends within the horizon of it
        # still has all its panes (expiry lags by the horizon), so it can be published.
        self._last_wm = -math.inf
        self._min_due = math.inf  # lowest Series.due: a watermark below it closes nothing
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
        # The batch's partials are judged against the watermark at the start of the batch,
        # as the pre-aggregator judged its events late or not: committed against the
        # watermark the batch's own newest event set, a chunk spanning more than the
        # revision horizon (a backlog of sparse traffic) had its older windows discarded
        # as past the horizon, never emitted and never counted late.
        before = self._wm.current(now)
        wm = self._wm.observe(max_event_time, now) if max_event_time > -math.inf else before
        return self._advance(now, wm, commit_wm=before)

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
            "last_wm": self._last_wm,
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

    def _new_series(self, skey: str) -> Series:
        tenant, name, dims = parse_series_key(skey)
        metric = self._registry.get(name)
        self._meta[skey] = (metric, tenant, dims_key(dims), dims)
        level = 1 if dims else 0
        s = self._series[skey] = Series(name, level, self._n_sliding)
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
        self._last_wm = state["last_wm"]
        if state["layout"] != self._layout_id():
            return  # windows or panes changed: old window state would be misread
        old_keys: dict[str, str] = state["state_keys"]
        for skey, d in state["series"].items():
            name = d["metric"]
            # a changed accumulator family or parameter never reuses old state
            if name in self._registry and old_keys.get(name) == self._state_keys.get(name):
                self._new_series(skey)
                self._series[skey] = Series.load(d)
                if d["pending"]:
                    self._dirty[d["level"]].add(skey)
                if d["live"] or d["slide_live"]:
                    self._live_pending[d["level"]].add(skey)
        self._min_due = min((s.due for s in self._series.values()), default=math.inf)

    def _advance(
        self, now: float, wm: float, force: bool = False, commit_wm: float | None = None
    ) -> list[MetricWindow]:
        """Commit, close, revise, emit live values and expire, at watermark ``wm``.

        ``commit_wm`` (at most ``wm``) decides which committed windows are still
        open and which are past the horizon; the windows it leaves open that
        ``wm`` passed close right after, as finals.
        """
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
        if force:  # close() commits at the clock's watermark, then ends all
            commit_wm = self._wm.current(now)
        elif commit_wm is None or commit_wm > wm:
            commit_wm = wm
        for level, dirty in enumerate(self._dirty):
            if live_due[level] or boundary:
                # sorted: set order depends on insertion history, which a restore
                # does not replay; emission order must not (replays are compared)
                ordered = sorted(dirty)
                for skey in ordered:
                    self._commit(skey, commit_wm)
                committed.extend(ordered)
                dirty.clear()
        closing = wm >= self._min_due
        due = sorted(k for k, s in self._series.items() if s.due <= wm) if closing else []
        for skey in due:
            self._close(skey, wm, self._last_wm, out)
        for skey in committed:
            self._emit_revisions(skey, out)
        for level, due_now in enumerate(live_due):
            if due_now:
                for skey in sorted(self._live_pending[level]):
                    self._emit_live(skey, out)
                self._live_pending[level].clear()
                self._last_live[level] = now
        for skey in due:
            self._expire(skey, wm)
        if closing:
            self._min_due = min((s.due for s in self._series.values()), default=math.inf)
        if boundary and math.isfinite(wm):  # -inf before any event, +inf at close()
            self._next_boundary = pane_of(wm, self._pane_s) + self._pane_s
        if wm < math.inf:
            self._last_wm = max(self._last_wm, wm)
        return out
