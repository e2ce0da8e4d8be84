"""The notification policy (pure): routing, grouping timers, dedup, repeat, resolves,
silences, inhibition, mute/active time intervals, acknowledgement, and bad policies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from linkpulse.alerts.matchers import Matcher, parse_matchers
from linkpulse.alerts.policy import (
    Dispatcher,
    DispatcherState,
    PolicyError,
    Silence,
    TimeInterval,
    load_policy,
)
from linkpulse.alerts.types import AlertChange, AlertState, fingerprint

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # a Tuesday


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def alert(
    name: str = "high",
    state: AlertState = AlertState.FIRING,
    when: float = 0.0,
    incident: int = 0,
    **labels: str,
) -> AlertChange:
    lab = {"alertname": name, "tenant": "acme", "severity": "critical", **labels}
    fp = fingerprint(lab)
    return AlertChange(
        alert_id=f"{fp}-{incident}",
        fingerprint=fp,
        rule=name,
        kind="threshold",
        tenant=lab["tenant"],
        series=f"{lab['tenant']}|orders||1m",
        state=state,
        previous=AlertState.PENDING,
        at=at(when),
        active_at=at(when),
        fired_at=at(when),
        severity=lab["severity"],
        labels=lab,
    )


BASIC = """
route:
  receiver: pager
  group_by: [alertname, tenant]
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 1h
"""


def run(
    d: Dispatcher, until: float, step: float = 10.0, **kw: object
) -> list[tuple[float, object]]:
    """Poll ``due`` every ``step`` seconds up to ``until``; deliver all; (time, notification)."""
    out = []
    t = 0.0
    while t <= until:
        for n in d.due(at(t), **kw):  # type: ignore[arg-type]
            d.delivered(n)
            out.append((t, n))
        t += step
    return out


def test_route_matching_continue_and_inheritance() -> None:
    policy = load_policy("""
route:
  receiver: default
  group_by: [alertname]
  repeat_interval: 2h
  routes:
    - matchers: ['team="pay"']
      receiver: pay-pager
      continue: true
      routes:
        - matchers: ['severity="warning"']
          receiver: pay-slack
          group_by: ["..."]
    - matchers: ['team=~"pay|shop"']
      receiver: shop
