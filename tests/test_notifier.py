"""The notifier against real receivers on loopback, real NATS JetStream and PostgreSQL.

One incident is one trigger and one resolve per receiver through 500s, 429s, an
outage of the receiver and a SIGKILL of the notifier; silences, inhibition and
mute intervals hold pages; failures end in the dead letters, never silently.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import psycopg
import pytest
from nats.aio.client import Client

from linkpulse.alerts.delivery.config import load_config
from linkpulse.alerts.delivery.webhook import verify_signature
from linkpulse.alerts.policy import PolicyError, Silence
from linkpulse.alerts.types import AlertState
from linkpulse.bus.stream import ensure_streams
from linkpulse.bus.subjects import dead_letter_subject
from linkpulse.config import Settings
from linkpulse.notifier import store
from linkpulse.notifier.service import Notifier
from linkpulse.schemas.outputs import DeadLetter
from tests.fix_notifier import (
    FakeClock,
    change,
    config,
    config_dict,
    config_yaml,
    notifier_settings,
    outbox,
    publish,
    running,
    rx,
    smtp,
    until,
)
from tests.receivers import HttpReceivers, SmtpReceiver

__all__ = ["notifier_settings", "rx", "smtp"]  # fixtures used by name

pytestmark = pytest.mark.integration
SEED = 1234


def _delivered(dsn: str, n: int) -> bool:
    rows = outbox(dsn)
    return len(rows) >= n and all(r["status"] == "delivered" for r in rows)


async def test_one_incident_is_one_trigger_and_one_resolve_per_receiver_through_500s(
    notifier_settings: Settings, nc: Client, rx: HttpReceivers, smtp: SmtpReceiver
) -> None:
    s = notifier_settings
    rx.fail("/pd", 2, 500)
    rx.fail("/webhook", 2, 503)
    rx.fail("/slack", 1, 429)
    firing = change()
    async with running(Notifier(s, config(rx, smtp), seed=SEED, poll_s=0.2)):
        await publish(nc, s, firing)
        await until(lambda: _delivered(s.database_url, 4), "the trigger reaching all 4 receivers")
        await publish(nc, s, change(state=AlertState.RESOLVED))
        await until(lambda: _delivered(s.database_url, 8), "the resolve reaching all 4")
    assert rx.state.pd_problems == []
    assert rx.pd_incidents() == {firing.alert_id: ["trigger", "resolve"]}
    trigger = next(e for e in rx.pd_events() if e["event_action"] == "trigger")
    assert trigger["payload"]["severity"] == "critical"
    assert "seasonal baseline" in trigger["payload"]["custom_details"]["explanation"]
    hooks = rx.by_idempotency_key("/webhook")
    assert len(hooks) == 2  # a firing and a resolved notification, each sent until it took
    assert sorted(len(v) for v in hooks.values()) == [1, 3]
    statuses = [v[-1].json["status"] for v in hooks.values()]
    assert sorted(statuses) == ["firing", "resolved"]
    for reqs in hooks.values():
        r = reqs[-1]
        ts, sig = r.headers["X-Linkpulse-Timestamp"], r.headers["X-Linkpulse-Signature"]
        assert verify_signature(b"s3cret", ts, r.body, sig)
    assert len(rx.by_idempotency_key("/slack")) == 2
    slack = rx.requests("/slack")[-1].json
    assert slack["text"].startswith("RESOLVED") and slack["blocks"][0]["type"] == "header"
    subjects = [m["Subject"] for m in smtp.messages]
    assert len(subjects) == 2 and "FIRING:1" in subjects[0] and "RESOLVED:1" in subjects[1]
    html = smtp.messages[0].get_body(("html",))
    assert html is not None and "seasonal baseline" in html.get_content()


async def test_a_receiver_down_for_a_while_gets_the_page_once_it_is_back(
    notifier_settings: Settings, nc: Client, rx: HttpReceivers
) -> None:
    s = notifier_settings
    rx.stop()
    firing = change()
    async with running(Notifier(s, config(rx, receivers=("pd",)), seed=SEED, poll_s=0.2)):
        await publish(nc, s, firing)
        await until(
            lambda: any(r["attempts"] >= 3 for r in outbox(s.database_url)),
            "three refused attempts",
        )
        rx.start()
        await until(lambda: _delivered(s.database_url, 1), "delivery after the outage")
    assert rx.pd_incidents() == {firing.alert_id: ["trigger"]}
    assert len(rx.pd_events()) == 1


async def test_failures_end_in_the_dead_letters_and_4xx_is_not_retried(
    notifier_settings: Settings, nc: Client, rx: HttpReceivers
) -> None:
    s = notifier_settings
    rx.fail("/webhook", 1, 400)
    rx.fail("/pd", 10_000, 503)
    cfg = config_dict(rx, receivers=("pd", "hook"))
    cfg["delivery"]["max_age_s"] = 1.0
    await ensure_streams(nc.jetstream(), s)  # the dead-letter stream, before subscribing
    sub = await nc.jetstream().subscribe(dead_letter_subject(s.subject_prefix, "notifier"))
    async with running(Notifier(s, load_config(cfg), seed=SEED, poll_s=0.2)):
        await publish(nc, s, change())
        await until(
            lambda: sum(r["status"] == "dead" for r in outbox(s.database_url)) == 2,
            "both notifications dead-lettered",
        )
    rows = {r["receiver"]: r for r in outbox(s.database_url)}
    assert rows["hook"]["attempts"] == 1 and "400" in rows["hook"]["last_error"]
    assert rows["pd"]["attempts"] >= 2 and "still failing" in rows["pd"]["last_error"]
    letters = [msgspec.json.decode((await sub.next_msg(5)).data, type=DeadLetter) for _ in range(2)]
    assert {d.field for d in letters} == {"receivers.pd", "receivers.hook"}
    assert all(d.source == "notifier" and d.problem for d in letters)


async def test_a_receiver_answering_garbage_does_not_hold_up_the_others(
    notifier_settings: Settings, nc: Client, rx: HttpReceivers
) -> None:
    s = notifier_settings
    rx.delay("/slack", 3.0)  # and a slow one
    cfg = config(rx, receivers=("garbage", "slack", "pd"))
    async with running(Notifier(s, cfg, seed=SEED, poll_s=0.2)):
        await publish(nc, s, change())
        await until(
            lambda: any(
                r["receiver"] == "pd" and r["status"] == "delivered" for r in outbox(s.database_url)
            ),
            "the PagerDuty page",
        )
        rows = {r["receiver"]: r for r in outbox(s.database_url)}
        assert rows["slack"]["status"] == "pending"  # still on its slow request
        await until(
            lambda: any(
                r["receiver"] == "garbage" and r["attempts"] >= 2 for r in outbox(s.database_url)
            ),
            "garbage retried",
        )
    garbage = next(r for r in outbox(s.database_url) if r["receiver"] == "garbage")
    assert garbage["status"] == "pending" and "garbage" in garbage["last_error"]


async def test_a_silence_suppresses_and_its_end_lets_pages_through(
    notifier_settings: Settings, nc: Client, rx: HttpReceivers
) -> None:
    s = notifier_settings
    now = datetime.now(UTC)
    silence = Silence(
        id="",
        matchers=['severity="warning"'],
        starts_at=now - timedelta(1),
        ends_at=now + timedelta(1),
        created_by="test",
        comment="maintenance",
    )
    async with await psycopg.AsyncConnection.connect(s.database_url, autocommit=True) as conn:
        row = await store.create_silence(conn, silence, "acme")
    warn = change("slow_checkout", severity="warning", metric="checkout_p95")
    crit = change("payment_failures")
    async with running(Notifier(s, config(rx, receivers=("pd",)), seed=SEED, poll_s=0.2)):
        await publish(nc, s, warn, crit)
        await until(lambda: len(rx.pd_events()) >= 1, "the critical page")
        await asyncio.sleep(1.0)  # several group intervals: the warning stays muted
        assert set(rx.pd_incidents()) == {crit.alert_id}
        async with await psycopg.AsyncConnection.connect(s.database_url, autocommit=True) as c:
            await store.expire_silence(c, row["id"], datetime.now(UTC))
        await until(lambda: warn.alert_id in rx.pd_incidents(), "the warning after the silence")


async def test_inhibition_mutes_warnings_under_a_critical_of_the_same_metric(
    notifier_settings: Settings, nc: Client, rx: HttpReceivers
) -> None:
    s = notifier_settings
    cfg = config_dict(rx, receivers=("pd",))
    cfg["route"]["group_by"] = ["alertname", "tenant", "severity"]
    cfg["inhibit_rules"] = [
        {
            "source_matchers": ['severity="critical"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["tenant", "metric"],
        }
    ]
    crit = change("payment_failures_high", severity="critical")
    warn = change("payment_failures_elevated", severity="warning")
    other = change("slow_checkout", severity="warning", metric="checkout_p95")
    async with running(Notifier(s, load_config(cfg), seed=SEED, poll_s=0.2)):
        await publish(nc, s, crit, warn, other)
        await until(lambda: len(rx.pd_incidents()) >= 2, "the critical and the other warning")
        await asyncio.sleep(1.0)
    assert set(rx.pd_incidents()) == {crit.alert_id, other.alert_id}


async def test_a_mute_interval_holds_pages_until_it_ends(
    notifier_settings: Settings, nc: Client, rx: HttpReceivers
) -> None:
    s = notifier_settings
    cfg = config_dict(rx, receivers=("pd",))
    cfg["time_intervals"] = [
        {
            "name": "night",
            "time_intervals": [{"times": [{"start_time": "22:00", "end_time": "24:00"}]}],
        }
    ]
    cfg["route"]["routes"] = [
        {"matchers": ['severity="warning"'], "receiver": "pd", "mute_time_intervals": ["night"]}
    ]
    clock = FakeClock(datetime(2026, 11, 24, 23, 0, tzinfo=UTC))
    warn = change("slow_checkout", severity="warning", metric="checkout_p95")
    async with running(Notifier(s, load_config(cfg), clock=clock, seed=SEED, poll_s=0.1)):
        await publish(nc, s, warn)
        for _ in range(10):  # an hour of group intervals inside the night
            clock.advance(300)
            await asyncio.sleep(0.15)
        assert rx.pd_events() == []
        clock.advance(3600)  # past midnight
        await until(lambda: warn.alert_id in rx.pd_incidents(), "the page after the night")


async def test_an_alert_firing_on_and_on_pages_once_per_repeat_interval(
    notifier_settings: Settings, nc: Client, rx: HttpReceivers
) -> None:
    s = notifier_settings
    cfg = config_dict(rx, receivers=("pd",))
    cfg["route"].update(group_interval="1m", repeat_interval="1h")
    clock = FakeClock(datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
    a = change()
    async with running(Notifier(s, load_config(cfg), clock=clock, seed=SEED, poll_s=0.05)):
        # 150 minutes of re-evaluations (late data, replays): the same incident again and again
        for minute in range(150):
            await publish(nc, s, change(revision=minute, at=a.at + timedelta(minutes=minute)))
            clock.advance(60)
            await asyncio.sleep(0.06)
        await until(lambda: len(rx.pd_events()) >= 3, "the repeats")
        await asyncio.sleep(0.5)
    triggers = [e for e in rx.pd_events() if e["event_action"] == "trigger"]
    assert len(triggers) == 3  # at 0, 60 and 120 minutes: once per repeat interval
    assert {e["dedup_key"] for e in triggers} == {a.alert_id}  # one PagerDuty incident


async def test_ack_is_mirrored_to_pagerduty_and_stops_repeats(
    notifier_settings: Settings, nc: Client, rx: HttpReceivers
) -> None:
    s = notifier_settings
    firing = change()
    async with running(Notifier(s, config(rx, receivers=("pd", "slack")), poll_s=0.2)):
        await publish(nc, s, firing)
        await until(lambda: _delivered(s.database_url, 2), "the page")
        acked = msgspec.structs.replace(
            firing, state=AlertState.ACKNOWLEDGED, previous=AlertState.FIRING, at=datetime.now(UTC)
        )
        await publish(nc, s, acked)
        await until(
            lambda: rx.pd_incidents().get(firing.alert_id) == ["trigger", "acknowledge"],
            "the acknowledge at PagerDuty",
        )
        # the flow's resolve is stamped with stream time, older than the ack's wall clock
        await publish(nc, s, change(state=AlertState.RESOLVED))
        await until(
            lambda: rx.pd_incidents()[firing.alert_id] == ["trigger", "acknowledge", "resolve"],
            "the resolve after the ack",
        )
    ack = [r for r in outbox(s.database_url) if r["kind"] == "ack"]
    assert [r["receiver"] for r in ack] == ["pd"]  # Slack is not sent a mirror


def test_a_silence_ending_before_it_starts_is_refused_naming_the_field() -> None:
    now = datetime.now(UTC)
    bad = Silence(
        id="",
        matchers=['tenant="acme"'],
        starts_at=now,
        ends_at=now - timedelta(1),
        created_by="ops",
        comment="oops",
    )
    with pytest.raises(PolicyError) as e:
        bad.validate()
    assert ("ends_at", "must be after starts_at") in e.value.problems


def test_the_config_names_each_bad_receiver_field() -> None:
    rx = HttpReceivers()
    d = config_dict(rx, receivers=("pd", "hook"))
    d["receivers"][0]["pagerduty"].pop("routing_key")
    d["receivers"][1]["webhook"]["colour"] = "red"
    d["delivery"]["jitter"] = 2
    with pytest.raises(PolicyError) as e:
        load_config(d)
    fields = [f for f, _ in e.value.problems]
    assert "receivers[0].pagerduty.routing_key" in fields
    assert "receivers[1].webhook.colour" in fields
    assert "delivery" in fields


async def test_sigkilled_mid_delivery_the_restarted_notifier_resends_the_same_page(
    notifier_settings: Settings, nc: Client, rx: HttpReceivers, tmp_path: Path
) -> None:
    s = notifier_settings
    path = tmp_path / "notifier.yaml"
    path.write_text(config_yaml(rx, receivers=("pd", "hook")))
    env = {
        **os.environ,
        "LINKPULSE_DATABASE_URL": s.database_url,
        "LINKPULSE_NATS_URL": s.nats_url,
        "LINKPULSE_STREAM_NAME": s.stream_name,
        "LINKPULSE_SUBJECT_PREFIX": s.subject_prefix,
    }
    cmd = [sys.executable, "-m", "linkpulse", "run", "notifier", "--config", str(path)]
    rx.delay("/pd", 30.0)  # the first page hangs: the notifier is killed during it
    rx.delay("/webhook", 30.0)
    firing = change()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await publish(nc, s, firing)
        await until(
            lambda: rx.requests("/pd") and rx.requests("/webhook"), "the first attempts", timeout=60
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        rx.delay("/pd", 0.0)
        rx.delay("/webhook", 0.0)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        await until(
            lambda: _delivered(s.database_url, 2), "the resend after the restart", timeout=60
        )
        await publish(nc, s, change(state=AlertState.RESOLVED))
        await until(lambda: _delivered(s.database_url, 4), "the resolve", timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert rx.state.pd_problems == []
    assert rx.pd_incidents() == {firing.alert_id: ["trigger", "resolve"]}
    hooks = rx.by_idempotency_key("/webhook")
    assert len(hooks) == 2  # firing (sent twice, one key) and resolved
    assert sorted(len(v) for v in hooks.values()) == [1, 2]
