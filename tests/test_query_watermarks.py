"""Data watermarks: the bucket math (no services), and the writers touching them (real stores).

The writer tests run on both store lanes with the tier the database has:
events, late events, window revisions, anomaly scores and the rollup refresh
each invalidate exactly the cached answers that read what they changed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import pytest
import redis.asyncio as aioredis

from linkpulse.dataflows.events_writer import WriterArgs
from linkpulse.dataflows.score_sinks import UpsertSink
from linkpulse.dataflows.store_sink import PipelinedEventsSink
from linkpulse.query.cache import QueryCache, Reads
from linkpulse.query.watermarks import (
    DAY_S,
    NOTIFY_CHANNEL,
    WatermarkBumper,
    WatermarkTarget,
    covering,
    refresh_payload,
    touched,
)
from linkpulse.schemas import encode_event
from linkpulse.store import EventWriter, Tier, migrate, refresh, stored_tier
from tests.fix_redis import REDIS_URL
from tests.test_dataflow_scoring_store import score
from tests.test_store_writer import make_events, window

BASE = datetime(2026, 11, 20, tzinfo=UTC)


# -- the bucket math ------------------------------------------------------------------------


@pytest.mark.parametrize("bucket_s", [900, 3600])
def test_a_write_meets_a_read_exactly_when_its_fine_bucket_meets_the_range(bucket_s: int) -> None:
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    for _ in range(3000):
        a = BASE + timedelta(seconds=rnd.randrange(-5 * DAY_S, 5 * DAY_S))
        b = a + timedelta(seconds=rnd.choice([0, 1, 59, 3600, DAY_S, 3 * DAY_S]) * rnd.random())
        p = BASE + timedelta(seconds=rnd.uniform(-6 * DAY_S, 6 * DAY_S))
        start = p.timestamp() // bucket_s * bucket_s  # the point's fine bucket
        meets = b > a and start < b.timestamp() and start + bucket_s > a.timestamp()
        shared = set(touched(p, None, bucket_s)) & set(covering(a, b, bucket_s))
        assert bool(shared) == meets, f"seed {seed}: [{a}, {b}) and {p}"


def test_a_span_meets_every_read_it_overlaps() -> None:
    # A revised 1-minute window at 23:59:30 spans two days' fine buckets.
    at = BASE + timedelta(hours=23, minutes=59, seconds=30)
    span = set(touched(at, at + timedelta(minutes=1), 3600))
    assert set(covering(BASE + timedelta(days=1), BASE + timedelta(days=2), 3600)) & span
    assert set(covering(BASE, BASE + timedelta(days=1), 3600)) & span
    assert not set(covering(BASE + timedelta(days=2), BASE + timedelta(days=3), 3600)) & span


def test_thirty_days_read_few_keys() -> None:
    ragged = covering(BASE + timedelta(minutes=7), BASE + timedelta(days=30, minutes=-7), 3600)
    assert len(ragged) <= 29 + 2 * 24
    aligned = covering(BASE, BASE + timedelta(days=30), 3600)
    assert [g for g, _ in aligned] == ["d"] * 30
    assert covering(BASE, BASE, 3600) == []


def test_the_notify_payload_stays_small() -> None:
    assert '"tenants":null' in refresh_payload(["events_1m"], [f"t{i}" for i in range(500)])
    assert '"tenants":null' in refresh_payload(["events_1m"], None)


def test_the_writer_process_gets_its_target() -> None:
    args = WriterArgs("postgresql://x/y", 3, watermarks=WatermarkTarget("redis://h:1/0", "p:", 900))
    back = msgspec.json.decode(msgspec.json.encode(args), type=WriterArgs)
    assert back.watermarks == WatermarkTarget("redis://h:1/0", "p:", 900)
    assert (
        msgspec.json.decode(b'{"dsn": "d", "max_retries": 1}', type=WriterArgs).watermarks is None
    )


# -- writers touching them ------------------------------------------------------------------


@pytest.fixture
def bumper(redis_prefix: str) -> Iterator[WatermarkBumper]:
    b = WatermarkBumper(REDIS_URL, redis_prefix, bucket_s=3600, timeout_s=10)
    yield b
    b.close()


class Probe:
    """Cached answers over chosen reads; ``hits()`` says which are still served from Redis."""

    def __init__(self, client: aioredis.Redis, prefix: str, reads: dict[str, Reads]) -> None:
        # a long timeout: a loaded test machine must not look like an outage
        self.cache = QueryCache(client, prefix=prefix, ttl_s=60, op_timeout_s=10)
        self.reads = reads

    async def _ask(self, name: str) -> bool:
        async def compute() -> bytes:
            return name.encode()

        answer = await self.cache.answer(
            kind="series",
            query={"probe": name},
            scope=(self.reads[name].tenant, None),
            reads=[self.reads[name]],
            compute=compute,
        )
        return answer.hit

    async def fill(self) -> None:
        for name in self.reads:
            await self._ask(name)

    async def hits(self) -> set[str]:
        """Names still cached; each is cached again by asking."""
        return {name for name in self.reads if await self._ask(name)}


def day_reads(source: str, tenant: str, day: datetime) -> Reads:
    return Reads(source, tenant, day, day + timedelta(days=1))


@pytest.mark.integration
async def test_events_late_events_and_replays_touch_exactly_their_buckets(
    lane_dsn: str, redis_client: aioredis.Redis, redis_prefix: str, bumper: WatermarkBumper
) -> None:
    migrate(lane_dsn)
    old = BASE - timedelta(days=5)
    probe = Probe(
        redis_client,
        redis_prefix,
        {
            "acme today": day_reads("events", "acme", BASE),
            "globex today": day_reads("events", "globex", BASE),
            "acme old": day_reads("events", "acme", old),
            "acme yesterday": day_reads("events", "acme", BASE - timedelta(days=1)),
        },
    )
    await probe.fill()
    events = make_events(20, start=BASE + timedelta(hours=2), span_s=3600, tenants=("acme",))
    late = make_events(
        3, start=old + timedelta(hours=7), span_s=600, prefix="late", tenants=("acme",)
    )
    with EventWriter(lane_dsn, watermarks=bumper) as w:
        assert w.write_event_json([encode_event(e) for e in events]) == 20
        assert bumper.flush()
        assert await probe.hits() == {"globex today", "acme old", "acme yesterday"}
        assert w.write_events(late) == 3  # late: lands in its own day, five days back
        assert bumper.flush()
        assert await probe.hits() == {"globex today", "acme today", "acme yesterday"}
        sent = bumper.sent
        assert w.write_events(late) == 0  # a replay changes nothing, touches nothing
        assert bumper.flush() and bumper.sent == sent
    assert await probe.hits() == set(probe.reads)


@pytest.mark.integration
async def test_window_revisions_and_scores_touch_their_buckets_and_older_revisions_do_not(
    lane_dsn: str, redis_client: aioredis.Redis, redis_prefix: str, bumper: WatermarkBumper
) -> None:
    migrate(lane_dsn)
    at = BASE + timedelta(hours=5, minutes=3)
    probe = Probe(
        redis_client,
        redis_prefix,
        {
            "its hour": Reads(
                "metric_windows", "acme", BASE + timedelta(hours=5), at + timedelta(hours=1)
            ),
            "the next hour": Reads(
                "metric_windows", "acme", BASE + timedelta(hours=6), BASE + timedelta(hours=7)
            ),
            "events": day_reads("events", "acme", BASE),
        },
    )
    with EventWriter(lane_dsn, watermarks=bumper) as w:
        assert w.upsert_metric_windows([window(0, 3.0, at)]) == 1
        assert bumper.flush()
        await probe.fill()
        assert w.upsert_metric_windows([window(1, 4.0, at)]) == 1  # revised
        assert bumper.flush()
        assert await probe.hits() == {"the next hour", "events"}
        assert w.upsert_metric_windows([window(0, 9.0, at)]) == 0  # an older revision: ignored
        assert bumper.flush()
        assert await probe.hits() == set(probe.reads)
    # Anomaly scores, through the flow's sink, touch theirs.
    when = BASE + timedelta(hours=5, minutes=30)
    probe = Probe(
        redis_client,
        redis_prefix,
        {
            "scores": day_reads("anomaly_scores", "acme", BASE),
            "forecasts": day_reads("forecasts", "acme", BASE),
            "windows": day_reads("metric_windows", "acme", BASE),
        },
    )
    await probe.fill()
    target = WatermarkTarget(REDIS_URL, redis_prefix, 3600)  # the flow's (500 ms timeout)
    part = UpsertSink(lane_dsn, "anomaly_scores", outage_s=5, watermarks=target).build("t", 0, 1)
    try:
        part.write_batch([score(1, 10.0, when=when)])
        assert part._bumper is not None and part._bumper.flush()  # type: ignore[attr-defined]
    finally:
        part.close()
    assert await probe.hits() == {"forecasts", "windows"}


@pytest.mark.integration
async def test_a_rollup_refresh_touches_what_it_recomputed_and_says_so(
    lane_dsn: str, redis_client: aioredis.Redis, redis_prefix: str, bumper: WatermarkBumper
) -> None:
    migrate(lane_dsn)
    probe = Probe(
        redis_client,
        redis_prefix,
        {
            "acme 1h": day_reads("events_1h", "acme", BASE),
            "acme 1d": Reads("events_1d", "acme", BASE, BASE + timedelta(days=7)),
            "globex 1h": day_reads("events_1h", "globex", BASE),
            "acme 1h tomorrow": day_reads("events_1h", "acme", BASE + timedelta(days=1)),
        },
    )
    await probe.fill()
    with EventWriter(lane_dsn, watermarks=bumper) as w:  # one connection at a time (WASM lane)
        w.write_events(make_events(10, start=BASE + timedelta(hours=3), tenants=("acme",)))
    assert bumper.flush()
    with psycopg.connect(lane_dsn, autocommit=True) as conn:
        tier = stored_tier(conn)
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        if tier is Tier.FULL_TIMESCALE:
            # Real-time aggregates answer with the new events at once.
            assert await probe.hits() == {"globex 1h", "acme 1h tomorrow"}
        else:
            # Table rollups change only when refreshed.
            assert await probe.hits() == set(probe.reads)
        refresh(conn, watermarks=bumper)
        assert bumper.flush()
        assert await probe.hits() == {"globex 1h", "acme 1h tomorrow"}
        notes = list(conn.notifies(timeout=5, stop_after=1))
        assert notes and '"acme"' in notes[0].payload
        refresh(conn, watermarks=bumper)  # nothing new: touches nothing
        assert bumper.flush()
        assert await probe.hits() == set(probe.reads)


@pytest.mark.integration
async def test_an_unreachable_redis_never_fails_a_write(pg_dsn: str) -> None:
    migrate(pg_dsn)
    down = WatermarkBumper("redis://127.0.0.1:1/0", "lpt:down:", timeout_s=0.05)
    with EventWriter(pg_dsn, watermarks=down) as w:
        assert w.write_events(make_events(5, tenants=("acme",))) == 5
        assert w.upsert_metric_windows([window(0, 1.0)]) == 1
        assert down.flush()
    assert down.failed >= 1 and down.sent == 0


@pytest.mark.integration
async def test_the_flows_raw_events_writer_process_touches_what_it_stored(
    pg_dsn: str, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    migrate(pg_dsn)
    probe = Probe(
        redis_client,
        redis_prefix,
        {
            "acme": day_reads("events", "acme", BASE),
            "globex": day_reads("events", "globex", BASE),
        },
    )
    await probe.fill()
    target = WatermarkTarget(REDIS_URL, redis_prefix, 3600)
    sink = PipelinedEventsSink(pg_dsn, ["p"], outage_s=5, watermarks=target)
    part = sink.build_part("store", "p", None)
    try:
        part.write_batch([make_events(30, start=BASE + timedelta(hours=4), tenants=("acme",))])
        part.snapshot()  # stored and acknowledged
    finally:
        part.close()  # the writer process ends, sending what it queued first
    assert await probe.hits() == {"globex"}
