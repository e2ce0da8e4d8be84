"""The JetStream reader's data path on nats-py, behind ``nats_wire.DataConnection``'s interface.

Issue 10 asks whether the hand-written ``nats_wire`` earns its keep against
nats-py *end to end*. This is the nats-py side of that comparison: the same
five calls the reader makes (``open``, ``subscribe``, ``ping``,
``publish_empty``, ``close``) on a plain nats-py ``Client``, each delivery
handed on as ``on_msg(sid, subject, reply, headers, payload)``. Control
messages (flow control, idle heartbeats) get their status line rebuilt from
nats-py's parsed headers, which is what ``nats_wire.parse_status`` reads; data
messages need no headers (the reader reads their ``$JS.ACK`` reply subject).

The benchmark selects it with ``LINKPULSE_BENCH_NATS_DATA=nats-py`` (see
``nats_wire.DataConnection.open``); see bench/RESULTS.md for the figures.

>>> control_headers({"Status": "100", "Description": "Idle Heartbeat", "Nats-Last-Consumer": "5"})
b'NATS/1.0 100 Idle Heartbeat\\r\\nNats-Last-Consumer: 5\\r\\n\\r\\n'
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from linkpulse.nats_auth import nats_py_auth

__all__ = ["NatsPyConnection", "control_headers"]

OnMsg = Callable[[int, bytes, bytes | None, bytes, bytes], None]


def control_headers(headers: dict[str, str]) -> bytes:
    """The raw header block of a status message, from nats-py's parsed headers."""
    fields = dict(headers)
    status = fields.pop("Status", "")
    description = fields.pop("Description", "")
    first = f"NATS/1.0 {status} {description}".rstrip()
    lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return f"{first}\r\n{lines}\r\n".encode()


class NatsPyConnection:
    """``DataConnection``'s interface on nats-py (for the side-by-side benchmark)."""

    def __init__(self, on_msg: OnMsg, on_lost: Callable[[], None]) -> None:
        self._on_msg = on_msg
        self._on_lost = on_lost
        self._nc: Client | None = None
        self._next_sid = 0
        self._subs: dict[int, asyncio.Future[Subscription]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self.closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        on_msg: OnMsg,
        on_lost: Callable[[], None],
        *,
        name: str = "linkpulse",
        timeout_s: float = 5.0,
    ) -> NatsPyConnection:
        """Connect (no reconnects: the reader re-creates its consumer on a lost connection)."""
        conn = cls(on_msg, on_lost)

        async def lost() -> None:
            if not conn.closed:
                conn.closed = True
                conn._on_lost()

        async def quiet(_: Exception) -> None:
            return None

        conn._nc = await nats.connect(
            servers=[url],
            name=name,
            connect_timeout=timeout_s,
            allow_reconnect=False,
            disconnected_cb=lost,
            error_cb=quiet,
            **nats_py_auth([url]),
        )
        return conn

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def subscribe(self, subject: str) -> int:
        """Subscribe to ``subject`` (in place once ``ping`` returns); returns its sid."""
        assert self._nc is not None
        self._next_sid += 1
        sid = self._next_sid
        on_msg = self._on_msg

        async def deliver(msg: Msg) -> None:
            headers = msg.headers
            if headers and "Status" in headers:
                on_msg(sid, msg.subject.encode(), _reply(msg), control_headers(headers), msg.data)
            else:
                on_msg(sid, msg.subject.encode(), _reply(msg), b"", msg.data)

        self._subs[sid] = asyncio.ensure_future(
            self._nc.subscribe(subject, cb=deliver, pending_msgs_limit=-1, pending_bytes_limit=-1)
        )
        return sid

    def unsubscribe(self, sid: int) -> None:
        sub = self._subs.pop(sid, None)
        if sub is not None:

            async def drop() -> None:
                await (await sub).unsubscribe()

            self._spawn(drop())

    async def ping(self, timeout_s: float = 5.0) -> None:
        """Round trip to the server: every subscription made before is in place."""
        assert self._nc is not None
        await asyncio.gather(*self._subs.values())
        await self._nc.flush(timeout=int(max(1, timeout_s)))

    def publish_empty(self, subject: bytes | str) -> None:
        assert self._nc is not None
        subj = subject.decode() if isinstance(subject, bytes) else subject
        self._spawn(self._nc.publish(subj, b""))

    def close(self) -> None:
        self.closed = True
        if self._nc is not None and not self._nc.is_closed:
            self._spawn(self._nc.close())


def _reply(msg: Msg) -> bytes | None:
    return msg.reply.encode() if msg.reply else None
