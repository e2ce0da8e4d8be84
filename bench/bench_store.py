"""Store benchmark: writer throughput, and a 30-day 1-minute series from the rollup vs raw.

Run: ``.venv/bin/python -m bench.bench_store [--events 10000000] [--write-events 500000]``

On a fresh database of the server of ``LINKPULSE_TEST_DATABASE_URL`` (the local
PostgreSQL by default; dropped at the end unless ``--keep``), or on the
existing empty database ``--dsn`` (e.g. the WASM TimescaleDB, which has a
single database). The tier is the database's: plain PostgreSQL, or TimescaleDB
(hypertables and continuous aggregates). Without ``COPY FROM STDIN`` on the
server (the WASM build) the COPY-based writer figures are skipped.

1. Writer rate, events/s, for the same events: the baseline is a plain binary
   COPY straight into ``events`` (no idempotency: a replay would be stored
   twice); then ``EventWriter`` (COPY into a staging table, ``INSERT ... ON
   CONFLICT DO NOTHING``, rollup dirty marks, one transaction per batch); then
   ``EventWriter(use_copy=False)`` (one ``INSERT ... FROM unnest(...)`` per
   batch, the path of servers without COPY). Row conversion from event objects
   is timed in every case. Target: >= 100,000 events/s with idempotency.
2. ``--events`` raw events over 30 days made in SQL (generate_series), rollups
   built by the incremental refresh, then a 30-day series at 1-minute
   resolution (page views per minute of the largest tenant: 43,200 points)
   from ``events_1m`` vs from ``events``, p50/p95 over repeated runs. Targets:
   rollup >= 20x faster than raw, and < 100 ms at p95. The same for all event
   types of the tenant is printed too, for scale.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from linkpulse.schemas.events import EVENT_CLASS_BY_TYPE, BaseEvent
from linkpulse.store import EventWriter, Tier, _rows, migrate, refresh, stored_tier
from linkpulse.store.partitions import create_ahead
from linkpulse.store.rollups import rebuild
from linkpulse.store.writer import _copy_works

END = datetime(2026, 11, 24, tzinfo=UTC)
START = END - timedelta(days=30)
WRITE_TARGET = 100_000
ADMIN_DSN = os.environ.get(
    "LINKPULSE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

GENERATE = """
INSERT INTO events (tenant, event_id, event_time, type, user_id, seller_id, amount, currency,
                    properties, schema_version)
SELECT CASE WHEN r1 < 0.6 THEN 'acme' WHEN r1 < 0.9 THEN 'globex' ELSE 'initech' END,
       'g' || g,
       %(start)s::timestamptz + (g::float8 / %(n)s) * interval '30 days',
       ty,
       CASE WHEN ty = 'page_view' AND r3 < 0.5 THEN NULL ELSE 'u' || floor(r3 * 100000)::int END,
       CASE WHEN ty IN ('page_view', 'user_signup', 'wallet_connected') THEN NULL
            ELSE 's' || floor(r4 * 200)::int END,
       CASE WHEN ty IN ('order_placed', 'payment_settled', 'payment_failed', 'refund_issued')
            THEN round((r4 * 500)::numeric, 2) END,
       CASE WHEN ty IN ('order_placed', 'payment_settled', 'payment_failed', 'refund_issued')
            THEN 'USD' END,
       '{}'::jsonb, 1
