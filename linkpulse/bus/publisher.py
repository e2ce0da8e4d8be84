"""Publishing events and dead letters to JetStream, exactly once per event id.

Each event goes to ``event_subject(prefix, tenant, type)`` with the
``Nats-Msg-Id`` header set to ``message_id(event)`` (tenant and event id, so two
tenants' ids never collide): JetStream drops a message whose
id it saw within the duplicate window and answers ``duplicate=True``, so a
producer (or the HTTP API) can retry a whole batch after a failure without
storing anything twice.

Publishes are pipelined: a chunk of messages is written without waiting, then
all their acknowledgements are awaited at once (one round trip per chunk, not
per message). Each message is a core NATS publish whose reply subject is
``<inbox>.<chunk>.<index>`` on one inbox subscription per publisher; the
JetStream acknowledgements (PubAcks) are collected per chunk, by index, into
one future. That is nats-py's ``publish_async`` without what it does per
message (a future, a done callback, a semaphore wrapped in ``wait_for``, random
token bytes, a dataclass-built ``PubAck``), which was half of the API's CPU per
event (bench/RESULTS.md, "Ingest: one future per chunk"). Every message keeps
its ``Nats-Msg-Id``.

When acknowledgements are missing after ``ACK_TIMEOUT_S`` (NATS went away
mid-chunk) or JetStream refused a message, ``PublishError.results`` says, per
message sent, what was stored (a ``PublishResult``) and what was not confirmed
(``None``): a caller can tell its client exactly that.

Every message must fit the server's ``max_payload`` (from its INFO, 1 MiB by
default), and the server counts the headers too: a bigger one would close the
connection (nats-py checks the payload alone). So ``prepare`` measures each
event as it will go on the wire, ``send`` refuses to send one over the limit
(``EventTooLargeError``, before anything of the batch is sent), and the HTTP
API rejects such an event by itself. A dead letter too big is cut to fit.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from linkpulse.bus.connection import connect_nats
from linkpulse.bus.stream import dead_letter_stream_name, ensure_streams
from linkpulse.bus.subjects import dead_letter_subject, event_subject
from linkpulse.config import Settings
from linkpulse.errors import IngestError
from linkpulse.schemas import BaseEvent, encode_event
from linkpulse.schemas.outputs import DeadLetter

__all__ = [
    "PUBLISH_CHUNK",
    "EventMessage",
    "EventPublisher",
    "EventTooLargeError",
    "Message",
    "PublishError",
    "PublishResult",
    "encode_dead_letter",
    "wire_size",
]

# Messages in flight per round trip: big enough to pipeline, small enough that
# one slow chunk doesn't hold megabytes in the client's buffer.
PUBLISH_CHUNK = 1000
# How long to wait for a chunk's acknowledgements before calling NATS down.
ACK_TIMEOUT_S = 5.0

_UNSAFE_TOKEN = re.compile(r"[.*>\s]+")
_dead_letter_encoder = msgspec.json.Encoder()
# The header block around the headers' lines: "NATS/1.0\r\n" ... "\r\n".
_HEADER_FRAME = len(b"NATS/1.0\r\n\r\n")


class PublishError(IngestError):
    """Publishing failed; ``subject`` names the subject of the first failed message.

    ``results`` is, when some messages were sent, one entry per message of the
    call: its ``PublishResult`` if JetStream acknowledged it (stored), ``None``
    if not confirmed (never sent, refused, or its acknowledgement did not come).
    Empty when nothing was sent.

    >>> str(PublishError("NATS is down", "lp.events.acme.page_view"))
    'NATS is down'
    """

    def __init__(
        self, message: str, subject: str, results: Sequence[PublishResult | None] = ()
    ) -> None:
        super().__init__(message)
        self.subject = subject
        self.results: list[PublishResult | None] = list(results)


class EventTooLargeError(PublishError):
    """An event does not fit the server's message size limit; nothing was sent.

    Retrying cannot help: the event must be made smaller. ``problem`` says so
    for a user (the sizes and the limit).
    """

    def __init__(self, message: str, subject: str, problem: str) -> None:
        super().__init__(message, subject)
        self.problem = problem


def wire_size(payload: bytes, headers: Mapping[str, str]) -> int:
    """The bytes the server counts against ``max_payload``: header block plus payload.

    >>> wire_size(b"12345", {"Nats-Msg-Id": "acme/e1"})  # 5 + 12 + len("Nats-Msg-Id: acme/e1" CRLF)
    39
    """
    if not headers:
        return len(payload)
    lines = sum(len(k) + len(v.encode()) + 4 for k, v in headers.items())  # "k: v\r\n"
    return len(payload) + _HEADER_FRAME + lines


class Message(msgspec.Struct, frozen=True):
    """One message as it will be published, with its size on the wire."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    size: int


