"""The rule state machine: for, keep_firing_for, hysteresis, flapping, revisions, staleness,
absence, anomaly/rate/forecast rules, acknowledgement, rule changes and snapshots (pure)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from linkpulse.alerts.engine import EngineConfig, RuleEngine, evaluate_all
from linkpulse.alerts.rules import parse_rules
from linkpulse.alerts.types import AlertState
from linkpulse.schemas.outputs import (
    AnomalyScore,
    Explanation,
    Forecast,
    ForecastPoint,
    MetricWindow,
)

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def win(
    i: int,
    value: float | None,
    *,
    metric: str = "payment_failure_rate",
    tenant: str = "acme",
    seller: str | None = None,
    revision: int = 0,
) -> MetricWindow:
    start = T0 + timedelta(minutes=i)
    dims = {"seller_id": seller} if seller else {}
    return MetricWindow(
        metric=metric,
        tenant=tenant,
        dims_key=f"seller_id={seller}" if seller else "",
        dimensions=dims,
        window="1m",
        window_start=start,
        window_end=start + timedelta(minutes=1),
        value=value,
        count=100,
        revision=revision,
        final=True,
    )


def minute(i: int) -> float:
    return (T0 + timedelta(minutes=i)).timestamp()


def states(changes: list) -> list[tuple[str, int]]:
    """(state, minute of at) of each change."""
    return [(c.state.value, int((c.at - T0).total_seconds() // 60)) for c in changes]


def engine(rules_yaml: str, **cfg: float) -> RuleEngine:
    return RuleEngine(parse_rules(rules_yaml, "test.yaml"), EngineConfig(**cfg))  # type: ignore[arg-type]


def feed(eng: RuleEngine, values: list[float | None], **kw: object) -> list:
    out = []
    for i, v in enumerate(values):
        out.extend(eng.on_window(win(i, v, **kw)))  # type: ignore[arg-type]
    return out


THRESH = """
rules:
  - name: failures_high
    kind: threshold
    metric: payment_failure_rate
    op: ">"
    threshold: 0.05
    for: {for_}
    keep_firing_for: {keep}
    {extra}
    severity: critical
    labels: {{team: payments}}
    summary: "failures {{{{ value:.0% }}}} above {{{{ threshold:.0% }}}} for {{{{ labels.team }}}}"
