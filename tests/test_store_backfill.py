"""Backfill of NDJSON and Parquet through the writer, and the `linkpulse db` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import polars as pl
import psycopg
import pytest

from linkpulse.schemas import encode_event
from linkpulse.store import EventWriter, migrate
from linkpulse.store.backfill import backfill
from tests.test_store_writer import make_events


def write_ndjson(path: Path, n: int) -> None:
    lines = [encode_event(e) for e in make_events(n, seed=21)]
    lines.insert(3, b'{"type": "order_placed", "event_id": "bad1", "tenant": "acme"}')
    lines.insert(10, b"not json at all")
    lines.insert(11, b"")
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_ndjson_backfill_reports_bad_lines_and_goes_on(pg_dsn: str, tmp_path: Path) -> None:
    migrate(pg_dsn)
    path = tmp_path / "events.ndjson"
    write_ndjson(path, 500)
    progress: list[tuple[int, int]] = []
    with EventWriter(pg_dsn) as w:
        report = backfill(path, w, batch_size=100, on_progress=lambda d, t: progress.append((d, t)))
        again = backfill(path, w, batch_size=100)
    assert report.read == 502 and report.inserted == 500
    assert [(i.line, i.field) for i in report.invalid] == [(4, "user_id"), (11, "$")]
    assert again.inserted == 0  # a second load of the same file stores nothing new
    assert progress[-1][0] == progress[-1][1] == path.stat().st_size
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (500,)
        rows = conn.execute(
            "SELECT sequence, field, source FROM dead_letters ORDER BY id LIMIT 2"
        ).fetchall()
    assert rows == [(4, "user_id", "backfill:events.ndjson"), (11, "$", "backfill:events.ndjson")]


def test_parquet_backfill(pg_dsn: str, tmp_path: Path) -> None:
    migrate(pg_dsn)
    events = [orjson.loads(encode_event(e)) for e in make_events(300, seed=22)]
    for e in events:
        e["properties"] = orjson.dumps(e.get("properties", {})).decode()
    events[5]["tenant"] = "NOT A SLUG"
    path = tmp_path / "events.parquet"
    # free-form properties are kept as JSON text in Parquet
    pl.DataFrame(events, infer_schema_length=None).write_parquet(path)
    with EventWriter(pg_dsn) as w:
        report = backfill(path, w, batch_size=64)
    assert report.read == 300 and report.inserted == 299
    assert [(i.line, i.field) for i in report.invalid] == [(6, "tenant")]


def test_unknown_file_kind_is_refused(pg_dsn: str, tmp_path: Path) -> None:
    p = tmp_path / "events.csv"
    p.write_text("a,b\n")
    with EventWriter(pg_dsn) as w, pytest.raises(ValueError, match="ndjson"):
        backfill(p, w)


CLI = "import sys; from linkpulse.cli import main; sys.argv[0] = 'linkpulse'; main()"


def run_cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    p = psycopg.conninfo.conninfo_to_dict(dsn)
    url = (
        f"postgresql://{p.get('user', 'postgres')}@{p['host']}:{p.get('port', 5432)}/{p['dbname']}"
    )
    env = {**os.environ, "LINKPULSE_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-c", CLI, "db", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli_migrate_status_backfill_maintain(pg_dsn: str, tmp_path: Path) -> None:
    st = run_cli(pg_dsn, "status")
    assert st.returncode == 0, st.stderr
    assert "│ pending │" in st.stdout and "not migrated" in st.stdout
    out = run_cli(pg_dsn, "migrate")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "applied 0001_core" in out.stdout and "tier plain" in out.stdout
    st = run_cli(pg_dsn, "status")
    assert "│ applied │" in st.stdout and "│ pending │" not in st.stdout
    assert "tier in use: plain" in st.stdout
    path = tmp_path / "e.ndjson"
    write_ndjson(path, 50)
    bf = run_cli(pg_dsn, "backfill", str(path))
    assert bf.returncode == 0, bf.stdout + bf.stderr
    assert "line 4" in bf.stdout and "user_id" in bf.stdout
    assert "stored 50 new, 2 invalid" in bf.stdout
    mt = run_cli(pg_dsn, "maintain")
    assert mt.returncode == 0 and "tier plain" in mt.stdout
    missing = run_cli(pg_dsn, "backfill", str(tmp_path / "nope.ndjson"))
    assert missing.returncode != 0
