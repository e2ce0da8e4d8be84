"""The scoring branch without services: steps, empty steps, revisions, expiry, restore.

``ScoringLogic`` is driven by hand (windows and ``RouteTick``s as the windows
step emits them), and the whole branch runs in process on Bytewax's testing
source and sink. Detectors are the real ones (``online_ml``); references are
fresh detectors fed the same steps, so "learned once" is checked by equality.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from linkpulse.config import Settings
from linkpulse.dataflows.branch import RouteTick
from linkpulse.dataflows.chunks import Chunk
from linkpulse.dataflows.live_metrics import FlowOptions, build_flow
from linkpulse.dataflows.scoring import (
    ScoringBranch,
    ScoringConfig,
    ScoringLogic,
    ScoringSinks,
    scoring_config,
)
from linkpulse.online_ml import detector_for_window
from linkpulse.schemas.outputs import AnomalyScore, Forecast, MetricWindow
from tests.test_dataflow_helpers import TEST_METRICS, event

T0 = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
SPECS = {"orders": {"grace": 20}, "gmv": {"grace": 20}}
# The per-series scores alone (the joint detector and forecasts have their own test).
CFG = ScoringConfig(specs=SPECS, idle_expiry_s=3600, joint=False, forecast_metrics=())


def window(
    minute: int, value: float, *, metric: str = "orders", seller: str = "", revision: int = 0
) -> MetricWindow:
    start = T0 + timedelta(minutes=minute)
    return MetricWindow(
        metric=metric,
        tenant="acme",
        dims_key=f"seller_id={seller}" if seller else "",
        dimensions={"seller_id": seller} if seller else {},
        window="1m",
        window_start=start,
        window_end=start + timedelta(minutes=1),
        value=value,
        revision=revision,
        final=True,
    )


def tick(minute: int, route: str = "r00") -> RouteTick:
    return RouteTick(route, (T0 + timedelta(minutes=minute)).timestamp())


def feed(logic: ScoringLogic, items: list[MetricWindow | RouteTick]) -> list[AnomalyScore]:
    out, _ = logic.on_batch(items)
    scores = [s for s in out if isinstance(s, AnomalyScore)]
    assert len(scores) == len(list(out))  # CFG makes no forecasts
    return scores


def one_route() -> ScoringLogic:
    return ScoringLogic(CFG, ("r00",), None)


def test_every_known_series_steps_once_per_minute_and_gaps_are_none() -> None:
    logic = one_route()
    items: list[MetricWindow | RouteTick] = []
    for m in range(30):
        if m < 10 or m >= 20:  # ten silent minutes in the middle
            items.append(window(m, 5.0 + m % 3))
        items.append(tick(m + 1))
    scores = feed(logic, items)
    assert [s.time for s in scores] == [T0 + timedelta(minutes=m) for m in range(30)]
    assert [s.value is None for s in scores] == [10 <= m < 20 for m in range(30)]
    # the same steps through a fresh detector give the same scores: learned once each
    ref = detector_for_window(window(0, 0.0), SPECS)
    want = [ref.update(s.time, s.value, None if s.value is None else 0.0) for s in scores]
    assert scores == want


def test_a_minute_is_stepped_only_when_every_route_passed_it() -> None:
    logic = ScoringLogic(CFG, ("r00", "r01"), None, route_of=lambda w: "r00")
    assert feed(logic, [window(0, 1.0), tick(1, "r00"), tick(5, "r00")]) == []
    got = feed(logic, [tick(2, "r01")])
    assert [s.time.minute for s in got] == [0, 1]


def test_a_revised_window_is_rescored_not_relearned() -> None:
    logic = one_route()
    first = feed(logic, [w for m in range(25) for w in (window(m, 4.0), tick(m + 1))])
    # minute 22 revised by late data after minute 24 was stepped
    revised = feed(logic, [window(22, 40.0, revision=1), window(25, 4.0), tick(26)])
    assert [(s.time.minute, s.revision) for s in revised] == [(22, 2), (25, 0)]
    ref = detector_for_window(window(0, 0.0), SPECS)
    for s in first:
        ref.update(s.time, s.value, 0.0)
    assert revised[0] == msgspec.structs.replace(
        ref.score_one(window(22, 0).window_start, 40.0, 0.0), revision=2
    )
    assert revised[1] == ref.update(window(25, 0).window_start, 4.0, 0.0)  # not learned twice


def test_a_revision_after_the_last_tick_is_rescored_at_once() -> None:
    logic = one_route()
    feed(logic, [w for m in range(5) for w in (window(m, 4.0), tick(m + 1))])
    got = feed(logic, [window(3, 9.0, revision=1)])  # no tick follows (end of a bounded run)
    assert [(s.time.minute, s.value, s.revision) for s in got] == [(3, 9.0, 2)]


def test_a_revision_arriving_before_its_minute_is_stepped_just_replaces_the_value() -> None:
    logic = one_route()
    got = feed(logic, [window(0, 1.0), window(0, 3.0, revision=1), tick(1)])
    assert [(s.value, s.revision) for s in got] == [(3.0, 0)]


def test_idle_series_expire_and_come_back_afresh() -> None:
    cfg = ScoringConfig(specs=SPECS, idle_expiry_s=300, joint=False, forecast_metrics=())
    logic = ScoringLogic(cfg, ("r00",), None)
    got = feed(logic, [window(0, 2.0), tick(1), tick(20)])
    # minute 0 with data, then None steps until 300 s after its last data
    assert [s.time.minute for s in got] == [0, 1, 2, 3, 4]
    back = feed(logic, [window(30, 2.0), tick(31)])
    assert [s.time.minute for s in back] == [30]
    fresh = detector_for_window(window(0, 0.0), SPECS)
    assert back[0] == fresh.update(back[0].time, 2.0, 0.0)


def test_restore_between_any_two_batches_gives_the_same_scores() -> None:
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    items: list[MetricWindow | RouteTick] = []
    for m in range(60):
        for seller in ("", "s1", "s2"):
            if rng.random() < 0.8:
                items.append(window(m, rng.randint(0, 9), seller=seller))
                items.append(window(m, rng.uniform(0, 90), metric="gmv", seller=seller))
        if m > 3 and rng.random() < 0.2:
            items.append(window(m - 3, 99.0, revision=1))
        items.append(tick(m + 1))
    clean = feed(one_route(), items)
    logic = one_route()
    got: list[AnomalyScore] = []
    cuts = sorted(rng.sample(range(1, len(items)), 5))
    for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True):
        got.extend(feed(logic, items[a:b]))
        logic = ScoringLogic(CFG, ("r00",), logic.snapshot())
    assert got == clean, f"seed={seed}"
    assert any(s.revision > 0 for s in clean), f"seed={seed}"


def test_ticks_from_many_routes_in_any_order_give_the_same_scores() -> None:
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    routes = ("r00", "r01", "r02")

    def route_of(w: MetricWindow) -> str:
        return routes[len(w.dims_key) % 3]

    # per route: its windows then its tick, minute by minute (each route's order is kept)
    per_route: dict[str, list[MetricWindow | RouteTick]] = {r: [] for r in routes}
    for m in range(40):
        for seller in ("", "s1", "s22"):
            w = window(m, float(rng.randint(0, 9)), seller=seller)
            per_route[route_of(w)].append(w)
        if m > 5 and m % 7 == 0:
            late = window(m - 4, 50.0, seller="s1", revision=1)
            per_route[route_of(late)].append(late)
        for r in routes:
            per_route[r].append(tick(m + 1, r))

    def run(order: list[MetricWindow | RouteTick]) -> list[AnomalyScore]:
        return feed(ScoringLogic(CFG, routes, None, route_of=route_of), order)

    orders = []
    for _ in range(4):
        queues = {r: list(q) for r, q in per_route.items()}
        order: list[MetricWindow | RouteTick] = []
        while any(queues.values()):
            r = rng.choice([r for r, q in queues.items() if q])
            n = rng.randint(1, 4)
            order.extend(queues[r][:n])
            del queues[r][:n]
        orders.append(order)
    results = [run(o) for o in orders]
    assert all(r == results[0] for r in results), f"seed={seed}"
    revisions = [
        w for q in per_route.values() for w in q if isinstance(w, MetricWindow) and w.revision
    ]
    assert len(results[0]) == 40 * 3 + len(revisions), f"seed={seed}"


def test_the_branch_runs_in_process_on_testing_source_and_sink() -> None:
    ns = 1_000_000_000
    base = int(T0.timestamp())
    chunks = []
    seq = 0
    for m in range(40):
        msgs = []
        for k in range(3 if m != 30 else 0):  # minute 30 has no orders at all
            seq += 1
            t = base + m * 60 + 10 * k
            when = datetime.fromtimestamp(t, UTC)
            payload = json.dumps(event(seq, when, "acme", "order_placed", "s1", 5.0)).encode()
            msgs.append((payload, "lp.events.acme.order_placed", seq, t * ns))
        chunks.append(Chunk("p0", (base + m * 60 + 59) * ns, msgs))
    out: list[AnomalyScore] = []
    flow = build_flow(
        Settings(),
        FlowOptions(metrics=TEST_METRICS, raw_events=False),
        source=TestingSource(chunks),
        branches=[ScoringBranch(CFG, ScoringSinks(scores_store=TestingSink(out)))],
    )
    run_main(flow)
    tenant_orders = sorted(
        (s.time, s.value) for s in out if s.series == "acme|orders||1m" and s.revision == 0
    )
    # every minute up to the last one the watermark closed, once, minute 30 empty
    minutes = [(t - T0) // timedelta(minutes=1) for t, _ in tenant_orders]
    assert minutes == list(range(len(minutes))) and len(minutes) >= 35
    assert [v for _, v in tenant_orders][29:32] == [3.0, None, 3.0]
    assert {s.series for s in out} >= {"acme|orders||1m", "acme|orders|seller_id=s1|1m"}


def test_tenants_get_a_joint_score_and_forecasts_for_the_chosen_metrics() -> None:
    cfg = ScoringConfig(specs=SPECS, forecast_metrics=("gmv",), forecast_minutes=5)
    logic = ScoringLogic(cfg, ("r00",), None)
    items: list[MetricWindow | RouteTick] = []
    for m in range(61):
        items += [window(m, 3.0), window(m, 30.0, metric="gmv"), window(m, 1.0, seller="s1")]
        items.append(tick(m + 1))
    out, _ = logic.on_batch(items)
    out = list(out)
    joint = [s for s in out if isinstance(s, AnomalyScore) and s.series == "acme|joint||1m"]
    assert [s.time for s in joint] == [T0 + timedelta(minutes=m) for m in range(61)]
    forecasts = [f for f in out if isinstance(f, Forecast)]
    minutely = [f for f in forecasts if f.step == "1m"]
    hourly = [f for f in forecasts if f.step == "1h"]
    assert {f.series for f in forecasts} == {"acme|gmv||1m"}  # tenant level only
    assert len(minutely) == 61 and all(len(f.points) == 5 for f in minutely)
    # issued for the minutes after the step just learned
    assert minutely[0].points[0].time == T0 + timedelta(minutes=1)
    assert len(hourly) == 1 and len(hourly[0].points) == 24  # at the hour boundary
    assert hourly[0].points[0].time == T0 + timedelta(hours=1)
    # and all of it survives a snapshot
    again = ScoringLogic(cfg, ("r00",), logic.snapshot())
    more, _ = again.on_batch([window(61, 30.0, metric="gmv"), tick(62)])
    ref, _ = logic.on_batch([window(61, 30.0, metric="gmv"), tick(62)])
    ref = list(ref)
    assert list(more) == ref and any(isinstance(f, Forecast) for f in ref)


@pytest.mark.parametrize(
    "bad",
    [
        {"idle_expiry_s": 0},
        {"window": "5m/10s"},
        {"root_cause_above": 2},
        {"forecast_metrics": ("nope",)},
        {"forecast_hours": 0},
    ],
)
def test_bad_config_is_refused_by_name(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ScoringConfig(**bad)  # type: ignore[arg-type]


def test_detector_specs_file_is_read_and_checked_by_name(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("gmv:\n  detector: seasonal\n  grace: 60\n")
    assert scoring_config(good, 600).specs["gmv"]["grace"] == 60
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("revenue: {grace: 5}\n")
    with pytest.raises(ValueError, match="unknown metric 'revenue'"):
        scoring_config(unknown)
    bad_option = tmp_path / "bad.yaml"
    bad_option.write_text("gmv: {detector: seasonal, colour: red}\n")
    with pytest.raises(ValueError, match="colour"):
        scoring_config(bad_option)
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- gmv\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        scoring_config(not_a_mapping)


def test_a_tick_from_an_unknown_route_completes_nothing() -> None:
    logic = ScoringLogic(CFG, ("r00", "r01"), None, route_of=lambda w: "r00")
    assert feed(logic, [window(0, 1.0), tick(1, "r00"), tick(1, ""), tick(1, "r99")]) == []
    assert len(feed(logic, [tick(1, "r01")])) == 1


def test_the_joint_detector_gets_the_event_counts_and_pages_when_orders_stop_being_paid() -> None:
    """The funnel: orders go on, settled payments stop; the joint score pages at once."""
    rng = random.Random(SEED_FUNNEL)
    cfg = ScoringConfig(specs=SPECS, forecast_metrics=())
    logic = ScoringLogic(cfg, ("r00",), None)
    warm_up = 1500  # the joint detector pages after a day of steps
    joint: list[AnomalyScore] = []
    for m in range(warm_up + 3):
        orders = rng.randrange(3, 9)
        paid = sum(rng.random() < 0.97 for _ in range(orders)) if m < warm_up else 0
        items: list[MetricWindow | RouteTick] = [
            msgspec.structs.replace(window(m, float(orders)), count=orders)
        ]
        if paid:  # no settled payment: no GMV window that minute
            gmv = window(m, 40.0 * paid, metric="gmv")
            items.append(msgspec.structs.replace(gmv, count=paid))
        items.append(tick(m + 1))
        out, _ = logic.on_batch(items)
        joint += [s for s in out if isinstance(s, AnomalyScore) and s.series == "acme|joint||1m"]
    normal = joint[1440:warm_up]
    assert max(s.score for s in normal) < 0.99, f"seed {SEED_FUNNEL}"
    stopped = joint[warm_up:]
    assert stopped[1].score >= 0.99, (stopped, SEED_FUNNEL)
    assert stopped[1].details.detector == "funnel" and stopped[1].direction == "down"
    assert "settled payments for 0% of orders" in stopped[1].explanation


SEED_FUNNEL = 20261201
