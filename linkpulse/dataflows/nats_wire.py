"""A lean receive-only NATS connection for the JetStream reader's data path.

Why not nats-py here: nats-py spends ~12 us of Python per delivered message
(regex parsing, header dicts, a ``Msg`` object, an asyncio queue hop), four
times what the reader needs; at 50k events/s that alone is half a core of
this 2-core machine. This module does the one thing the reader needs, on its
own TCP connection: receive the messages of one subscription and answer the
server's PINGs and JetStream's flow-control requests. Everything else
(creating and deleting consumers, stream info, reconnect policy) stays with
nats-py in ``jetstream_reader``.

The NATS client protocol pieces used (https://docs.nats.io/reference/reference-protocols/nats-protocol):
``INFO``/``CONNECT``/``PING``/``PONG``/``+OK``/``-ERR`` lines, ``SUB``/``UNSUB``,
``PUB`` (for flow-control replies) and ``MSG``/``HMSG`` deliveries.

>>> got = []
>>> p = WireParser(lambda sid, subj, reply, hdr, data: got.append((sid, subj, reply, hdr, data)),
...                got.append)
>>> p.feed(b"HMSG a.b 7 $JS.ACK.S.C.1.5.5.17.0 12 14\\r\\nNATS/1.0\\r\\n\\r\\nhi\\r\\nPI")
>>> p.feed(b"NG\\r\\nMSG x 7 2\\r\\nok\\r\\n")
>>> got  # doctest: +NORMALIZE_WHITESPACE
[(7, b'a.b', b'$JS.ACK.S.C.1.5.5.17.0', b'NATS/1.0\\r\\n\\r\\n', b'hi'), b'PING',
 (7, b'x', None, b'', b'ok')]
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Callable
from typing import Any

from linkpulse.nats_auth import connect_auth, split_nats_url

__all__ = ["DataConnection", "NatsWireError", "StatusHeader", "WireParser", "parse_status"]

OnMsg = Callable[[int, bytes, bytes | None, bytes, bytes], None]
_CRLF = b"\r\n"
_H, _M = ord("H"), ord("M")


class NatsWireError(Exception):
    """The server refused us (``-ERR``) or the handshake failed."""


class WireParser:
    """Splits the server's byte stream into deliveries and control lines.

    ``on_msg(sid, subject, reply, headers, payload)`` gets every ``MSG`` and
    ``HMSG`` (``headers`` is ``b""`` for ``MSG``); ``on_line(line)`` gets every
    other protocol line (``PING``, ``INFO {...}``, ``-ERR ...``), without CRLF.
    A partial operation waits for the rest in the next ``feed``.
    """

    def __init__(self, on_msg: OnMsg, on_line: Callable[[bytes], None]) -> None:
        self._buf = bytearray()
        self._on_msg = on_msg
        self._on_line = on_line

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        size, pos = len(buf), 0
        on_msg = self._on_msg
        while pos < size:
            eol = buf.find(_CRLF, pos)
            if eol < 0:
                break
            op = buf[pos]
            if op == _H or op == _M:
                headed = op == _H
                # HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>
                # MSG <subject> <sid> [reply-to] <#bytes>
                args = bytes(buf[pos + (5 if headed else 4) : eol]).split()
                total = int(args[-1])
                start = eol + 2
                end = start + total
                if end + 2 > size:
                    break  # the payload is still on its way
                if headed:
                    hdr_len = int(args[-2])
                    reply = args[2] if len(args) == 5 else None
                    headers = bytes(buf[start : start + hdr_len])
                    payload = bytes(buf[start + hdr_len : end])
                else:
                    reply = args[2] if len(args) == 4 else None
                    headers, payload = b"", bytes(buf[start:end])
                pos = end + 2
                on_msg(int(args[1]), args[0], reply, headers, payload)
            else:
                line = bytes(buf[pos:eol])
                pos = eol + 2
                self._on_line(line)
        del buf[:pos]


class StatusHeader:
    """A JetStream control message's header block: status code, description, fields."""

    __slots__ = ("code", "description", "fields")

    def __init__(self, code: int, description: str, fields: dict[str, str]) -> None:
        self.code = code
        self.description = description
        self.fields = fields


def parse_status(headers: bytes) -> StatusHeader | None:
    """The status of a header block such as ``NATS/1.0 100 Idle Heartbeat``; None for data.

    >>> s = parse_status(b"NATS/1.0 100 Idle Heartbeat\\r\\nNats-Last-Consumer: 4\\r\\n\\r\\n")
    >>> s.code, s.description, s.fields
    (100, 'Idle Heartbeat', {'Nats-Last-Consumer': '4'})
    >>> parse_status(b"NATS/1.0\\r\\nNats-Msg-Id: x\\r\\n\\r\\n") is None
    True
    """
    lines = headers.decode(errors="replace").split("\r\n")
    first = lines[0].split(" ", 2)
    if len(first) < 2 or not first[1].isdigit():
        return None
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    return StatusHeader(int(first[1]), first[2] if len(first) > 2 else "", fields)


