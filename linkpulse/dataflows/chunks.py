"""Deterministic chunking of the stream: the unit every stateful step sees.

The pre-aggregator decides lateness and the window aggregator publishes
revisions per *chunk* of messages, so for a replay to reproduce a clean run
exactly (same windows, same revision numbers) the chunks must be cut at the
same places every time. Bytewax's own batching depends on timing, so chunks are
cut by a rule that depends only on the stream:

* a chunk holds messages of one stream-time *tick* (``tick_ns``, JetStream's
  storage timestamp, 100 ms by default), and
* at most ``max_messages`` of them (cut at every N-th message of the tick).

A resumed source restarts at a chunk boundary (its snapshot is the sequence
after the last *emitted* chunk), so it re-forms the very same chunks.

Only when the stream goes quiet is a chunk closed by the clock, and then empty
chunks carry the clock forward (``idle_every_ns``) so windows still close.
``on_idle(quiet_ns)`` takes a time at which *the server* said that nothing
matching the partition is stored after the last message added (the reader asks
it: see ``jetstream_reader``; a delivery's pending count is not exact enough).
That keeps the idle close a cut of the rule above: at ``idle_close_ns`` after
the tick ended nothing more of the tick is stored, and JetStream stamps every
later message later, so it falls in a later tick and a replay cuts there too
(given clocks that agree within ``idle_close_ns``). An empty chunk's clock is
``quiet_ns - idle_close_ns``, never past a message still to come; empty
chunks change no state but the watermark, which only grows with the clock.

>>> c = Chunker("p", max_messages=2, tick_ns=100, idle_close_ns=50)
>>> [c.add((b"", "s", seq, t)) for seq, t in ((1, 5), (2, 7), (3, 9), (4, 150))]
[None, None, Chunk(part='p', now_ns=7, messages=[(b'', 's', 1, 5), (b'', 's', 2, 7)]), \
Chunk(part='p', now_ns=9, messages=[(b'', 's', 3, 9)])]
>>> c.idle_due(240), c.idle_due(260)  # tick 100-200 of seq 4 plus 50 ns
(False, True)
>>> c.on_idle(260)
Chunk(part='p', now_ns=150, messages=[(b'', 's', 4, 150)])
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Chunk", "Chunker", "Message"]

Message = tuple[bytes, str, int, int]  # (payload, subject, stream sequence, stream time ns)


class Chunk(NamedTuple):
    """Consecutive messages of one partition, and the clock reading that goes with them.

    ``now_ns`` is the stream time of the last message (or, for an empty idle
    chunk, the wall clock): the deterministic "now" of the watermark.
    """

    part: str
    now_ns: int
    messages: list[Message]

    @property
    def last_seq(self) -> int | None:
        """Stream sequence of the last message, ``None`` for an empty chunk."""
        return self.messages[-1][2] if self.messages else None


class Chunker:
    """Cuts a partition's message sequence into deterministic chunks."""

    def __init__(
        self,
        part: str,
        *,
        max_messages: int = 1000,
        tick_ns: int = 100_000_000,
        idle_close_ns: int = 250_000_000,
        idle_every_ns: int = 1_000_000_000,
    ) -> None:
        if max_messages < 1 or tick_ns < 1:
            msg = f"max_messages and tick_ns must be positive, got {max_messages}, {tick_ns}"
            raise ValueError(msg)
        self.part = part
        self.max_messages = max_messages
        self.tick_ns = tick_ns
        self.idle_close_ns = idle_close_ns
        self.idle_every_ns = idle_every_ns
        self._open: list[Message] = []
        self._tick = 0
        self._last_now = 0

    @property
    def open_messages(self) -> int:
        """Messages read but not yet in a closed chunk."""
        return len(self._open)

    def add(self, msg: Message) -> Chunk | None:
        """Take one message; returns the chunk it closed, if any."""
        tick = msg[3] // self.tick_ns
        closed = None
        if self._open and (tick > self._tick or len(self._open) >= self.max_messages):
            closed = self.close()
        if not self._open:
            self._tick = tick
        self._open.append(msg)
        return closed

    def close(self) -> Chunk | None:
        """Close the open chunk now (end of input, or a forced stop)."""
        if not self._open:
            return None
        chunk = Chunk(self.part, self._open[-1][3], self._open)
        self._open = []
        self._last_now = chunk.now_ns
        return chunk

    def idle_due(self, wall_ns: int) -> bool:
        """Would a quiet stream as of ``wall_ns`` close a chunk or emit a clock chunk?

        The reader asks the server whether the stream is quiet only then.
        """
        if self._open:
            return wall_ns >= (self._tick + 1) * self.tick_ns + self.idle_close_ns
        return wall_ns - self.idle_close_ns - self._last_now >= self.idle_every_ns

    def on_idle(self, quiet_ns: int) -> Chunk | None:
        """Nothing follows the last message as of ``quiet_ns``: close its tick, or tick on.

        ``quiet_ns`` must be a clock reading taken *before* the server
        confirmed that nothing matching the partition is stored after the
        last message added (see the module doc for why).
        """
        if not self.idle_due(quiet_ns):
            return None
        if self._open:
            return self.close()
        self._last_now = quiet_ns - self.idle_close_ns
        return Chunk(self.part, self._last_now, [])
