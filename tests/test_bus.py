"""The NATS bus against the real JetStream: stream setup, de-duplication, subjects, DLQ."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType

from linkpulse.bus import (
    EventPublisher,
    EventTooLargeError,
    PublishError,
    dead_letter_stream_name,
    dead_letter_subject,
    encode_dead_letter,
    ensure_streams,
    event_subject,
    events_filter,
    metric_subject,
)
from linkpulse.bus.publisher import wire_size
from linkpulse.config import Settings
from linkpulse.errors import IngestError
from linkpulse.schemas import BaseEvent, decode_event, validate_event
from linkpulse.schemas.outputs import DeadLetter
from tests.event_examples import example

pytestmark = pytest.mark.integration


@pytest.fixture
async def js(nc: Client, nats_settings: Settings) -> AsyncIterator[JetStreamContext]:
    """JetStream on the test's connection; also removes the test's dead-letter stream."""
    ctx = nc.jetstream()
    yield ctx
    try:
        await ctx.delete_stream(dead_letter_stream_name(nats_settings))
    except nats.js.errors.NotFoundError:
        pass


@pytest.fixture
async def publisher(nc: Client, js: JetStreamContext, nats_settings: Settings) -> EventPublisher:
    await ensure_streams(js, nats_settings)
    return EventPublisher(nc, nats_settings)


def _events(n: int, tenant: str = "acme", event_type: str = "page_view") -> list[BaseEvent]:
    return [
        validate_event(example(event_type, event_id=f"{tenant}-{event_type}-{i}", tenant=tenant))
        for i in range(n)
    ]


async def _count(js: JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


# -- subjects (pure) --------------------------------------------------------------------------


def test_subjects_follow_the_documented_layout() -> None:
    assert event_subject("lp", "acme", "order_placed") == "lp.events.acme.order_placed"
    assert events_filter("lp") == "lp.events.>"
    assert dead_letter_subject("lp") == "lp.deadletters.ingest"
    assert metric_subject("lp", "gmv", "acme", "15m/10s") == "lp.metrics.gmv.acme.15m_10s"


@pytest.mark.parametrize("tenant", ["a.b", "*", ">", "a b", ""])
def test_a_token_that_would_change_the_subject_is_refused(tenant: str) -> None:
    with pytest.raises(ValueError, match="tenant must be one NATS subject token"):
        event_subject("lp", tenant, "page_view")


# -- streams ----------------------------------------------------------------------------------


async def test_ensure_streams_creates_both_streams_as_configured(
    js: JetStreamContext, nats_settings: Settings
) -> None:
    await ensure_streams(js, nats_settings)
    await ensure_streams(js, nats_settings)  # idempotent: no error, nothing changes

    events = (await js.stream_info(nats_settings.stream_name)).config
    assert events.subjects == [f"{nats_settings.subject_prefix}.events.>"]
    assert events.storage == StorageType.FILE
    assert events.discard == DiscardPolicy.OLD
    assert events.max_age == pytest.approx(nats_settings.stream_max_age_s)
    assert events.duplicate_window == pytest.approx(nats_settings.stream_duplicate_window_s)
    assert events.max_bytes == nats_settings.stream_max_bytes

    dlq = (await js.stream_info(f"{nats_settings.stream_name}_DLQ")).config
    assert dlq.subjects == [f"{nats_settings.subject_prefix}.deadletters.>"]
    assert dlq.storage == StorageType.FILE


async def test_ensure_streams_again_keeps_the_messages(
    js: JetStreamContext, publisher: EventPublisher, nats_settings: Settings
) -> None:
    await publisher.publish(_events(3))
    await ensure_streams(js, nats_settings)
    assert await _count(js, nats_settings.stream_name) == 3


async def test_ensure_streams_updates_a_drifted_limit(
    js: JetStreamContext, nats_settings: Settings
) -> None:
    await ensure_streams(js, nats_settings)
    shorter = Settings(**{**nats_settings.model_dump(), "stream_max_age_s": 3600.0})
    await ensure_streams(js, shorter)
    assert (await js.stream_info(nats_settings.stream_name)).config.max_age == pytest.approx(3600)


async def test_ensure_streams_refuses_to_silently_keep_memory_storage(
    js: JetStreamContext, nats_settings: Settings
) -> None:
    await js.add_stream(
        name=nats_settings.stream_name,
        subjects=[events_filter(nats_settings.subject_prefix)],
        storage=StorageType.MEMORY,
    )
    with pytest.raises(IngestError, match="cannot change storage"):
        await ensure_streams(js, nats_settings)


# -- publishing -------------------------------------------------------------------------------


async def test_a_batch_published_twice_is_stored_once(
    js: JetStreamContext, publisher: EventPublisher, nats_settings: Settings
) -> None:
    batch = _events(250)
    first = await publisher.publish(batch)
    assert [r.event_id for r in first] == [ev.event_id for ev in batch]
    assert not any(r.duplicate for r in first)
    assert sorted(r.stream_seq for r in first) == list(range(1, 251))

    again = await publisher.publish(batch)
    assert all(r.duplicate for r in again)
    assert [r.stream_seq for r in again] == [r.stream_seq for r in first]
    assert await _count(js, nats_settings.stream_name) == 250


async def test_the_same_id_twice_in_one_batch_is_one_message(
    js: JetStreamContext, publisher: EventPublisher, nats_settings: Settings
) -> None:
    ev = _events(1)[0]
    results = await publisher.publish([ev, ev])
    assert [r.duplicate for r in results] == [False, True]
    assert await _count(js, nats_settings.stream_name) == 1


@pytest.mark.parametrize("hand_framed", [True, False], ids=["hand-framed", "nc.publish"])
async def test_events_go_to_their_tenant_and_type_subject(
    js: JetStreamContext, publisher: EventPublisher, nats_settings: Settings, hand_framed: bool
) -> None:
    # Both ways of writing the HPUB commands store the same messages, headers included.
    publisher.hand_framed = hand_framed
    batch = [
        *_events(2, "acme", "page_view"),
        *_events(3, "globex", "order_placed"),
        *_events(1, "acme", "review_posted"),
    ]
    results = await publisher.publish(batch)
    prefix = nats_settings.subject_prefix
    info = await js.stream_info(nats_settings.stream_name, subjects_filter=events_filter(prefix))
    assert info.state.subjects == {
        f"{prefix}.events.acme.page_view": 2,
        f"{prefix}.events.globex.order_placed": 3,
        f"{prefix}.events.acme.review_posted": 1,
    }
    # what is stored is the event itself, with its tenant and id as the message id
    for ev, res in zip(batch, results, strict=True):
        msg = await js.get_msg(nats_settings.stream_name, res.stream_seq)
        assert msg.subject == event_subject(prefix, ev.tenant, ev.type)
        assert decode_event(msg.data) == ev
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == f"{ev.tenant}/{ev.event_id}"
        assert msg.headers["Nats-Expected-Stream"] == nats_settings.stream_name


async def test_the_hand_framed_chunk_is_byte_for_byte_what_nc_publish_writes(
    nats_settings: Settings,
) -> None:
    # No server needed: an unconnected client keeps what it would write in its buffer.
    ours, library = Client(), Client()
    publisher = EventPublisher(ours, nats_settings)
    messages = publisher.prepare([*_events(3), *_events(2, "globex", "order_placed")])
    # A header value nats-py would clean (stripped, CR/LF to spaces): cleaned alike.
    odd = msgspec.structs.replace(messages[1], headers={**messages[1].headers, "X-Odd": " a\r\nb "})
    messages = [messages[0], odd, *messages[2:]]
    await publisher._write_framed(messages, "_INBOX.t.0.")
    for i, m in enumerate(messages):
        await library._send_publish(
            m.subject, f"_INBOX.t.0.{i}", m.payload, len(m.payload), m.headers
        )
    assert b"".join(ours._pending) == b"".join(library._pending)
    assert ours.stats["out_msgs"] == library.stats["out_msgs"] == 5
    assert ours.stats["out_bytes"] == library.stats["out_bytes"]


async def test_a_large_batch_is_published_in_chunks_in_order(
    js: JetStreamContext, publisher: EventPublisher, nats_settings: Settings
) -> None:
    # Several pipelined chunks: every event stored once, in the batch's order.
    # (How fast is a benchmark's question: bench/bench_ingest.py.)
    batch = _events(5000)
    results = await publisher.publish(batch)
    assert [r.event_id for r in results] == [ev.event_id for ev in batch]
    assert [r.stream_seq for r in results] == list(range(1, 5001))
    assert await _count(js, nats_settings.stream_name) == 5000


async def test_dead_letters_land_in_the_dlq_stream_with_the_reason(
    js: JetStreamContext, publisher: EventPublisher, nats_settings: Settings
) -> None:
    letter = DeadLetter(
        payload='{"type": "page_view", "tenant": "ACME"}',
        field="tenant",
        problem="Expected `str` matching regex",
        source="http",
        received_at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
    )
    await publisher.dead_letter(letter)
    dlq = f"{nats_settings.stream_name}_DLQ"
    assert await _count(js, dlq) == 1
    assert await _count(js, nats_settings.stream_name) == 0
    msg = await js.get_msg(dlq, 1)
    assert msg.subject == f"{nats_settings.subject_prefix}.deadletters.http"
    stored = msgspec.json.decode(msg.data, type=DeadLetter)
    assert stored == letter
    assert stored.reason == "tenant: Expected `str` matching regex"


async def test_a_dead_letter_source_that_is_a_subject_stays_one_token(
    js: JetStreamContext, publisher: EventPublisher, nats_settings: Settings
) -> None:
    letter = DeadLetter(
        payload="x",
        field="$",
        problem="malformed JSON",
        source="lp.events.acme.page_view",
        received_at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
        sequence=12,
    )
    await publisher.dead_letter(letter)
    msg = await js.get_msg(f"{nats_settings.stream_name}_DLQ", 1)
    assert msg.subject == f"{nats_settings.subject_prefix}.deadletters.lp_events_acme_page_view"


# -- failures ---------------------------------------------------------------------------------


async def test_connect_to_a_closed_port_fails_fast_naming_the_url(unused_tcp_port: int) -> None:
    settings = Settings(nats_url=f"nats://127.0.0.1:{unused_tcp_port}")
    start = time.perf_counter()
    with pytest.raises(
        IngestError, match=f"cannot reach NATS at nats://127.0.0.1:{unused_tcp_port}"
    ):
        await EventPublisher.connect(settings)
    assert time.perf_counter() - start < 5


async def test_publishing_on_a_closed_connection_names_the_subject(
    js: JetStreamContext, nats_settings: Settings
) -> None:
    own = await EventPublisher.connect(nats_settings)
    await own.close()
    with pytest.raises(PublishError, match="closed") as info:
        await own.publish(_events(1, "acme", "page_view"))
    assert info.value.subject == f"{nats_settings.subject_prefix}.events.acme.page_view"
    await own.close()  # closing twice is harmless


async def test_publishing_nothing_is_a_no_op(publisher: EventPublisher) -> None:
    assert await publisher.publish([]) == []


async def test_the_same_event_id_from_two_tenants_is_two_messages(
    publisher: EventPublisher, js: JetStreamContext, nats_settings: Settings
) -> None:
    # The store keys events by tenant and id, so JetStream's de-duplication must too.
    acme = validate_event(example("page_view", event_id="shared-id", tenant="acme"))
    globex = validate_event(example("page_view", event_id="shared-id", tenant="globex"))
    results = await publisher.publish([acme, globex])
    assert [r.duplicate for r in results] == [False, False]
    assert await _count(js, nats_settings.stream_name) == 2


# -- the server's message size limit ---------------------------------------------------------


def _padded(size: int, publisher: EventPublisher, event_id: str = "big") -> BaseEvent:
    """A page_view whose message is exactly ``size`` bytes on the wire."""
    ev = validate_event(example("page_view", event_id=event_id, properties={"page": "home"}))
    base = publisher.prepare([ev])[0].size
    pad = size - base - len(',"pad":""')
    return validate_event(
        example("page_view", event_id=event_id, properties={"page": "home", "pad": "x" * pad})
    )


async def test_the_limit_is_the_servers_max_payload(nc: Client, publisher: EventPublisher) -> None:
    assert publisher.max_message_bytes == nc.max_payload == nc._server_info["max_payload"]
    assert publisher.max_message_bytes > 0


async def test_an_event_at_the_limit_headers_included_is_stored_and_one_byte_over_is_refused(
    js: JetStreamContext, publisher: EventPublisher, nats_settings: Settings
) -> None:
    # The server counts the headers too, and closes the connection of a client that
    # goes over (nats-py checks only the payload): the size must be exact.
    limit = publisher.max_message_bytes
    fits = _padded(limit, publisher, "fits")
    assert publisher.prepare([fits])[0].size == limit
    assert len(publisher.prepare([fits])[0].payload) < limit  # only the headers push it over
    over = _padded(limit + 1, publisher, "over")
    small = validate_event(example("page_view", event_id="small"))
    with pytest.raises(EventTooLargeError) as info:
        await publisher.publish([small, over])
    assert f"max_payload of {limit} bytes" in info.value.problem
    assert f"{limit + 1} bytes" in info.value.problem
    assert await _count(js, nats_settings.stream_name) == 0  # nothing of the batch was sent
    results = await publisher.publish([small, fits])
    assert [r.duplicate for r in results] == [False, False]
    assert publisher.is_connected
    stored = await js.get_msg(nats_settings.stream_name, results[1].stream_seq)
    assert decode_event(stored.data) == fits


async def test_a_dead_letter_too_big_for_the_server_is_cut_to_fit(
    js: JetStreamContext, publisher: EventPublisher, nats_settings: Settings
) -> None:
    limit = publisher.max_message_bytes
    payload = '{"type": "page_view", "note": "' + '\\"' * limit + '"}'  # escapes double it
    letter = DeadLetter(
        payload=payload,
        field="tenant",
        problem="Expected `str` matching regex",
        source="http",
        received_at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
    )
    await publisher.dead_letter_many([letter, letter])  # the same letter is kept once
    dlq = f"{nats_settings.stream_name}_DLQ"
    assert await _count(js, dlq) == 1
    msg = await js.get_msg(dlq, 1)
    assert len(msg.data) <= limit
    stored = msgspec.json.decode(msg.data, type=DeadLetter)
    assert (stored.field, stored.problem) == (letter.field, letter.problem)
    assert payload.startswith(stored.payload.split("... [cut to fit")[0])
    assert stored.payload.endswith(f"[cut to fit the message size limit: {len(payload)} chars]")
    assert publisher.is_connected


def test_a_token_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="tenant must be one NATS subject token"):
        event_subject("lp", "acme\n", "page_view")


@pytest.mark.parametrize(("field", "problem"), [("tenant", "short"), ("f" * 5000, "p" * 5000)])
def test_an_encoded_dead_letter_always_fits_the_limit(field: str, problem: str) -> None:
    letter = DeadLetter(
        payload='"\\u0001' * 3000,  # escapes: each character may cost several bytes
        field=field,
        problem=problem,
        source="http",
        received_at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
    )
    headers = {"Nats-Msg-Id": "dl-0123", "Nats-Expected-Stream": "S_DLQ"}
    for limit in (2_000, 4_000, 100_000):
        data = encode_dead_letter(letter, headers, limit)
        assert wire_size(data, headers) <= limit
        stored = msgspec.json.decode(data, type=DeadLetter)
        assert stored.field in (field, field[:200]) and stored.problem.startswith(problem[:500])


# -- NATS going away mid-batch: what was stored is known, a retry stores the rest once ---------


class CutProxy:
    """A TCP proxy to NATS that loses it after the first ``allow`` event publishes.

    It forwards whole protocol messages, counting ``PUB``/``HPUB`` on ``marker``
    subjects per connection; past ``allow`` it drops them, waits until as many
    acknowledgements went back to the client, then closes that connection and
    refuses new ones until ``heal()``: the broker stored exactly the first
    ``allow`` events of the batch, acknowledged them, and went away.
    """

    def __init__(self, upstream_port: int, marker: str, allow: int) -> None:
        self.upstream_port, self.marker, self.allow = upstream_port, marker.encode(), allow
        self.down = False
        self.cut_connections = 0
        # Its own loop in a thread: it must keep forwarding while a test blocks its own
        # loop (ApiServer's exit joins the server thread, whose NATS drain goes through here).
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> int:
        """Start serving; the port to connect to."""
        self._thread.start()

        async def start() -> asyncio.Server:
            return await asyncio.start_server(self._serve, "127.0.0.1", 0)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return int(self._server.sockets[0].getsockname()[1])

    def heal(self) -> None:
        self.down, self.allow = False, 1 << 30

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for w in self._writers:
                w.close()
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        if self.down:
            c_writer.close()
            return
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {c_writer, s_writer}
        state = {"sent": 0, "acked": 0, "cut": False}

        def up(command: bytes, subject: bytes) -> bool:
            if not subject.startswith(self.marker):
                return True
            state["sent"] += 1
            state["cut"] = state["cut"] or state["sent"] > self.allow
            return state["sent"] <= self.allow

        def down(command: bytes, subject: bytes) -> bool:
            if state["cut"] and subject.startswith(b"_INBOX."):
                state["acked"] += 1
            return True

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, keep: Any) -> None:
            buf = b""
            while data := await r.read(65536):
                buf += data
                out = bytearray()
                while (eol := buf.find(b"\r\n")) >= 0:
                    parts = buf[:eol].split()
                    end = eol + 2
                    if parts and parts[0] in (b"PUB", b"HPUB", b"MSG", b"HMSG"):
                        end += int(parts[-1]) + 2  # payload (headers included) and its CRLF
                        if len(buf) < end:
                            break
                    if not parts or keep(parts[0], parts[1] if len(parts) > 1 else b""):
                        out += buf[:end]
                    buf = buf[end:]
                w.write(bytes(out))
                if state["cut"] and state["acked"] >= self.allow:
                    self.down = True
                    self.cut_connections += 1
                    break
            c_writer.close()
            s_writer.close()

        await asyncio.gather(
            pipe(c_reader, s_writer, up), pipe(s_reader, c_writer, down), return_exceptions=True
        )


async def test_nats_lost_mid_batch_says_what_was_stored_and_a_retry_stores_the_rest_once(
    js: JetStreamContext,
    nats_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The wait for acks that can no longer come is the only wait here: shortened.
    monkeypatch.setattr("linkpulse.bus.publisher.ACK_TIMEOUT_S", 1.0)
    await ensure_streams(js, nats_settings)
    upstream = int(nats_settings.nats_url.rsplit(":", 1)[1])
    proxy = CutProxy(upstream, f"{nats_settings.subject_prefix}.events.", allow=3)
    with proxy as port:
        settings = nats_settings.model_copy(update={"nats_url": f"nats://127.0.0.1:{port}"})
        own = await EventPublisher.connect(settings)
        try:
            batch = _events(8)
            with pytest.raises(PublishError, match="no acknowledgement") as info:
                await own.publish(batch)
            results = info.value.results
            assert proxy.cut_connections == 1
            assert len(results) == 8
            assert [r is not None for r in results] == [True] * 3 + [False] * 5
            stored = [r for r in results if r is not None]
            assert [r.event_id for r in stored] == [ev.event_id for ev in batch[:3]]
            assert await _count(js, nats_settings.stream_name) == 3
            for r in stored:  # what it says is stored is there, under that sequence
                msg = await js.get_msg(nats_settings.stream_name, r.stream_seq)
                assert decode_event(msg.data).event_id == r.event_id

            proxy.heal()
            for _ in range(200):  # nats-py retries every second
                if own.is_connected:
                    break
                await asyncio.sleep(0.05)
            again = await own.publish(batch)
            assert [r.duplicate for r in again] == [True] * 3 + [False] * 5
            assert [r.stream_seq for r in again[:3]] == [r.stream_seq for r in stored]
            assert await _count(js, nats_settings.stream_name) == 8
        finally:
            await own.close()


async def test_a_message_jetstream_refuses_is_named_and_the_others_are_reported_stored(
    js: JetStreamContext, publisher: EventPublisher, nats_settings: Settings
) -> None:
    messages = publisher.prepare(_events(3))
    # No stream captures this subject: JetStream's "no responders" for that message alone.
    stray = msgspec.structs.replace(messages[1], subject=f"{nats_settings.subject_prefix}x.stray")
    with pytest.raises(PublishError, match="refused.*no stream captures") as info:
        await publisher.send([messages[0], stray, messages[2]])
    assert info.value.subject == stray.subject
    results = info.value.results
    assert [r is not None for r in results] == [True, False, True]
    assert await _count(js, nats_settings.stream_name) == 2
