"""The window state machine: closing, live updates, late data, revisions, bounded state."""

from __future__ import annotations

import pickle
import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkpulse.operators import REGISTRY, Metric, MetricsConfig, MetricsPipeline
from linkpulse.schemas.events import BaseEvent, OrderPlaced, UserSignup
from linkpulse.schemas.outputs import MetricWindow
from tests.test_operators_pipeline import T0, _check, brute_force, latest, random_events

_n = [0]


def signup(at: datetime, tenant: str = "acme") -> BaseEvent:
    _n[0] += 1
    return UserSignup(event_id=f"s{_n[0]}", event_time=at, tenant=tenant, user_id=f"u{_n[0]}")


def order(at: datetime, amount: float, seller: str = "s1") -> BaseEvent:
    _n[0] += 1
    return OrderPlaced(
        event_id=f"o{_n[0]}",
        event_time=at,
        tenant="acme",
        user_id="u1",
        seller_id=seller,
        amount=amount,
        currency="USD",
        properties={"order_id": f"o{_n[0]}"},
    )


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at

    def __call__(self) -> datetime:
        return self.now

    def set(self, seconds: float) -> None:
        self.now = T0 + timedelta(seconds=seconds)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def pipeline(clock: Clock, **kw: Any) -> MetricsPipeline:
    base: dict[str, Any] = {
        "windows": ("1m",),
        "allowed_lateness_s": 10.0,
        "idle_timeout_s": None,
        "revision_horizon_s": 120.0,
        "emit_interval_s": 0.0,
        "dimension_emit_interval_s": 0.0,
        "now_getter": clock,
    }
    return MetricsConfig(**{**base, **kw}).build()


def pick(out: list[MetricWindow], metric: str, dims: str = "") -> list[MetricWindow]:
    return [w for w in out if w.metric == metric and w.dims_key == dims]


def test_window_is_final_only_when_watermark_passes_its_end() -> None:
    clock = Clock(at(5))
    p = pipeline(clock)
    live = pick(p.process([signup(at(5))]), "signups")
    assert [(w.value, w.final, w.revision) for w in live] == [(1.0, False, 0)]
    clock.set(65)
    out = pick(p.process([signup(at(65))]), "signups")
    # watermark 65 - 10 = 55 < 60: [0, 60) stays open; only the changed window is updated
    assert [(w.window_start, w.value, w.final) for w in out] == [(at(60), 1.0, False)]
    clock.set(70)
    out = pick(p.process([signup(at(70))]), "signups")
    final = [w for w in out if w.final]
    assert [(w.window_start, w.value) for w in final] == [(at(0), 1.0)]
    assert final[0].window_end == at(60)


def test_live_updates_at_most_once_per_emit_interval() -> None:
    clock = Clock(at(1))
    p = pipeline(clock, emit_interval_s=1.0)
    assert len(pick(p.process([signup(at(1))]), "signups")) == 1
    clock.set(1.4)
    assert pick(p.process([signup(at(1.4))]), "signups") == []  # within the interval
    clock.set(1.9)
    assert pick(p.tick(), "signups") == []
    assert p.next_awake() == at(2)
    clock.set(2.0)
    assert [w.value for w in pick(p.tick(), "signups")] == [2.0]


def test_late_event_within_horizon_revises_the_final_window() -> None:
    clock = Clock(at(5))
    p = pipeline(clock)
    p.process([order(at(5), 10.0)])
    clock.set(90)
    out = p.process([order(at(90), 1.0)])  # watermark 80: [0, 60) is final
    first = [w for w in pick(out, "order_value") if w.final]
    assert [(w.revision, w.count, w.max) for w in first] == [(0, 1, 10.0)]

    clock.set(91)
    out = p.process([order(at(30), 50.0), order(at(31), 70.0)])  # late, still within horizon
    revised = [w for w in pick(out, "order_value") if w.window_start == at(0)]
    assert [(w.revision, w.final, w.count, w.sum, w.max) for w in revised] == [
        (1, True, 3, 130.0, 70.0)
    ]
    by_seller = [w for w in pick(out, "orders", "seller_id=s1") if w.window_start == at(0)]
    assert [(w.revision, w.value) for w in by_seller] == [(1, 3.0)]
    assert p.late_events == 2
    late = pick(out, "late_events")
    assert late and late[-1].value == 2.0 and not late[-1].final  # counted in an open window

    clock.set(92)
    out = p.process([order(at(40), 5.0)])
    assert [(w.revision, w.count) for w in pick(out, "orders") if w.window_start == at(0)] == [
        (2, 4)
    ]


