"""Alerting through the real API (uvicorn, auth on) with the notifier and a loopback PagerDuty:
ack both ways, alert reads, silences, the notification log, who may do what, bad input."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from nats.aio.client import Client

from linkpulse.alerts.types import AlertState
from linkpulse.config import Settings
from linkpulse.notifier.service import Notifier
from linkpulse.notifier.store import insert_alert_change
from tests.api_server import ApiServer
from tests.fix_access import KEY_SPECS, Keys, SseReader, access_settings, keys, wait_streams_ready
from tests.fix_notifier import change, config, outbox, publish, running, rx, until
from tests.receivers import HttpReceivers

__all__ = ["access_settings", "keys", "rx"]  # fixtures used by name

pytestmark = pytest.mark.integration
PD_SECRET = "pd-webhook-secret"
OPERATORS = {"admin", "operator"}
READERS = {"admin", "operator", "analyst", "viewer", "seller"}


@pytest.fixture
def api_settings(access_settings: Settings) -> Settings:
    return Settings(**{**access_settings.model_dump(), "pagerduty_webhook_secret": PD_SECRET})


@pytest.fixture
def api(
    api_settings: Settings, keys: Keys, unused_tcp_port: int, nc: Client, redis_client: object
) -> Iterator[str]:
    with ApiServer(api_settings, unused_tcp_port) as url:
        wait_streams_ready(url, keys.headers("admin"))
        yield url


@pytest.fixture
async def http(api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api, timeout=20) as c:
        yield c


def _store(dsn: str, *changes: object) -> None:
    with psycopg.connect(dsn) as conn:
        for c in changes:
            insert_alert_change(conn, c)  # type: ignore[arg-type]


def _pd_webhook(event_type: str, key: str, secret: str = PD_SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "event": {
                "id": "01X",
                "event_type": event_type,
                "resource_type": "incident",
                "occurred_at": "2026-11-24T10:10Z",
                "data": {
                    "id": "PT4KHLK",
                    "type": "incident",
                    "incident_key": key,
                    "status": "acknowledged",
                },
            }
        }
    ).encode()
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"X-PagerDuty-Signature": f"v1={sig}", "Content-Type": "application/json"}


async def test_ack_through_the_api_reaches_pagerduty_and_the_stream_and_pagerduty_resolves(
    api_settings: Settings, http: httpx.AsyncClient, keys: Keys, nc: Client, rx: HttpReceivers
) -> None:
    s = api_settings
    firing = change()
    _store(s.database_url, firing)
    async with running(Notifier(s, config(rx, receivers=("pd",)), poll_s=0.2)):
        await publish(nc, s, firing)
        await until(lambda: rx.pd_incidents().get(firing.alert_id) == ["trigger"], "the page")
        async with http.stream("GET", "/v1/stream/alerts", headers=keys.headers("viewer")) as r:
            assert r.status_code == 200
            sse = SseReader(r)
            resp = await http.post(
                f"/v1/alerts/{firing.alert_id}/ack",
                headers=keys.headers("operator"),
                json={"comment": "on it"},
            )
            assert resp.status_code == 200, resp.text
            assert resp.json()["state"] == "acknowledged"
            while True:
                ev = await sse.until("alert")
                if "acknowledged" in ev.data:
                    break
        await until(
            lambda: rx.pd_incidents()[firing.alert_id] == ["trigger", "acknowledge"],
            "the acknowledge at PagerDuty",
        )
        again = await http.post(
            f"/v1/alerts/{firing.alert_id}/ack", headers=keys.headers("operator")
        )
        assert again.status_code == 200 and again.json()["state"] == "acknowledged"
        listed = await http.get(
            "/v1/alerts", params={"state": "acknowledged"}, headers=keys.headers("viewer")
        )
        assert [a["alert_id"] for a in listed.json()] == [firing.alert_id]
        # PagerDuty resolves it: the alert follows, the notifier tells the receivers
        body, headers = _pd_webhook("incident.resolved", firing.alert_id)
        got = await http.post("/v1/integrations/pagerduty", content=body, headers=headers)
        assert got.status_code == 200 and got.json()["result"] == "updated", got.text
        await until(
            lambda: rx.pd_incidents()[firing.alert_id][-1] == "resolve", "the resolve notification"
        )
        await until(
            lambda: all(r["status"] == "delivered" for r in outbox(s.database_url)),
            "every delivery recorded",
        )
    hist = await http.get(f"/v1/alerts/{firing.alert_id}", headers=keys.headers("analyst"))
    assert [h["state"] for h in hist.json()["history"]] == ["firing", "acknowledged", "resolved"]
    assert rx.state.pd_problems == []
    late = await http.post(f"/v1/alerts/{firing.alert_id}/ack", headers=keys.headers("admin"))
    assert late.status_code == 409 and late.json()["field"] == "alert_id"
    dead = await http.get(
        "/v1/notifications", params={"status": "dead"}, headers=keys.headers("operator")
    )
    assert dead.status_code == 200 and dead.json() == []
    log = await http.get(
        "/v1/notifications", params={"alert_id": firing.alert_id}, headers=keys.headers("operator")
    )
    assert {n["kind"] for n in log.json()} == {"notify", "ack"}
    assert all(n["status"] == "delivered" for n in log.json())
    assert len(outbox(s.database_url)) == len(log.json())


async def test_a_pagerduty_webhook_with_a_bad_signature_is_refused(
    api_settings: Settings, http: httpx.AsyncClient
) -> None:
    firing = change()
    _store(api_settings.database_url, firing)
    body, headers = _pd_webhook("incident.acknowledged", firing.alert_id, secret="wrong")
    resp = await http.post("/v1/integrations/pagerduty", content=body, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["field"] == "X-PagerDuty-Signature"
    unsigned = await http.post("/v1/integrations/pagerduty", content=body)
    assert unsigned.status_code == 401
    body, headers = _pd_webhook("incident.acknowledged", firing.alert_id)
    garbage = body[:-5]
    headers["X-PagerDuty-Signature"] = (
        "v1=" + hmac.new(PD_SECRET.encode(), garbage, hashlib.sha256).hexdigest()
    )
    bad = await http.post("/v1/integrations/pagerduty", content=garbage, headers=headers)
    assert bad.status_code == 400 and bad.json()["field"] == "event"
    ok = await http.post(
        "/v1/integrations/pagerduty",
        content=body,
        headers=_pd_webhook("incident.acknowledged", firing.alert_id)[1],
    )
    assert ok.json()["result"] == "updated"
    unknown_body, unknown_headers = _pd_webhook("incident.acknowledged", "not-ours")
    unknown = await http.post(
        "/v1/integrations/pagerduty", content=unknown_body, headers=unknown_headers
    )
    assert unknown.status_code == 200 and unknown.json()["result"] == "ignored"


async def test_silences_through_the_api_and_their_bad_input(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    op = keys.headers("operator")
    now = datetime.now(UTC)
    made = await http.post(
        "/v1/silences",
        headers=op,
        json={"matchers": ['severity="warning"'], "duration": "2h", "comment": "deploy"},
    )
    assert made.status_code == 201, made.text
    sil = made.json()
    assert sil["state"] == "active" and 'tenant="acme"' in sil["matchers"]
    backwards = await http.post(
        "/v1/silences",
        headers=op,
        json={
            "matchers": ['severity="warning"'],
            "starts_at": now.isoformat(),
            "ends_at": (now - timedelta(hours=1)).isoformat(),
            "comment": "oops",
        },
    )
    assert backwards.status_code == 422 and backwards.json()["field"] == "ends_at"
    assert "after starts_at" in backwards.json()["detail"]
    bad = await http.post(
        "/v1/silences",
        headers=op,
        json={"matchers": ['severity=="warning"'], "duration": "1h", "comment": "x"},
    )
    assert bad.status_code == 422 and bad.json()["field"] == "matchers[0]"
    no_end = await http.post(
        "/v1/silences", headers=op, json={"matchers": ['severity="warning"'], "comment": "x"}
    )
    assert no_end.status_code == 422 and no_end.json()["field"] == "ends_at"
    listed = await http.get("/v1/silences", headers=keys.headers("viewer"))
    assert [x["id"] for x in listed.json()] == [sil["id"]]
    other = await http.get("/v1/silences", headers=keys.headers("beta_viewer"))
    assert other.json() == []  # another tenant's silences are not shown
    gone = await http.delete(f"/v1/silences/{sil['id']}", headers=op)
    assert gone.status_code == 200 and gone.json()["state"] == "expired"
    assert (await http.get("/v1/silences", headers=op)).json() == []
    missing = await http.delete("/v1/silences/nope", headers=op)
    assert missing.status_code == 404


async def test_alert_reads_filter_and_scope(
    api_settings: Settings, http: httpx.AsyncClient, keys: Keys
) -> None:
    crit = change("payment_failures")
    warn = change("slow_checkout", severity="warning", metric="checkout_p95")
    beta = change("payment_failures", tenant="beta")
    gone = change("refund_burst", metric="refunds")
    _store(
        api_settings.database_url,
        gone,
        change("refund_burst", AlertState.ACKNOWLEDGED, metric="refunds", at=datetime.now(UTC)),
        change("refund_burst", AlertState.RESOLVED, metric="refunds"),
    )
    _store(
        api_settings.database_url,
        crit,
        warn,
        beta,
        change("slow_checkout", AlertState.RESOLVED, severity="warning", metric="checkout_p95"),
    )
    h = keys.headers("viewer")
    everything = (await http.get("/v1/alerts", headers=h)).json()
    assert {a["alert_id"] for a in everything} == {crit.alert_id, warn.alert_id, gone.alert_id}
    assert {a["state"] for a in everything if a["alert_id"] == gone.alert_id} == {"resolved"}
    firing = (await http.get("/v1/alerts", params={"state": "firing"}, headers=h)).json()
    assert [a["alert_id"] for a in firing] == [crit.alert_id]
    by_sev = (await http.get("/v1/alerts", params={"severity": "warning"}, headers=h)).json()
    assert [a["state"] for a in by_sev] == ["resolved"]
    by_rule = await http.get("/v1/alerts", params={"rule": "payment_failures"}, headers=h)
    assert [a["alert_id"] for a in by_rule.json()] == [crit.alert_id]
    bad = await http.get("/v1/alerts", params={"state": "sleepy"}, headers=h)
    assert bad.status_code == 422
    window = await http.get(
        "/v1/alerts",
        headers=h,
        params={"since": "2026-11-25T00:00:00Z", "until": "2026-11-24T00:00:00Z"},
    )
    assert window.status_code == 400 and window.json()["field"] == "since"
    foreign = await http.get(f"/v1/alerts/{beta.alert_id}", headers=h)
    assert foreign.status_code == 404
    assert (await http.get(f"/v1/alerts/{beta.alert_id}", headers=keys.headers("admin"))).is_success


async def test_who_may_use_the_alerting_routes(
    api_settings: Settings, http: httpx.AsyncClient, keys: Keys
) -> None:
    firing = change()
    _store(api_settings.database_url, firing)
    body = {"matchers": ['alertname="x"'], "duration": "1m", "comment": "matrix"}
    calls = [
        ("GET", "/v1/alerts", None, READERS),
        ("GET", f"/v1/alerts/{firing.alert_id}", None, READERS),
        ("GET", "/v1/silences", None, READERS),
        ("GET", "/v1/notifications", None, OPERATORS),
        ("POST", "/v1/silences", body, OPERATORS),
        ("DELETE", "/v1/silences/none", None, OPERATORS),
        ("POST", f"/v1/alerts/{firing.alert_id}/ack", None, OPERATORS),
    ]
    for method, path, payload, allowed in calls:
        for name in ("viewer", "analyst", "ingest", "seller", "operator", "admin"):
            resp = await http.request(method, path, json=payload, headers=keys.headers(name))
            if name in allowed:
                assert resp.status_code != 403 and resp.status_code < 500, (name, path, resp.text)
            else:
                assert resp.status_code == 403, (name, method, path, resp.status_code)
    assert set(KEY_SPECS) >= {"viewer", "analyst", "ingest", "seller", "operator", "admin"}
