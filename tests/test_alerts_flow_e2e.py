"""Alerting end to end through the running pipeline: simulator -> NATS -> ``linkpulse run
dataflow`` (windows and the rule step) -> alerts stream -> notifier -> a loopback PagerDuty,
with the acknowledgement made through the real API (auth on).

The simulator backfills event time as fast as NATS takes it, so 50 simulated
minutes pass in seconds: windows close on the flow's event-time watermark, the
way they do live. Phase one carries an injected payment-failure spike: the
rule pages once, with its explanation. An operator acknowledges it through
the API and PagerDuty hears ``acknowledge``. Phase two is calm traffic: the
rule resolves and PagerDuty hears ``resolve``: one incident, three events.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client

from linkpulse.config import Settings
from linkpulse.notifier.service import Notifier
from tests.api_server import ApiServer
from tests.fix_access import Keys, access_settings, keys, wait_streams_ready
from tests.fix_notifier import config, running, rx, until
from tests.receivers import HttpReceivers
from tests.test_dataflow_recovery import ROOT, flow_command

__all__ = ["access_settings", "keys", "rx"]  # fixtures used by name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULES = """
rules:
  - name: payment_failures_high
    kind: threshold
    metric: payment_failure_rate
    window: 1m
    where: ['seller_id=""']  # the tenant-level series
    op: ">"
    threshold: 0.2
    recovery: 0.1
    for: 2m
    keep_firing_for: 3m
    severity: critical
    labels: {team: payments}
    summary: "{{ tenant }}: {{ value:.1% }} of payments fail (pages above {{ threshold:.0% }})"
"""
# Whole minutes, an hour ago: recent enough for every check on event time.
START = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)


def simulate(settings: Settings, start: datetime, minutes: int, seed: int, *anomaly: str) -> None:
    """Backfill ``minutes`` of one tenant's traffic from ``start`` into the stream."""
    env = {
        **os.environ,
        "LINKPULSE_NATS_URL": settings.nats_url,
        "LINKPULSE_STREAM_NAME": settings.stream_name,
        "LINKPULSE_SUBJECT_PREFIX": settings.subject_prefix,
        "LINKPULSE_LOG_LEVEL": "WARNING",
    }
    cmd = [sys.executable, "-m", "linkpulse", "simulate", "--start", start.isoformat()]
    cmd += ["--duration", f"{minutes}m", "--rate", "15", "--tenants", "1", "--sellers", "5"]
    cmd += ["--seed", str(seed), "--no-seasonality", "--failure-rate", "0.02", "--quiet"]
    for a in anomaly:
        cmd += ["--anomaly", a]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture
def flow(access_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """The dataflow with the rule file, running until the test ends."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    cmd, env = flow_command(access_settings, access_settings.database_url, tmp_path / "rec", 0)
    cut = cmd.index("--stop-at-seq")
    del cmd[cut : cut + 2]  # run on, as in production
    cmd += ["--no-scoring", "--alert-rules", str(rules)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_a_simulated_spike_pages_is_acked_through_the_api_and_resolves(
    access_settings: Settings,
    keys: Keys,
    rx: HttpReceivers,
    nc: Client,
    unused_tcp_port: int,
    flow: subprocess.Popen[str],
) -> None:
    s = access_settings
    spike = f"failure_spike@{(START + timedelta(minutes=15)).isoformat()}+10m:acme=0.4"
    with ApiServer(s, unused_tcp_port) as url:
        wait_streams_ready(url, keys.headers("admin"))
        async with (
            running(Notifier(s, config(rx, receivers=("pd",)), poll_s=0.2)),
            httpx.AsyncClient(base_url=url, timeout=20) as http,
        ):
            simulate(s, START, 25, 7, spike)
            await until(lambda: len(rx.pd_events()) >= 1, "the page", timeout=180)
            assert flow.poll() is None, flow.stderr.read() if flow.stderr else ""
            (trigger,) = rx.pd_events()
            assert trigger["event_action"] == "trigger"
            assert trigger["payload"]["severity"] == "critical"
            assert "of payments fail (pages above 20%)" in trigger["payload"]["summary"]
            assert trigger["payload"]["custom_details"]["explanation"]

            resp = await http.get(
                "/v1/alerts", params={"state": "firing"}, headers=keys.headers("viewer")
            )
            assert resp.status_code == 200, resp.text
            firing = [a for a in resp.json() if a["rule"] == "payment_failures_high"]
            assert [a["alert_id"] for a in firing] == [trigger["dedup_key"]]
            resp = await http.post(
                f"/v1/alerts/{trigger['dedup_key']}/ack",
                json={"comment": "looking at the PSP"},
                headers=keys.headers("operator"),
            )
            assert resp.status_code == 200, resp.text
            await until(
                lambda: rx.pd_incidents().get(trigger["dedup_key"]) == ["trigger", "acknowledge"],
                "the acknowledge at PagerDuty",
            )

            simulate(s, START + timedelta(minutes=25), 20, 8)  # calm: the rate recovers
            await until(
                lambda: rx.pd_incidents().get(trigger["dedup_key"], [])[-1:] == ["resolve"],
                "the resolve",
                timeout=180,
            )
    assert rx.pd_incidents() == {trigger["dedup_key"]: ["trigger", "acknowledge", "resolve"]}
    assert rx.state.pd_problems == []  # every body had Events v2's required fields
