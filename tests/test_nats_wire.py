"""The reader's lean NATS wire: the protocol parser alone, then a real server.

The parser must give the same calls however the byte stream is cut into
reads (TCP gives no boundaries); ``parse_status`` must tell JetStream's
control messages from data. ``DataConnection`` is then run against the real
NATS: deliveries, unsubscribe, the server's ``-ERR`` and a lost connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from linkpulse.config import Settings
from linkpulse.dataflows.nats_wire import (
    DataConnection,
    NatsWireError,
    WireParser,
    parse_status,
)
from linkpulse.stack.urls import free_port
from tests.fix_nats import NATS_URL

# What a parser hands on: ("msg", sid, subject, reply, headers, payload) or ("line", line).
Call = tuple[Any, ...]

BINARY = bytes(range(256)) * 3 + b"\r\n\r\nMSG fake 1 3\r\nPING\r\n"  # a payload that lies
BIG = (b"0123456789\r\n" * 25_600)[:300_000] + b"\r\n"  # 300 KB ending in CRLF


def msg(subject: str, sid: int, reply: str | None, payload: bytes) -> tuple[bytes, Call]:
    """A ``MSG`` as the server writes it, and the call the parser must make."""
    head = f"MSG {subject} {sid} {reply + ' ' if reply else ''}{len(payload)}\r\n".encode()
    call = ("msg", sid, subject.encode(), reply.encode() if reply else None, b"", payload)
    return head + payload + b"\r\n", call


def hmsg(
    subject: str, sid: int, reply: str | None, headers: bytes, payload: bytes
) -> tuple[bytes, Call]:
    """An ``HMSG`` (headers, then payload) as the server writes it."""
    sizes = f"{len(headers)} {len(headers) + len(payload)}"
    head = f"HMSG {subject} {sid} {reply + ' ' if reply else ''}{sizes}\r\n".encode()
    call = ("msg", sid, subject.encode(), reply.encode() if reply else None, headers, payload)
    return head + headers + payload + b"\r\n", call


def line(text: bytes) -> tuple[bytes, Call]:
    return text + b"\r\n", ("line", text)


HEARTBEAT = (
    b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 3000\r\nNats-Last-Stream: 3000\r\n"
    b"Nats-Consumer-Stalled: $JS.FC.EVENTS.kc9Hx2.11\r\n\r\n"
)
FLOW_CONTROL = b"NATS/1.0 100 FlowControl Request\r\n\r\n"
DATA_HEADERS = b"NATS/1.0\r\nNats-Msg-Id: abc-1\r\nX-Trace: a:b:c\r\n\r\n"
ACK = "$JS.ACK.EVENTS.kc9Hx2.1.17.17.1795572926993426206.4"


def stream(big: bool) -> tuple[bytes, list[Call]]:
    """A realistic server byte stream and the calls it must produce, in order."""
    parts = [
        line(b'INFO {"server_id":"NB3P","version":"2.9.10","headers":true,"max_payload":1048576}'),
        line(b"+OK"),
        line(b"PING"),
        hmsg("lp.events.t1.page_view", 7, ACK, DATA_HEADERS, b'{"a":1}'),
        hmsg("lp.events.t1.page_view", 7, None, DATA_HEADERS, BINARY),
        hmsg("_INBOX.x", 7, None, HEARTBEAT, b""),  # status only: total == header bytes
        hmsg("_INBOX.x", 7, "$JS.FC.EVENTS.kc9Hx2.12", FLOW_CONTROL, b""),
        msg("lp.events.t2.order", 12, ACK, BINARY),
        msg("a", 3, None, b""),  # an empty payload
        msg("lp.metrics.x", 1234567, None, b"plain\r\ntext"),
        line(b"-ERR 'Slow Consumer Detected'"),
        line(b"PONG"),
    ]
    if big:
        parts.append(msg("lp.events.big", 2, ACK, BIG))
        parts.append(hmsg("lp.events.big", 2, None, DATA_HEADERS, BIG))
    parts.append(line(b"PING"))
    return b"".join(p[0] for p in parts), [p[1] for p in parts]


def parse(pieces: Iterator[bytes] | list[bytes]) -> list[Call]:
    calls: list[Call] = []
    parser = WireParser(
        lambda sid, subj, reply, hdr, data: calls.append(("msg", sid, subj, reply, hdr, data)),
        lambda text: calls.append(("line", text)),
    )
    for piece in pieces:
        parser.feed(piece)
    return calls


SMALL, SMALL_CALLS = stream(big=False)
LARGE, LARGE_CALLS = stream(big=True)


def test_one_feed_gives_every_call_with_plain_bytes() -> None:
    calls = parse([LARGE])
    assert calls == LARGE_CALLS
    for call in calls:  # bytes, not views into the parser's buffer that later change
        assert all(type(x) is bytes for x in call[2:] if x is not None)


def test_a_stream_cut_in_two_anywhere_gives_the_same_calls() -> None:
    for cut in range(len(SMALL) + 1):
        assert parse([SMALL[:cut], SMALL[cut:]]) == SMALL_CALLS, f"cut at byte {cut}"


def test_a_stream_fed_byte_by_byte_gives_the_same_calls() -> None:
    # Every byte boundary at once, including inside the 300 KB payloads.
    assert parse(LARGE[i : i + 1] for i in range(len(LARGE))) == LARGE_CALLS


def test_calls_come_as_soon_as_their_bytes_are_complete() -> None:
    calls = parse([b"PING\r\nMSG a 1 5\r\nab\r\n"])
    assert calls == [("line", b"PING")]  # the payload (which holds a CRLF) is incomplete
    whole, _ = msg("a", 1, None, b"ab\r\nc")
    assert parse([whole[:-1]]) == []  # everything but the final LF: still waiting
    assert parse([whole]) == [("msg", 1, b"a", None, b"", b"ab\r\nc")]


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(LARGE)), max_size=40))
def test_a_stream_cut_in_random_pieces_gives_the_same_calls(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(LARGE)]
    pieces = [LARGE[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert parse(pieces) == LARGE_CALLS


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(SMALL)), max_size=12))
def test_the_small_stream_cut_in_random_pieces_gives_the_same_calls(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(SMALL)]
    assert parse([SMALL[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]) == SMALL_CALLS


def test_parse_status_reads_flow_control() -> None:
    status = parse_status(FLOW_CONTROL)
    assert status is not None
    assert (status.code, status.description, status.fields) == (100, "FlowControl Request", {})


def test_parse_status_reads_an_idle_heartbeat_and_its_fields() -> None:
    status = parse_status(HEARTBEAT)
    assert status is not None
    assert (status.code, status.description) == (100, "Idle Heartbeat")
    assert status.fields == {
        "Nats-Last-Consumer": "3000",
        "Nats-Last-Stream": "3000",
        "Nats-Consumer-Stalled": "$JS.FC.EVENTS.kc9Hx2.11",
    }


def test_parse_status_reads_consumer_errors() -> None:
    deleted = parse_status(b"NATS/1.0 409 Consumer Deleted\r\n\r\n")
    assert deleted is not None
    assert (deleted.code, deleted.description, deleted.fields) == (409, "Consumer Deleted", {})
    bare = parse_status(b"NATS/1.0 503\r\n\r\n")  # no description
    assert bare is not None and (bare.code, bare.description) == (503, "")
    described = parse_status(b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 5\r\n\r\n")
    assert described is not None
    assert (described.code, described.fields) == (408, {"Nats-Pending-Messages": "5"})


def test_parse_status_says_none_for_data_headers() -> None:
    assert parse_status(DATA_HEADERS) is None
    assert parse_status(b"NATS/1.0\r\n\r\n") is None
    assert parse_status(b"NATS/1.0 \r\nX: 1\r\n\r\n") is None  # a space but no code


# -- DataConnection on the real NATS -------------------------------------------------


class Received:
    """What a DataConnection delivered, with a way to wait for it."""

    def __init__(self) -> None:
        self.msgs: list[tuple[int, bytes, bytes | None, bytes, bytes]] = []
        self.lost = 0
        self._changed = asyncio.Event()

    def on_msg(
        self, sid: int, subject: bytes, reply: bytes | None, hdr: bytes, data: bytes
    ) -> None:
        self.msgs.append((sid, subject, reply, hdr, data))
        self._changed.set()

    def on_lost(self) -> None:
        self.lost += 1
        self._changed.set()

    async def wait_for(self, done: Callable[[], bool], timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def data_connection(got: Received) -> AsyncIterator[DataConnection]:
    conn = await DataConnection.open(NATS_URL, got.on_msg, got.on_lost, name="lp-test-wire")
    try:
        yield conn
    finally:
        conn.close()


@pytest.mark.integration
async def test_data_connection_receives_subject_reply_headers_and_payload(
    nc: Client, nats_settings: Settings
) -> None:
    got = Received()
    prefix = nats_settings.subject_prefix
    async with data_connection(got) as conn:
        sid = conn.subscribe(f"{prefix}.wire.>")
        await conn.ping()  # the SUB is in place
        await nc.publish(f"{prefix}.wire.a", BINARY, reply="re.ply", headers={"X-Test": "1"})
        await nc.publish(f"{prefix}.wire.b", b"")
        await nc.publish(f"{prefix}.wire.c", BIG, reply="r2")
        await got.wait_for(lambda: len(got.msgs) >= 3)
        await conn.ping()
    a, b, c = got.msgs
    assert a[:3] == (sid, f"{prefix}.wire.a".encode(), b"re.ply")
    assert parse_status(a[3]) is None and b"X-Test: 1\r\n" in a[3]
    assert a[4] == BINARY
    assert b == (sid, f"{prefix}.wire.b".encode(), None, b"", b"")
    assert c == (sid, f"{prefix}.wire.c".encode(), b"r2", b"", BIG)
    assert len(got.msgs) == 3 and got.lost == 0  # closing on purpose is not "lost"


@pytest.mark.integration
async def test_unsubscribe_stops_deliveries(nc: Client, nats_settings: Settings) -> None:
    got = Received()
    prefix = nats_settings.subject_prefix
    async with data_connection(got) as conn:
        gone = conn.subscribe(f"{prefix}.gone")
        kept = conn.subscribe(f"{prefix}.kept")
        assert gone != kept
        await conn.ping()
        await nc.publish(f"{prefix}.gone", b"1")
        await got.wait_for(lambda: len(got.msgs) == 1)
        conn.unsubscribe(gone)
        await conn.ping()  # the UNSUB is processed
        for i in range(5):
            await nc.publish(f"{prefix}.gone", b"after")
            await nc.publish(f"{prefix}.kept", str(i).encode())
        await nc.flush()  # the server has routed all ten messages...
        await conn.ping()  # ...and whatever it sent us arrived before this PONG
        await got.wait_for(lambda: len(got.msgs) == 6)
    assert [(m[0], m[4]) for m in got.msgs] == [(gone, b"1")] + [
        (kept, str(i).encode()) for i in range(5)
    ]


@pytest.mark.integration
async def test_an_invalid_subject_fails_the_next_ping_and_the_connection_goes_on(
    nc: Client, nats_settings: Settings
) -> None:
    got = Received()
    async with data_connection(got) as conn:
        conn.subscribe("a..b")
        # The server answers -ERR 'Invalid Subject' before the PONG, and stays connected.
        with pytest.raises(NatsWireError, match="Invalid Subject"):
            await conn.ping()
        await conn.ping()  # the PONG of the failed ping does not answer this one early
        await conn.ping()
        sid = conn.subscribe(f"{nats_settings.subject_prefix}.after")
        await conn.ping()
        await nc.publish(f"{nats_settings.subject_prefix}.after", b"ok")
        await got.wait_for(lambda: len(got.msgs) == 1)
        assert got.msgs[0][0] == sid and got.msgs[0][4] == b"ok"
        assert not conn.closed and got.lost == 0


@pytest.mark.integration
async def test_an_empty_subject_drops_the_connection_and_says_so_once() -> None:
    got = Received()
    async with data_connection(got) as conn:
        conn.subscribe("")  # "SUB  1": a protocol error, the server hangs up
        with pytest.raises(NatsWireError, match="connection lost"):
            await conn.ping()
        await got.wait_for(lambda: got.lost > 0)
        assert conn.closed
        # A closed connection fails at once ("closed") instead of waiting out the timeout
        # (which would end in TimeoutError, not NatsWireError).
        with pytest.raises(NatsWireError, match="connection closed"):
            await conn.ping(timeout_s=3600)
    assert got.lost == 1


@pytest.mark.integration
async def test_opening_a_port_where_nothing_listens_fails_fast_and_names_it() -> None:
    port = free_port()
    with pytest.raises(OSError, match=str(port)):  # refused: not a TimeoutError
        await DataConnection.open(
            f"nats://127.0.0.1:{port}", Received().on_msg, lambda: None, timeout_s=3600
        )


@asynccontextmanager
async def silent_server(hang_up: bool) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A loopback TCP server that never says INFO: it hangs up at once, or listens.

    Yields its port and, per connection, what the client sent before closing.
    """
    heard: list[bytes] = []
    done: list[asyncio.Task[None]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not hang_up:
            heard.append(await reader.read())  # until the client closes its side
        writer.close()

    server = await asyncio.start_server(
        lambda r, w: done.append(asyncio.create_task(serve(r, w))), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1], heard
        async with asyncio.timeout(10):
            await asyncio.gather(*done)
    finally:
        server.close()


async def test_a_server_that_never_says_info_times_out_and_is_hung_up_on() -> None:
    async with silent_server(hang_up=False) as (port, heard):
        with pytest.raises(TimeoutError):
            await DataConnection.open(
                f"nats://127.0.0.1:{port}", Received().on_msg, lambda: None, timeout_s=0.5
            )
    assert heard == [b""]  # the client closed the connection without a word


async def test_a_server_that_hangs_up_before_info_fails_at_once() -> None:
    got = Received()
    async with silent_server(hang_up=True) as (port, _):
        # "connection lost" at once; waiting out timeout_s would end in TimeoutError
        with pytest.raises(NatsWireError, match="connection lost"):
            await DataConnection.open(
                f"nats://127.0.0.1:{port}", got.on_msg, got.on_lost, timeout_s=3600
            )
    assert got.lost == 0  # a failed open raises; on_lost is for a connection that was up


async def test_the_pong_of_a_failed_ping_does_not_answer_the_next_one() -> None:
    # A scripted server: it says -ERR for one PING, then answers PINGs late.
    pings: asyncio.Queue[None] = asyncio.Queue()
    pongs: asyncio.Queue[None] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(b'INFO {"server_id":"scripted","headers":true}\r\n')
        while received := await reader.readline():
            if received.startswith(b"PING"):
                pings.put_nowait(None)
            elif received.startswith(b"PONG"):
                pongs.put_nowait(None)
        writer.close()

    async def round_trip(w: asyncio.StreamWriter) -> None:
        """Everything sent before has been processed by the client."""
        w.write(b"PING\r\n")
        await asyncio.wait_for(pongs.get(), 10)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"nats://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with asyncio.timeout(20):
            opening = asyncio.create_task(DataConnection.open(url, Received().on_msg, lambda: None))
            await pings.get()
            (w,) = writers
            w.write(b"PONG\r\n")
            conn = await opening
            first = asyncio.create_task(conn.ping())
            await pings.get()
            w.write(b"-ERR 'Invalid Subject'\r\n")  # the PONG for that PING comes later
            with pytest.raises(NatsWireError, match="Invalid Subject"):
                await first
            second = asyncio.create_task(conn.ping())
            await pings.get()
            w.write(b"PONG\r\n")  # the first PING's answer
            await round_trip(w)
            assert not second.done(), "the server has not answered the second PING yet"
            w.write(b"PONG\r\n")
            await second
            conn.close()
    finally:
        server.close()
