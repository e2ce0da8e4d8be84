"""SSE streams against the running API and real NATS/Redis/PostgreSQL.

Window updates are published by the dataflow's own sinks (``MetricUpdatesSink``
to NATS, ``RedisLatestSink`` to Redis), so the stream sees exactly what the
running dataflow sends. Checked: order, exact resume by Last-Event-ID, reset and
snapshot past retention, scope (sellers, tenants), slow clients cut off, revoked
keys closed, caps, heartbeats, bad input, and no leak after many cycles.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from nats.aio.client import Client

from linkpulse.api.auth.keys import KeyStore
from linkpulse.api.auth.roles import Principal, Role
from linkpulse.api.hub import STOP, StreamHub
from linkpulse.api.stream_filter import StreamFilter, Update
from linkpulse.bus.live import anomaly_subject, live_channels
from linkpulse.config import Settings
from linkpulse.schemas.outputs import MetricWindow
from tests.api_server import ApiServer
from tests.fix_access import (
    Keys,
    Publisher,
    SseReader,
    hub_of,
    make_key,
    wait_streams_ready,
    window,
)

pytestmark = pytest.mark.integration

_encoder = msgspec.json.Encoder()


async def _open(
    c: httpx.AsyncClient, path: str, headers: dict[str, str], **params: Any
) -> tuple[httpx.Response, SseReader]:
    req = c.build_request("GET", path, headers=headers, params=params)
    # a bound, so a stream that never answers fails here instead of hanging the run
    resp = await asyncio.wait_for(c.send(req, stream=True), 30)
    assert resp.status_code == 200, (await resp.aread()).decode()
    return resp, SseReader(resp)


def _decode(ev: Any) -> MetricWindow:
    return msgspec.json.decode(ev.data.encode(), type=MetricWindow)


async def test_updates_arrive_in_order_after_a_snapshot(
    served: tuple[str, ApiServer], keys: Keys, publisher: Publisher
) -> None:
    url, _ = served
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        resp, sse = await _open(c, "/v1/stream/metrics", keys.headers("admin"))
        try:
            snap = await sse.until("snapshot")
            assert sse.retry == 3000 and snap.id == "metrics-0"
            sent = [window(i) for i in range(50)]
            await asyncio.to_thread(publisher.send, sent)
            got = [await sse.until("metric") for _ in sent]
            seqs = [int(ev.id.split("-")[1]) for ev in got]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert [_decode(ev) for ev in got] == sent
        finally:
            await resp.aclose()


async def test_reconnect_with_last_event_id_gets_exactly_the_missed_updates(
    served: tuple[str, ApiServer], keys: Keys, publisher: Publisher
) -> None:
    url, _ = served
    h = keys.headers("viewer")
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        resp, sse = await _open(c, "/v1/stream/metrics", h, window="1m")
        await sse.until("snapshot")
        await asyncio.to_thread(publisher.send, [window(i) for i in range(10)])
        first = [await sse.until("metric") for _ in range(10)]
        await resp.aclose()
        missed = [window(i) for i in range(10, 25)]
        await asyncio.to_thread(publisher.send, missed)
        # another tenant's update in between: not the viewer's, must not appear
        await asyncio.to_thread(publisher.send, [window(99, tenant="beta")])
        resp, sse = await _open(c, "/v1/stream/metrics", {**h, "Last-Event-ID": first[-1].id})
        try:
            replayed = [await sse.until("metric") for _ in missed]
            assert [_decode(ev) for ev in replayed] == missed
            ids = [int(ev.id.split("-")[1]) for ev in (*first, *replayed)]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            live = window(30)
            await asyncio.to_thread(publisher.send, [live])
            after = await sse.until("metric")
            assert _decode(after) == live and int(after.id.split("-")[1]) > ids[-1]
        finally:
            await resp.aclose()


async def test_resume_past_retention_gives_reset_then_snapshot(
    served: tuple[str, ApiServer],
    keys: Keys,
    publisher: Publisher,
    access_settings: Settings,
    nc: Client,
) -> None:
    url, _ = served
    h = keys.headers("viewer")
    await asyncio.to_thread(publisher.send, [window(i) for i in range(5)])
    stream = live_channels(access_settings)[0].stream
    deadline = time.monotonic() + 20
    while (await nc.jetstream().stream_info(stream)).state.last_seq < 5:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await nc.jetstream().purge_stream(stream)  # what max_age does to old updates
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        resp, sse = await _open(c, "/v1/stream/metrics", {**h, "Last-Event-ID": "metrics-2"})
        try:
            reset = await sse.next()
            assert reset.event == "reset" and "no longer retained" in reset.json()["reason"]
            snap = await sse.next()
            assert snap.event == "snapshot"
            items = snap.json()["items"]
            assert [i["value"] for i in items] == [4.0]  # the latest of the series, from Redis
            await asyncio.to_thread(publisher.send, [window(6)])
            assert _decode(await sse.until("metric")) == window(6)
        finally:
            await resp.aclose()


async def test_a_seller_never_receives_another_sellers_updates(
    served: tuple[str, ApiServer],
    keys: Keys,
    publisher: Publisher,
    nc: Client,
    access_settings: Settings,
) -> None:
    url, _ = served
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        streams = {}
        for name in ("seller", "seller2", "beta_viewer"):
            for path in ("/v1/stream/metrics", "/v1/stream/anomalies"):
                streams[(name, path)] = await _open(c, path, keys.headers(name))
        try:
            for (_, path), (_, sse) in streams.items():
                if path.endswith("metrics"):
                    await sse.until("snapshot")
            mixed = [
                window(0),
                window(1, seller="s1"),
                window(2, seller="s2"),
                window(3, seller="s1"),
            ]
            mixed.append(window(4, seller="s1", tenant="beta"))
            await asyncio.to_thread(publisher.send, mixed)
            prefix = access_settings.subject_prefix
            for series in ("acme|gmv|seller_id=s2|1m", "acme|gmv|seller_id=s1|1m", "acme|gmv||1m"):
                await nc.publish(
                    anomaly_subject(prefix, "acme"), _encoder.encode({"series": series})
                )
            await nc.publish(
                anomaly_subject(prefix, "beta"), _encoder.encode({"series": "beta|gmv||1m"})
            )
            await nc.flush()
            s1 = streams[("seller", "/v1/stream/metrics")][1]
            assert [_decode(await s1.until("metric")).value for _ in range(2)] == [1.0, 3.0]
            s2 = streams[("seller2", "/v1/stream/metrics")][1]
            assert _decode(await s2.until("metric")).value == 2.0
            beta = streams[("beta_viewer", "/v1/stream/metrics")][1]
            assert _decode(await beta.until("metric")).value == 4.0
            a1 = streams[("seller", "/v1/stream/anomalies")][1]
            assert (await a1.until("anomaly")).json()["series"] == "acme|gmv|seller_id=s1|1m"
            a2 = streams[("seller2", "/v1/stream/anomalies")][1]
            assert (await a2.until("anomaly")).json()["series"] == "acme|gmv|seller_id=s2|1m"
            ab = streams[("beta_viewer", "/v1/stream/anomalies")][1]
            assert (await ab.until("anomaly")).json()["series"] == "beta|gmv||1m"
            # a marker each must see next proves nothing else was queued before it
            await asyncio.to_thread(
                publisher.send,
                [
                    window(7, seller="s1"),
                    window(8, seller="s2"),
                    window(9, seller="s1", tenant="beta"),
                ],
            )
            assert _decode(await s1.until("metric")).value == 7.0
            assert _decode(await s2.until("metric")).value == 8.0
            assert _decode(await beta.until("metric")).value == 9.0
        finally:
            for resp, _ in streams.values():
                await resp.aclose()


async def test_bad_stream_requests_are_4xx_naming_what_is_wrong(
    served: tuple[str, ApiServer], keys: Keys
) -> None:
    url, _ = served
    cases = [
        ("viewer", "/v1/stream/metrics", {"metric": "nope"}, {}, 400, "metric"),
        ("viewer", "/v1/stream/metrics", {"window": "7m"}, {}, 400, "window"),
        ("viewer", "/v1/stream/anomalies", {"window": "1m"}, {}, 400, "window"),
        ("viewer", "/v1/stream/metrics", {"colour": "red"}, {}, 400, "colour"),
        (
            "viewer",
            "/v1/stream/metrics",
            {},
            {"Last-Event-ID": "anomalies-3"},
            400,
            "Last-Event-ID",
        ),
        ("viewer", "/v1/stream/metrics", {}, {"Last-Event-ID": "<script>"}, 400, "Last-Event-ID"),
        ("viewer", "/v1/stream/metrics", {"tenant": "beta"}, {}, 403, "tenant"),
        ("seller", "/v1/stream/alerts", {"seller": "s2"}, {}, 403, "seller"),
    ]
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        for name, path, params, extra, status, field in cases:
            resp = await asyncio.wait_for(
                c.get(path, params=params, headers={**keys.headers(name), **extra}), 30
            )
            assert resp.status_code == status, (path, params, resp.text)
            assert resp.headers["content-type"] == "application/problem+json"
            assert resp.json()["field"] == field
        # an admin may pick any tenant
        resp, _ = await _open(c, "/v1/stream/metrics", keys.headers("admin"), tenant="beta")
        await resp.aclose()
        # and every refusal above is in the audit log, with its reason
        params = {"action": "refused", "principal": keys.ids["viewer"]}
        deadline = time.monotonic() + 20
        while True:
            r = await c.get("/v1/audit", headers=keys.headers("admin"), params=params)
            refused = r.json()["entries"]
            if len(refused) >= 7:
                break
            assert time.monotonic() < deadline, refused
            await asyncio.sleep(0.2)
        assert {e["status"] for e in refused} == {400, 403}
        assert any("unknown metric 'nope'" in e["detail"] for e in refused)


async def test_a_revoked_key_has_its_open_stream_closed(
    served: tuple[str, ApiServer], access_settings: Settings
) -> None:
    url, _ = served
    secret, key_id = await make_key(access_settings.database_url, "viewer")
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        resp, sse = await _open(c, "/v1/stream/alerts", {"Authorization": f"Bearer {secret}"})
        try:
            await sse.until("snapshot")
            async with await psycopg.AsyncConnection.connect(
                access_settings.database_url, autocommit=True
            ) as conn:
                await KeyStore(conn).revoke(key_id)
            ev = await sse.until("revoked", timeout=30)  # the bound
            assert "revoked" in ev.json()["reason"]
            with pytest.raises(EOFError):
                await sse.next(timeout=10)
        finally:
            await resp.aclose()


def test_a_full_queue_cuts_off_that_client_only() -> None:
    settings = Settings(stream_queue_size=2)
    hub = StreamHub(settings, guard=None, redis=None)  # type: ignore[arg-type]
    p = Principal(id="k", role=Role.VIEWER, tenant="acme")
    slow = hub.register(p, StreamFilter("metrics", "acme"))
    fast = hub.register(p, StreamFilter("metrics", "acme"))
    for seq in range(1, 4):
        hub.dispatch("metrics", Update(seq, "acme", None, "gmv", "1m", b"{}"))
        if seq < 3:
            fast.queue.get_nowait()  # the fast one keeps up
    assert slow.overflowed and not fast.overflowed
    assert slow.queue.qsize() == 1 and slow.queue.get_nowait() is STOP  # its memory is gone
    assert fast.queue.get_nowait().seq == 3
    assert hub.stats()["clients"] == 1 and hub.overflows == 1
    hub.unregister(slow)
    hub.unregister(slow)  # idempotent
    hub.unregister(fast)
    assert hub.stats()["clients"] == 0 and not hub._per_principal


def _raw_get(port: int, path: str, token: str, *, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    return s


def _reset(s: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0): the client vanishes without closing the stream."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


async def _wait(pred: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_slow_client_is_cut_off_while_others_keep_receiving(
    access_settings: Settings, keys: Keys, unused_tcp_port: int, nc: object, redis_client: object
) -> None:
    settings = Settings(**{**access_settings.model_dump(), "stream_queue_size": 64})
    server = ApiServer(settings, unused_tcp_port)
    publisher = Publisher(settings)
    with server as url:
        wait_streams_ready(url, keys.headers("admin"))
        hub = hub_of(server)
        slow = _raw_get(unused_tcp_port, "/v1/stream/metrics", keys.secrets["viewer"], rcvbuf=4096)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                resp, sse = await _open(c, "/v1/stream/metrics", keys.headers("analyst"))
                await sse.until("snapshot")
                await _wait(lambda: hub.stats()["clients"] >= 2, "the slow client never opened")
                sent = [window(i, pad=20_000) for i in range(300)]

                def publish() -> None:
                    for i in range(0, len(sent), 10):  # 10 updates per batch, paced
                        publisher.send(sent[i : i + 10])
                        time.sleep(0.05)

                task = asyncio.create_task(asyncio.to_thread(publish))
                got = [await sse.until("metric", timeout=60) for _ in sent]
                await task
                assert [_decode(ev).value for ev in got] == [w.value for w in sent]
                await _wait(lambda: hub.overflows >= 1, "the slow client was never cut off")
                await resp.aclose()
                # the cut-off client left the hub at once; its task ends by the send timeout
                await _wait(lambda: hub.stats()["clients"] == 0, "streams left open")
                await _wait(lambda: not hub._per_principal, "a stream task never ended")
        finally:
            slow.close()
            publisher.close()


async def test_caps_on_open_streams_and_heartbeats(
    access_settings: Settings, keys: Keys, unused_tcp_port: int, nc: object, redis_client: object
) -> None:
    settings = Settings(
        **{
            **access_settings.model_dump(),
            "stream_max_per_principal": 2,
            "stream_max_total": 3,
            "stream_heartbeat_s": 0.3,
        }
    )
    server = ApiServer(settings, unused_tcp_port)
    with server as url:
        wait_streams_ready(url, keys.headers("admin"))
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            opened = [await _open(c, "/v1/stream/alerts", keys.headers("viewer")) for _ in range(2)]
            resp = await c.get("/v1/stream/alerts", headers=keys.headers("viewer"))
            assert resp.status_code == 429 and resp.headers["retry-after"] == "5", resp.text
            assert "LINKPULSE_STREAM_MAX_PER_PRINCIPAL" in resp.json()["detail"]
            opened.append(await _open(c, "/v1/stream/alerts", keys.headers("analyst")))
            resp = await c.get("/v1/stream/alerts", headers=keys.headers("operator"))
            assert resp.status_code == 503 and resp.headers["retry-after"] == "5", resp.text
            sse = opened[0][1]
            await sse.until("snapshot")
            deadline = time.monotonic() + 20
            while "heartbeat" not in sse.comments:
                assert time.monotonic() < deadline, sse.comments
                with pytest.raises(TimeoutError):
                    await sse.next(timeout=0.5)
            for r, _ in opened:
                await r.aclose()
            await _wait(lambda: hub_of(server).stats()["clients"] == 0, "streams left open")
            # the caps count open streams only: closed ones make room again
            r, _ = await _open(c, "/v1/stream/alerts", keys.headers("viewer"))
            await r.aclose()


async def _tasks(hub: StreamHub) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    assert hub.loop is not None
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(count(), hub.loop))


async def test_no_leak_after_many_connects_and_disconnects(
    served: tuple[str, ApiServer],
    keys: Keys,
    publisher: Publisher,
    access_settings: Settings,
    nc: Client,
) -> None:
    url, server = served
    hub = hub_of(server)
    port = int(url.rsplit(":", 1)[1])
    stream = live_channels(access_settings)[0].stream
    await asyncio.to_thread(publisher.send, [window(i) for i in range(5)])
    await _wait(lambda: hub.position("metrics") >= 5, "updates never reached the hub")

    async def consumers() -> int:
        return int((await nc.jetstream().stream_info(stream)).state.consumer_count)

    await _wait(lambda: hub.stats()["clients"] == 0, "streams left open before the test")
    base_tasks, base_consumers = await _tasks(hub), await consumers()
    base_subs = hub.stats()["nats_subscriptions"]
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        for i in range(1000):
            if i % 5 == 4:  # abrupt: the TCP connection is reset mid-stream
                s = _raw_get(port, "/v1/stream/metrics", keys.secrets["admin"])
                s.recv(64)
                _reset(s)
                continue
            headers = keys.headers("admin")
            if i % 50 == 0:  # a resume: a replay consumer is made and must go away
                headers = {**headers, "Last-Event-ID": "metrics-1"}
            resp, sse = await _open(c, "/v1/stream/metrics", headers)
            await sse.next()
            await resp.aclose()
    await _wait(lambda: hub.stats()["clients"] == 0, f"streams left open: {hub.stats()}")
    assert hub.stats()["subscriptions"] == 3
    deadline = time.monotonic() + 30
    while (await _tasks(hub), await consumers()) != (base_tasks, base_consumers):
        assert time.monotonic() < deadline, (await _tasks(hub), base_tasks, await consumers())
        await asyncio.sleep(0.2)
    assert hub.stats()["nats_subscriptions"] == base_subs
    # and the hub still serves
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        resp, sse = await _open(c, "/v1/stream/metrics", keys.headers("admin"))
        await sse.until("snapshot")
        await asyncio.to_thread(publisher.send, [window(50)])
        assert _decode(await sse.until("metric")) == window(50)
        await resp.aclose()


async def test_stream_subscriptions_are_audited_with_what_was_sent(
    served: tuple[str, ApiServer], keys: Keys, publisher: Publisher
) -> None:
    url, _ = served
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        resp, sse = await _open(c, "/v1/stream/metrics", keys.headers("seller"), metric="gmv")
        await sse.until("snapshot")
        await asyncio.to_thread(publisher.send, [window(1, seller="s1"), window(2, seller="s1")])
        for _ in range(2):
            await sse.until("metric")
        await resp.aclose()
        deadline = time.monotonic() + 20
        while True:
            r = await c.get(
                "/v1/audit",
                headers=keys.headers("admin"),
                params={"action": "stream", "principal": keys.ids["seller"]},
            )
            entries = r.json()["entries"]
            closed = [e for e in entries if e["outcome"] == "closed"]
            if closed:
                break
            assert time.monotonic() < deadline, entries
            await asyncio.sleep(0.2)
        assert closed[0]["items"] == 2 and closed[0]["action"] == "stream.metrics"
        assert closed[0]["scope"] == {
            "kind": "metrics",
            "tenant": "acme",
            "seller": "s1",
            "metric": "gmv",
        }
        assert any(e["outcome"] == "open" for e in entries)
