"""JetStream source: exact resume, bounded buffering, stable partitioning (real NATS)."""

from __future__ import annotations

import time
from datetime import timedelta

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from nats.aio.client import Client

from linkpulse.bus.stream import ensure_streams
from linkpulse.config import Settings
from linkpulse.dataflows.chunks import Chunk, Chunker
from linkpulse.dataflows.jetstream_source import (
    JetStreamPartition,
    JetStreamSource,
    partition_of,
)

pytestmark = pytest.mark.integration


async def publish_n(nc: Client, settings: Settings, n: int, tenants: int = 3) -> None:
    js = nc.jetstream()
    await ensure_streams(js, settings)
    for i in range(n):
        subject = f"{settings.subject_prefix}.events.t{i % tenants}.page_view"
        await js.publish_async(subject, f"m{i + 1}".encode(), stream=settings.stream_name)
    await js.publish_async_completed()


def drain(part: JetStreamPartition, until_seq: int, timeout: float = 20) -> list[int]:
    seqs: list[int] = []
    deadline = time.monotonic() + timeout
    while (not seqs or seqs[-1] < until_seq) and time.monotonic() < deadline:
        batch = part.next_batch()
        for chunk in batch:
            assert len(chunk.messages) <= 500
            seqs.extend(item[2] for item in chunk.messages)
        if not batch:
            time.sleep(0.002)
    return seqs


def build(settings: Settings, resume: int | None, **kw: int) -> JetStreamPartition:
    src = JetStreamSource(settings, batch_size=500, **kw)  # type: ignore[arg-type]
    (part_key,) = src.list_parts()
    return src.build_part("inp", part_key, resume)


async def test_resumes_exactly_at_the_snapshot_sequence(
    nc: Client, nats_settings: Settings
) -> None:
    await publish_n(nc, nats_settings, 3000)
    part = build(nats_settings, None)
    try:
        first = drain(part, 1200)
        assert first[0] == 1
        assert part.snapshot() == first[-1] + 1
        resume = part.snapshot()
    finally:
        part.close()
    again = build(nats_settings, resume)
    try:
        rest = drain(again, 3000)
    finally:
        again.close()
    assert rest[0] == resume
    assert first + rest == list(range(1, 3001))  # no gap, no duplicate


def wait_full(part: JetStreamPartition, at_least: int, timeout: float = 15) -> int:
    """Wait for the buffer to reach ``at_least``, then a second more; returns its size."""
    deadline = time.monotonic() + timeout
    while part.buffered() < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    return part.buffered()


async def test_big_events_stay_bounded_and_nothing_is_lost(
    nc: Client, nats_settings: Settings
) -> None:
    # 8 KB events: past max_buffered the reader holds back its flow-control
    # answers, which slows the server (it need not stop: NATS 2.9 goes on at a
    # trickle); the hard bound of 2 x max_buffered holds either way.
    js = nc.jetstream()
    await ensure_streams(js, nats_settings)
    body = b"x" * 8192
    for i in range(6000):
        subject = f"{nats_settings.subject_prefix}.events.t{i % 3}.page_view"
        await js.publish_async(subject, body, stream=nats_settings.stream_name)
    await js.publish_async_completed()
    part = build(nats_settings, None, max_buffered=2_000)
    try:
        assert 2_000 <= wait_full(part, 2_000) <= 4_000  # a stalled downstream
        seqs = drain(part, 6_000)
    finally:
        part.close()
    assert seqs == list(range(1, 6_001))


async def test_buffering_is_bounded_and_nothing_is_lost(
    nc: Client, nats_settings: Settings
) -> None:
    # Tiny events: a flow-control window holds thousands, so the server
    # pushes past max_buffered; at twice it the reader drops its consumer.
    await publish_n(nc, nats_settings, 20_000)
    part = build(nats_settings, None, max_buffered=2_000)
    try:
        assert wait_full(part, 4_000) == 4_000  # and it stays there
        assert part.lag == 20_000  # nothing emitted yet
        seqs = drain(part, 20_000)
        assert part.buffered() <= 4_000
    finally:
        part.close()
    assert seqs == list(range(1, 20_001))


