"""The query cache against the real Redis: hits, exact invalidation, outage, metrics, slow log."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from linkpulse.api.metrics import ApiMetrics
from linkpulse.query.cache import Answer, QueryCache, Reads, etag_of
from linkpulse.query.slowlog import SlowLog
from linkpulse.query.watermarks import WatermarkBumper
from tests.fix_redis import REDIS_URL

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 20, tzinfo=UTC)


class Counting:
    """A compute function that says how often it ran and answers with the run number."""

    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self) -> bytes:
        self.runs += 1
        return b'{"run": %d}' % self.runs


def reads(tenant: str = "acme", days: int = 1, source: str = "events_1h") -> list[Reads]:
    return [Reads(source, tenant, T0, T0 + timedelta(days=days))]


def make_cache(client: aioredis.Redis | None, prefix: str, **kw: object) -> QueryCache:
    kw.setdefault("op_timeout_s", 10.0)  # a loaded test machine must not look like an outage
    return QueryCache(client, prefix=prefix, ttl_s=60, **kw)  # type: ignore[arg-type]


async def ask(
    cache: QueryCache,
    compute: Callable[[], Awaitable[bytes]],
    *,
    tenant: str = "acme",
    **kw: object,
) -> Answer:
    return await cache.answer(
        kind="series",
        query={"metric": "gmv", "step": "1h", "start": T0, "end": T0 + timedelta(days=1), **kw},
        scope=(tenant, None),
        reads=reads(tenant),
        compute=compute,
    )


@pytest.fixture
def bumper(redis_prefix: str) -> Iterator[WatermarkBumper]:
    b = WatermarkBumper(REDIS_URL, redis_prefix, bucket_s=3600, timeout_s=10)
    yield b
    b.close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_repeated_query_is_served_from_redis(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    cache, compute = make_cache(redis_client, redis_prefix), Counting()
    first = await ask(cache, compute)
    second = await ask(cache, compute)
    assert (first.hit, second.hit) == (False, True)
    assert compute.runs == 1
    assert second.body == first.body == b'{"run": 1}'
    assert second.etag == first.etag == etag_of(first.body)
    entries = [k async for k in redis_client.scan_iter(match=f"{redis_prefix}qc:series:*")]
    assert len(entries) == 1


async def test_the_same_question_spelled_differently_is_one_entry(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    cache, compute = make_cache(redis_client, redis_prefix), Counting()
    await ask(cache, compute, seller=None)
    same = await cache.answer(
        kind="series",
        query={
            "end": (T0 + timedelta(days=1)).astimezone(),
            "step": "1h",
            "metric": "gmv",
            "start": T0,
        },
        scope=("acme", None),
        reads=reads(),
        compute=compute,
    )
    assert same.hit and compute.runs == 1
    other = await ask(cache, compute, seller="s-1")
    assert not other.hit and compute.runs == 2


async def test_new_data_in_the_range_invalidates_it(
    redis_client: aioredis.Redis, redis_prefix: str, bumper: WatermarkBumper
) -> None:
    cache, compute = make_cache(redis_client, redis_prefix), Counting()
    await ask(cache, compute)
    bumper.touch_spans(["events_1h"], [("acme", T0 + timedelta(hours=13, minutes=7), None)])
    assert bumper.flush()
    again = await ask(cache, compute)
    assert not again.hit and again.body == b'{"run": 2}'
    assert (await ask(cache, compute)).hit  # cached again under the new version


async def test_new_data_elsewhere_keeps_the_entry(
    redis_client: aioredis.Redis, redis_prefix: str, bumper: WatermarkBumper
) -> None:
    cache, compute = make_cache(redis_client, redis_prefix), Counting()
    await ask(cache, compute)
    bumper.touch_spans(["events_1h"], [("other", T0 + timedelta(hours=3), None)])  # other tenant
    bumper.touch_spans(["events_1h"], [("acme", T0 + timedelta(days=1), None)])  # just after
    bumper.touch_spans(["events_1h"], [("acme", T0 - timedelta(seconds=1), None)])  # just before
    bumper.touch_spans(
        ["metric_windows"], [("acme", T0 + timedelta(hours=3), None)]
    )  # other source
    assert bumper.flush() and bumper.sent > 0
    assert (await ask(cache, compute)).hit
    assert compute.runs == 1


async def test_a_revised_range_invalidates_every_query_covering_it(
    redis_client: aioredis.Redis, redis_prefix: str, bumper: WatermarkBumper
) -> None:
    cache, compute = make_cache(redis_client, redis_prefix), Counting()
    month = [Reads("metric_windows", "acme", T0 - timedelta(days=29), T0 + timedelta(days=1))]

    async def ask_month() -> Answer:
        return await cache.answer(
            kind="series", query={"m": 1}, scope=("acme", None), reads=month, compute=compute
        )

    await ask_month()
    assert (await ask_month()).hit
    # A revised one-minute window ten days back lands in one hour and one day.
    at = T0 - timedelta(days=10, minutes=-5)
    bumper.touch_spans(["metric_windows"], [("acme", at, at + timedelta(minutes=1))])
    assert bumper.flush()
    assert not (await ask_month()).hit


async def test_an_expired_version_never_revives_an_entry(
    redis_client: aioredis.Redis, redis_prefix: str, bumper: WatermarkBumper
) -> None:
    cache, compute = make_cache(redis_client, redis_prefix), Counting()
    await ask(cache, compute)
    versions = [k async for k in redis_client.scan_iter(match=f"{redis_prefix}wm:*")]
    assert versions  # the miss set fresh tokens for the buckets it read
    await redis_client.delete(*versions)  # expired or evicted
    assert not (await ask(cache, compute)).hit


async def test_a_redis_outage_gives_correct_uncached_answers(redis_prefix: str) -> None:
    down = aioredis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=0.2)
    metrics = ApiMetrics()
    cache, compute = make_cache(down, redis_prefix, metrics=metrics, retry_s=60), Counting()
    try:
        answers = [await ask(cache, compute) for _ in range(3)]
    finally:
        await down.aclose()
    assert [a.body for a in answers] == [b'{"run": 1}', b'{"run": 2}', b'{"run": 3}']
    assert not any(a.hit for a in answers)
    assert all(a.etag == etag_of(a.body) for a in answers)
    text = metrics.exposition().decode()
    # The first one met the error; the others skipped Redis while the circuit was open.
    assert 'linkpulse_query_cache_requests_total{kind="series",result="error"} 1.0' in text
    assert 'linkpulse_query_cache_requests_total{kind="series",result="bypass"} 2.0' in text


async def test_a_compute_error_is_raised_and_not_cached(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    cache = make_cache(redis_client, redis_prefix)

    async def broken() -> bytes:
        raise ValueError("no such metric")

    with pytest.raises(ValueError, match="no such metric"):
        await cache.answer(
            kind="series", query={}, scope=("acme", None), reads=reads(), compute=broken
        )
    compute = Counting()
    assert not (
        await cache.answer(
            kind="series", query={}, scope=("acme", None), reads=reads(), compute=compute
        )
    ).hit


async def test_identical_misses_at_once_compute_once(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    cache = make_cache(redis_client, redis_prefix)
    gate, runs = asyncio.Event(), []

    async def slow() -> bytes:
        runs.append(1)
        await gate.wait()
        return b"[1]"

    tasks = [asyncio.create_task(ask(cache, slow)) for _ in range(5)]
    while cache.joined < 4:  # the first one computes; the others wait for it
        await asyncio.sleep(0.01)
    gate.set()
    answers = await asyncio.gather(*tasks)
    assert len(runs) == 1 and {a.body for a in answers} == {b"[1]"}


async def test_big_answers_are_served_not_stored_and_metrics_count_sizes(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    metrics = ApiMetrics()
    cache, compute = (
        make_cache(redis_client, redis_prefix, metrics=metrics, max_entry_bytes=11),
        Counting(),
    )
    await ask(cache, compute)  # 10 bytes: stored
    await ask(cache, compute)
    big = Counting()
    big.runs = 100  # b'{"run": 101}' is 12 bytes: too big
    await ask(cache, big, seller="s-1")
    await ask(cache, big, seller="s-1")
    text = metrics.exposition().decode()
    assert 'linkpulse_query_cache_requests_total{kind="series",result="hit"} 1.0' in text
    assert 'linkpulse_query_cache_requests_total{kind="series",result="miss"} 3.0' in text
    assert 'linkpulse_query_cache_entry_bytes_count{kind="series"} 1.0' in text
    assert 'linkpulse_query_cache_entry_bytes_sum{kind="series"} 10.0' in text
    assert 'linkpulse_query_duration_seconds_count{kind="series"} 3.0' in text


async def test_slow_queries_are_kept_with_statement_and_principal(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    metrics = ApiMetrics()
    slowlog = SlowLog(redis_client, prefix=redis_prefix, threshold_s=0.0, keep=2, metrics=metrics)
    cache = make_cache(redis_client, redis_prefix, slowlog=slowlog, metrics=metrics)
    for n in range(3):
        await cache.answer(
            kind="kpis",
            query={"period": f"{n}h"},
            scope=("acme", None),
            reads=reads(),
            compute=Counting(),
            principal="key:abc",
        )
    kept = await slowlog.recent()
    assert [e.statement for e in kept] == [
        '{"period":"2h"}',
        '{"period":"1h"}',
    ]  # newest first, capped
    assert {e.principal for e in kept} == {"key:abc"} and all(e.seconds >= 0 for e in kept)
    assert 'linkpulse_query_slow_total{kind="kpis"} 3.0' in metrics.exposition().decode()
    fast = SlowLog(redis_client, prefix=redis_prefix + "f:", threshold_s=10.0)
    assert not await fast.record(kind="sql", statement="select 1", seconds=0.5, principal=None)
    assert await fast.recent() == []


async def test_a_query_without_a_key_is_answered_uncached(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    cache, compute = make_cache(redis_client, redis_prefix), Counting()
    huge = {"limit": 1 << 70}  # orjson spells no integer this big
    for run in (1, 2):
        answer = await cache.answer(
            kind="top", query=huge, scope=("acme", None), reads=reads(), compute=compute
        )
        assert not answer.hit and answer.body == b'{"run": %d}' % run