"""


def thresh(for_: str = "0s", keep: str = "0s", extra: str = "") -> RuleEngine:
    return engine(THRESH.format(for_=for_, keep=keep, extra=extra))


def test_for_makes_it_pending_then_firing_then_resolved() -> None:
    eng = thresh(for_="3m")
    out = feed(eng, [0.01, 0.06, 0.07, 0.08, 0.09, 0.01])
    # pending at the end of minute 1 (window [1,2)), firing 3 minutes later
    assert states(out) == [("pending", 2), ("firing", 5), ("resolved", 6)]
    firing = out[1]
    assert firing.previous is AlertState.PENDING
    assert firing.active_at == T0 + timedelta(minutes=2)
    assert firing.fired_at == T0 + timedelta(minutes=5)
    assert firing.summary == "failures 9% above 5% for payments"
    assert firing.labels == {
        "alertname": "failures_high",
        "tenant": "acme",
        "metric": "payment_failure_rate",
        "window": "1m",
        "severity": "critical",
        "team": "payments",
    }
    assert firing.upper == 0.05 and firing.value == 0.09
    # one incident: every change has the same ids
    assert len({c.alert_id for c in out}) == 1 and len({c.fingerprint for c in out}) == 1


def test_pending_that_clears_goes_inactive_and_never_fires() -> None:
    eng = thresh(for_="3m")
    out = feed(eng, [0.06, 0.07, 0.01, 0.01])
    assert states(out) == [("pending", 1), ("inactive", 3)]


def test_hysteresis_holds_until_the_recovery_threshold() -> None:
    eng = thresh(extra="recovery: 0.03")
    out = feed(eng, [0.06, 0.04, 0.035, 0.031, 0.049, 0.029, 0.04])
    # 0.04 > 0.03 keeps it firing; resolves only at 0.029; 0.04 after that does not re-fire
    assert states(out) == [("firing", 1), ("resolved", 6)]


def test_without_hysteresis_it_resolves_at_the_threshold() -> None:
    eng = thresh()
    assert states(feed(eng, [0.06, 0.04])) == [("firing", 1), ("resolved", 2)]


def test_keep_firing_for_damps_flapping_into_one_incident() -> None:
    flapping = [0.06, 0.01, 0.06, 0.01, 0.06, 0.01, 0.01, 0.01]
    damped = feed(thresh(keep="2m"), flapping)
    assert states(damped) == [("firing", 1), ("resolved", 8)]  # 2m after the first clear (6)
    assert len({c.alert_id for c in damped}) == 1
    raw = feed(thresh(), flapping)
    # undamped: three incidents, each with its own id (a new PagerDuty dedup_key)
    assert [s for s, _ in states(raw)] == ["firing", "resolved"] * 3
    assert len({c.alert_id for c in raw}) == 3
    assert len({c.fingerprint for c in raw}) == 1


def test_a_revised_window_can_make_an_alert_fire() -> None:
    eng = thresh(for_="2m")
    out = feed(eng, [0.01, 0.06, 0.01, 0.07, 0.07])
    assert states(out) == [("pending", 2), ("inactive", 3), ("pending", 4)]
    # late data: minute 2 really was 0.08, so the breach ran from minute 1 on
    late = eng.on_window(win(2, 0.08, revision=1))
    assert [(c.state.value, c.revision) for c in late] == [
        ("inactive", 1),
        ("firing", 1),
    ]
    firing = late[1]
    assert firing.active_at == T0 + timedelta(minutes=2)
    assert firing.fired_at == T0 + timedelta(minutes=4)
    assert firing.at == T0 + timedelta(minutes=5)  # known at the newest step


def test_a_revised_window_can_resolve_an_alert_that_fired_on_bad_data() -> None:
    eng = thresh()
    out = feed(eng, [0.01, 0.09, 0.09])
    assert states(out) == [("firing", 2)]
    fired_id = out[0].alert_id
    moved = eng.on_window(win(1, 0.02, revision=1))
    # the breach really began a minute later: that incident resolves, the true one fires
    assert [(c.state.value, c.alert_id == fired_id) for c in moved] == [
        ("resolved", True),
        ("firing", False),
    ]
    late = eng.on_window(win(2, 0.02, revision=1))
    # corrected data never breached: the incident resolves, nothing new fires
    assert [(c.state.value, c.alert_id) for c in late] == [("resolved", moved[1].alert_id)]
    assert eng.open_alerts() == []


def test_revisions_older_than_the_horizon_are_ignored() -> None:
    eng = RuleEngine(
        parse_rules(THRESH.format(for_="0s", keep="0s", extra="")),
        EngineConfig(revision_horizon_s=120.0),
    )
    feed(eng, [0.01] * 6)
    assert eng.on_window(win(0, 0.9, revision=1)) == []


def test_stale_series_resolve_on_the_clock_and_absence_pages() -> None:
    eng = engine("""
rules:
  - {name: high, kind: threshold, metric: payment_failure_rate, threshold: 0.05}
  - {name: quiet, kind: absence, metric: payment_failure_rate, absent_for: 5m, severity: critical,
     summary: "no data: {{ explanation }}"}