def test_late_event_beyond_horizon_is_only_counted() -> None:
    clock = Clock(at(5))
    p = pipeline(clock)
    p.process([signup(at(5))])
    clock.set(300)
    p.process([signup(at(300))])  # watermark 290 > 60 + 120: [0, 60) is past the horizon
    clock.set(301)
    out = p.process([signup(at(20))])
    assert [w for w in out if w.window_start == at(0)] == []
    assert p.late_events == 1 and p.dropped_events == 1
    assert [w.value for w in pick(out, "late_events")] == [1.0]
    clock.set(302)
    out = p.tick()
    assert [w for w in out if w.window_start == at(0)] == []


def test_late_partial_for_expired_window_is_ignored_by_aggregator() -> None:
    """A partial routed from another partition can be older than this one's horizon."""
    clock = Clock(at(300))
    cfg = MetricsConfig(
        windows=("1m",), revision_horizon_s=120, emit_interval_s=0, idle_timeout_s=None,
        now_getter=clock,
    )  # fmt: skip
    agg = cfg.build_aggregator()
    fresh = cfg.build_preaggregator().process([signup(at(300))])
    agg.add(fresh.partials, fresh.max_event_time)
    old = cfg.build_preaggregator().process([signup(at(10))])  # on time for its own partition
    assert agg.add(old.partials, old.max_event_time) == []
    assert agg.dropped_partials >= 1


def test_state_is_discarded_after_the_horizon() -> None:
    clock = Clock(at(5))
    p = pipeline(clock, windows=("1m", "5m/10s"), idle_timeout_s=5.0)
    p.process([signup(at(5)), order(at(6), 3.0)])
    assert not p.agg.is_empty()
    clock.set(200)
    out = p.tick()  # idle advance closes every window
    assert any(w.final and w.window == "5m/10s" for w in out)
    assert not p.agg.is_empty()  # closed windows stay revisable until the horizon
    clock.set(5 + 5 + 10 + 300 + 120 + 11)
    p.tick()
    assert p.agg.is_empty()
    assert p.next_awake() is None


def test_idle_advance_closes_windows_when_traffic_stops() -> None:
    clock = Clock(at(5))
    p = pipeline(clock, idle_timeout_s=5.0)
    p.process([signup(at(5))])
    wake = p.next_awake()
    # idle from 5 + 5 s on, the watermark (5 - 10) reaches the window end 60 at 75 s
    assert wake == at(75)
    clock.now = wake
    assert [(w.value, w.final) for w in pick(p.tick(), "signups")] == [(1.0, True)]


def test_snapshot_resume_gives_the_same_outputs() -> None:
    events = random_events(21, 300, span_s=400)
    cfg_kw: dict[str, Any] = {"windows": ("1m", "5m/10s"), "emit_interval_s": 1.0}

    def drive(p: MetricsPipeline, evs: list[BaseEvent], clock: Clock) -> list[MetricWindow]:
        out: list[MetricWindow] = []
        for i in range(0, len(evs), 25):
            chunk = evs[i : i + 25]
            clock.now = max(e.event_time for e in chunk) + timedelta(seconds=1)
            out += p.process(chunk)
        return out

    clock = Clock(T0)
    whole = pipeline(clock, **cfg_kw)
    expected = drive(whole, events, clock) + whole.close()

    clock = Clock(T0)
    first = pipeline(clock, **cfg_kw)
    out = drive(first, events[:150], clock)
    state = pickle.loads(pickle.dumps(first.snapshot()))
    resumed = MetricsConfig(
        **{**cfg_kw, "allowed_lateness_s": 10.0, "idle_timeout_s": None,
           "revision_horizon_s": 120.0, "now_getter": clock}
    ).build(state)  # fmt: skip
    out += drive(resumed, events[150:], clock) + resumed.close()
    assert out == expected