FROM (
    SELECT g, random() AS r1, random() AS r3, random() AS r4,
           CASE WHEN random() < 0.7 THEN 'page_view'
                ELSE (ARRAY['order_placed', 'payment_settled', 'payment_failed', 'refund_issued',
                            'review_posted', 'listing_created', 'user_signup',
                            'wallet_connected'])[1 + floor(random() * 8)::int] END AS ty
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g
) s
"""

SERIES = {
    "rollup": (
        "SELECT bucket, sum(events)::bigint FROM events_1m"
        " WHERE tenant = 'acme' AND type = 'page_view'"
        " AND bucket >= %(start)s AND bucket < %(end)s GROUP BY bucket ORDER BY bucket"
    ),
    "raw": (
        "SELECT date_bin('1 minute', event_time, '2000-01-01 00:00:00+00') AS b, count(*)"
        " FROM events WHERE tenant = 'acme' AND type = 'page_view'"
        " AND event_time >= %(start)s AND event_time < %(end)s GROUP BY 1 ORDER BY 1"
    ),
}
SERIES_ALL_TYPES = {
    "rollup": (
        "SELECT bucket, sum(events)::bigint FROM events_1m WHERE tenant = 'acme'"
        " AND bucket >= %(start)s AND bucket < %(end)s GROUP BY bucket ORDER BY bucket"
    ),
    "raw": (
        "SELECT date_bin('1 minute', event_time, '2000-01-01 00:00:00+00') AS b, count(*)"
        " FROM events WHERE tenant = 'acme'"
        " AND event_time >= %(start)s AND event_time < %(end)s GROUP BY 1 ORDER BY 1"
    ),
}


# The type mix: (cumulative share, type); 70% page views like a real storefront.
_MIX = ((0.7, "page_view"), (0.8, "order_placed"), (0.9, "payment_settled"),
        (0.95, "listing_created"), (1.0, "user_signup"))  # fmt: skip


def _pick_kind(k: float) -> str:
    return next(kind for share, kind in _MIX if k < share)


def make_events(n: int, seed: int = 7, *, live: bool = True) -> list[BaseEvent]:
    """``n`` events, a realistic mix, deterministic.

    ``live``: in time order over the last 6 hours, a few seconds of jitter (a
    live stream's batches); otherwise anywhere in the 30 days (late data).
    """
    rnd = random.Random(seed)
    span = int((END - START).total_seconds())
    live_start, step = END - timedelta(hours=6), 6 * 3600 / max(n, 1)
    out: list[BaseEvent] = []
    for i in range(n):
        if live:
            t = live_start + timedelta(seconds=i * step + rnd.uniform(-3, 3))
        else:
            t = START + timedelta(seconds=rnd.randrange(span))
        tenant = ("acme", "globex", "initech")[rnd.randrange(3)]
        kind = _pick_kind(rnd.random())
        user, seller = f"u{rnd.randrange(100_000)}", f"s{rnd.randrange(200)}"
        money = {"user_id": user, "seller_id": seller, "amount": 12.5, "currency": "USD"}
        fields: dict[str, object] = {
            "page_view": {"user_id": user, "properties": {"page": "home"}},
            "order_placed": {**money, "properties": {"order_id": f"o{i}"}},
            "payment_settled": {**money, "properties": {"order_id": f"o{i}"}},
            "listing_created": {"seller_id": seller, "properties": {"listing_id": f"l{i}"}},
            "user_signup": {"user_id": user},
        }[kind]
        cls = EVENT_CLASS_BY_TYPE[kind]
        out.append(cls(event_id=f"w{i}", tenant=tenant, event_time=t, **fields))
    return out


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE events, lp_rollup_dirty")
        conn.execute("CHECKPOINT")


def plain_copy(dsn: str, events: list[BaseEvent], batch: int) -> None:
    """The baseline: COPY straight into events (text format, so the float amounts and JSON
    text go in as they are), one transaction per batch, no idempotency."""
    cols = sql.SQL(", ").join(map(sql.Identifier, _rows.EVENT_COLUMNS))
    with psycopg.connect(dsn) as conn:
        for i in range(0, len(events), batch):
            rows = [_rows.event_row(e) for e in events[i : i + batch]]
            with conn.cursor().copy(sql.SQL("COPY events ({}) FROM STDIN").format(cols)) as cp:
                for r in rows:
                    cp.write_row(r)
            conn.commit()


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_writes(dsn: str, n: int, batch: int, *, copy: bool) -> dict[str, float]:
    print(f"generating {n:,} event objects ...", flush=True)
    events = make_events(n)
    rates = {}
    reset(dsn)
    if copy:
        rates["plain COPY into events (no idempotency)"] = n / timed(
            lambda: plain_copy(dsn, events, batch)
        )
    paths = (
        ("EventWriter: COPY staging + ON CONFLICT", True),
        ("EventWriter: INSERT ... unnest + ON CONFLICT", False),
    )
    for label, use_copy in paths[0 if copy else 1 :]:
        reset(dsn)
        with EventWriter(dsn, batch_size=batch, use_copy=use_copy) as w:
            _ = w.tier  # connect outside the timing
            rates[label] = n / timed(lambda w=w: w.write_events(events))  # type: ignore[misc]
    reset(dsn)
    with EventWriter(dsn, batch_size=batch) as w:
        w.write_events(events)
        rates["EventWriter: replay of stored events (all skipped)"] = n / timed(
            lambda w=w: w.write_events(events)  # type: ignore[misc]
        )
    reset(dsn)
    return rates


def load_raw(dsn: str, n: int) -> float:
    chunk = 1_000_000
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT setseed(0.42)")
        for lo in range(1, n + 1, chunk):
            hi = min(n, lo + chunk - 1)
            conn.execute(GENERATE, {"start": START, "n": n, "lo": lo, "hi": hi})  # type: ignore[arg-type]
            print(f"  {hi:,} / {n:,} raw events ({time.perf_counter() - t0:.0f} s)", flush=True)
        conn.execute("VACUUM ANALYZE events")
    return time.perf_counter() - t0


def vacuum_rollups(conn: psycopg.Connection, tier: Tier) -> None:
    """VACUUM ANALYZE the rollups' storage: index-only scans need the visibility map.

    On the full tier that is each continuous aggregate's materialized hypertable.
    """
    names = [sql.Identifier(r) for r in ("events_1m", "events_1h", "events_1d")]
    if tier is Tier.FULL_TIMESCALE:
        rows = conn.execute(
            "SELECT materialization_hypertable_schema, materialization_hypertable_name"
            " FROM timescaledb_information.continuous_aggregates"
            " WHERE view_name IN ('events_1m', 'events_1h', 'events_1d')"
        ).fetchall()
        names = [sql.Identifier(schema, name) for schema, name in rows]
    for name in names:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(name))


# Chunk and partition names differ only by their number or day: one label for all.
_PART = re.compile(r"_hyper_\d+_\d+_chunk_?|(?<=_p)\d{8}|(?<=\")\d+_\d+(?=_)")


def scan_nodes(conn: psycopg.Connection, query: str) -> list[str]:
    """How the query's plan reads each relation: its scan nodes, counted over chunks."""
    plan = conn.execute(f"EXPLAIN {query}", {"start": START, "end": END}).fetchall()  # type: ignore[arg-type]
    counts: dict[str, int] = {}
    for (line,) in plan:
        node = line.strip().removeprefix("->").strip().split("  (")[0]
        if " Scan" in node:
            head, _, rel = node.partition(" on ")
            label = _PART.sub("*", f"{head} on {rel.split()[0]}" if rel else head)
            counts[label] = counts.get(label, 0) + 1
    return [f"{label} (x{n})" for label, n in counts.items()]


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def bench_query(
    dsn: str, queries: dict[str, str], runs: dict[str, int]
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    params = {"start": START, "end": END}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, query in queries.items():
            points = len(conn.execute(query, params, binary=True).fetchall())  # type: ignore[arg-type]  # warm
            times = []
            for _ in range(runs[name]):
                t0 = time.perf_counter()
                conn.execute(query, params, binary=True).fetchall()  # type: ignore[arg-type]
                times.append((time.perf_counter() - t0) * 1000)
            out[name] = {
                "p50": statistics.median(times),
                "p95": percentile(times, 95),
                "points": points,
                "runs": runs[name],
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000, help="raw events for the query part")
    ap.add_argument("--write-events", type=int, default=500_000, help="events for the write part")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--rollup-runs", type=int, default=30)
    ap.add_argument("--raw-runs", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    ap.add_argument(
        "--dsn",
        help="an existing empty database to use as is (never dropped), e.g. the WASM TimescaleDB",
    )
    args = ap.parse_args()

    name = f"lp_bench_{uuid.uuid4().hex[:8]}"
    if args.dsn:
        dsn, made = args.dsn, False
    else:
        params = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        dsn, made = psycopg.conninfo.make_conninfo(**{**params, "dbname": name}), True
    try:
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            tier = stored_tier(conn)
            assert tier is not None
            if tier is Tier.PLAIN_POSTGRES:  # hypertables make their chunks themselves
                with conn.transaction():
                    create_ahead(conn, days_ahead=1, now=END, days_back=31)
            version = conn.execute("SHOW server_version").fetchone()
            ts = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone()
            copy = _copy_works(conn)
        print(
            f"PostgreSQL {version[0] if version else '?'}"
            f"{f', TimescaleDB {ts[0]}' if ts else ''}, tier {tier.value}, "
            f"database {name if made else dsn}",
            flush=True,
        )

        rates = bench_writes(dsn, args.write_events, args.batch_size, copy=copy)
        base = next(iter(rates.values()))
        print(f"\nwriter, {args.write_events:,} events, batches of {args.batch_size:,}:")
        for label, rate in rates.items():
            print(f"  {label:<52} {rate:>10,.0f} events/s  ({rate / base:.2f}x baseline)")
        idem = rates.get("EventWriter: COPY staging + ON CONFLICT")
        if idem is None:
            print("  (no COPY FROM STDIN on this server: the COPY paths were not run)")
        else:
            print(
                f"  target >= {WRITE_TARGET:,}/s with idempotency: "
                f"{'MET' if idem >= WRITE_TARGET else 'NOT MET'} ({idem / WRITE_TARGET:.2f}x)"
            )

        print(f"\nloading {args.events:,} raw events over 30 days (SQL generate_series) ...")
        load_s = load_raw(dsn, args.events)
        with psycopg.connect(dsn, autocommit=True) as conn:
            t0 = time.perf_counter()
            report = rebuild(conn)
            build_s = time.perf_counter() - t0
            vacuum_rollups(conn, tier)
            rollup_rows = conn.execute("SELECT count(*) FROM events_1m").fetchone()
        print(
            f"  loaded in {load_s:.0f} s; rollups rebuilt "
            f"in {build_s:.1f} s ({report.buckets}); events_1m rows: "
            f"{rollup_rows[0] if rollup_rows else 0:,}"
        )
        # incremental refresh: a live minute of traffic, then late events all over 30 days
        for label, batch in (
            ("5,000 new events in the last minutes", make_events(5000, seed=98)),
            ("500 late events spread over 30 days", make_events(500, seed=99, live=False)),
        ):
            with EventWriter(dsn) as w:
                w.write_events(batch)
            with psycopg.connect(dsn, autocommit=True) as conn:
                t0 = time.perf_counter()
                inc = refresh(conn)
                inc_s = time.perf_counter() - t0
                vacuum_rollups(conn, tier)  # what autovacuum does on a server, in time
            print(
                f"  incremental refresh after {label}: {inc_s * 1000:,.0f} ms "
                f"(buckets recomputed {inc.buckets})"
            )

        runs = {"rollup": args.rollup_runs, "raw": args.raw_runs}
        for title, queries in (
            ("page views per minute, tenant acme, 30 days", SERIES),
            ("all events per minute, tenant acme, 30 days", SERIES_ALL_TYPES),
        ):
            res = bench_query(dsn, queries, runs)
            r, w = res["rollup"], res["raw"]
            print(f"\n{title} ({r['points']:,.0f} points):")
            with psycopg.connect(dsn, autocommit=True) as conn:
                for k, q in queries.items():
                    print(f"  plan {k:<7} {'; '.join(scan_nodes(conn, q))}")
            for k, v in res.items():
                print(
                    f"  {k:<7} p50 {v['p50']:9.1f} ms   p95 {v['p95']:9.1f} ms"
                    f"   ({v['runs']:.0f} runs)"
                )
            print(
                f"  rollup is {w['p50'] / r['p50']:.1f}x faster at p50, "
                f"{w['p95'] / r['p95']:.1f}x at p95; rollup p95 < 100 ms: "
                f"{'MET' if r['p95'] < 100 else 'NOT MET'}"
            )
    finally:
        if made and not args.keep:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


if __name__ == "__main__":
    main()
