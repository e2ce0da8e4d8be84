"""Simulator to page: a payment-failure spike pages the PagerDuty-format receiver once, with
the rule's words, and resolves once traffic recovers.

The simulator's traffic goes through the project's window operators
(``simulator.backfill``) and the rule engine (``alerts.engine``), minute by
minute; each alert change is published on the alerts subject as the dataflow's
rule step does, and the real notifier (NATS, PostgreSQL) pages the loopback
receiver. The dataflow's own wiring of the rule step is not in this test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client

from linkpulse.alerts.engine import RuleEngine
from linkpulse.alerts.rules import parse_rules
from linkpulse.alerts.types import AlertState
from linkpulse.config import Settings
from linkpulse.notifier.service import Notifier
from linkpulse.schemas.outputs import MetricWindow
from linkpulse.simulator.anomalies import Anomaly
from linkpulse.simulator.backfill import BackfillConfig, backfill
from tests.fix_notifier import config, notifier_settings, publish, running, rx, until
from tests.receivers import HttpReceivers

__all__ = ["notifier_settings", "rx"]

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC).timestamp()
SERIES = "acme|payment_failure_rate||1m"
RULES = """
rules:
  - name: payment_failures_high
    kind: threshold
    metric: payment_failure_rate
    op: ">"
    threshold: 0.2
    recovery: 0.1
    for: 2m
    keep_firing_for: 5m
    severity: critical
    labels: {team: payments}
    summary: "{{ tenant }}: {{ value:.1% }} of payments fail (pages above {{ threshold:.0% }})"
"""


async def test_a_simulated_payment_failure_spike_pages_once_and_resolves(
    notifier_settings: Settings, nc: Client, rx: HttpReceivers
) -> None:
    s = notifier_settings
    spike = Anomaly(
        kind="failure_spike",
        start=START + 20 * 60,
        end=START + 35 * 60,
        tenant="acme",
        magnitude=0.35,
    )
    data = backfill(
        BackfillConfig(
            start=START,
            minutes=50,
            rate=10,
            seed=42,
            tenants=1,
            sellers=5,
            metrics=("payment_failure_rate",),
            anomalies=(spike,),
        )
    )
    engine = RuleEngine(parse_rules(RULES))
    states = []
    async with running(Notifier(s, config(rx, receivers=("pd",)), poll_s=0.2)):
        for i, value in enumerate(data.series[SERIES]):
            if value is None:
                continue
            begin = datetime.fromtimestamp(START, UTC) + timedelta(minutes=i)
            w = MetricWindow(
                metric="payment_failure_rate",
                tenant="acme",
                dims_key="",
                dimensions={},
                window="1m",
                window_start=begin,
                window_end=begin + timedelta(minutes=1),
                value=value,
                count=int(data.trials[SERIES][i] or 0),
                final=True,
            )
            changes = engine.on_window(w)
            await publish(nc, s, *changes)
            for c in changes:
                states.append(c.state)
                if c.state is AlertState.FIRING:  # on-call is paged before the next minute
                    await until(lambda: len(rx.pd_events()) == 1, "the page")
        await until(
            lambda: any(e["event_action"] == "resolve" for e in rx.pd_events()), "the resolve"
        )
    assert states.count(AlertState.FIRING) == 1 and states[-1] is AlertState.RESOLVED
    assert rx.state.pd_problems == []
    (incident,) = rx.pd_incidents().values()
    assert incident == ["trigger", "resolve"]
    trigger = rx.pd_events()[0]
    assert trigger["payload"]["severity"] == "critical"
    assert "of payments fail (pages above 20%)" in trigger["payload"]["summary"]


async def test_a_flapping_series_is_one_incident_and_one_page(
    notifier_settings: Settings, nc: Client, rx: HttpReceivers
) -> None:
    s = notifier_settings
    engine = RuleEngine(parse_rules(RULES))
    t0 = datetime.fromtimestamp(START, UTC)
    # an hour above and below the threshold in turns of one or two minutes, then calm
    values = [0.3 if (i // (1 + i % 2)) % 2 == 0 else 0.05 for i in range(60)] + [0.0] * 10
    async with running(Notifier(s, config(rx, receivers=("pd",)), poll_s=0.2)):
        for i, value in enumerate(values):
            begin = t0 + timedelta(minutes=i)
            w = MetricWindow(
                metric="payment_failure_rate",
                tenant="acme",
                dims_key="",
                dimensions={},
                window="1m",
                window_start=begin,
                window_end=begin + timedelta(minutes=1),
                value=value,
                count=100,
                final=True,
            )
            changes = engine.on_window(w)
            await publish(nc, s, *changes)
            if any(c.state is AlertState.FIRING for c in changes):  # paged in real time
                await until(lambda: len(rx.pd_events()) >= 1, "the page")
        await until(
            lambda: any(e["event_action"] == "resolve" for e in rx.pd_events()), "the resolve"
        )
    assert [e["event_action"] for e in rx.pd_events()] == ["trigger", "resolve"]
