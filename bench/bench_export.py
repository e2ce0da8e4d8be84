"""Export benchmark: ``linkpulse export`` of N events to Parquet, time and peak memory.

Run: ``.venv/bin/python -m bench.bench_export [--rows 10000000] [--compare-rows 1000000]
[--formats parquet,csv] [--rounds 2]``

On a fresh database of the server of ``LINKPULSE_TEST_DATABASE_URL`` (dropped
at the end), with the analyst roles set up: ``--rows`` events over 10 days are
made in SQL (generate_series), then, each in a subprocess that reports its own
peak RSS (``resource.getrusage``) and timed from the outside:

1. ``linkpulse export "SELECT * FROM analyst.events" --format parquet`` (and
   each of ``--formats``) of all rows: the scoped analyst session, a
   server-side cursor, Parquet row groups streamed to the file (the same
   stream as the API's export jobs);
2. baseline, same rows: ``COPY (SELECT * FROM events) TO STDOUT (FORMAT csv)``
   into a file (the server's own fastest way out, no scope, no types, CSV);
3. baseline, ``--compare-rows`` rows (default 1M): ``polars.read_database`` of
   the whole result then ``write_parquet`` (the non-streaming way), against
   ``linkpulse export`` of the same rows, for a like-for-like time and memory
   ratio.

The runs are interleaved (COPY, the exports, polars, the export it is compared
with), ``--rounds`` times, every other round in reverse order.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import psycopg
from psycopg import sql

from linkpulse.config import Settings
from linkpulse.store import migrate, roles
from linkpulse.store.partitions import ensure_partitions

ADMIN_DSN = os.environ.get(
    "LINKPULSE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
START = datetime(2026, 11, 10, tzinfo=UTC)
DAYS = 10
GENERATE = """
INSERT INTO events (tenant, event_id, event_time, type, user_id, seller_id, amount, currency,
                    properties)