""")
    out = feed(eng, [0.06, 0.07])
    assert states(out) == [("firing", 1)]
    ticks = []
    for i in range(3, 10):
        ticks.extend((i, c) for c in eng.on_tick(minute(i)))
    got = [(i, c.rule, c.state.value) for i, c in ticks]
    # no window since minute 2: the threshold alert is stale after 3 steps; absence fires at 5m
    assert got == [(5, "high", "resolved"), (7, "quiet", "firing")]
    assert ticks[1][1].summary == "no data: no payment_failure_rate data for 5m"
    back = eng.on_window(win(9, 0.01))
    assert [(c.rule, c.state.value) for c in back] == [("quiet", "resolved")]


def test_ticks_of_another_route_do_not_move_a_series() -> None:
    eng = engine("rules:\n  - {name: quiet, kind: absence, metric: orders, absent_for: 2m}\n")
    eng.on_window(win(0, 3.0, metric="orders"), route="r01")
    assert eng.on_tick(minute(10), route="r02") == []
    assert [c.state.value for c in eng.on_tick(minute(10), route="r01")] == ["firing"]


def score(i: int, value: float, *, warm: bool = True, direction: str = "up", rev: int = 0):
    return AnomalyScore(
        series="acme|gmv|seller_id=s-1|1m",
        time=T0 + timedelta(minutes=i),
        score=value,
        raw=3.0,
        value=120.0,
        expected=40.0,
        lower=20.0,
        upper=60.0,
        direction=direction,
        warm=warm,
        model="ensemble",
        explanation="gmv 120 is 4.1 sigmas above the usual 40 for Tue 10:00",
        details=Explanation(detector="seasonal"),
        revision=rev,
    )


def test_anomaly_rule_reads_scores_with_explanation_band_and_direction() -> None:
    eng = engine("""
rules:
  - name: gmv_spike
    kind: anomaly
    metric: gmv
    direction: up
    recovery: 0.9
    where: ['seller_id=~"s-.*"']
    summary: "{{ metric }} {{ observed }} (expected {{ band }}): {{ explanation }}"
""")
    out = evaluate_all(
        eng,
        [
            score(0, 0.999, warm=False),  # not warm: never pages
            score(1, 0.999, direction="down"),  # the other direction
            score(2, 0.995),
            score(3, 0.95),  # above recovery: still firing
            score(4, 0.5),
        ],
    )
    assert states(out) == [("firing", 3), ("resolved", 5)]
    f = out[0]
    assert f.labels["seller_id"] == "s-1" and f.kind == "anomaly"
    assert f.summary == (
        "gmv 120 (expected 20-60): gmv 120 is 4.1 sigmas above the usual 40 for Tue 10:00"
    )
    assert f.explanation.startswith("gmv 120 is 4.1 sigmas")
    assert (f.value, f.observed, f.expected) == (0.995, 120.0, 40.0)
    # a re-scored step (late data) is a revision
    late = eng.on_score(score(4, 0.999, rev=1))
    assert [(c.state.value, c.revision) for c in late] == [("firing", 1)]


def test_rate_of_change_and_its_revision() -> None:
    eng = engine("""
rules:
  - {name: drop, kind: rate_of_change, metric: orders, op: "<", threshold: -0.5}
""")
    out = feed(eng, [100.0, 90.0, 30.0], metric="orders")
    assert states(out) == [("firing", 3)]
    assert out[0].value == pytest.approx(-2 / 3)
    assert out[0].explanation == "orders went from 90 to 30"
    # minute 1 was really 60: neither its drop (-40%) nor the next (-50%) breaches
    late = eng.on_window(win(1, 60.0, metric="orders", revision=1))
    assert [c.state.value for c in late] == ["resolved"]
    assert states(eng.on_window(win(3, 1.0, metric="orders"))) == [("firing", 4)]


def test_forecast_rule_fires_outside_the_interval() -> None:
    eng = engine("rules:\n  - {name: outside, kind: forecast, metric: gmv, interval: 80}\n")
    points = [
        ForecastPoint(
            time=T0 + timedelta(minutes=i),
            mean=100.0,
            lower80=80.0,
            upper80=120.0,
            lower95=60.0,
            upper95=140.0,
        )
        for i in range(5)
    ]
    eng.on_forecast(
        Forecast(series="acme|gmv||1m", model="hw", issued_at=T0, step="1m", points=points)
    )
    out = feed(eng, [100.0, 130.0, 110.0], metric="gmv")
    assert states(out) == [("firing", 2), ("resolved", 3)]
    assert "above the forecast's 80% interval 80-120" in out[0].explanation
    assert (out[0].expected, out[0].lower, out[0].upper) == (100.0, 80.0, 120.0)


def test_acknowledged_stays_until_resolved() -> None:
    eng = thresh()
    fired = feed(eng, [0.06])[0]
    ack = eng.acknowledge(fired.alert_id, minute(1))
    assert ack is not None and ack.state is AlertState.ACKNOWLEDGED
    assert eng.acknowledge("nope", minute(1)) is None
    assert eng.on_window(win(1, 0.07)) == []  # still breaching: nothing new
    out = eng.on_window(win(2, 0.01))
    assert [(c.state.value, c.previous.value) for c in out] == [("resolved", "acknowledged")]


def test_removed_rule_resolves_its_open_alerts() -> None:
    eng = thresh()
    feed(eng, [0.06])
    out = eng.set_rules(parse_rules("rules: []"))
    assert [(c.rule, c.state.value) for c in out] == [("failures_high", "resolved")]
    assert eng.open_alerts() == []


def test_a_changed_threshold_is_in_force_at_the_next_window() -> None:
    # the engine compiles each (metric, window)'s rules once: a new rule set replaces that
    eng = thresh()
    assert feed(eng, [0.04]) == []
    moved = THRESH.format(for_="0s", keep="0s", extra="").replace("0.05", "0.03")
    assert eng.set_rules(parse_rules(moved)) == []
    assert states(eng.on_window(win(1, 0.04))) == [("firing", 2)]
    assert states(eng.on_window(win(2, 0.02))) == [("resolved", 3)]


def test_tenant_scope_and_where_matchers() -> None:
    eng = engine("""
