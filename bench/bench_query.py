"""Query API benchmark: the dashboard's series and KPI requests, cache cold and warm, over
``--events`` raw events (default 10 million), against a direct SQL GROUP BY on raw events.

Run: ``.venv/bin/python -m bench.bench_query [--events 10000000] [--runs 30] [--raw-runs 5]``

On a fresh database of the server of ``LINKPULSE_TEST_DATABASE_URL`` (dropped at the
end unless ``--keep``; ``--name`` names it): the events are loaded the way
``bench_store`` loads them (30 days made in SQL by ``generate_series``, 60% of them
tenant ``acme``; the rollups rebuilt), the analyst roles set up, then two real API
servers (uvicorn, auth off on loopback, Redis for the cache) answer HTTP requests:

Loading 10 million events takes many minutes, so a kept database can be measured
again: ``--keep --name lp_bench_q10m --load-only`` loads it once,
``--reuse lp_bench_q10m`` measures it (never dropped; pending migrations applied,
the rollups rebuilt only if one of them is empty, e.g. a rollup a new migration added).

* cold: ``LINKPULSE_QUERY_CACHE_TTL_S=0``, every request is computed (a scoped
  analyst session, the SQL on the coarsest exact source, JSON);
* warm: the default cache, after one request has filled it (Redis hit, ETag).

Requests: ``/v1/series`` orders per minute over the last 24 h (1,440 points,
``events_1m``), GMV per hour over 7 days (168 points, ``events_1h``), and
``/v1/kpis`` over the last 24 h (six KPIs, this period, the one before and a
week before: the rollup for five, raw events for active users). The baseline
computes the same numbers with a GROUP BY over raw ``events`` on an owner
connection (no HTTP, no JSON). Targets: p95 <= 50 ms warm, <= 200 ms cold.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.bench_store import ADMIN_DSN, END, load_raw, percentile, vacuum_rollups
from linkpulse.config import Settings
from linkpulse.errors import MigrationError
from linkpulse.store import Tier, migrate, roles, stored_tier
from linkpulse.store.partitions import create_ahead
from linkpulse.store.rollups import ROLLUP_SPECS, rebuild, refresh
from tests.api_server import ApiServer

DAY = timedelta(days=1)
REQUESTS: dict[str, dict[str, str]] = {
    "series orders 1m x 24h": {
        "path": "/v1/series", "metric": "orders", "step": "1m",
        "start": (END - DAY).isoformat(), "end": END.isoformat(),
    },
    "series gmv 1h x 7d": {
        "path": "/v1/series", "metric": "gmv", "step": "1h",
        "start": (END - 7 * DAY).isoformat(), "end": END.isoformat(),
    },
    "kpis 24h": {"path": "/v1/kpis", "start": (END - DAY).isoformat(), "end": END.isoformat()},
}  # fmt: skip
_KPI_RAW = (
    "SELECT coalesce(sum(amount) FILTER (WHERE type = 'payment_settled'), 0),"
    " count(*) FILTER (WHERE type = 'order_placed'),"
    " count(*) FILTER (WHERE type = 'order_placed')::float8"
    "   / nullif(count(*) FILTER (WHERE type = 'page_view'), 0),"
    " count(DISTINCT user_id),"
    " count(*) FILTER (WHERE type = 'payment_failed')::float8"
    "   / nullif(count(*) FILTER (WHERE type IN ('payment_failed', 'payment_settled')), 0),"
    " count(*) FILTER (WHERE type = 'refund_issued')"
    " FROM events WHERE tenant = 'acme' AND event_time >= %s AND event_time < %s"
)
_SERIES_RAW = (
    "SELECT date_bin(%s, event_time, '2000-01-01Z'), {agg} FROM events"
    " WHERE tenant = 'acme' AND type = %s AND event_time >= %s AND event_time < %s GROUP BY 1"
)


def _baseline(conn: psycopg.Connection[Any], name: str) -> Callable[[], object]:
    """The same numbers as request ``name``, by a GROUP BY over raw events."""
    if name.startswith("kpis"):

        def kpis() -> object:
            for s, e in (
                (END - DAY, END),
                (END - 2 * DAY, END - DAY),
                (END - 8 * DAY, END - 7 * DAY),
            ):
                conn.execute(_KPI_RAW, (s, e)).fetchall()
            return None

        return kpis
    minute = name.endswith("24h")
    agg = "count(*)" if minute else "sum(amount)"
    args = (
        timedelta(minutes=1) if minute else timedelta(hours=1),
        "order_placed" if minute else "payment_settled",
        END - (DAY if minute else 7 * DAY),
        END,
    )
    query = sql.SQL(_SERIES_RAW).format(agg=sql.SQL(agg))
    return lambda: conn.execute(query, args).fetchall()


def _timed(fn: Callable[[], object], runs: int) -> dict[str, float]:
    fn()  # one untimed run: connections, plans, the cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50": statistics.median(times), "p95": percentile(times, 95), "runs": runs}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _api(dsn: str, *, ttl_s: float) -> Iterator[httpx.Client]:
    settings = Settings(
        database_url=dsn, auth="off", query_cache_ttl_s=ttl_s,
        redis_key_prefix=f"lpbench:{uuid.uuid4().hex[:8]}:",
    )  # fmt: skip
    with ApiServer(settings, _free_port()) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


def _request(client: httpx.Client, spec: dict[str, str]) -> Callable[[], object]:
    params = {k: v for k, v in spec.items() if k != "path"} | {"tenant": "acme"}

    def call() -> object:
        resp = client.get(spec["path"], params=params)
        if resp.status_code != 200:
            msg = f"{spec['path']} answered {resp.status_code}: {resp.text[:500]}"
            raise RuntimeError(msg)
        return resp

    return call


def _vacuum_users(conn: psycopg.Connection[Any], tier: Tier) -> None:
    """VACUUM ANALYZE users_1h's storage (bench_store's helper knows the three others)."""
    name = sql.Identifier("users_1h")
    if tier is Tier.FULL_TIMESCALE:
        row = conn.execute(
            "SELECT materialization_hypertable_schema, materialization_hypertable_name"
            " FROM timescaledb_information.continuous_aggregates WHERE view_name = 'users_1h'"
        ).fetchone()
        if row is None:
            return
        name = sql.Identifier(*row)
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(name))


def _prepare(dsn: str, n_events: int, *, reuse: bool) -> Tier:
    """Migrate, set up the roles, load the events (unless ``reuse``) and build the rollups."""
    try:
        migrate(dsn)  # on a reused database: only the migrations added since it was kept
    except MigrationError as e:
        if not reuse:
            raise
        msg = (f"{e}\n  the kept database predates an edited migration: load a new one with"
               " --keep --name NEW_NAME --load-only, then --reuse NEW_NAME")  # fmt: skip
        raise SystemExit(msg) from e
    defaults = Settings()
    with psycopg.connect(dsn, autocommit=True) as conn:
        tier = stored_tier(conn) or Tier.PLAIN_POSTGRES
        if tier is Tier.PLAIN_POSTGRES and not reuse:
            with conn.transaction():
                create_ahead(conn, days_ahead=1, now=END, days_back=31)
        roles.setup(conn, analyst_role=defaults.analyst_role, sql_login=defaults.analyst_sql_login)
    if reuse:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
            print(f"tier {tier.value}; reusing {row[0] if row else 0:,} events", flush=True)
            # Whatever is still dirty (none after a bench load) or, on the full tier, not
            # materialized yet (a continuous aggregate a migration added answers in real
            # time, so it never looks empty): the measurement reads materialized rollups.
            refresh(conn)
            empty = [
                r.name
                for r in ROLLUP_SPECS
                if conn.execute(
                    sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(sql.Identifier(r.name))
                ).fetchone()
                == (True,)
            ]
            if not empty:
                return tier
            print(f"  empty rollups {empty}: rebuilding them", flush=True)
    else:
        empty = None
        print(f"tier {tier.value}; loading {n_events:,} events ...", flush=True)
        load_s = load_raw(dsn, n_events)
        print(f"  loaded in {load_s:.0f} s", flush=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        rebuild(conn, only=empty)
        vacuum_rollups(conn, tier)
        _vacuum_users(conn, tier)
        print(f"  rollups in {time.perf_counter() - t0:.0f} s", flush=True)
    return tier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000, help="raw events (30 days)")
    ap.add_argument("--runs", type=int, default=30, help="timed API requests per case")
    ap.add_argument("--raw-runs", type=int, default=5, help="timed raw GROUP BY runs")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    ap.add_argument("--name", help="the new database's name (default lp_bench_q_<random>)")
    ap.add_argument("--reuse", metavar="NAME", help="measure a kept database (never dropped)")
    ap.add_argument("--load-only", action="store_true", help="load and build, then stop")
    args = ap.parse_args()

    name = args.reuse or args.name or f"lp_bench_q_{uuid.uuid4().hex[:8]}"
    keep = args.keep or bool(args.reuse)
    if not args.reuse:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    dsn = psycopg.conninfo.make_conninfo(**{**params, "dbname": name})
    url_dsn = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    try:
        _prepare(dsn, args.events, reuse=bool(args.reuse))
        if args.load_only:
            print(f"  database {name} ready: --reuse {name}")
            return
        _measure(dsn, url_dsn, args)
        if keep:
            print(f"  database {name} kept: --reuse {name}")
    finally:
        if not keep:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def _measure(dsn: str, url_dsn: str, args: argparse.Namespace) -> None:
    """Time the raw baseline, then each request cold and warm; print the table."""
    load_before = os.getloadavg()
    with psycopg.connect(dsn, autocommit=True) as conn:
        raw = {n: _timed(_baseline(conn, n), args.raw_runs) for n in REQUESTS}
    results: dict[str, dict[str, dict[str, float]]] = {n: {"raw": raw[n]} for n in REQUESTS}
    for label, ttl in (("cold", 0.0), ("warm", 3600.0)):
        with _api(url_dsn, ttl_s=ttl) as client:
            for n, spec in REQUESTS.items():
                results[n][label] = _timed(_request(client, spec), args.runs)
    print(f"\n{args.runs} requests per case ({args.raw_runs} raw runs); ms")
    cols = ("raw p50", "raw p95", "cold p50", "cold p95", "warm p50", "warm p95")
    print(f"  {'request':<24}" + "".join(f" {c:>9}" for c in cols)
          + f" {'raw/cold p95':>13} {'raw/warm p95':>13}")  # fmt: skip
    for n, r in results.items():
        figures = [r[k][p] for k in ("raw", "cold", "warm") for p in ("p50", "p95")]
        print(
            f"  {n:<24}"
            + "".join(f" {x:>9.1f}" for x in figures)
            + f" {r['raw']['p95'] / r['cold']['p95']:>12.1f}x"
            f" {r['raw']['p95'] / r['warm']['p95']:>12.1f}x"
        )
    cold_ok = all(r["cold"]["p95"] <= 200 for r in results.values())
    warm_ok = all(r["warm"]["p95"] <= 50 for r in results.values())
    print(f"  targets: warm p95 <= 50 ms {'MET' if warm_ok else 'NOT MET'}; "
          f"cold p95 <= 200 ms {'MET' if cold_ok else 'NOT MET'}")  # fmt: skip
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    after = _load(os.getloadavg())
    print(f"  run at {now}; load average {_load(load_before)} before, {after} after (1/5/15 min)")


def _load(avg: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in avg)


if __name__ == "__main__":
    main()
