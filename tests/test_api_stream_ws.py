"""The WebSocket stream ``/v1/ws`` against the running API and real NATS/Redis/PostgreSQL.

The same hub, filters, scope and resume as the SSE streams (tests/test_api_stream.py):
window updates come from the dataflow's own sinks; the client is the ``websockets``
library. Checked: order, exact resume by ``last_event_id``, reset past retention,
seller and tenant scope, bad input refused before the upgrade (problem+json),
caps, overflow and revocation closing with their codes, no leak.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import msgspec
import orjson
import psycopg
import pytest
from nats.aio.client import Client
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from linkpulse.api.auth.keys import KeyStore
from linkpulse.api.stream_filter import parse_update
from linkpulse.bus.live import anomaly_subject, live_channels
from linkpulse.config import Settings
from linkpulse.schemas.outputs import MetricWindow
from tests.api_server import ApiServer
from tests.fix_access import Keys, Publisher, hub_of, make_key, wait_streams_ready, window

pytestmark = pytest.mark.integration


def _ws_url(http_url: str, **params: str) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return http_url.replace("http://", "ws://") + "/v1/ws" + (f"?{query}" if query else "")


@asynccontextmanager
async def ws(
    url: str, headers: dict[str, str] | None = None, **params: str
) -> AsyncIterator[ClientConnection]:
    """An open /v1/ws connection (bounded open, so a hang fails instead of blocking)."""
    conn = await asyncio.wait_for(
        connect(_ws_url(url, **params), additional_headers=headers, open_timeout=30), 40
    )
    try:
        yield conn
    finally:
        await conn.close()


async def recv(conn: ClientConnection, event: str | None = None, timeout: float = 20) -> Any:
    """The next message (the next one named ``event`` when given), decoded."""
    deadline = time.monotonic() + timeout
    while True:
        raw = await asyncio.wait_for(conn.recv(), max(deadline - time.monotonic(), 0.01))
        msg = orjson.loads(raw)
        if event is None or msg["event"] == event:
            return msg


def _window(msg: Any) -> MetricWindow:
    return msgspec.convert(msg["data"], type=MetricWindow, strict=False)


def _seq(msg: Any) -> int:
    return int(msg["id"].split("-")[1])


async def refused(url: str, headers: dict[str, str] | None = None, **params: str) -> Any:
    """The HTTP refusal of an upgrade: (status, problem+json body, headers)."""
    with pytest.raises(InvalidStatus) as info:
        await asyncio.wait_for(
            connect(_ws_url(url, **params), additional_headers=headers, open_timeout=30), 40
        )
    resp = info.value.response
    assert resp.headers["content-type"] == "application/problem+json", resp.body
    return resp.status_code, orjson.loads(resp.body or b"{}"), resp.headers


async def test_ws_updates_arrive_in_order_after_a_snapshot(
    served: tuple[str, ApiServer], keys: Keys, publisher: Publisher
) -> None:
    url, _ = served
    async with ws(url, keys.headers("admin")) as conn:
        snap = await recv(conn)
        assert snap["event"] == "snapshot" and snap["id"] == "metrics-0"
        assert snap["data"] == {"position": "metrics-0", "items": []}
        sent = [window(i) for i in range(50)]
        await asyncio.to_thread(publisher.send, sent)
        got = [await recv(conn, "metric") for _ in sent]
        seqs = [_seq(m) for m in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert [_window(m) for m in got] == sent


async def test_ws_resume_with_last_event_id_gets_exactly_the_missed_updates(
    served: tuple[str, ApiServer], keys: Keys, publisher: Publisher
) -> None:
    url, _ = served
    token = keys.secrets["viewer"]  # the query-parameter credential, as a browser sends it
    async with ws(url, token=token, window="1m") as conn:
        await recv(conn, "snapshot")
        await asyncio.to_thread(publisher.send, [window(i) for i in range(10)])
        first = [await recv(conn, "metric") for _ in range(10)]
    missed = [window(i) for i in range(10, 25)]
    await asyncio.to_thread(publisher.send, missed)
    await asyncio.to_thread(publisher.send, [window(99, tenant="beta")])  # not the viewer's
    async with ws(url, token=token, window="1m", last_event_id=first[-1]["id"]) as conn:
        replayed = [await recv(conn) for _ in missed]  # no snapshot: straight to the replay
        assert [m["event"] for m in replayed] == ["metric"] * len(missed)
        assert [_window(m) for m in replayed] == missed
        ids = [_seq(m) for m in (*first, *replayed)]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        await asyncio.to_thread(publisher.send, [window(30)])
        live = await recv(conn, "metric")
        assert _window(live) == window(30) and _seq(live) > ids[-1]


async def test_ws_resume_past_retention_gives_reset_then_snapshot(
    served: tuple[str, ApiServer],
    keys: Keys,
    publisher: Publisher,
    access_settings: Settings,
    nc: Client,
) -> None:
    url, _ = served
    await asyncio.to_thread(publisher.send, [window(i) for i in range(5)])
    stream = live_channels(access_settings)[0].stream
    deadline = time.monotonic() + 20
    while (await nc.jetstream().stream_info(stream)).state.last_seq < 5:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await nc.jetstream().purge_stream(stream)
    async with ws(url, keys.headers("viewer"), last_event_id="metrics-2") as conn:
        reset = await recv(conn)
        assert reset["event"] == "reset" and "no longer retained" in reset["data"]["reason"]
        snap = await recv(conn)
        assert snap["event"] == "snapshot"
        assert [i["value"] for i in snap["data"]["items"]] == [4.0]


async def test_ws_a_seller_never_receives_another_sellers_updates(
    served: tuple[str, ApiServer],
    keys: Keys,
    publisher: Publisher,
    nc: Client,
    access_settings: Settings,
) -> None:
    url, _ = served
    async with (
        ws(url, keys.headers("seller")) as s1,
        ws(url, keys.headers("seller2")) as s2,
        ws(url, keys.headers("beta_viewer")) as beta,
    ):
        for conn in (s1, s2, beta):
            await recv(conn, "snapshot")
        mixed = [
            window(0),  # tenant-wide: no seller sees it
            window(1, seller="s1"),
            window(2, seller="s2"),
            window(3, seller="s1"),
            window(4, seller="s1", tenant="beta"),
        ]
        await asyncio.to_thread(publisher.send, mixed)
        assert [_window(await recv(s1, "metric")).value for _ in range(2)] == [1.0, 3.0]
        assert _window(await recv(s2, "metric")).value == 2.0
        assert _window(await recv(beta, "metric")).value == 4.0
        # a marker each must see next proves nothing else was queued before it
        markers = [window(7, seller="s1"), window(8, seller="s2"), window(9, tenant="beta")]
        await asyncio.to_thread(publisher.send, markers)
        assert _window(await recv(s1, "metric")).value == 7.0
        assert _window(await recv(s2, "metric")).value == 8.0
        assert _window(await recv(beta, "metric")).value == 9.0
    # anomaly scores, scoped by their series key, on the anomalies channel
    async with (
        ws(url, keys.headers("seller"), channel="anomalies") as a1,
        ws(url, keys.headers("seller2"), channel="anomalies") as a2,
    ):
        for conn in (a1, a2):
            await recv(conn, "snapshot")
        subject = anomaly_subject(access_settings.subject_prefix, "acme")
        for series in ("acme|gmv|seller_id=s2|1m", "acme|gmv||1m", "acme|gmv|seller_id=s1|1m"):
            await nc.publish(subject, orjson.dumps({"series": series}))
        await nc.flush()
        assert (await recv(a1, "anomaly"))["data"]["series"] == "acme|gmv|seller_id=s1|1m"
        assert (await recv(a2, "anomaly"))["data"]["series"] == "acme|gmv|seller_id=s2|1m"
        await nc.publish(subject, orjson.dumps({"series": "acme|gmv|seller_id=s2|5m"}))
        await nc.flush()  # the marker s2 sees next: nothing tenant-wide was queued before it
        assert (await recv(a2, "anomaly"))["data"]["series"] == "acme|gmv|seller_id=s2|5m"


async def test_ws_bad_requests_are_refused_before_the_upgrade_naming_the_field(
    served: tuple[str, ApiServer], keys: Keys
) -> None:
    url, _ = served
    cases: list[tuple[str | None, dict[str, str], int, str]] = [
        ("viewer", {"metric": "nope"}, 400, "metric"),
        ("viewer", {"window": "7m"}, 400, "window"),
        ("viewer", {"channel": "anomalies", "window": "1m"}, 400, "window"),
        ("viewer", {"channel": "weather"}, 400, "channel"),
        ("viewer", {"colour": "red"}, 400, "colour"),
        ("viewer", {"last_event_id": "anomalies-3"}, 400, "last_event_id"),
        ("viewer", {"channel": "alerts", "last_event_id": "<script>"}, 400, "last_event_id"),
        ("viewer", {"tenant": "beta"}, 403, "tenant"),
        ("seller", {"channel": "alerts", "seller": "s2"}, 403, "seller"),
        ("ingest", {}, 403, ""),
        ("revoked", {}, 401, "Authorization"),
        (None, {}, 401, "Authorization"),
    ]
    for name, params, status, field in cases:
        headers = keys.headers(name) if name else None
        got, body, _ = await refused(url, headers, **params)
        assert (got, body.get("field", "")) == (status, field), (name, params, body)
        assert body["status"] == status and body["detail"]
    # the query-parameter credential is checked like the header
    got, body, _ = await refused(url, token="lp_00000000_nope")
    assert got == 401 and body["field"] == "Authorization"
    # and an admin may pick any tenant
    async with ws(url, keys.headers("admin"), tenant="beta", channel="anomalies") as conn:
        snap = await recv(conn)
        assert snap["event"] == "snapshot" and snap["id"].startswith("anomalies-")


async def test_ws_per_principal_cap_answers_429_and_closing_frees_the_slot(
    served: tuple[str, ApiServer], keys: Keys, access_settings: Settings
) -> None:
    url, server = served
    hub = hub_of(server)
    cap = access_settings.stream_max_per_principal
    h = keys.headers("analyst")
    conns = [
        await connect(_ws_url(url, channel="alerts"), additional_headers=h) for _ in range(cap)
    ]
    try:
        status, body, headers = await refused(url, h, channel="alerts")
        assert status == 429 and "too-many-streams" in body["type"]
        assert headers["retry-after"] == "5"
    finally:
        for c in conns:
            await c.close()
    deadline = time.monotonic() + 30
    while hub.stats()["clients"] > 0:  # closed ones leave the hub
        assert time.monotonic() < deadline, hub.stats()
        await asyncio.sleep(0.05)
    async with ws(url, h, channel="alerts") as conn:
        assert (await recv(conn))["event"] == "snapshot"


async def _until(pred: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_ws_a_burst_beyond_the_queue_ends_with_overflow_and_close_4008(
    access_settings: Settings, keys: Keys, unused_tcp_port: int, nc: object, redis_client: object
) -> None:
    settings = Settings(**{**access_settings.model_dump(), "stream_queue_size": 8})
    server = ApiServer(settings, unused_tcp_port)
    with server as url:
        wait_streams_ready(url, keys.headers("admin"))
        hub = hub_of(server)
        async with ws(url, keys.headers("viewer")) as conn:
            await recv(conn, "snapshot")
            assert hub.loop is not None

            def burst() -> None:  # what a burst of NATS messages does, in one loop turn
                for i in range(20):
                    data = msgspec.json.encode(window(i))
                    hub.dispatch("metrics", parse_update("metrics", "acme", 1000 + i, data))

            hub.loop.call_soon_threadsafe(burst)
            msg = await recv(conn, "overflow")
            assert "Last-Event-ID" in msg["data"]["reason"]
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(conn.recv(), 20)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4008
        assert hub.overflows == 1
        await _until(lambda: hub.stats()["clients"] == 0, "the cut-off client stayed")


async def test_ws_a_revoked_key_has_its_socket_closed_4001(
    served: tuple[str, ApiServer], access_settings: Settings
) -> None:
    url, _ = served
    secret, key_id = await make_key(access_settings.database_url, "viewer")
    async with ws(url, token=secret, channel="alerts") as conn:
        await recv(conn, "snapshot")
        async with await psycopg.AsyncConnection.connect(
            access_settings.database_url, autocommit=True
        ) as db:
            await KeyStore(db).revoke(key_id)
        msg = await recv(conn, "revoked", timeout=30)  # the bound
        assert "revoked" in msg["data"]["reason"]
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(conn.recv(), 20)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4001


async def test_ws_many_connects_and_drops_leave_nothing_behind(
    served: tuple[str, ApiServer], keys: Keys
) -> None:
    url, server = served
    hub = hub_of(server)
    await _until(lambda: hub.stats()["clients"] == 0, "streams open before the test")
    assert hub.loop is not None
    loop = hub.loop
    base_tasks = len(asyncio.all_tasks(loop))
    base_subs = hub.stats()["nats_subscriptions"]
    h = keys.headers("viewer")
    for i in range(200):
        conn = await connect(_ws_url(url, channel="anomalies"), additional_headers=h)
        await recv(conn, "snapshot")
        if i % 5 == 0:  # abrupt: the TCP connection goes without a close frame
            conn.transport.abort()
        else:
            await conn.close()
    await _until(lambda: hub.stats()["clients"] == 0, "streams left open")
    await _until(lambda: not hub._per_principal, "a principal's count stayed up")
    await _until(
        lambda: len(asyncio.all_tasks(loop)) <= base_tasks, "tasks left on the server's loop"
    )
    assert hub.stats()["nats_subscriptions"] == base_subs