class DataConnection(asyncio.Protocol):
    """One receive-mostly NATS connection: subscribe, get messages, answer PINGs.

    Open it with ``await DataConnection.open(url, on_msg, on_lost)``;
    ``on_lost`` runs once when an open connection drops (the caller reconnects);
    a failed ``open`` raises instead.
    """

    def __init__(self, on_msg: OnMsg, on_lost: Callable[[], None]) -> None:
        self._parser = WireParser(on_msg, self._on_line)
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._info: asyncio.Future[dict[str, Any]] | None = None
        self._pongs: list[asyncio.Future[None]] = []
        self._next_sid = 0
        self.closed = False
        self._opened = False  # open() succeeded: a drop from now on is on_lost's

    # -- asyncio protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self._opened and not self.closed
        self.closed = True
        if self._info is not None and not self._info.done():
            # Hung up before its INFO (a proxy, a full server): fail open() now.
            self._info.set_exception(NatsWireError(f"connection lost before INFO: {exc!r}"))
        for fut in self._pongs:
            if not fut.done():
                fut.set_exception(NatsWireError(f"connection lost: {exc!r}"))
        self._pongs.clear()
        if was_open:
            self._on_lost()

    def _on_line(self, line: bytes) -> None:
        if line.startswith(b"PING"):
            self._write(b"PONG\r\n")
        elif line.startswith(b"PONG"):
            if self._pongs:
                fut = self._pongs.pop(0)
                if not fut.done():
                    fut.set_result(None)
        elif line.startswith(b"INFO"):
            if self._info is not None and not self._info.done():
                self._info.set_result(json.loads(line[5:]))
        elif line.startswith(b"-ERR"):
            error = NatsWireError(line[5:].decode(errors="replace").strip(" '"))
            if self._info is not None and not self._info.done():
                self._info.set_exception(error)
            elif self._pongs:
                # Fail the oldest PING waiting, but leave it in line: its PONG
                # still comes (unless the server hangs up), and must not be
                # taken as the answer to the next PING.
                fut = self._pongs[0]
                if not fut.done():
                    fut.set_exception(error)

    # -- use -----------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        on_msg: OnMsg,
        on_lost: Callable[[], None],
        *,
        name: str = "linkpulse",
        timeout_s: float = 5.0,
    ) -> DataConnection:
        """Connect, authenticate with the URL's credentials (TLS if asked), and PING.

        ``LINKPULSE_BENCH_NATS_DATA=nats-py`` gives the same interface on
        nats-py instead (``nats_py_data``), for the side-by-side benchmark.
        """
        if os.environ.get("LINKPULSE_BENCH_NATS_DATA") == "nats-py":
            from linkpulse.dataflows.nats_py_data import NatsPyConnection

            other = await NatsPyConnection.open(
                url, on_msg, on_lost, name=name, timeout_s=timeout_s
            )
            return other  # type: ignore[return-value]
        parts = split_nats_url(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        loop = asyncio.get_running_loop()
        conn = cls(on_msg, on_lost)
        conn._info = loop.create_future()
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: conn, host, port), timeout_s
        )
        try:
            info = await asyncio.wait_for(conn._info, timeout_s)
            if parts.scheme == "tls" or info.get("tls_required"):
                context = ssl.create_default_context()
                # The server sent its INFO in the clear and now waits for our
                # ClientHello; bound the handshake like every other step
                # (asyncio's own default would hang here for 60 s).
                tls = await loop.start_tls(
                    transport,
                    conn,
                    context,
                    server_hostname=host,
                    ssl_handshake_timeout=timeout_s,
                )
                if tls is None:
                    msg = "TLS handshake failed"
                    raise NatsWireError(msg)
                conn._transport = tls
            options: dict[str, Any] = {
                "verbose": False,
                "pedantic": False,
                "headers": True,
                "protocol": 1,
                "lang": "python-linkpulse",
                "version": "1",
                "name": name,
            }
            options.update(connect_auth(url))
            conn._write(b"CONNECT " + json.dumps(options).encode() + b"\r\n")
            await conn.ping(timeout_s)
        except BaseException:
            conn.close()
            raise
        conn._opened = True
        return conn

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(data)

    async def ping(self, timeout_s: float = 5.0) -> None:
        """Round trip to the server: everything written before is processed."""
        if self.closed:  # nothing would answer: fail now, not after timeout_s
            msg = "connection closed"
            raise NatsWireError(msg)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(fut)
        self._write(b"PING\r\n")
        await asyncio.wait_for(fut, timeout_s)

    def subscribe(self, subject: str) -> int:
        """Subscribe to ``subject``; returns the sid its deliveries carry."""
        self._next_sid += 1
        self._write(f"SUB {subject} {self._next_sid}\r\n".encode())
        return self._next_sid

    def unsubscribe(self, sid: int) -> None:
        self._write(f"UNSUB {sid}\r\n".encode())

    def publish_empty(self, subject: bytes | str) -> None:
        """An empty message to ``subject`` (flow-control and stall replies)."""
        subj = subject.encode() if isinstance(subject, str) else subject
        self._write(b"PUB " + subj + b" 0\r\n\r\n")

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()