async def test_flow_stops_at_sequence_and_keeps_order(nc: Client, nats_settings: Settings) -> None:
    await publish_n(nc, nats_settings, 2500)
    flow = Dataflow("source_test")
    out: list[Chunk] = []
    src = JetStreamSource(nats_settings, stop_at_seq=2000, idle_wake=timedelta(milliseconds=1))
    op.output("out", op.input("inp", flow, src), TestingSink(out))
    run_main(flow)
    messages = [m for chunk in out for m in chunk.messages]
    assert [m[2] for m in messages] == list(range(1, 2001))
    assert all(m[3] > 1_700_000_000 * 10**9 for m in messages)  # stream time, ns
    assert messages[0][0] == b"m1"
    assert messages[1][1] == f"{nats_settings.subject_prefix}.events.t1.page_view"
    assert all(c.now_ns == c.messages[-1][3] for c in out if c.messages)


def test_partitioning_is_stable_and_spread() -> None:
    # crc32, not hash(): the same key lands on the same partition in every process.
    assert [partition_of(f"tenant{i}", 4) for i in range(8)] == [
        partition_of(f"tenant{i}", 4) for i in range(8)
    ]
    assert partition_of("acme", 8) == 6  # pinned: a change would move every key
    counts = [0] * 4
    for i in range(4000):
        counts[partition_of(f"tenant{i}", 4)] += 1
    assert min(counts) > 800


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        JetStreamSource(Settings(), batch_size=0)
    with pytest.raises(ValueError, match="start_seq"):
        JetStreamSource(Settings(), start_seq=0)


async def test_disjoint_partitions_read_each_message_once(
    nc: Client, nats_settings: Settings
) -> None:
    await publish_n(nc, nats_settings, 3000, tenants=3)
    prefix = nats_settings.subject_prefix
    subjects = [f"{prefix}.events.t{i}.>" for i in range(3)]
    src = JetStreamSource(nats_settings, filter_subjects=subjects, batch_size=500)
    assert src.list_parts() == subjects  # the same on every worker and run
    seen: list[int] = []
    for i, key in enumerate(src.list_parts()):
        part = src.build_part("inp", key, None)
        try:
            got = drain(part, 3000 - (2 - i), timeout=10)
        finally:
            part.close()
        assert got == list(range(i + 1, 3001, 3))  # this tenant's messages, in order
        seen.extend(got)
    assert sorted(seen) == list(range(1, 3001))


def drain_chunks(part: JetStreamPartition, until_seq: int, timeout: float = 20) -> list[list[int]]:
    out: list[list[int]] = []
    deadline = time.monotonic() + timeout
    while (not out or out[-1][-1] < until_seq) and time.monotonic() < deadline:
        batch = [c for c in part.next_batch() if c.messages]
        out.extend([m[2] for m in c.messages] for c in batch)
        if not batch:
            time.sleep(0.002)
    return out


async def test_resumed_source_cuts_the_same_chunks(nc: Client, nats_settings: Settings) -> None:
    await publish_n(nc, nats_settings, 4000)
    part = build(nats_settings, None)
    try:
        clean = drain_chunks(part, 4000)
    finally:
        part.close()
    resume_at = clean[len(clean) // 2][0]  # a chunk boundary, as in every snapshot
    again = build(nats_settings, resume_at)
    try:
        resumed = drain_chunks(again, 4000)
    finally:
        again.close()
    assert resumed == clean[len(clean) // 2 :]


def test_chunker_cuts_by_tick_and_size_only() -> None:
    msgs = [(b"", "s", seq, t) for seq, t in enumerate([1, 2, 3, 4, 5, 120, 121, 250], start=1)]

    def cut(start: int) -> list[list[int]]:
        c = Chunker("p", max_messages=3, tick_ns=100)
        out = [x for m in msgs[start:] if (x := c.add(m)) is not None]
        last = c.close()
        return [[m[2] for m in ch.messages] for ch in [*out, *([last] if last else [])]]

    assert cut(0) == [[1, 2, 3], [4, 5], [6, 7], [8]]
    assert cut(3) == [[4, 5], [6, 7], [8]]  # resuming at a boundary re-forms the same chunks
    idle = Chunker("p", tick_ns=100, idle_close_ns=50, idle_every_ns=1000)
    idle.add(msgs[0])
    assert idle.on_idle(120) is None  # its tick (0-100) ended less than 50 ns ago
    closed = idle.on_idle(150)
    assert closed is not None and closed.last_seq == 1
    empty = idle.on_idle(5000)
    assert empty is not None and empty.messages == [] and empty.now_ns == 4950
