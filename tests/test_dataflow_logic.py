"""The flow's stateful steps without Bytewax: restore mid-stream gives the same windows."""

from __future__ import annotations

import time

from linkpulse.dataflows.branch import RouteTick
from linkpulse.dataflows.live_metrics import (
    ROUTES,
    DecodedChunk,
    PreAggregateLogic,
    WindowLogic,
)
from linkpulse.operators import route
from linkpulse.schemas import BaseEvent, decode_event
from linkpulse.schemas.outputs import MetricWindow
from tests.test_dataflow_helpers import TEST_METRICS, build_event_set

NS = 1_000_000_000


def route_of(w: MetricWindow) -> int:
    """The route the windows step keeps the series of ``w`` on."""
    return route(f"{w.tenant}|{w.metric}|{w.dims_key}", ROUTES)


def chunks_of(events: list[BaseEvent], size: int, start_ns: int) -> list[DecodedChunk]:
    return [
        DecodedChunk("p", start_ns + (i // size) * NS // 4, events[i : i + size], [])
        for i in range(0, len(events), size)
    ]


def run(
    chunks: list[DecodedChunk],
    pre: PreAggregateLogic,
    wins: dict[str, WindowLogic],
) -> list[MetricWindow | RouteTick]:
    out: list[MetricWindow | RouteTick] = []
    for chunk in chunks:
        routed, _ = pre.on_batch([chunk])
        for key, rb in routed:
            w = wins.get(key)
            if w is None:
                w = wins[key] = WindowLogic(TEST_METRICS, None)
            emitted, _ = w.on_batch([rb])
            out.extend(emitted)
    return out


def test_snapshot_and_restore_between_chunks_reproduce_the_clean_run() -> None:
    es = build_event_set("p", n=2000, seed=9, late=5)
    events = [decode_event(m[1]) for m in es.messages if m[2]]
    chunks = chunks_of(events, 250, time.time_ns())

    clean = run(chunks, PreAggregateLogic(TEST_METRICS, None), {})

    pre = PreAggregateLogic(TEST_METRICS, None)
    wins: dict[str, WindowLogic] = {}
    half = len(chunks) // 2
    first = run(chunks[:half], pre, wins)
    # "crash": rebuild every step from its snapshot, as Bytewax does on resume
    pre = PreAggregateLogic(TEST_METRICS, pre.snapshot())
    wins = {k: WindowLogic(TEST_METRICS, w.snapshot()) for k, w in wins.items()}
    second = run(chunks[half:], pre, wins)

    def windows(items: list[MetricWindow | RouteTick]) -> list[MetricWindow]:
        return [w for w in items if isinstance(w, MetricWindow)]

    assert windows(first + second) == windows(clean)
    assert any(w.revision > 0 for w in windows(clean))  # the late events did revise windows
    # A resumed route may repeat its last tick, never move it back or skip one.
    ticks = [t for t in first + second if isinstance(t, RouteTick)]
    assert sorted(set(ticks)) == sorted({t for t in clean if isinstance(t, RouteTick)})


def test_a_tick_follows_every_window_it_covers() -> None:
    es = build_event_set("p", n=2000, seed=5, late=5)
    events = [decode_event(m[1]) for m in es.messages if m[2]]
    out = run(chunks_of(events, 250, time.time_ns()), PreAggregateLogic(TEST_METRICS, None), {})
    ticks = [t for t in out if isinstance(t, RouteTick)]
    assert {t.route for t in ticks} == {f"r{i:02d}" for i in range(16)}
    assert all(t.at % 60 == 0 for t in ticks)
    last: dict[str, float] = {}
    for item in out:
        if isinstance(item, RouteTick):
            assert item.at > last.get(item.route, -1.0)  # each route's ticks only grow
            last[item.route] = item.at
        elif item.final and item.revision == 0:
            # a window made final after its route's tick passed its end would be
            # missed by a branch stepping on the ticks (it is a revision then)
            route = f"r{route_of(item):02d}"
            assert item.window_end.timestamp() > last.get(route, -1.0), item
    assert len(set(last.values())) >= 1 and min(last.values()) > 0


def test_idle_ticks_before_any_event_are_ignored_even_after_a_restore() -> None:
    pre = PreAggregateLogic(TEST_METRICS, None)
    tick = DecodedChunk("p", time.time_ns(), [], [])
    assert list(pre.on_batch([tick])[0]) == []
    restored = PreAggregateLogic(TEST_METRICS, pre.snapshot())
    assert list(restored.on_batch([tick])[0]) == []
