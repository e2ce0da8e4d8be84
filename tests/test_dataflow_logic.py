"""The flow's stateful steps without Bytewax: restore mid-stream gives the same windows."""

from __future__ import annotations

import time

from linkpulse.dataflows.live_metrics import (
    DecodedChunk,
    PreAggregateLogic,
    WindowLogic,
)
from linkpulse.schemas import BaseEvent, decode_event
from linkpulse.schemas.outputs import MetricWindow
from tests.test_dataflow_helpers import TEST_METRICS, build_event_set

NS = 1_000_000_000


def chunks_of(events: list[BaseEvent], size: int, start_ns: int) -> list[DecodedChunk]:
    return [
        DecodedChunk("p", start_ns + (i // size) * NS // 4, events[i : i + size], [])
        for i in range(0, len(events), size)
    ]


def run(
    chunks: list[DecodedChunk],
    pre: PreAggregateLogic,
    wins: dict[str, WindowLogic],
) -> list[MetricWindow]:
    out: list[MetricWindow] = []
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

    assert first + second == clean
    assert any(w.revision > 0 for w in clean)  # the late events did revise windows


def test_idle_ticks_before_any_event_are_ignored_even_after_a_restore() -> None:
    pre = PreAggregateLogic(TEST_METRICS, None)
    tick = DecodedChunk("p", time.time_ns(), [], [])
    assert list(pre.on_batch([tick])[0]) == []
    restored = PreAggregateLogic(TEST_METRICS, pre.snapshot())
    assert list(restored.on_batch([tick])[0]) == []
