"""Archiving before retention, on both store lanes: archive, verify, drop, restore equal.

``linkpulse db maintain`` (``run_once``) with ``LINKPULSE_ARCHIVE_TARGET`` set
writes each partition/chunk entirely past the raw horizon to Parquet with a
manifest, then drops only the pieces whose archive checks out;
``linkpulse db restore-archive`` loads them back, idempotently. The S3 side of
``ArchiveTarget`` (pyarrow.fs ``S3FileSystem``) is exercised against a real
S3-compatible HTTP server on loopback: moto's server (``moto[server]``, dev
extra) run as its own process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pyarrow.parquet as pq
import pytest

from linkpulse.config import load_settings
from linkpulse.store import EventWriter, Tier, migrate, run_once, stored_tier
from linkpulse.store.archive import (
    Archiver,
    ArchiveTarget,
    Manifest,
    Piece,
    archiver_of,
    horizons_of,
    restore,
)
from linkpulse.store.retention import apply_retention
from linkpulse.store.tiers import compress_old_chunks
from tests.test_store_writer import make_events

pytestmark = pytest.mark.integration

COLUMNS = (
    "tenant, event_id, event_time, type, user_id, seller_id, amount, currency, properties, "
    "schema_version, ingested_at"
)


def rows_before(conn: psycopg.Connection, t: datetime) -> list[tuple[Any, ...]]:
    return conn.execute(
        f"SELECT {COLUMNS} FROM events WHERE event_time < %s ORDER BY tenant, event_time, event_id",
        (t,),
    ).fetchall()


def test_archive_verify_drop_and_restore_on_each_lane(lane_dsn: str, tmp_path: Path) -> None:
    migrate(lane_dsn)
    now = datetime.now(UTC)
    old = make_events(800, seed=51, start=now - timedelta(days=12), span_s=3 * 86400, prefix="o")
    recent = make_events(200, seed=52, start=now - timedelta(hours=6), span_s=3600)
    with EventWriter(lane_dsn) as w:
        w.write_events(old + recent)
    horizon = now - timedelta(days=5)
    with psycopg.connect(lane_dsn, autocommit=True) as conn:
        tier = stored_tier(conn)
        assert tier is not None
        if tier is Tier.FULL_TIMESCALE:  # archives read compressed chunks too
            assert compress_old_chunks(conn, 1, raw_days=10_000, now=now)
        before = rows_before(conn, horizon)
        kept_recent = conn.execute(
            "SELECT count(*) FROM events WHERE event_time >= %s", (horizon,)
        ).fetchone()
    assert len(before) == 800
    archive = tmp_path / "archive"
    settings = load_settings(store_raw_retention_days=5, archive_target=str(archive))

    report = run_once(lane_dsn, settings, now=now)

    assert report.archive is not None and report.archive.rows == 800
    assert sorted(report.archive.archived) == sorted(
        d for d in report.retention.dropped if d in report.archive.archived
    )
    assert set(report.archive.archived) <= set(report.retention.dropped)
    assert report.retention.kept == []
    target = ArchiveTarget(str(archive))
    manifests = target.manifests("events")
    assert sum(m.rows for m in manifests) == 800
    for m in manifests:
        doc = orjson.loads((archive / m_folder(m) / "manifest.json").read_bytes())
        assert doc["range"]["start"] == m.start.isoformat() and doc["rows"] == m.rows
        assert doc["files"][0]["sha256"] == target.sha256(f"{m_folder(m)}/data.parquet")
        assert {c["name"]: c["pg_type"] for c in doc["schema"]}["amount"] == "numeric"
        data = pq.ParquetFile(archive / m_folder(m) / "data.parquet")
        assert data.metadata.num_rows == m.rows
        assert b"linkpulse.watermark" in data.metadata.metadata
    with psycopg.connect(lane_dsn, autocommit=True) as conn:
        assert rows_before(conn, horizon) == []
        assert (
            conn.execute(
                "SELECT count(*) FROM events WHERE event_time >= %s", (horizon,)
            ).fetchone()
            == kept_recent
        )
        if tier is Tier.FULL_TIMESCALE:  # the scheduler must not drop unarchived chunks
            assert conn.execute(
                "SELECT count(*) FROM timescaledb_information.jobs "
                "WHERE proc_name = 'policy_retention' AND hypertable_name = 'events'"
            ).fetchone() == (0,)

    # restore-archive brings the rows back, equal; a second run inserts nothing
    env = {**os.environ, "LINKPULSE_DATABASE_URL": lane_dsn, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "linkpulse", "db", "restore-archive", "--target", str(archive)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "800 row(s), 800 inserted" in done.stdout, done.stdout
    with psycopg.connect(lane_dsn, autocommit=True) as conn:
        assert rows_before(conn, horizon) == before
        again = restore(conn, target, "events", tier)
    assert (again.rows_read, again.rows_inserted) == (800, 0)


def m_folder(m: Manifest) -> str:
    return Piece(m.table, m.piece, m.start, m.end).folder


def test_a_piece_whose_archive_does_not_check_out_is_not_dropped(
    pg_dsn: str, tmp_path: Path
) -> None:
    """A late row after the archive, or a damaged file: the drop stops for that piece."""
    migrate(pg_dsn, tier="plain")
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    old = make_events(300, seed=53, start=now - timedelta(days=9), span_s=2 * 86400, prefix="o")
    with EventWriter(pg_dsn) as w:
        w.write_events(old)
    settings = load_settings(store_raw_retention_days=5, archive_target=str(tmp_path / "a"))
    archiver = archiver_of(settings)
    assert isinstance(archiver, Archiver)
    horizons = horizons_of(now, raw_days=5, rollup_days=730)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        done = archiver.archive_due(conn, Tier.PLAIN_POSTGRES, horizons)
        assert len(done.archived) >= 2 and done.rows == 300
        late, damaged = sorted(done.archived)[:2]
        day = datetime.strptime(late[-8:], "%Y%m%d").replace(tzinfo=UTC)
        conn.execute(
            "INSERT INTO events (tenant, event_id, event_time, type) "
            "VALUES ('acme', 'late-1', %s, 'page_view')",
            (day + timedelta(hours=3),),
        )
        piece_folder = next(
            m_folder(m) for m in archiver.target.manifests("events") if m.piece == damaged
        )
        with (tmp_path / "a" / piece_folder / "data.parquet").open("ab") as f:
            f.write(b"x")  # the file no longer has the size its manifest records
        with conn.transaction():
            report = apply_retention(
                conn, Tier.PLAIN_POSTGRES, raw_days=5, rollup_days=730, now=now, archive=archiver
            )
        kept = dict(k.split(": ", 1) for k in report.kept)
        assert set(kept) == {late, damaged}, report.kept
        assert "rows in the store" in kept[late] and "bytes" in kept[damaged]
        assert late not in report.dropped and damaged not in report.dropped
        assert conn.execute("SELECT count(*) FROM events WHERE event_id = 'late-1'").fetchone() == (
            1,
        )
    # the next maintain pass archives them again, and then drops them
    second = run_once(pg_dsn, settings, now=now)
    assert second.archive is not None and {late, damaged} <= set(second.archive.archived)
    assert {late, damaged} <= set(second.retention.dropped) and second.retention.kept == []


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``host:port`` of a moto S3 server process on loopback, with a bucket ``lp-archive``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # until it answers (its start-up time is not what is tested)
            assert proc.poll() is None, f"moto server exited: {proc.communicate()[1][-2000:]!r}"
            try:
                httpx.get(base, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.put(f"{base}/lp-archive").status_code == 200  # CreateBucket
        for name, value in [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]:
            monkeypatch.setenv(name, value)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_archive_and_restore_through_an_s3_server(pg_dsn: str, s3_endpoint: str) -> None:
    """``s3://`` targets: archive, verify, drop and restore through S3's HTTP API."""
    migrate(pg_dsn, tier="plain")
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    old = make_events(300, seed=54, start=now - timedelta(days=9), span_s=2 * 86400, prefix="o")
    with EventWriter(pg_dsn) as w:
        w.write_events(old)
    uri = f"s3://lp-archive/arch?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    settings = load_settings(store_raw_retention_days=5, archive_target=uri)
    horizon = now - timedelta(days=5)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        before = rows_before(conn, horizon)
    assert len(before) == 300

    report = run_once(pg_dsn, settings, now=now)

    assert report.archive is not None and report.archive.rows == 300
    assert report.archive.archived and set(report.archive.archived) <= set(report.retention.dropped)
    assert report.retention.kept == []
    # the objects are in the bucket, as S3 lists them
    listing = httpx.get(f"http://{s3_endpoint}/lp-archive?list-type=2&prefix=arch/events/").text
    for name in report.archive.archived:
        day = name[-8:]
        assert f"arch/events/{day}T000000Z_" in listing, listing[:2000]
    assert listing.count("manifest.json") == len(report.archive.archived)
    target = ArchiveTarget(uri)
    manifests = target.manifests("events")
    assert sum(m.rows for m in manifests) == 300
    for m in manifests:
        assert target.sha256(f"{m_folder(m)}/data.parquet") == m.sha256
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert rows_before(conn, horizon) == []
        back = restore(conn, target, "events", Tier.PLAIN_POSTGRES)
        assert (back.rows_read, back.rows_inserted) == (300, 300)
        assert rows_before(conn, horizon) == before