def test_changed_accumulator_parameters_never_reuse_old_state() -> None:
    clock = Clock(at(5))
    p = pipeline(clock)
    p.process([order(at(5), 10.0), signup(at(5))])
    state = p.snapshot()
    from linkpulse.operators import QuantileSpec

    cfg = MetricsConfig(
        windows=("1m",), idle_timeout_s=None, emit_interval_s=0, now_getter=clock,
        quantiles=QuantileSpec(relative_accuracy=0.02),
    )  # fmt: skip
    resumed = cfg.build(state)
    keys = resumed.agg.series_keys()
    assert "acme|signups|" in keys  # untouched families resume
    assert not [k for k in keys if "|order_value|" in k]  # the quantile state was dropped


def test_changed_window_layout_starts_empty() -> None:
    clock = Clock(at(5))
    p = pipeline(clock)
    p.process([signup(at(5))])
    cfg = MetricsConfig(windows=("5m",), idle_timeout_s=None, now_getter=clock)
    assert cfg.build(p.snapshot()).agg.is_empty()


def test_unknown_metric_in_partials_is_a_clear_error() -> None:
    clock = Clock(at(5))
    agg = MetricsConfig(now_getter=clock).build_aggregator()
    with pytest.raises(KeyError, match="unknown metric 'nope'"):
        agg.add({("acme|nope|", 0): REGISTRY.get("orders") and _moments()})