class EventMessage(Message, frozen=True):
    """An event's message (from ``EventPublisher.prepare``), with its event id."""

    event_id: str


def _size_problem(size: int, limit: int) -> str:
    """The reason given for an event too big for the broker.

    >>> print(_size_problem(1_500_321, 1_048_576))  # doctest: +NORMALIZE_WHITESPACE
    the event is 1500321 bytes as published (JSON plus NATS headers), over the NATS
    server's max_payload of 1048576 bytes; make its properties smaller
    """
    return (
        f"the event is {size} bytes as published (JSON plus NATS headers), over the NATS "
        f"server's max_payload of {limit} bytes; make its properties smaller"
    )


def encode_dead_letter(letter: DeadLetter, headers: Mapping[str, str], limit: int) -> bytes:
    """The letter as JSON, its ``payload`` cut (and marked so) if the message would
    exceed ``limit`` bytes on the wire; the field and problem are kept whole
    unless they alone are too long.

    >>> from datetime import UTC, datetime
    >>> letter = DeadLetter(payload="x" * 5000, field="$", problem="too big", source="http",
    ...                     received_at=datetime(2026, 11, 24, tzinfo=UTC))
    >>> data = encode_dead_letter(letter, {}, 1000)
    >>> len(data) <= 1000, msgspec.json.decode(data, type=DeadLetter).payload[-54:]
    (True, 'xxx... [cut to fit the message size limit: 5000 chars]')
    """
    data = _dead_letter_encoder.encode(letter)
    over = wire_size(data, headers) - limit
    if over <= 0:
        return data
    text = letter.payload
    note = f"... [cut to fit the message size limit: {len(text)} chars]"
    keep = len(text)
    # Each character removed removes at least one encoded byte (more when escaped),
    # so this ends in a pass or two.
    while over > 0 and keep > 0:
        keep = max(0, keep - over - len(note))
        data = _dead_letter_encoder.encode(
            msgspec.structs.replace(letter, payload=text[:keep] + note)
        )
        over = wire_size(data, headers) - limit
    if over > 0:  # field and problem alone too long (codec clips its own; others may not)
        data = _dead_letter_encoder.encode(
            msgspec.structs.replace(
                letter, payload=note, field=letter.field[:200], problem=letter.problem[:500]
            )
        )
    return data


def message_id(ev: BaseEvent) -> str:
    """The JetStream de-duplication id of an event: unique per tenant, like the store's key.

    >>> from datetime import UTC, datetime
    >>> from linkpulse.schemas import UserSignup
    >>> message_id(UserSignup(event_id="e1", tenant="acme", user_id="u1",
    ...                       event_time=datetime(2026, 1, 1, tzinfo=UTC)))
    'acme/e1'
    """
    return f"{ev.tenant}/{ev.event_id}"


class PublishResult(msgspec.Struct, frozen=True):
    """What JetStream said about one published event.

    >>> PublishResult(event_id="e1", stream_seq=7, duplicate=False).stream_seq
    7
    """

    event_id: str
    stream_seq: int
    duplicate: bool


def _results(messages: Sequence[Message], acks: Sequence[_PubAck]) -> list[PublishResult]:
    return [
        PublishResult(event_id=m.event_id, stream_seq=a.seq, duplicate=a.duplicate)
        for m, a in zip(messages, acks, strict=True)
        if isinstance(m, EventMessage)
    ]


