"""Per-series window bookkeeping behind ``WindowAggregator``.

A series (``tenant|metric|dims_key``) keeps the partials queued since the last
commit, its 10 s panes (for sliding windows), one accumulator per tumbling
window, and which windows are final and at which revision. ``SeriesWindows``
holds the steps the aggregator runs on a series: commit queued partials,
close windows the watermark passed, re-emit revised ones, emit live values,
and discard what is past the revision horizon.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from linkpulse.operators.accumulators import Accumulator
from linkpulse.operators.metrics import Metric
from linkpulse.operators.windows import WindowSpec, to_datetime
from linkpulse.schemas.outputs import MetricWindow

WKey = tuple[int, int]  # (window spec index, window start)


class Series:
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
    def load(cls, d: dict[str, Any]) -> Series:
        s = cls.__new__(cls)
        for k in cls.__slots__:
            setattr(s, k, d[k])
        return s


@dataclass(frozen=True)
class Layout:
    """The windows one level of series (tenant-level or with dimensions) gets."""

    tumbling: tuple[tuple[int, int], ...]  # (window index, size)
    sliding: tuple[tuple[int, int, WindowSpec], ...]  # (slot in slide_done, window index, spec)
    max_slide: int
    interval: float  # live emit interval


class SeriesWindows:
    """The per-series steps; ``WindowAggregator`` owns the state they work on."""

    _windows: tuple[WindowSpec, ...]
    _names: list[str]
    _pane_s: int
    _layouts: tuple[Layout, ...]
    _factories: Mapping[str, Callable[[], Accumulator]]
    _horizon: float
    _series: dict[str, Series]
    _meta: dict[str, tuple[Metric, str, str, dict[str, str]]]
    _live_pending: tuple[set[str], set[str]]
    _min_due: float
    _datetimes: dict[int, datetime]
    dropped_partials: int

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

    def _close(self, skey: str, wm: float, last_wm: float, out: list[MetricWindow]) -> None:
        """Emit finals for windows ending by ``wm``.

        A sliding window is published only if it ends within the horizon of
        ``last_wm`` (the previous call's watermark): then none of its panes can
        have expired yet. Older ones can only be reached by data that arrived
        after the horizon, which is counted late and not published.
        """
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
                    if end + self._horizon > last_wm:
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

    def _next_due(self, s: Series) -> float:
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

    def _compose(self, s: Series, keys: list[int], start: int, end: float) -> Accumulator:
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
