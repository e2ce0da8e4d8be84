"""One batch spanning many minutes of event time (a backlog catch-up) loses no window.

Fed exactly as the live flow feeds the operators (``PreAggregator.process`` on
a chunk, ``WindowAggregator.add`` with the batch's newest event time, the clock
at the chunk's last event, then ``tick()`` once traffic stops), with the
default lateness and idle timeout. Every closed 1-minute window, tenant-level
and per seller, must equal a brute-force GROUP BY over the events, and the same
events cut into per-minute chunks must give the same windows.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from linkpulse.operators import MetricsConfig
from linkpulse.schemas.events import BaseEvent
from linkpulse.schemas.outputs import MetricWindow
from tests.test_operators_pipeline import BRUTE, _check, brute_force, latest, random_events


def feed_like_the_flow(chunks: list[list[BaseEvent]]) -> tuple[list[MetricWindow], int, int]:
    """Pre-aggregate each chunk, add its partials, tick after traffic stops.

    Returns (windows, late events, partials the aggregator dropped).
    """
    clock = [chunks[0][0].event_time]
    cfg = MetricsConfig(windows=("1m",), now_getter=lambda: clock[0])
    pre, agg = cfg.build_preaggregator(), cfg.build_aggregator()
    out: list[MetricWindow] = []
    late = 0
    for chunk in chunks:
        clock[0] = chunk[-1].event_time  # the stream time of the chunk's last message
        batch = pre.process(chunk)
        late += batch.late
        out += agg.add(batch.partials, batch.max_event_time)
    clock[0] += timedelta(minutes=5)  # traffic stopped: the idle advance closes the rest
    out += agg.tick()
    return out, late, agg.dropped_partials


def by_minute(events: list[BaseEvent]) -> list[list[BaseEvent]]:
    chunks: dict[int, list[BaseEvent]] = {}
    for e in events:
        chunks.setdefault(int(e.event_time.timestamp() // 60), []).append(e)
    return list(chunks.values())


def windows_of(finals: dict[tuple[str, str, str, datetime], MetricWindow], metric: str) -> dict:
    return {
        (w.tenant, w.dims_key, int(w.window_start.timestamp())): w
        for w in finals.values()
        if w.metric == metric and w.window == "1m"
    }


# (seed, events, span in minutes): 30 min as reported; 2 h is longer than the revision horizon
@pytest.mark.parametrize(("seed", "n", "minutes"), [(1, 600, 30), (2, 300, 30), (3, 600, 120)])
def test_one_chunk_over_many_minutes_gives_every_window(seed: int, n: int, minutes: int) -> None:
    events = random_events(seed, n, span_s=minutes * 60.0, tenants=1)
    one, late, dropped = feed_like_the_flow([events])
    assert late == 0, f"seed={seed}: nothing in a single sorted chunk is late"
    per_minute, _, _ = feed_like_the_flow(by_minute(events))
    finals, finals_per_minute = latest(one), latest(per_minute)
    for metric in BRUTE:
        want = brute_force(events, metric)
        got = windows_of(finals, metric)
        assert set(got) == set(want), f"seed={seed} {metric}: {sorted(set(want) - set(got))[:5]}"
        for key, row in want.items():
            _check(metric, got[key], row)
        split = windows_of(finals_per_minute, metric)
        assert set(split) == set(got), f"seed={seed} {metric}: per-minute chunks differ"
        for key, row in want.items():
            _check(metric, split[key], row)
    assert dropped == 0, f"seed={seed}: partials of on-time events dropped"
    # only the single chunk is never late: its windows close as finals, not revisions
    assert not [w for w in one if w.revision], f"seed={seed}"