tenant: acme
rules:
  - {name: s1, kind: threshold, metric: payment_failure_rate, threshold: 0.05,
     where: ['seller_id="s-1"']}
""")
    assert eng.on_window(win(0, 0.9, tenant="other", seller="s-1")) == []
    assert eng.on_window(win(0, 0.9, seller="s-2")) == []
    assert eng.on_window(win(0, 0.9)) == []  # tenant level: no seller_id
    assert [c.labels["seller_id"] for c in eng.on_window(win(0, 0.9, seller="s-1"))] == ["s-1"]


def test_live_windows_are_not_evaluated() -> None:
    eng = thresh()
    live = MetricWindow(
        **{**{f: getattr(win(0, 0.9), f) for f in win(0, 0.9).__struct_fields__}, "final": False}
    )
    assert eng.on_window(live) == []


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_revisions_end_where_correct_data_would_have(seed: int) -> None:
    """Feeding wrong values then their corrections ends in the state of feeding the right ones."""
    rng = random.Random(seed)
    rules = THRESH.format(for_="2m", keep="1m", extra="recovery: 0.03")
    truth = [rng.choice([0.01, 0.04, 0.06, 0.09]) for _ in range(40)]
    direct = RuleEngine(parse_rules(rules))
    feed(direct, truth)
    revised = RuleEngine(parse_rules(rules))
    wrong = {i for i in range(40) if rng.random() < 0.3}
    for i, v in enumerate(truth):
        revised.on_window(win(i, (0.1 - v) if i in wrong else v))
        if i >= 3 and i - 3 in wrong:
            revised.on_window(win(i - 3, truth[i - 3], revision=1))
    for i in sorted(w for w in wrong if w >= 37):
        revised.on_window(win(i, truth[i], revision=1))
    got = [(c.alert_id, c.state) for c in revised.open_alerts()]
    want = [(c.alert_id, c.state) for c in direct.open_alerts()]
    assert got == want, f"seed={seed}"


def test_snapshot_resume_gives_the_same_changes_as_one_run() -> None:
    rules = THRESH.format(for_="1m", keep="1m", extra="recovery: 0.03")
    rng = random.Random(7)
    values = [rng.choice([0.01, 0.04, 0.06]) for _ in range(30)]
    one = RuleEngine(parse_rules(rules))
    whole = feed(one, values)
    first = RuleEngine(parse_rules(rules))
    part = [c for i, v in enumerate(values[:15]) for c in first.on_window(win(i, v))]
    second = RuleEngine(parse_rules(rules))
    assert second.restore(first.snapshot())
    part += [c for i, v in enumerate(values[15:], 15) for c in second.on_window(win(i, v))]
    assert part == whole
    assert whole, "seed 7 must give some alerts"
    assert not RuleEngine(parse_rules(rules)).restore(b"garbage")
