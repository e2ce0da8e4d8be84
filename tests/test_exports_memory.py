"""An export of 1 million rows runs in bounded memory, and its Parquet file reads back equal.

``linkpulse export`` (the same stream as the API's jobs) runs in a subprocess
that reports its own peak RSS (``resource.getrusage``) at exit. The bound is
relative to the same command exporting one row, measured in the same run: the
1M rows may add at most ``EXTRA_MB``. A non-streaming export breaks it: 1M
rows of 4 columns held as Python tuples take ~350 MB (~350 bytes a row:
the tuple, a str, a datetime, a Decimal and a str), before any encoding.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal

from linkpulse.config import Settings
from linkpulse.store.partitions import ensure_partitions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 1_000_000
EXTRA_MB = 150
START = datetime(2026, 11, 20, tzinfo=UTC)
STATEMENT = "SELECT event_id, event_time, seller_id, amount FROM analyst.events ORDER BY event_id"
# Runs the CLI, then prints the process's own peak RSS (KiB on Linux) on stderr at exit.
PROBE = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: print('PEAK_RSS_KB', "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
    "from linkpulse.cli import main\n"
    "sys.argv = ['linkpulse', *sys.argv[1:]]\n"
    "main()\n"
)


def _export(dsn: str, statement: str, out: Path) -> int:
    """Run ``linkpulse export`` to Parquet; return its peak RSS in MiB."""
    env = {**os.environ, "LINKPULSE_DATABASE_URL": dsn, "COLUMNS": "120"}
    cmd = [sys.executable, "-c", PROBE, "export", statement, "--tenant", "acme"]
    cmd += ["--format", "parquet", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    return int(peak[-1].split()[1]) // 1024


def test_a_million_row_export_is_bounded_in_memory_and_reads_back_equal(
    access_settings: Settings, tmp_path: Path
) -> None:
    dsn = access_settings.database_url
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            ensure_partitions(conn, "events", [START.date() + timedelta(days=d) for d in range(2)])
        conn.execute(
            "INSERT INTO events (tenant, event_id, event_time, type, seller_id, amount) "
            "SELECT 'acme', 'e' || lpad(i::text, 7, '0'), %s + i * interval '100 ms', "
            "'order_placed', 's' || (i %% 50), (i %% 10000) * 0.01 "
            "FROM generate_series(1, %s) i",
            (START, ROWS),
        )
    small = _export(dsn, STATEMENT + " LIMIT 1", tmp_path / "one.parquet")
    big = _export(dsn, STATEMENT, tmp_path / "all.parquet")
    print(f"peak RSS: 1 row {small} MiB, {ROWS:,} rows {big} MiB")
    assert big - small < EXTRA_MB, f"1M rows took {big - small} MiB more than 1 row"

    got = pl.read_parquet(tmp_path / "all.parquet").with_columns(
        pl.col("event_time").dt.epoch("us")
    )
    buf = io.BytesIO()
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        copy_sql = (
            "COPY (SELECT event_id, (extract(epoch FROM event_time) * 1000000)::bigint "
            "AS event_time, seller_id, amount::float8 AS amount FROM events ORDER BY event_id) "
            "TO STDOUT (FORMAT csv, HEADER)"
        )
        with cur.copy(copy_sql) as copy:
            for chunk in copy:
                buf.write(chunk)
    want = pl.read_csv(buf.getvalue(), schema=got.schema)
    assert got.height == ROWS
    assert_frame_equal(got, want)