""")
    routes = policy.routes_for({"team": "pay", "severity": "warning"})
    assert [r.receiver for r in routes] == ["pay-slack", "shop"]
    assert routes[0].group_by is None and routes[0].repeat_interval == 7200.0
    assert routes[1].group_by == ("alertname",)
    assert [r.receiver for r in policy.routes_for({"team": "pay"})] == ["pay-pager", "shop"]
    assert [r.receiver for r in policy.routes_for({"team": "ops"})] == ["default"]
    assert policy.receivers == {"default", "pay-pager", "pay-slack", "shop"}
    labels = {"alertname": "x", "team": "pay", "severity": "warning"}
    assert routes[0].group_key(labels) == '0.0.0:{alertname="x",severity="warning",team="pay"}'


def test_group_wait_then_one_notification_per_incident_and_a_resolve() -> None:
    d = Dispatcher(load_policy(BASIC))
    d.ingest(alert(when=0), at(0))
    d.ingest(alert(seller_id="s-2", when=5), at(5))  # same group (alertname, tenant)
    sent = run(d, 900)
    assert [(t, len(n.firing)) for t, n in sent] == [(30.0, 2)]  # group_wait gathered both
    # nothing changes: no new notification until repeat_interval
    d.ingest(alert(state=AlertState.RESOLVED, when=1000), at(1000))
    later = [(t, n) for t, n in run_from(d, 1000, 1400)]
    assert len(later) == 1
    t, n = later[0]
    assert [a.state for a in n.resolved] == [AlertState.RESOLVED]
    assert len(n.firing) == 1
    assert t == 1000.0  # the group was due at 930 (30 + 3 group intervals): the first poll after


def run_from(d: Dispatcher, start: float, until: float, step: float = 10.0, **kw: object):
    t = start
    while t <= until:
        for n in d.due(at(t), **kw):  # type: ignore[arg-type]
            d.delivered(n)
            yield t, n
        t += step


def test_repeat_interval_and_dedup() -> None:
    d = Dispatcher(load_policy(BASIC))
    d.ingest(alert(), at(0))
    sent = run(d, 3 * 3600 + 60, step=30)
    times = [t for t, _ in sent]
    # first at group_wait, then once per repeat interval (checked each group_interval)
    assert times == [30.0, 3630.0, 7230.0, 10830.0]
    assert len({n.idempotency_key for _, n in sent}) == 1  # same content, same key


def test_new_incident_notifies_at_the_next_group_interval() -> None:
    d = Dispatcher(load_policy(BASIC))
    d.ingest(alert(), at(0))
    assert [t for t, _ in run(d, 100)] == [30.0]
    d.ingest(alert(seller_id="s-9", when=100), at(100))
    got = list(run_from(d, 100, 400))
    assert [(t, len(n.firing)) for t, n in got] == [(330.0, 2)]


def test_flapping_within_a_group_interval_is_not_paged_twice() -> None:
    d = Dispatcher(load_policy(BASIC))
    d.ingest(alert(), at(0))
    run(d, 40)
    d.ingest(alert(state=AlertState.RESOLVED, when=60), at(60))
    d.ingest(alert(incident=1, when=120), at(120))
    d.ingest(alert(incident=1, state=AlertState.RESOLVED, when=180), at(180))
    got = list(run_from(d, 50, 700))
    # one notification: the first incident's resolve; the second fired and resolved unseen
    assert len(got) == 1
    n = got[0][1]
    assert n.firing == [] and [a.alert_id[-2:] for a in n.resolved] == ["-0"]
    assert d.state.groups == {}


def test_pending_and_inactive_are_never_notified() -> None:
    d = Dispatcher(load_policy(BASIC))
    d.ingest(alert(state=AlertState.PENDING), at(0))
    d.ingest(alert(state=AlertState.INACTIVE), at(0))
    assert run(d, 600) == []


def test_send_resolved_false_drops_resolves_silently() -> None:
    d = Dispatcher(load_policy(BASIC + "  send_resolved: false\n"))
    d.ingest(alert(), at(0))
    run(d, 40)
    d.ingest(alert(state=AlertState.RESOLVED, when=50), at(50))
    assert list(run_from(d, 50, 900)) == []
    assert d.state.groups == {} and d.state.log == {}


def test_silence_suppresses_and_expires() -> None:
    d = Dispatcher(load_policy(BASIC))
    s = Silence(
        id="1",
        matchers=['tenant="acme"', 'alertname=~"hi.*"'],
        starts_at=at(0),
        ends_at=at(600),
        created_by="ops",
        comment="planned maintenance",
    )
    d.ingest(alert(), at(0))
    sent = run(d, 1000, silences=[s])
    # muted until the silence ends, then paged at the next flush
    assert [t for t, _ in sent] == [630.0]
    assert not s.mutes({"tenant": "other", "alertname": "high"}, at(10))


def test_a_silence_over_a_paged_alert_sends_nothing_until_it_resolves() -> None:
    d = Dispatcher(load_policy(BASIC))
    d.ingest(alert(), at(0))
    assert [t for t, _ in run(d, 40)] == [30.0]
    s = Silence(
        id="1",
        matchers=['tenant="acme"'],
        starts_at=at(40),
        ends_at=at(8000),
        created_by="ops",
        comment="known",
    )
    # muted while firing: no empty notification, no repeat
    assert list(run_from(d, 40, 7200, step=60, silences=[s])) == []
    # it resolves under the silence: the resolve is muted too (Alertmanager does the same)
    d.ingest(alert(state=AlertState.RESOLVED, when=7300), at(7300))
    assert list(run_from(d, 7300, 7900, step=60, silences=[s])) == []
    # the silence ends: the receiver that was paged gets its resolve (its incident closes)
    after = list(run_from(d, 7960, 8400, step=60, silences=[s]))
    assert [(n.firing, len(n.resolved)) for _, n in after] == [([], 1)]
    assert d.state.groups == {}


def test_silence_validation_names_each_field() -> None:
    bad = Silence(
        id="2",
        matchers=['tenant="acme"', "severity"],
        starts_at=at(100),
        ends_at=at(100),
        created_by=" ",
        comment="",
    )
    with pytest.raises(PolicyError) as e:
        bad.validate()
    fields = [f for f, _ in e.value.problems]
    assert fields == ["matchers[1]", "ends_at", "created_by", "comment"]
    everything = Silence(
        id="3", matchers=['a=~".*"'], starts_at=at(0), ends_at=at(1), created_by="x", comment="y"
    )
    with pytest.raises(PolicyError, match="match every alert"):
        everything.validate()


INHIBIT = (
    BASIC
    + """
inhibit_rules:
  - source_matchers: ['severity="critical"']
    target_matchers: ['severity="warning"']
    equal: [tenant]
"""
)


def test_inhibition_mutes_warnings_under_a_critical_of_the_same_tenant() -> None:
    d = Dispatcher(load_policy(INHIBIT))
    crit = alert("down", severity="critical")
    warn = alert("slow", severity="warning")
    other = alert("slow", severity="warning", tenant="globex")
    for a in (crit, warn, other):
        d.ingest(a, at(0))
    sent = run(d, 40)
    paged = sorted(a.labels["alertname"] + "/" + a.tenant for _, n in sent for a in n.firing)
    assert paged == ["down/acme", "slow/globex"]
    # the critical resolves: the warning is paged at the next flush
    d.ingest(alert("down", state=AlertState.RESOLVED, when=60, severity="critical"), at(60))
    later = [(n.group_labels["alertname"], len(n.firing)) for _, n in run_from(d, 60, 400)]
    assert sorted(later) == [("down", 0), ("slow", 1)]


def test_an_alert_does_not_inhibit_its_like() -> None:
    policy = load_policy(
        BASIC
        + """
