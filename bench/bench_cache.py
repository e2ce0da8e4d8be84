"""Query cache benchmark: hit vs miss latency, and what touching watermarks costs the writer.

Run: ``.venv/bin/python -m bench.bench_cache [--events 2000000] [--runs 200]
[--write-events 200000] [--write-rounds 3]``

On a fresh database of the server of ``LINKPULSE_TEST_DATABASE_URL`` (dropped
at the end) and the Redis of ``LINKPULSE_TEST_REDIS_URL`` (keys under a
random prefix, deleted at the end).

1. ``--events`` raw events over 30 days (made in SQL), rollups rebuilt. Two
   dashboard queries, as ``QueryCache.answer`` computes them (an async
   psycopg connection, the body serialised with orjson): GMV per hour over
   30 days from ``events_1h`` (720 points) and page views per minute over the
   last 24 h from raw ``events`` (1,440 points). For each, p50/p95 of: the
   query alone (no cache: the baseline); a miss (versions read, computed,
   stored: a new key each run); a hit (the same key); and with Redis down
   (the cache pointed at a closed port: uncached answers).
2. The write path: ``EventWriter.write_event_json`` (the dataflow's path)
   storing ``--write-events`` events, with and without a ``WatermarkBumper``,
   alternating rounds in the same run (the table truncated before each),
   events/s of each and the ratio; then what touching costs apart from the
   store: the writer thread's ``events_stored`` call per batch of 5,000, and
   the background thread's decoding and bucketing per event
   (``--touch-only`` runs just that).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
from psycopg import sql

from bench.bench_store import ADMIN_DSN, END, START, load_raw, make_events, percentile, reset
from linkpulse.query.cache import QueryCache, Reads
from linkpulse.query.watermarks import WatermarkBumper, _Job, _json_points
from linkpulse.schemas import encode_event
from linkpulse.store import EventWriter, Tier, migrate, stored_tier
from linkpulse.store.partitions import create_ahead
from linkpulse.store.rollups import rebuild

REDIS_URL = os.environ.get("LINKPULSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

QUERIES: dict[str, tuple[str, str, timedelta]] = {
    # name -> (SQL, source it reads, range back from END)
    "GMV per hour, 30 d, events_1h": (
        "SELECT bucket, sum(revenue) FROM events_1h WHERE tenant = 'acme' "
        "AND type = 'order_placed' AND bucket >= %(start)s AND bucket < %(end)s "
        "GROUP BY 1 ORDER BY 1",
        "events_1h",
        timedelta(days=30),
    ),
    "page views per minute, 24 h, raw events": (
        "SELECT date_bin('1 minute', event_time, '2000-01-01'), count(*) FROM events "
        "WHERE tenant = 'acme' AND type = 'page_view' "
        "AND event_time >= %(start)s AND event_time < %(end)s GROUP BY 1 ORDER BY 1",
        "events",
        timedelta(days=1),
    ),
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stats(xs: list[float]) -> str:
    return f"p50 {percentile(xs, 50) * 1000:7.2f} ms   p95 {percentile(xs, 95) * 1000:7.2f} ms"


async def timed_runs(fn: Callable[[int], Awaitable[Any]], runs: int) -> list[float]:
    out = []
    for i in range(runs):
        t0 = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - t0)
    return out


async def bench_query(
    conn: psycopg.AsyncConnection[Any],
    caches: tuple[QueryCache, QueryCache],
    name: str,
    runs: int,
) -> None:
    """One query's figures: alone, missing, hitting, and with Redis down."""
    query, source, span = QUERIES[name]
    start, end = END - span, END
    reads = [Reads(source, "acme", start, end)]
    up, down = caches

    async def compute() -> bytes:
        rows = await (await conn.execute(query, {"start": start, "end": end})).fetchall()
        return orjson.dumps([{"t": t, "value": float(v or 0)} for t, v in rows])

    async def ask(cache: QueryCache, key: int) -> bytes:
        answer = await cache.answer(
            kind="series",
            query={"q": name, "run": key},
            scope=("acme", None),
            reads=reads,
            compute=compute,
        )
        return answer.body

    size = len(await compute())  # also warms PostgreSQL's buffers for every variant
    await ask(up, -1)
    variants: dict[str, Callable[[int], Awaitable[Any]]] = {
        "base": lambda i: compute(),
        "miss": lambda i: ask(up, i),  # a new key each run
        "hit": lambda i: ask(up, -1),
        "down": lambda i: ask(down, i),
    }
    # Interleaved, run by run: the machine's load drifts, and each variant sees the same.
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(runs):
        for label, fn in variants.items():
            times[label] += await timed_runs(lambda _, fn=fn, i=i: fn(i), 1)  # type: ignore[misc]
    base, miss, hit, out = (times[k] for k in ("base", "miss", "hit", "down"))
    print(f"\n{name} ({size:,} bytes; versions read: {len(up.version_keys(reads))})")
    print(f"  query alone (baseline)  {stats(base)}")
    print(f"  cache miss              {stats(miss)}")
    print(f"  cache hit               {stats(hit)}")
    print(f"  Redis down (uncached)   {stats(out)}")
    ratio = statistics.median(base) / statistics.median(hit)
    extra = (statistics.median(miss) - statistics.median(base)) * 1000
    print(f"  hit is {ratio:.0f}x faster than the query alone; a miss adds {extra:.2f} ms to it")


