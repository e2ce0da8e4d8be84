"""Query API benchmark: the dashboard's series and KPI requests, cache cold and warm, over
``--events`` raw events (default 10 million), against a direct SQL GROUP BY on raw events.

Run: ``.venv/bin/python -m bench.bench_query [--events 10000000] [--runs 30] [--raw-runs 5]``

On a fresh database of the server of ``LINKPULSE_TEST_DATABASE_URL`` (dropped at the
end unless ``--keep``): the events are loaded the way ``bench_store`` loads them
(30 days made in SQL by ``generate_series``, 60% of them tenant ``acme``; the
rollups rebuilt), the analyst roles set up, then two real API servers (uvicorn,
auth off on loopback, Redis for the cache) answer HTTP requests:

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
from linkpulse.store import Tier, migrate, roles, stored_tier
from linkpulse.store.partitions import create_ahead
from linkpulse.store.rollups import rebuild
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000, help="raw events (30 days)")
    ap.add_argument("--runs", type=int, default=30, help="timed API requests per case")
    ap.add_argument("--raw-runs", type=int, default=5, help="timed raw GROUP BY runs")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = ap.parse_args()

    name = f"lp_bench_q_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    dsn = psycopg.conninfo.make_conninfo(**{**params, "dbname": name})
    url_dsn = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate(dsn)
        defaults = Settings()
        with psycopg.connect(dsn, autocommit=True) as conn:
            tier = stored_tier(conn)
            if tier is Tier.PLAIN_POSTGRES:
                with conn.transaction():
                    create_ahead(conn, days_ahead=1, now=END, days_back=31)
            roles.setup(
                conn, analyst_role=defaults.analyst_role, sql_login=defaults.analyst_sql_login
            )
        print(f"tier {tier.value if tier else '?'}; loading {args.events:,} events ...", flush=True)
        load_s = load_raw(dsn, args.events)
        with psycopg.connect(dsn, autocommit=True) as conn:
            t0 = time.perf_counter()
            rebuild(conn)
            vacuum_rollups(conn, tier or Tier.PLAIN_POSTGRES)
            print(f"  loaded in {load_s:.0f} s, rollups in {time.perf_counter() - t0:.0f} s")
            raw = {n: _timed(_baseline(conn, n), args.raw_runs) for n in REQUESTS}
        results: dict[str, dict[str, dict[str, float]]] = {n: {"raw": raw[n]} for n in REQUESTS}
        for label, ttl in (("cold", 0.0), ("warm", 3600.0)):
            with _api(url_dsn, ttl_s=ttl) as client:
                for n, spec in REQUESTS.items():
                    results[n][label] = _timed(_request(client, spec), args.runs)
        print(f"\n{args.events:,} events, {args.runs} requests per case ({args.raw_runs} raw runs);"
              " ms")  # fmt: skip
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
        print(f"  run at {datetime.now().astimezone().isoformat(timespec='seconds')}")
    finally:
        if not args.keep:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


if __name__ == "__main__":
    main()