inhibit_rules:
  - source_matchers: ['severity=~"critical|warning"']
    target_matchers: ['severity=~"critical|warning"']
"""
    )
    a = {"severity": "critical", "x": "1"}
    b = {"severity": "warning", "x": "2"}
    assert not policy.inhibited(a, [b])
    assert not policy.inhibited(b, [a])


def test_mute_time_interval_holds_pages_until_it_ends() -> None:
    d = Dispatcher(
        load_policy("""
route:
  receiver: pager
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1m
  routes:
    - matchers: ['severity="warning"']
      receiver: slack
      mute_time_intervals: [office-lunch]
time_intervals:
  - name: office-lunch
    time_intervals:
      - times: [{start_time: "10:00", end_time: "10:05"}]
        weekdays: ["monday:friday"]
""")
    )
    d.ingest(alert("slow", severity="warning"), at(0))
    d.ingest(alert("down", severity="critical"), at(0))
    sent = run(d, 600)
    assert [(t, n.receiver) for t, n in sent] == [(0.0, "pager"), (300.0, "slack")]


def test_time_intervals() -> None:
    night = TimeInterval.parse(
        {
            "times": [
                {"start_time": "22:00", "end_time": "24:00"},
                {"start_time": "00:00", "end_time": "07:00"},
            ],
            "weekdays": ["monday:friday", "sunday"],
            "location": "Europe/Paris",
        }
    )
    # 2026-11-24 is a Tuesday; 22:30 UTC is 23:30 in Paris
    assert night.contains(datetime(2026, 11, 24, 22, 30, tzinfo=UTC))
    assert not night.contains(datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    # Saturday 23:30 Paris: not a listed weekday
    assert not night.contains(datetime(2026, 11, 28, 22, 30, tzinfo=UTC))
    last_day = TimeInterval.parse({"days_of_month": ["-1"], "months": ["february"]})
    assert last_day.contains(datetime(2028, 2, 29, 12, tzinfo=UTC))
    assert not last_day.contains(datetime(2028, 2, 28, 12, tzinfo=UTC))
    with pytest.raises(PolicyError, match="unknown value 'funday'"):
        TimeInterval.parse({"weekdays": ["funday"]})
    with pytest.raises(PolicyError, match="end_time must be after start_time"):
        TimeInterval.parse({"times": [{"start_time": "10:00", "end_time": "09:00"}]})


def test_acknowledged_groups_do_not_repeat() -> None:
    d = Dispatcher(load_policy(BASIC))
    d.ingest(alert(), at(0))
    run(d, 40)
    ack = msgspec.structs.replace(alert(when=50), state=AlertState.ACKNOWLEDGED)
    d.ingest(ack, at(50))
    assert list(run_from(d, 50, 3 * 3600, step=60)) == []


def test_state_round_trips_and_rebuilds_the_same_notification() -> None:
    d = Dispatcher(load_policy(BASIC))
    d.ingest(alert(), at(0))
    first = d.due(at(30))
    assert len(first) == 1
    # crash before delivered(): a restored dispatcher rebuilds the same notification
    blob = msgspec.json.encode(d.state)
    again = Dispatcher(load_policy(BASIC), msgspec.json.decode(blob, type=DispatcherState))
    rebuilt = again.due(at(330))
    assert [n.idempotency_key for n in rebuilt] == [first[0].idempotency_key]


def test_bad_policies_name_every_field() -> None:
    with pytest.raises(PolicyError) as e:
        load_policy("""
route:
  matchers: ['a="b"']
  group_wait: soon
  routes:
    - matchers: ['team']
      mute_time_intervals: [nope]
      colour: red
inhibit_rules:
  - source_matchers: ['severity="critical"']
extra: 1
""")
    fields = sorted(f for f, _ in e.value.problems)
    assert fields == sorted(
        [
            "extra",
            "route.receiver",
            "route.matchers",
            "route.group_wait",
            "route.routes[0].colour",
            "route.routes[0].matchers",
            "route.routes[0].mute_time_intervals",
            "inhibit_rules[0]",
        ]
    )


def test_matchers() -> None:
    assert Matcher.parse('team!=""').matches({"team": "x"})
    assert not Matcher.parse('team!=""').matches({})
    assert Matcher.parse("env!~dev|test").matches({"env": "prod"})
    assert not Matcher.parse('a=~"b"').matches({"a": "abc"})  # anchored
    assert [str(m) for m in parse_matchers('{a="x,y", b=~"q\\"r"}')] == ['a="x,y"', 'b=~"q\\"r"']
    with pytest.raises(ValueError, match="bad regular expression"):
        Matcher.parse('a=~"("')
    with pytest.raises(ValueError, match="unbalanced quotes"):
        Matcher.parse('a="b')