async def bench_reads(dsn: str, prefix: str, runs: int) -> None:
    client = aioredis.from_url(REDIS_URL)
    down = aioredis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=0.2)
    caches = (
        QueryCache(client, prefix=prefix, ttl_s=600),
        QueryCache(down, prefix=prefix, ttl_s=600),
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for name in QUERIES:
            await bench_query(conn, caches, name, runs)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    await down.aclose()


def bench_writes(dsn: str, prefix: str, n: int, rounds: int) -> None:
    print(f"\ngenerating {n:,} events ...", flush=True)
    payloads = [encode_event(e) for e in make_events(n)]
    rates: dict[str, list[float]] = {"without watermarks": [], "with watermarks": []}
    bumper = WatermarkBumper(REDIS_URL, prefix)
    for _ in range(rounds):
        for label, wm in (("without watermarks", None), ("with watermarks", bumper)):
            reset(dsn)
            with EventWriter(dsn, watermarks=wm) as w:
                _ = w.tier  # connect outside the timing
                t0 = time.perf_counter()
                w.write_event_json(payloads)
                elapsed = time.perf_counter() - t0
            rates[label].append(n / elapsed)
    assert bumper.flush(10)
    print(f"\nEventWriter.write_event_json, {n:,} events x {rounds} rounds each (alternating):")
    for label, xs in rates.items():
        print(f"  {label:20} median {statistics.median(xs):10,.0f} events/s   rounds {xs}")
    ratio = statistics.median(rates["with watermarks"]) / statistics.median(
        rates["without watermarks"]
    )
    print(
        f"  with / without: {ratio:.3f}  (version keys set: {bumper.sent:,}, lost: {bumper.failed})"
    )
    bumper.close()


def bench_touch(n: int, prefix: str) -> None:
    """What touching costs, apart from the store: the writer's call, and the thread's work."""
    payloads = [encode_event(e) for e in make_events(n)]
    batches = [payloads[i : i + 5000] for i in range(0, n, 5000)]
    bumper = WatermarkBumper(REDIS_URL, prefix)
    calls, work, buckets = [], [], 0
    for batch in batches:
        t0 = time.perf_counter()
        bumper.events_stored(batch, as_json=True, realtime=False)
        calls.append(time.perf_counter() - t0)
    assert bumper.flush(30)
    for batch in batches:
        job = _Job(("events",), lambda b=batch: ((t, at, None) for t, at in _json_points(b)))
        t0 = time.perf_counter()
        keys, _ = bumper.keys_of([job])  # what the background thread does, less the round trip
        work.append(time.perf_counter() - t0)
        buckets += len(keys)
    bumper.close()
    per_call = statistics.median(calls) * 1e6
    print(f"\ntouching {n:,} events in batches of 5,000 (medians over {len(batches)} batches):")
    print(f"  events_stored() call (writer thread)  {per_call:7.1f} us per batch"
          f" ({per_call / 5000 * 1000:.1f} ns/event)")  # fmt: skip
    print(f"  decode and bucket (background thread) {statistics.median(work) / 5000 * 1e9:7.0f}"
          f" ns/event ({buckets / len(batches):.0f} version keys per batch)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000, help="raw events for the reads")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per variant")
    ap.add_argument("--write-events", type=int, default=200_000)
    ap.add_argument("--write-rounds", type=int, default=3)
    ap.add_argument("--touch-only", action="store_true", help="only the touch costs (no store)")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}, {os.cpu_count()} cores")
    prefix = f"lpbench:{uuid.uuid4().hex[:8]}:"
    if args.touch_only:
        bench_touch(args.write_events, prefix)
        return
    name = f"lp_bench_{uuid.uuid4().hex[:8]}"
    params = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(**{**params, "dbname": name})  # type: ignore[arg-type]
    try:
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            tier = stored_tier(conn)
            print(f"tier {tier.value if tier else '?'}")
            if tier is Tier.PLAIN_POSTGRES:  # hypertables make their chunks themselves
                with conn.transaction():
                    create_ahead(conn, days_ahead=1, now=END, days_back=31)
        print(f"loading {args.events:,} raw events over {START:%Y-%m-%d} .. {END:%Y-%m-%d} ...")
        load_raw(dsn, args.events)
        with psycopg.connect(dsn, autocommit=True) as conn:
            rebuild(conn)
        asyncio.run(bench_reads(dsn, prefix, args.runs))
        bench_writes(dsn, prefix, args.write_events, args.write_rounds)
        bench_touch(args.write_events, prefix)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
