"""Backfill of NDJSON and Parquet through the writer, and the `linkpulse db` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import polars as pl
import psycopg
import pytest

from linkpulse.config import load_settings
from linkpulse.privacy.pseudonym import Pseudonymiser
from linkpulse.schemas import encode_event
from linkpulse.schemas.events import BaseEvent
from linkpulse.store import EventWriter, migrate, run_once
from linkpulse.store.backfill import backfill, raw_cutoff
from linkpulse.store.capabilities import server_tier
from tests.test_store_writer import make_events

RECENT = datetime.now(UTC) - timedelta(days=2)  # well inside any raw horizon


def write_ndjson(path: Path, n: int, *, old: Sequence[BaseEvent] = ()) -> None:
    lines = [encode_event(e) for e in make_events(n, seed=21, start=RECENT)]
    lines += [encode_event(e) for e in old]
    lines.insert(3, b'{"type": "order_placed", "event_id": "bad1", "tenant": "acme"}')
    lines.insert(10, b"not json at all")
    lines.insert(11, b"")
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_ndjson_backfill_reports_bad_lines_and_goes_on(lane_dsn: str, tmp_path: Path) -> None:
    migrate(lane_dsn)
    path = tmp_path / "events.ndjson"
    write_ndjson(path, 500)
    progress: list[tuple[int, int]] = []
    with EventWriter(lane_dsn) as w:
        report = backfill(path, w, batch_size=100, on_progress=lambda d, t: progress.append((d, t)))
        again = backfill(path, w, batch_size=100)
    assert report.read == 502 and report.inserted == 500 and report.too_old == 0
    assert [(i.line, i.field) for i in report.invalid] == [(4, "user_id"), (11, "$")]
    assert again.inserted == 0  # a second load of the same file stores nothing new
    assert progress[-1][0] == progress[-1][1] == path.stat().st_size
    with psycopg.connect(lane_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (500,)
        rows = conn.execute(
            "SELECT sequence, field, source FROM dead_letters ORDER BY id LIMIT 2"
        ).fetchall()
    assert rows == [(4, "user_id", "backfill:events.ndjson"), (11, "$", "backfill:events.ndjson")]


def test_parquet_backfill(lane_dsn: str, tmp_path: Path) -> None:
    migrate(lane_dsn)
    events = [orjson.loads(encode_event(e)) for e in make_events(300, seed=22, start=RECENT)]
    for e in events:
        e["properties"] = orjson.dumps(e.get("properties", {})).decode()
    events[5]["tenant"] = "NOT A SLUG"
    path = tmp_path / "events.parquet"
    # free-form properties are kept as JSON text in Parquet
    pl.DataFrame(events, infer_schema_length=None).write_parquet(path)
    with EventWriter(lane_dsn) as w:
        report = backfill(path, w, batch_size=64)
    assert report.read == 300 and report.inserted == 299
    assert [(i.line, i.field) for i in report.invalid] == [(6, "tenant")]


def test_unknown_file_kind_is_refused(pg_dsn: str, tmp_path: Path) -> None:
    p = tmp_path / "events.csv"
    p.write_text("a,b\n")
    with EventWriter(pg_dsn) as w, pytest.raises(ValueError, match="ndjson"):
        backfill(p, w)


def test_backfill_refuses_events_outside_the_raw_horizon_and_its_report_holds(
    lane_dsn: str, tmp_path: Path
) -> None:
    """Issue 9 §2.2: what the report says stored is still stored after retention ran."""
    migrate(lane_dsn)
    now = datetime.now(UTC)
    old = make_events(300, seed=46, start=now - timedelta(days=9), span_s=3 * 86400, prefix="o")
    new = make_events(300, seed=47, start=now - timedelta(days=3), span_s=2 * 86400)
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(b"\n".join(encode_event(e) for e in old + new) + b"\n")
    with EventWriter(lane_dsn) as w:
        report = backfill(path, w, raw_days=5, now=now)
    assert report.cutoff == raw_cutoff(5, now) == now - timedelta(days=4)
    assert report.read == 600 and report.too_old == 300 and report.inserted == 300
    run_once(lane_dsn, load_settings(store_raw_retention_days=5), now=now)
    with psycopg.connect(lane_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (report.inserted,)
        assert conn.execute("SELECT count(*) FROM events WHERE event_id LIKE 'o%%'").fetchone() == (
            0,
        )


CLI = "import sys; from linkpulse.cli import main; sys.argv[0] = 'linkpulse'; main()"


def run_cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LINKPULSE_DATABASE_URL": dsn}
    env.pop("LINKPULSE_STORE_TIER", None)
    return subprocess.run(
        [sys.executable, "-c", CLI, "db", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli_migrate_status_backfill_maintain(lane_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(lane_dsn) as conn:
        tier = server_tier(conn)  # what migrate will pick
    st = run_cli(lane_dsn, "status")
    assert st.returncode == 0, st.stderr
    assert "│ pending │" in st.stdout and "not migrated" in st.stdout
    out = run_cli(lane_dsn, "migrate")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "applied 0001_core" in out.stdout and f"tier {tier.value}" in out.stdout
    st = run_cli(lane_dsn, "status")
    assert "│ applied │" in st.stdout and "│ pending │" not in st.stdout
    assert f"tier in use: {tier.value}" in st.stdout
    path = tmp_path / "e.ndjson"
    old = make_events(5, seed=48, start=datetime.now(UTC) - timedelta(days=3650), prefix="o")
    write_ndjson(path, 50, old=old)
    bf = run_cli(lane_dsn, "backfill", str(path))
    assert bf.returncode == 0, bf.stdout + bf.stderr
    assert "line 4" in bf.stdout and "user_id" in bf.stdout
    assert "stored 50 new, 2 invalid" in bf.stdout
    assert "5 event(s) before" in bf.stdout and "not loaded" in bf.stdout
    mt = run_cli(lane_dsn, "maintain")
    assert mt.returncode == 0 and f"tier {tier.value}" in mt.stdout, mt.stdout + mt.stderr
    missing = run_cli(lane_dsn, "backfill", str(tmp_path / "nope.ndjson"))
    assert missing.returncode != 0


def test_backfill_pseudonymises_the_configured_pii_fields(pg_dsn: str, tmp_path: Path) -> None:
    migrate(pg_dsn)
    path = tmp_path / "events.ndjson"
    write_ndjson(path, 50)
    raw_users = {e.user_id for e in make_events(50, seed=21, start=RECENT)} - {None}
    p = Pseudonymiser(b"k" * 16, "user_id")
    with EventWriter(pg_dsn) as w:
        report = backfill(path, w, pseudonymiser=p)
    assert report.inserted == 50
    with psycopg.connect(pg_dsn) as conn:
        stored = {u for (u,) in conn.execute("SELECT user_id FROM events").fetchall()}
        letters = conn.execute("SELECT payload::text FROM dead_letters").fetchall()
    assert stored == {p.events([e])[0].user_id for e in make_events(50, seed=21, start=RECENT)}
    assert not stored & raw_users  # no raw id stored
    assert raw_users and letters
    assert not any(f'"{u}"' in text for (text,) in letters for u in raw_users)
