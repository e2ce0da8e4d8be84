"""SQL endpoint benchmark: streaming rate of ``POST /v1/sql`` in rows/s, per format.

Run: ``.venv/bin/python -m bench.bench_sql [--events 1000000] [--runs 3]``

On a fresh database of the server of ``LINKPULSE_TEST_DATABASE_URL`` (dropped
at the end unless ``--keep``): ``--events`` raw events made in SQL (as in
bench_store), the analyst roles set up, and the API started as a separate
process (``linkpulse serve``, auth off on loopback, so the caller is the local
admin naming tenant ``acme``; Redis and NATS from the test URLs). One query,
every ``acme`` event's main columns (``event_id, type, event_time, user_id,
seller_id, amount, properties``, ~60% of the events), is read:

* through the endpoint as JSON lines, CSV and Parquet (the client reads the
  whole body; rows counted from the answer's summary);
* baselines in the same run: psycopg fetching the same rows in the same scoped
  analyst session through a server-side cursor (tuples in Python, nothing
  encoded or sent), and ``psql -c "COPY (...) TO STDOUT CSV"`` as the owner
  (PostgreSQL's own CSV, no Python at all).

Best of ``--runs`` per path, the paths interleaved (every other round in
reverse order); the machine is shared: the load average is printed before,
after each read, and after.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import psycopg
import pyarrow.parquet as pq
from psycopg import sql

from bench.bench_store import ADMIN_DSN, END, load_raw
from linkpulse.api.analyst_db import login_conninfo
from linkpulse.config import Settings
from linkpulse.store import Tier, migrate, roles, stored_tier
from linkpulse.store.partitions import create_ahead

COLUMNS = "event_id, type, event_time, user_id, seller_id, amount, properties"
QUERY = f"SELECT {COLUMNS} FROM events"  # through the analyst view: acme's rows only
OWNER_QUERY = f"SELECT {COLUMNS} FROM public.events WHERE tenant = 'acme'"
REDIS_URL = os.environ.get("LINKPULSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("LINKPULSE_TEST_NATS_URL", "nats://127.0.0.1:4222")


def interleaved(paths: dict[str, Callable[[], int]], runs: int) -> dict[str, tuple[int, float]]:
    """(rows, best seconds) per path, the paths run in turn ``runs`` times (every other
    round in reverse order), so each baseline is read next to what it is compared with."""
    times: dict[str, list[float]] = {label: [] for label in paths}
    rows: dict[str, int] = {}
    order = list(paths)
    for r in range(runs):
        for label in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            rows[label] = paths[label]()
            times[label].append(time.perf_counter() - t0)
            print(f"  {label}: {times[label][-1]:.2f} s, load {os.getloadavg()[0]:.1f}", flush=True)
    return {label: (rows[label], min(times[label])) for label in paths}


def via_api(base: str, fmt: str) -> int:
    """Stream the answer in ``fmt``; the rows from its summary."""
    buf = io.BytesIO()
    with httpx.Client(base_url=base, timeout=600) as c:
        with c.stream(
            "POST", f"/v1/sql?format={fmt}", json={"sql": QUERY, "tenant": "acme"}
        ) as resp:
            resp.raise_for_status()
            tail = b""
            for chunk in resp.iter_bytes():
                if fmt == "parquet":
                    buf.write(chunk)  # the summary is in the footer
                else:
                    tail = (tail + chunk)[-4096:]
    if fmt == "parquet":
        meta = pq.ParquetFile(buf).metadata.metadata
        return int(orjson.loads(meta[b"linkpulse.summary"])["rows"])
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].removeprefix(b"# linkpulse ")
    summary = orjson.loads(last)
    return int((summary.get("@linkpulse", summary))["summary"]["rows"])


def via_psycopg(dsn: str, settings: Settings, secret: str, batch: int) -> int:
    """The same rows in the same scoped session, server-side cursor, nothing encoded."""
    login = login_conninfo(dsn, settings.analyst_sql_login)
    rows = 0
    with psycopg.connect(login, autocommit=True) as conn:
        with roles.analyst_session(
            conn, analyst_role=settings.analyst_role, secret=secret, tenant="acme", seller_id=None
        ) as scoped:
            with scoped.cursor(name="bench") as cur:
                cur.execute(QUERY.replace("FROM events", "FROM analyst.events"))
                while batch_rows := cur.fetchmany(batch):
                    rows += len(batch_rows)
    return rows


def via_copy(dsn: str) -> int:
    """psql's COPY TO STDOUT CSV as the owner: lines counted."""
    out = subprocess.run(
        ["psql", dsn, "-X", "-q", "-c", f"COPY ({OWNER_QUERY}) TO STDOUT CSV"],
        check=True,
        capture_output=True,
    ).stdout
    return out.count(b"\n")


def start_api(dsn: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LINKPULSE_DATABASE_URL": dsn,
        "LINKPULSE_AUTH": "off",
        "LINKPULSE_SQL_LIMITS": "admin=3600/100000000",
        "LINKPULSE_REDIS_URL": REDIS_URL,
        "LINKPULSE_NATS_URL": NATS_URL,
        "LINKPULSE_REDIS_KEY_PREFIX": f"lpbench{port}:",
        "LINKPULSE_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "linkpulse", "serve", "--port", str(port)], env=env
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    msg = "the API did not start"
    raise RuntimeError(msg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="raw events in the store")
    ap.add_argument("--runs", type=int, default=3, help="runs per path (best is kept)")
    ap.add_argument("--port", type=int, default=18734)
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = ap.parse_args()

    print(f"load average before: {os.getloadavg()}", flush=True)
    name = f"lp_bench_sql_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{name}"))  # a URL: the API's setting
    settings = Settings()
    proc = None
    try:
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            if stored_tier(conn) is Tier.PLAIN_POSTGRES:
                with conn.transaction():
                    create_ahead(conn, days_ahead=1, now=END, days_back=31)
            roles.setup(
                conn, analyst_role=settings.analyst_role, sql_login=settings.analyst_sql_login
            )
            secret = roles.scope_secret(conn)
        print(f"loading {args.events:,} events ...", flush=True)
        load_raw(dsn, args.events)
        proc = start_api(dsn, args.port)
        base = f"http://127.0.0.1:{args.port}"
        fetch = Settings().sql_fetch_rows
        paths: dict[str, Callable[[], int]] = {
            f"psycopg, scoped session, server cursor ({fetch:,}/fetch)": lambda: via_psycopg(
                dsn, settings, secret, fetch
            ),
            "psql COPY TO STDOUT CSV (owner)": lambda: via_copy(dsn),
        }
        for fmt in ("jsonl", "csv", "parquet"):
            paths[f"POST /v1/sql format={fmt}"] = lambda fmt=fmt: via_api(base, fmt)
        results = interleaved(paths, args.runs)
        baseline = next(iter(results.values()))
        base_rate = baseline[0] / baseline[1]
        copy_rows, copy_s = results["psql COPY TO STDOUT CSV (owner)"]
        copy_rate = copy_rows / copy_s
        print(f"\n{baseline[0]:,} rows per read, best of {args.runs}:")
        for label, (rows, secs) in results.items():
            rate = rows / secs
            print(
                f"  {label:<48} {rows:>9,} rows {secs:>7.2f} s {rate:>10,.0f} rows/s "
                f"({rate / base_rate:.2f}x psycopg, {rate / copy_rate:.2f}x COPY)"
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if not args.keep:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
