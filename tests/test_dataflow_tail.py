"""The tail of a burst and a quiet stream: everything read is emitted, the clock goes on.

Issue 9 §1.1: after a pipelined burst, NATS 2.9 left the last delivery's
pending count at 1 or 3 although nothing was left, and the reader, which
closed an idle chunk only on a pending count of 0, held the tail (up to a
chunk of 1,000 messages) until the next publish. The reader now asks the
stream itself (real NATS here) whether anything follows what it read.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from linkpulse.bus.stream import ensure_streams
from linkpulse.bus.subjects import events_filter
from linkpulse.config import Settings
from linkpulse.dataflows.chunks import Chunk, Chunker
from linkpulse.dataflows.jetstream_partition import JetStreamPartition
from linkpulse.dataflows.jetstream_reader import Reader, ReaderArgs
from linkpulse.dataflows.jetstream_source import JetStreamSource
from linkpulse.store.migrate import migrate
from tests.fix_nats import NATS_URL
from tests.test_dataflow_dead_letters import count, flow_output, wait_for
from tests.test_dataflow_helpers import event, group_by_minute, windows_table
from tests.test_dataflow_recovery import ROOT, flow_command


def test_an_idle_close_needs_a_finished_tick_and_clock_chunks_trail_the_quiet_time() -> None:
    c = Chunker("p", tick_ns=100, idle_close_ns=50, idle_every_ns=1000)
    assert c.add((b"", "s", 1, 130)) is None  # tick 100-200
    assert not c.idle_due(249) and c.on_idle(249) is None  # the tick ended < 50 ns ago
    assert c.idle_due(250)
    closed = c.on_idle(250)
    assert closed is not None and closed.last_seq == 1 and closed.now_ns == 130
    assert c.open_messages == 0
    # Then an empty chunk per idle period, its clock idle_close_ns before the quiet time:
    # never past a message stored after the server said "nothing more".
    assert not c.idle_due(1179)
    empty = c.on_idle(1180)
    assert empty == Chunk("p", 1130, [])
    assert c.on_idle(1500) is None and not c.idle_due(2179)
    following = c.on_idle(2180)
    assert following is not None and following.now_ns == 2130


async def _publish(nc: Client, settings: Settings, n: int, start: int = 0) -> int:
    """Publish ``n`` messages pipelined (``publish_async``); the stream's last sequence."""
    js = nc.jetstream()
    await ensure_streams(js, settings)
    for i in range(start, start + n):
        subject = f"{settings.subject_prefix}.events.t{i % 3}.page_view"
        body = f"m{i + 1}".encode().ljust(200, b".")  # the size of a small event
        await js.publish_async(subject, body, stream=settings.stream_name)
    await js.publish_async_completed()
    return (await js.stream_info(settings.stream_name)).state.last_seq


@pytest.mark.integration
async def test_a_misreported_pending_count_does_not_hold_the_tail(
    nc: Client, nats_settings: Settings
) -> None:
    """Deliveries that say 3 are pending while the stream has none: the chunk still closes.

    The deliveries are the stream's real messages, fed to the reader's
    delivery handler with the pending field NATS 2.9 was seen to report; the
    "is anything left?" answer comes from the real server.
    """
    last = await _publish(nc, nats_settings, 40)
    js = nc.jetstream()
    stream, filt = nats_settings.stream_name, events_filter(nats_settings.subject_prefix)
    reader = Reader(
        ReaderArgs(
            [NATS_URL],
            stream,
            filt,
            1,
            None,
            batch_size=1000,
            max_buffered=20_000,
            tick_ns=100_000_000,
        )  # fmt: skip
    )
    emitted: list[Chunk] = []
    reader._send = lambda chunks, **_: emitted.extend(chunks)  # type: ignore[method-assign]
    reader._nc = await nats.connect(NATS_URL)
    reader._sid, reader._paused = 1, False
    for seq in range(1, last + 1):
        msg = await js.get_msg(stream, seq)
        assert msg.subject is not None and msg.data is not None and msg.time is not None
        ts = int(msg.time.timestamp() * 1e9)
        reply = f"$JS.ACK.{stream}.c.1.{seq}.{seq}.{ts}.3".encode()  # "3 pending", always
        reader._on_delivery(1, msg.subject.encode(), reply, b"", msg.data)
    clock = asyncio.get_running_loop().create_task(reader._clock())
    try:
        deadline = time.monotonic() + 20
        while sum(len(c.messages) for c in emitted) < last and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        clock.cancel()
        await asyncio.gather(clock, return_exceptions=True)
        await reader._close()
    assert [m[2] for c in emitted for m in c.messages] == list(range(1, last + 1))
    # Closed by the quiet answer, not by a watchdog re-creating the consumer.
    assert reader._restarts == 0