def _moments() -> Any:
    from linkpulse.operators import Moments

    return Moments()


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"windows": ()}, "at least one window"),
        ({"windows": ("1m", "1m")}, "distinct"),
        ({"windows": ("1m",), "dimension_windows": ("5m",)}, "subset"),
        ({"allowed_lateness_s": -1.0}, "allowed_lateness_s"),
        ({"emit_interval_s": float("nan")}, "emit_interval_s"),
        ({"idle_timeout_s": -2.0}, "idle_timeout_s"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        MetricsConfig(**kwargs)


def test_registry_rejects_bad_metrics() -> None:
    with pytest.raises(ValueError, match="unknown event types"):
        Metric("x", ("nope",))
    with pytest.raises(ValueError, match="needs a measure"):
        Metric("x", ("order_placed",), value="sum")
    with pytest.raises(ValueError, match="defined twice"):
        REGISTRY.with_metrics([Metric("orders", ("order_placed",))])
    with pytest.raises(ValueError, match="metric name"):
        Metric("Bad Name", ("order_placed",))


def test_state_created_by_late_data_alone_is_discarded_too() -> None:
    """A series first seen through late partials must still expire after the horizon."""
    clock = Clock(at(300))
    cfg = MetricsConfig(
        windows=("1m",), revision_horizon_s=120, emit_interval_s=0, idle_timeout_s=None,
        dimension_emit_interval_s=0, now_getter=clock,
    )  # fmt: skip
    agg = cfg.build_aggregator()
    agg.add({}, max_event_time=300.0 + T0.timestamp())  # watermark 290 s
    late = cfg.build_preaggregator().process([signup(at(200), tenant="other")])
    out = agg.add(late.partials, late.max_event_time)
    assert [(w.metric, w.final, w.revision) for w in out if w.metric == "signups"] == [
        ("signups", True, 0)
    ]
    assert "other|signups|" in agg.series_keys()
    clock.set(1000)
    agg.add({}, max_event_time=1000.0 + T0.timestamp())
    assert "other|signups|" not in agg.series_keys()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_out_of_order_arrival_converges_to_brute_force_through_revisions(seed: int) -> None:
    """Events delayed up to 60 s with 5 s lateness: many are late, none is lost."""
    events = random_events(seed, 300, span_s=300)
    rnd = random.Random(seed)
    arrival = sorted(events, key=lambda e: e.event_time.timestamp() + rnd.uniform(0, 60))
    clock = Clock(T0)
    p = pipeline(
        clock, windows=("1m", "5m/10s"), allowed_lateness_s=5.0, revision_horizon_s=36_000.0
    )
    out: list[MetricWindow] = []
    for i in range(0, len(arrival), 10):
        chunk = arrival[i : i + 10]
        clock.now = max(clock.now, *(e.event_time for e in chunk))
        out += p.process(chunk)
    out += p.close()
    assert p.late_events > 0
    assert any(w.revision > 0 for w in out)
    finals = latest(out)
    for metric in ("orders", "gmv", "refund_amount", "payment_failure_rate", "order_value"):
        want = brute_force(events, metric)
        got = {
            (w.tenant, w.dims_key, int(w.window_start.timestamp())): w
            for w in finals.values()
            if w.metric == metric and w.window == "1m"
        }
        assert set(got) == set(want), metric
        for key, row in want.items():
            _check(metric, got[key], row)
    late_total = sum(w.value or 0 for w in finals.values() if w.metric == "late_events"
                     and w.window == "1m")  # fmt: skip
    assert late_total == p.late_events
    # sliding windows are recomposed from panes on revision as well
    for w in finals.values():
        if w.metric == "gmv" and w.window == "5m/10s":
            s = w.window_start.timestamp()
            inside = [
                e.amount or 0.0
                for e in events
                if e.type == "payment_settled"
                and e.tenant == w.tenant
                and s <= e.event_time.timestamp() < s + 300
            ]
            assert w.count == len(inside) and w.value == pytest.approx(sum(inside))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_publication_invariants_under_random_delays_and_clock(seed: int) -> None:
    """Revisions count up by one from the final; no live value after the final; every
    window shown live is finalized; no state is left after close()."""
    events = random_events(seed, 300, span_s=900)
    rnd = random.Random(seed)
    arrival = sorted(events, key=lambda e: e.event_time.timestamp() + rnd.expovariate(1 / 20))
    clock = Clock(T0)
    p = pipeline(
        clock,
        windows=("1m", "5m", "5m/10s"),
        dimension_windows=("1m", "5m/10s"),
        allowed_lateness_s=3.0,
        revision_horizon_s=60.0,
        idle_timeout_s=2.0,
        emit_interval_s=1.0,
        dimension_emit_interval_s=3.0,
    )
    out: list[MetricWindow] = []
    for i in range(0, len(arrival), 7):
        chunk = arrival[i : i + 7]
        newest = max(e.event_time for e in chunk)
        clock.now = max(clock.now, newest) + timedelta(seconds=rnd.uniform(0, 2))
        out += p.process(chunk)
        if rnd.random() < 0.2:
            clock.now += timedelta(seconds=rnd.uniform(0, 30))
            out += p.tick()
    out += p.close()
    state: dict[tuple[str, datetime], int | str] = {}
    for w in out:
        key = (w.series_key, w.window_start)
        prev = state.get(key)
        if w.final:
            assert w.revision == (0 if prev in (None, "live") else int(prev) + 1), key
            state[key] = w.revision
        else:
            assert prev in (None, "live") and w.revision == 0, key
            state[key] = "live"
    assert "live" not in state.values()
    assert p.agg.is_empty()


def test_an_empty_batch_or_tick_before_any_event_is_harmless() -> None:
    # The dataflow ticks (and may pass empty batches) before the first event
    # arrives, while the watermark is still -inf.
    clock = Clock(at(5))
    agg = MetricsConfig(now_getter=clock).build_aggregator()
    assert agg.add({}) == []
    assert agg.tick() == []
    clock.set(65)
    assert agg.tick() == []
    assert agg.is_empty()