def _partial(
    messages: Sequence[Message], acks: Sequence[_PubAck | None]
) -> list[PublishResult | None]:
    """Per message: stored (its result) or not confirmed (None); empty for dead letters."""
    if not messages or not isinstance(messages[0], EventMessage):
        return []
    return [
        None
        if a is None or a.error is not None
        else PublishResult(event_id=m.event_id, stream_seq=a.seq, duplicate=a.duplicate)
        for m, a in zip(messages, acks, strict=True)
        if isinstance(m, EventMessage)
    ]


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    """JetStream's answer to one publish: ``{"stream": .., "seq": ..}`` or ``{"error": ..}``."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)
# What a message's ack slot holds until its answer comes (and stays, if it never does).
_NO_ACK = _PubAck(error=_ApiError(description="no acknowledgement"))


class _Chunk:
    """The acknowledgements of one chunk, filled by index as they arrive."""

    __slots__ = ("acks", "done", "left")

    def __init__(self, n: int) -> None:
        self.acks: list[_PubAck | None] = [None] * n
        self.left = n
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class _AckInbox:
    """One subscription receiving the PubAcks of every chunk a publisher sends.

    A message of chunk ``c`` at index ``i`` is published with the reply subject
    ``<inbox>.c.i``; its ack lands in ``chunks[c].acks[i]``, and the chunk's
    one future is resolved when the last ack arrived. A late ack (after the
    chunk timed out and was dropped) is ignored. nats-py re-subscribes after a
    reconnect, so acks of messages it re-sends from its buffer still arrive.
    """

    def __init__(self, inbox: str) -> None:
        self.inbox = inbox
        self.chunks: dict[str, _Chunk] = {}
        self._ids = itertools.count()
        self._skip = len(inbox) + 1

    def open(self, n: int) -> tuple[str, str, _Chunk]:
        """A new chunk of ``n`` messages: its key, its reply-subject prefix and its state."""
        key = str(next(self._ids))
        chunk = self.chunks[key] = _Chunk(n)
        return key, f"{self.inbox}.{key}.", chunk

    async def on_ack(self, msg: Msg) -> None:
        key, _, index = msg.subject[self._skip :].partition(".")
        chunk = self.chunks.get(key)
        if chunk is None or chunk.done.done():
            return
        i = int(index)
        if chunk.acks[i] is not None:
            return
        if msg.data:
            try:
                ack = _ack_decoder.decode(msg.data)
            except msgspec.DecodeError:
                ack = _PubAck(error=_ApiError(description=f"unreadable ack {msg.data[:200]!r}"))
        else:  # a status message: 503 is "no responders", no stream takes the subject
            status = (msg.headers or {}).get("Status", "")
            what = "no stream captures the subject" if status == "503" else f"status {status}"
            code = int(status) if status.isdigit() else 0
            ack = _PubAck(error=_ApiError(code=code, description=what))
        chunk.acks[i] = ack
        chunk.left -= 1
        if chunk.left == 0:
            chunk.done.set_result(None)


_FRAME_FLUSH_BYTES = 1 << 20
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def _header_block(headers: Mapping[str, str]) -> bytes:
    """The NATS header block nats-py's ``publish`` would write for ``headers``.

    >>> _header_block({"Nats-Msg-Id": " acme/e\\n1 ", "Nats-Expected-Stream": "S"})
    b'NATS/1.0\\r\\nNats-Msg-Id: acme/e 1\\r\\nNats-Expected-Stream: S\\r\\n\\r\\n'
    """
    lines = ["NATS/1.0\r\n"]
    for key, value in headers.items():
        v = value.strip()
        if "\r" in v or "\n" in v:
            v = v.translate(_NEWLINES)
        lines.append(f"{key}: {v}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode()


class EventPublisher:
    """Publishes validated events (and dead letters) on one NATS connection.

    ``hand_framed`` (default True) writes each chunk's HPUB commands itself
    (``_write_framed``); False goes through ``nc.publish`` per message, the
    library path it replaced (kept for the side-by-side benchmark and tests).
    """

    hand_framed = True

    def __init__(self, nc: Client, settings: Settings) -> None:
        self._nc = nc
        self._settings = settings
        self._acks: _AckInbox | None = None
        self._acks_ready = asyncio.Lock()

    @classmethod
    async def connect(cls, settings: Settings, *, name: str = "linkpulse") -> EventPublisher:
        """Connect to NATS, make sure the streams exist, and return a publisher."""
        nc = await connect_nats(settings, name=name)
        try:
            await ensure_streams(nc.jetstream(), settings)
        except BaseException:
            await nc.close()
            raise
        return cls(nc, settings)

    @property
    def settings(self) -> Settings:
        """The settings this publisher was made with (stream, prefix)."""
        return self._settings

    @property
    def max_message_bytes(self) -> int:
        """The largest message the server takes (headers included): its ``max_payload``.

        Read from the server's INFO on connect (and on each reconnect), so it is
        whatever the server is configured with, 1 MiB by default.
        """
        return int(self._nc.max_payload)

    @property
    def is_connected(self) -> bool:
        """Whether the NATS connection is up right now (not reconnecting or closed)."""
        return bool(self._nc.is_connected)

    def _require_connection(self, subject: str) -> None:
        if not self._nc.is_connected:
            state = "closed" if self._nc.is_closed else "reconnecting"
            msg = f"NATS connection is {state} ({self._settings.nats_url}); retry shortly"
            raise PublishError(msg, subject)

    async def publish(self, events: Sequence[BaseEvent]) -> list[PublishResult]:
        """Publish events in order; one result per event, in the same order.

        Raises ``PublishError`` (an ``IngestError`` whose ``subject`` names
        the subject that failed) if NATS is unreachable or refuses a message; the caller may
        retry the whole batch: already stored events come back as duplicates.
        ``EventTooLargeError`` (sending nothing) if an event is over the
        server's limit: ``prepare`` and ``send`` let a caller leave those out.
        """
        return await self.send(self.prepare(events))

    def prepare(self, events: Sequence[BaseEvent]) -> list[EventMessage]:
        """Each event as the message ``send`` publishes: subject, JSON, headers, size.

        Compare ``size`` with ``max_message_bytes`` to find the ones too big.
        """
        prefix, stream = self._settings.subject_prefix, self._settings.stream_name
        # The stream header is ours (not publish_async's stream=), so it is measured.
        # Every event has the same two headers: their size is fixed but for the id.
        fixed = wire_size(b"", {"Nats-Msg-Id": "", "Nats-Expected-Stream": stream})
        messages = []
        # A batch has few (tenant, type) pairs: each subject is built and checked once.
        subjects: dict[tuple[str, str], str] = {}
        for ev in events:
            payload = encode_event(ev)
            msg_id = message_id(ev)
            subject = subjects.get((ev.tenant, ev.type))
            if subject is None:
                subject = subjects[ev.tenant, ev.type] = event_subject(prefix, ev.tenant, ev.type)
            messages.append(
                EventMessage(
                    subject,
                    payload,
                    {"Nats-Msg-Id": msg_id, "Nats-Expected-Stream": stream},
                    len(payload) + fixed + len(msg_id.encode()),
                    ev.event_id,
                )
            )
        return messages

    def oversize_problems(self, messages: Sequence[Message]) -> list[str | None]:
        """For each message, why it cannot be published (over ``max_message_bytes``), or None."""
        limit = self.max_message_bytes
        return [None if m.size <= limit else _size_problem(m.size, limit) for m in messages]

    async def send(self, messages: Sequence[EventMessage]) -> list[PublishResult]:
        """Publish prepared events in order (see ``publish``), in pipelined chunks.

        On failure, ``PublishError.results`` covers every message of the call
        (earlier chunks stored, later ones not sent: ``None``).
        """
        for msg, problem in zip(messages, self.oversize_problems(messages), strict=True):
            if problem is not None:
                text = f"event {msg.event_id!r} on {msg.subject}: {problem}; nothing was sent"
                raise EventTooLargeError(text, msg.subject, problem)
        results: list[PublishResult] = []
        for start in range(0, len(messages), PUBLISH_CHUNK):
            chunk = messages[start : start + PUBLISH_CHUNK]
            try:
                acks = await self._send_all(chunk)
            except PublishError as e:
                if results or e.results:
                    e.results = [
                        *results,
                        *(e.results or [None] * len(chunk)),
                        *[None] * (len(messages) - start - len(chunk)),
                    ]
                raise
            results.extend(_results(chunk, acks))
        return results

    async def _ack_inbox(self) -> _AckInbox:
        if self._acks is None:
            async with self._acks_ready:  # two first batches at once subscribe once
                if self._acks is None:
                    inbox = _AckInbox(self._nc.new_inbox())
                    await self._nc.subscribe(f"{inbox.inbox}.*.*", cb=inbox.on_ack)
                    self._acks = inbox
        return self._acks

    async def _send_all(self, messages: Sequence[Message]) -> list[_PubAck]:
        """Write all messages, then await all acks; PublishError names the first failure
        and, in ``results``, what was stored (for event messages) and what was not."""
        if not messages:
            return []
        self._require_connection(messages[0].subject)
        inbox = await self._ack_inbox()
        key, reply, chunk = inbox.open(len(messages))
        subject = messages[0].subject
        try:
            if self.hand_framed:
                await self._write_framed(messages, reply)
            else:
                publish = self._nc.publish
                for i, message in enumerate(messages):
                    subject = message.subject
                    # No await that yields in here (nc.publish only appends to its buffer
                    # and wakes the flusher once): the whole chunk goes out in a few writes.
                    await publish(
                        subject, message.payload, reply=f"{reply}{i}", headers=message.headers
                    )
            try:
                await asyncio.wait_for(asyncio.shield(chunk.done), ACK_TIMEOUT_S)
            except TimeoutError:
                pass
        except (nats.errors.Error, OSError) as e:
            msg = f"publishing to {subject} failed: {e!r}; NATS may be down, retry shortly"
            raise PublishError(msg, subject, _partial(messages, chunk.acks)) from e
        finally:
            del inbox.chunks[key]
        missing = [i for i, ack in enumerate(chunk.acks) if ack is None]
        if missing:
            subject = messages[missing[0]].subject
            msg = (
                f"no acknowledgement from JetStream for {len(missing)} of {len(messages)} "
                f"message(s) (first on {subject}) within {ACK_TIMEOUT_S:g}s; NATS may be down, "
                "retry shortly"
            )
            raise PublishError(msg, subject, _partial(messages, chunk.acks))
        for message, ack in zip(messages, chunk.acks, strict=True):
            if ack is not None and ack.error is not None:
                err = ack.error
                msg = (
                    f"JetStream refused a message on {message.subject}: {err.description} "
                    f"(code {err.code}, err_code {err.err_code})"
                )
                raise PublishError(msg, message.subject, _partial(messages, chunk.acks))
        return [ack or _NO_ACK for ack in chunk.acks]

    async def _write_framed(self, messages: Sequence[Message], reply: str) -> None:
        """Put the chunk's HPUB commands in nats-py's write buffer, framed here.

        The same bytes ``nc.publish`` writes (``HPUB <subject> <reply> <header
        bytes> <total bytes>``, the ``NATS/1.0`` header block, the payload), built
        without its per-message subject regex, header-key regex and value
        ``translate``: subjects come from ``event_subject`` (checked tokens), the
        header keys are ours, and a value is cleaned as nats-py cleans it (stripped,
        CR/LF to spaces) only if it holds CR or LF. Then one buffer append per
        ~1 MiB and one flush, as nats-py does per message. Kept against the library
        path by bench/bench_ingest.py (``pub`` vs ``pub-nc``, bench/RESULTS.md).
        """
        nc = self._nc
        parts: list[bytes] = []
        size = payload_bytes = 0
        for i, message in enumerate(messages):
            hdr = _header_block(message.headers)
            payload = message.payload
            line = f"HPUB {message.subject} {reply}{i} {len(hdr)} {len(hdr) + len(payload)}\r\n"
            parts += (line.encode(), hdr, payload, b"\r\n")
            size += len(hdr) + len(payload) + len(line) + 2
            payload_bytes += len(payload)
            if size >= _FRAME_FLUSH_BYTES:
                await nc._send_command(b"".join(parts))  # noqa: SLF001 - see the docstring
                parts, size = [], 0
        if parts:
            await nc._send_command(b"".join(parts))  # noqa: SLF001
        nc.stats["out_msgs"] += len(messages)
        nc.stats["out_bytes"] += payload_bytes
        if nc._flush_queue is not None and nc._flush_queue.empty():  # noqa: SLF001
            await nc._flush_pending()  # noqa: SLF001

    def _dead_letter_message(self, letter: DeadLetter) -> Message:
        source = _UNSAFE_TOKEN.sub("_", letter.source) or "unknown"
        subject = dead_letter_subject(self._settings.subject_prefix, source)
        # A content-derived id (of the whole payload, even when the letter is cut):
        # a retried request doesn't dead-letter the same input twice.
        digest = hashlib.blake2b(
            f"{letter.source}\0{letter.payload}\0{letter.reason}".encode(), digest_size=16
        ).hexdigest()
        headers = {
            "Nats-Msg-Id": f"dl-{digest}",
            "Nats-Expected-Stream": dead_letter_stream_name(self._settings),
        }
        payload = encode_dead_letter(letter, headers, self.max_message_bytes)
        return Message(subject, payload, headers, wire_size(payload, headers))

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Store one unusable input with its reason on the dead-letter stream."""
        await self.dead_letter_many([letter])

    async def dead_letter_many(self, letters: Sequence[DeadLetter]) -> None:
        """Store several dead letters, pipelined like ``publish``."""
        messages = [self._dead_letter_message(letter) for letter in letters]
        for start in range(0, len(messages), PUBLISH_CHUNK):
            await self._send_all(messages[start : start + PUBLISH_CHUNK])

    async def close(self) -> None:
        """Flush what is buffered and close the connection (safe to call twice)."""
        if self._nc.is_closed:
            return
        if not self._nc.is_connected:
            await self._nc.close()
            return
        try:
            await self._nc.drain()
        except (nats.errors.Error, OSError, TimeoutError):
            await self._nc.close()
