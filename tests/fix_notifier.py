"""Helpers for the notifier tests: alert changes, a config pointing at the loopback
receivers, publishing on the alerts subject, running a notifier in-process, polling.

Import by name (``from tests.fix_notifier import ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
import yaml
from nats.aio.client import Client

from linkpulse.alerts.delivery.config import NotifierConfig, load_config
from linkpulse.alerts.types import AlertChange, AlertState, fingerprint, incident_id
from linkpulse.bus.live import alert_subject, ensure_live_streams
from linkpulse.config import Settings
from linkpulse.notifier.service import Notifier
from linkpulse.store.migrate import migrate
from tests.receivers import HttpReceivers, SmtpReceiver

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def change(
    alertname: str = "payment_failures",
    state: AlertState = AlertState.FIRING,
    *,
    severity: str = "critical",
    metric: str = "payment_failure_rate",
    tenant: str = "acme",
    active_at: datetime = T0,
    at: datetime | None = None,
    revision: int = 0,
    **labels: str,
) -> AlertChange:
    """An alert change as the rule step emits it."""
    lab = {
        "alertname": alertname,
        "tenant": tenant,
        "metric": metric,
        "window": "1m",
        "severity": severity,
        **labels,
    }
    fp = fingerprint(lab)
    previous = {AlertState.FIRING: AlertState.PENDING, AlertState.RESOLVED: AlertState.FIRING}
    return AlertChange(
        alert_id=incident_id(fp, active_at),
        fingerprint=fp,
        rule=alertname,
        kind="anomaly",
        tenant=tenant,
        series=f"{tenant}|{metric}||1m",
        state=state,
        previous=previous.get(state, AlertState.FIRING),
        at=at or active_at + timedelta(minutes=3),
        active_at=active_at,
        fired_at=active_at + timedelta(minutes=3),
        value=0.97,
        observed=0.18,
        expected=0.02,
        lower=0.0,
        upper=0.05,
        severity=severity,
        labels=lab,
        summary=f"{alertname} on {metric}",
        explanation="failure rate 9x its usual level for this hour (seasonal baseline)",
        revision=revision,
    )


def config_dict(
    rx: HttpReceivers,
    smtp: SmtpReceiver | None = None,
    *,
    receivers: tuple[str, ...] = ("pd", "hook", "slack", "mail"),
    route: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A notifier config: every receiver on the root route (``continue``), fast timings."""
    defs = {
        "pd": {"pagerduty": {"routing_key": "R0UT1NGKEY", "url": f"{rx.url}/pd"}},
        "hook": {"webhook": {"url": f"{rx.url}/webhook", "secret": "s3cret"}},
        "slack": {"slack": {"url": f"{rx.url}/slack"}},
        "garbage": {"webhook": {"url": f"{rx.url}/garbage"}},
        "mail": {
            "email": {
                "to": ["oncall@example.com"],
                "from": "linkpulse@example.com",
                "smarthost": f"127.0.0.1:{smtp.port if smtp else 1}",
            }
        },
    }
    timing = {"group_wait": "0s", "group_interval": "200ms", "repeat_interval": "1h"}
    return {
        "route": route
        or {
            "receiver": receivers[0],
            "group_by": ["alertname", "tenant"],
            **timing,
            "routes": [{"receiver": r, "continue": True} for r in receivers],
        },
        "receivers": [{"name": r, **defs[r]} for r in receivers],
        "delivery": {
            "initial_s": 0.05,
            "max_s": 0.3,
            "jitter": 0.2,
            "max_age_s": 600,
            "timeout_s": 5,
        },
        "link_base": "http://linkpulse.test",
        **extra,
    }


def config(*args: Any, **kwargs: Any) -> NotifierConfig:
    return load_config(config_dict(*args, **kwargs))


def config_yaml(*args: Any, **kwargs: Any) -> str:
    return yaml.safe_dump(config_dict(*args, **kwargs))


@pytest.fixture
def rx() -> Iterator[HttpReceivers]:
    r = HttpReceivers()
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    s = SmtpReceiver()
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def notifier_settings(pg_dsn: str, nats_settings: Settings) -> Settings:
    """This test's own database (migrated), stream and subjects."""
    migrate(pg_dsn)
    return Settings(**{**nats_settings.model_dump(), "database_url": pg_dsn})


async def publish(nc: Client, settings: Settings, *changes: AlertChange) -> None:
    """Publish changes as the rule step does (subject, Nats-Msg-Id)."""
    js = nc.jetstream()
    await ensure_live_streams(js, settings)
    for c in changes:
        await js.publish(
            alert_subject(settings.subject_prefix, c.tenant),
            msgspec.json.encode(c),
            headers={"Nats-Msg-Id": f"{c.alert_id}/{c.state.value}/{c.revision}"},
        )


@contextlib.asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[Notifier]:
    """Run ``notifier`` in this event loop for the block; fail if it crashed."""
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run(stop))
    try:
        yield notifier
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``check`` (liveness only: generous deadline, never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for: {what}"
        await asyncio.sleep(0.05)


def outbox(dsn: str) -> list[dict[str, Any]]:
    """Every row of the notification log, oldest first."""
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT key, receiver, kind, status, attempts, last_error, alert_ids "
            "FROM notifications ORDER BY created_at, key"
        )
        return cur.fetchall()


class FakeClock:
    """A clock the test moves (the notifier's ``clock``)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)