SELECT 'acme', 'g' || g, %(start)s::timestamptz + (g::float8 / %(n)s) * interval '10 days',
       (ARRAY['page_view', 'order_placed', 'payment_settled', 'refund_issued'])[1 + g %% 4],
       'u' || (g %% 100000), 's' || (g %% 200), round(((g %% 50000) * 0.01)::numeric, 2), 'USD',
       jsonb_build_object('page', 'p' || (g %% 100))
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g
"""
# Every measured command starts with this: it prints its own peak RSS (KiB) when it exits.
PEAK = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: print('PEAK_RSS_KB', "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
)
MODULE = (
    "import runpy\nsys.argv = sys.argv[1:]\nrunpy.run_module(sys.argv[0], run_name='__main__')\n"
)
POLARS = (
    "import sys, polars as pl, psycopg\n"
    "conn = psycopg.connect(sys.argv[1])\n"
    "pl.read_database(sys.argv[2], conn).write_parquet(sys.argv[3])\n"
)
COPY = (
    "import sys, psycopg\n"
    "with psycopg.connect(sys.argv[1]) as c, c.cursor() as cur, open(sys.argv[3], 'wb') as f:\n"
    "    with cur.copy(f'COPY ({sys.argv[2]}) TO STDOUT (FORMAT csv, HEADER)') as cp:\n"
    "        for chunk in cp:\n"
    "            f.write(chunk)\n"
)


def measured(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run ``python -m <args>`` (or ``-c``); return (seconds, peak RSS MiB)."""
    if args[0] == "-c":
        cmd = [sys.executable, "-c", PEAK + args[1], *args[2:]]
    else:
        cmd = [sys.executable, "-c", PEAK + MODULE, *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        msg = f"{' '.join(args[:3])} failed:\n{done.stderr[-3000:]}"
        raise SystemExit(msg)
    peak = [ln for ln in done.stderr.splitlines() if ln.startswith("PEAK_RSS_KB")]
    return seconds, int(peak[-1].split()[1]) // 1024


def load(dsn: str, rows: int) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            ensure_partitions(
                conn, "events", [START.date() + timedelta(days=d) for d in range(DAYS + 1)]
            )
        step = 1_000_000
        for lo in range(1, rows + 1, step):
            conn.execute(
                GENERATE, {"start": START, "n": rows, "lo": lo, "hi": min(rows, lo + step - 1)}
            )
        conn.execute("VACUUM ANALYZE events")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--compare-rows", type=int, default=1_000_000)
    ap.add_argument("--formats", default="parquet", help="formats exported of all rows")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every run")
    args = ap.parse_args()
    name = f"lp_bench_export_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    try:
        migrate(dsn)
        fields = Settings.model_fields  # the default role names, as the CLI will use them
        with psycopg.connect(dsn, autocommit=True) as conn:
            roles.setup(
                conn,
                analyst_role=fields["analyst_role"].default,
                sql_login=fields["analyst_sql_login"].default,
            )
        print(f"loading {args.rows:,} events ... ", end="", flush=True)
        print(f"{load(dsn, args.rows):.1f} s")
        env = {**os.environ, "LINKPULSE_DATABASE_URL": dsn, "COLUMNS": "120"}
        query = "SELECT * FROM analyst.events"
        raw = "SELECT * FROM events"
        n = min(args.compare_rows, args.rows)
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        with TemporaryDirectory() as tmp:
            out = Path(tmp)
            runs: list[tuple[str, int, float, int, int]] = []

            def export(rows: int, fmt: str) -> None:
                q = query if rows >= args.rows else f"{query} LIMIT {rows}"
                f = out / f"export.{fmt}"
                s, mb = measured(
                    ["linkpulse", "export", q, "--tenant", "acme", "--format", fmt,
                     "--out", str(f)], env,
                )  # fmt: skip
                runs.append((f"linkpulse export ({fmt})", rows, s, mb, f.stat().st_size))
                f.unlink()

            def copy() -> None:
                f = out / "copy.csv"
                s, mb = measured(["-c", COPY, dsn, raw, str(f)], env)
                runs.append(("COPY TO CSV (baseline)", args.rows, s, mb, f.stat().st_size))
                f.unlink()

            def polars() -> None:
                f = out / "polars.parquet"
                s, mb = measured(["-c", POLARS, dsn, f"{raw} LIMIT {n}", str(f)], env)
                runs.append(("polars read_database+write_parquet", n, s, mb, f.stat().st_size))
                f.unlink()

            # Interleaved, each baseline next to what it is compared with; with --rounds 2
            # the second round runs in the opposite order, so a change of load shows.
            for r in range(args.rounds):
                steps: list[Any] = [copy, *(partial(export, args.rows, f) for f in formats)]
                if n < args.rows:
                    steps += [polars, partial(export, n, "parquet")]
                for step in steps if r % 2 == 0 else steps[::-1]:
                    step()
                    print(f"  {runs[-1][0]} {runs[-1][1]:,}: {runs[-1][2]:.1f} s, "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        print(f"\n{'run':<38} {'rows':>11} {'s':>8} {'rows/s':>10} {'peak MiB':>9} {'MB out':>8}")
        for label, rows, s, mb, size in runs:
            print(
                f"{label:<38} {rows:>11,} {s:>8.1f} {rows / s:>10,.0f} {mb:>9} {size / 1e6:>8.1f}"
            )

        def mean_s(label: str, rows: int) -> float:
            times = [s for lb, r, s, _, _ in runs if lb == label and r == rows]
            return sum(times) / len(times)

        copy_s = mean_s("COPY TO CSV (baseline)", args.rows)
        for f in formats:
            ours = mean_s(f"linkpulse export ({f})", args.rows)
            print(f"\nexport {f} vs COPY TO CSV, {args.rows:,} rows: time x{ours / copy_s:.2f}")
        if n < args.rows:
            ours_n = [x for x in runs if x[0] == "linkpulse export (parquet)" and x[1] == n]
            pol = [x for x in runs if x[0].startswith("polars")]
            print(
                f"export vs polars read_database+write_parquet, {n:,} rows: time "
                f"x{mean_s(ours_n[0][0], n) / mean_s(pol[0][0], n):.2f}, peak memory "
                f"x{max(x[3] for x in ours_n) / max(x[3] for x in pol):.2f}"
            )
        print(f"load average: {os.getloadavg()}")
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


if __name__ == "__main__":
    main()