@pytest.fixture
async def partition(nc: Client, nats_settings: Settings) -> AsyncIterator[JetStreamPartition]:
    await ensure_streams(nc.jetstream(), nats_settings)
    src = JetStreamSource(nats_settings)
    (part_key,) = src.list_parts()
    part = src.build_part("inp", part_key, None)
    try:
        yield part
    finally:
        part.close()


class _Drain:
    """Takes a partition's chunks in a thread, as Bytewax's worker does."""

    def __init__(self, part: JetStreamPartition) -> None:
        self.part = part
        self.seqs: list[int] = []
        self.empty: list[Chunk] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self.part.next_batch()
            for chunk in batch:
                if chunk.messages:
                    self.seqs.extend(m[2] for m in chunk.messages)
                else:
                    self.empty.append(chunk)
            if not batch:
                time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


async def _until(check: object, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.mark.integration
async def test_pipelined_bursts_then_silence_are_all_emitted_and_the_clock_goes_on(
    nc: Client, nats_settings: Settings, partition: JetStreamPartition
) -> None:
    drain = _Drain(partition)
    try:
        published = 0
        # Each burst is read while it is published (the case that held the tail in
        # about half the runs of 50,000); each must be emitted whole in the silence.
        for burst in range(3):
            last = await _publish(nc, nats_settings, 50_000, start=published)
            published += 50_000
            assert last == published
            done = await _until(lambda n=published: len(drain.seqs) >= n)
            assert done, f"burst {burst}: {len(drain.seqs)} of {published} emitted in the silence"
        assert drain.seqs == list(range(1, published + 1))
        # The quiet stream goes on ticking: empty chunks, each clock at least a second on.
        seen = len(drain.empty)
        assert await _until(lambda: len(drain.empty) >= seen + 2)
        clocks = [c.now_ns for c in drain.empty[seen:]]
        assert all(b - a >= 1_000_000_000 for a, b in zip(clocks, clocks[1:], strict=False))
    finally:
        drain.stop()
    assert partition.lag == 0  # nothing of ours after the last emitted, whatever was pending


@pytest.mark.integration
@pytest.mark.slow
async def test_a_running_flow_stores_a_burst_and_closes_its_windows_in_the_silence(
    nc: Client, nats_settings: Settings, pg_dsn: str, tmp_path: Path
) -> None:
    """The user's case: ``linkpulse run dataflow``, a pipelined burst, then nothing.

    Every event must be stored, and every 1-minute window of the burst must
    close (final, equal to a GROUP BY over the stored events) on the idle
    clock alone: no later event ever moves the watermark.
    """
    migrate(pg_dsn)
    js = nc.jetstream()
    await ensure_streams(js, nats_settings)
    cmd, env = flow_command(nats_settings, pg_dsn, tmp_path / "recovery", 1)
    cmd = cmd[: cmd.index("--stop-at-seq")] + cmd[cmd.index("--stop-at-seq") + 2 :]
    flow = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        # Publish once the flow reads (its consumer exists): the burst is read as it comes.
        while not await js.consumers_info(nats_settings.stream_name):
            assert flow.poll() is None, flow_output(flow)
            await asyncio.sleep(0.1)
        n = 30_000
        base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=4)
        for i in range(n):  # two whole minutes, three tenants
            tenant = f"t{i % 3}"
            ev = event(i, base + timedelta(seconds=120 * i / n), tenant, "order_placed", "s1", 2.0)
            subject = f"{nats_settings.subject_prefix}.events.{tenant}.order_placed"
            await js.publish_async(subject, json.dumps(ev).encode())
        await js.publish_async_completed()
        assert wait_for(lambda: count(pg_dsn, "events") == n, flow, timeout=120)
        truth = group_by_minute(pg_dsn)
        assert len(truth) == 3 * 2 and sum(c for c, _ in truth.values()) == n

        def closed() -> bool:
            table = windows_table(pg_dsn)
            return all(
                table.get((tenant, metric, "", "1m", start), (None,) * 5)[::4] == (want, True)
                for (tenant, metric, start), (want, _) in truth.items()
            )

        assert wait_for(closed, flow, timeout=120), (truth, windows_table(pg_dsn))
    finally:
        if flow.poll() is None:
            flow.send_signal(signal.SIGTERM)
        flow.wait(timeout=30)
