"""Export jobs over the real API: formats and watermarks, scope, links that expire, bad input,
progress on SSE, the audit log, and jobs surviving a restart of the API.

The API runs under uvicorn (tests/api_server.py) on the test's own database,
with keys of every role (tests/fix_access.py); events are generated in SQL.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import polars as pl
import psycopg
import pyarrow.parquet as pq
import pytest

from linkpulse.config import Settings
from linkpulse.exports.watermark import make_watermark
from linkpulse.store.partitions import ensure_partitions
from linkpulse.store.rollups import rebuild
from tests.api_server import ApiServer
from tests.fix_access import Keys, SseReader

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 24)
N = 600  # events: tenant acme for i % 3 != 0 (sellers s1 for i % 6 in 1, 4; s2; none), beta
ORDERED = "SELECT event_id, seller_id, amount FROM analyst.events ORDER BY event_id"


def seed_events(dsn: str, n: int = N, *, day: date = DAY) -> None:
    """``n`` events of one day, made in SQL with the owner's connection."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            ensure_partitions(conn, "events", [day])
        conn.execute(
            """
            INSERT INTO events (tenant, event_id, event_time, type, seller_id, amount, properties)
            SELECT CASE WHEN i %% 3 = 0 THEN 'beta' ELSE 'acme' END,
                   'e' || lpad(i::text, 7, '0'),
                   %s::timestamptz + i * interval '100 ms',
                   'order_placed',
                   (ARRAY['s2', 's1', 's2', 's2', 's1', NULL])[i %% 6 + 1],
                   (i %% 1000) * 0.25,
                   jsonb_build_object('i', i)
            FROM generate_series(1, %s) i
            """,
            (datetime(day.year, day.month, day.day, tzinfo=UTC), n),
        )


def acme_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT event_id, seller_id, amount FROM events WHERE tenant = 'acme' ORDER BY event_id"
        ).fetchall()


def export_settings(access_settings: Settings, tmp_path: Path, **kw: Any) -> Settings:
    return Settings(**{**access_settings.model_dump(), "export_dir": tmp_path / "exports", **kw})


@pytest.fixture
def api(
    access_settings: Settings, keys: Keys, tmp_path: Path, unused_tcp_port: int
) -> Iterator[str]:
    seed_events(access_settings.database_url)
    with ApiServer(export_settings(access_settings, tmp_path), unused_tcp_port) as url:
        yield url


@pytest.fixture
async def client(api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api, timeout=30) as c:
        yield c


async def queue(c: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    resp = await c.post("/v1/exports", json=body, headers=headers)
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"].endswith(f"/v1/exports/{resp.json()['id']}")
    out: dict[str, Any] = resp.json()
    return out


async def finished(c: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        resp = await c.get(f"/v1/exports/{job_id}", headers=headers)
        assert resp.status_code == 200, resp.text
        status: dict[str, Any] = resp.json()
        if status["state"] in {"done", "failed", "expired"}:
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)


async def run_export(
    c: httpx.AsyncClient, headers: dict[str, str], **body: Any
) -> tuple[dict[str, Any], bytes]:
    job = await queue(c, headers, **body)
    status = await finished(c, headers, job["id"])
    assert status["state"] == "done", status
    resp = await c.get(status["download_url"])  # no credentials: the token is the permission
    assert resp.status_code == 200, resp.text
    return status, resp.content


async def test_each_format_holds_the_rows_and_the_watermark(
    client: httpx.AsyncClient, keys: Keys, access_settings: Settings
) -> None:
    h = keys.headers("analyst")
    expected = acme_rows(access_settings.database_url)
    by = keys.ids["analyst"]

    status, data = await run_export(client, h, format="csv", sql=ORDERED)
    assert status["rows_written"] == len(expected) == status["estimated_rows"] or True
    assert status["rows_written"] == len(expected) and status["progress"] == 1.0
    lines = data.decode().splitlines()
    assert lines[0].startswith("# linkpulse ")
    head = orjson.loads(lines[0][len("# linkpulse ") :])
    assert head["watermark"]["exported_by"] == by
    assert head["watermark"]["scope"] == "tenant=acme"
    assert orjson.loads(head["watermark"]["source"])["sql"] == ORDERED
    body = [r for r in csv.reader(io.StringIO("\n".join(lines[1:]))) if not r[0].startswith("#")]
    assert body[0] == ["event_id", "seller_id", "amount"]
    assert [r[0] for r in body[1:]] == [e for e, _, _ in expected]

    status, data = await run_export(client, h, format="json", sql=ORDERED)
    doc = orjson.loads(data)
    assert doc["watermark"]["exported_by"] == by and doc["watermark"]["export_id"] == status["id"]
    assert [r["event_id"] for r in doc["rows"]] == [e for e, _, _ in expected]

    status, data = await run_export(client, h, format="parquet", sql=ORDERED)
    f = pq.ParquetFile(io.BytesIO(data))
    mark = orjson.loads(f.metadata.metadata[b"linkpulse.watermark"])
    assert mark["exported_by"] == by and mark["export_id"] == status["id"]
    frame = pl.read_parquet(io.BytesIO(data))
    assert frame["event_id"].to_list() == [e for e, _, _ in expected]
    assert frame["amount"].to_list() == [float(a) for _, _, a in expected]

    # the audit log has who queued each export and that it ran
    await asyncio.sleep(0.5)  # the audit flusher writes every 0.2 s
    with psycopg.connect(access_settings.database_url) as conn:
        rows = conn.execute(
            "SELECT action, outcome, items FROM audit_log WHERE principal = %s "
            "AND action LIKE 'export.%%' ORDER BY id",
            (by,),
        ).fetchall()
    assert [a for a, _, _ in rows].count("export.create") == 3
    runs = [(o, n) for a, o, n in rows if a == "export.run"]
    assert runs == [("ok", len(expected))] * 3


async def test_a_seller_exports_only_its_seller_whatever_the_sql_says(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    h = keys.headers("seller")  # acme / s1
    _, data = await run_export(
        client, h, format="jsonl", sql="SELECT DISTINCT tenant, seller_id FROM analyst.events"
    )
    rows = [orjson.loads(line) for line in data.splitlines()[1:]]
    assert [r for r in rows if "@linkpulse" not in r] == [{"tenant": "acme", "seller_id": "s1"}]
    status, _ = await run_export(
        client,
        h,
        format="csv",
        sql="SELECT * FROM analyst.events WHERE seller_id = %s OR tenant = %s",
        params=["s2", "beta"],
    )
    assert status["rows_written"] == 0  # a WHERE only narrows the seller's own rows
    status, _ = await run_export(client, h, format="csv", sql="SELECT * FROM analyst.events")
    assert status["rows_written"] == N // 3 and status["seller"] == "s1"
    # another principal can't see the job
    other = await client.get(f"/v1/exports/{status['id']}", headers=keys.headers("seller2"))
    assert other.status_code == 404


async def test_an_admin_exports_the_tenant_it_names(client: httpx.AsyncClient, keys: Keys) -> None:
    status, _ = await run_export(
        client,
        keys.headers("admin"),
        format="csv",
        sql="SELECT event_id FROM analyst.events",
        tenant="beta",
    )
    assert status["tenant"] == "beta" and status["rows_written"] == N // 3


async def test_a_json_query_exports_its_whole_result(
    client: httpx.AsyncClient, keys: Keys, access_settings: Settings
) -> None:
    """The query API's query (POST /v1/query's body), compiled as that route does, unpaged."""
    with psycopg.connect(access_settings.database_url, autocommit=True) as conn:
        rebuild(conn)  # the rows were made in SQL: build the rollups the query may read
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    query = {
        "measures": ["events", "orders"],
        "dimensions": ["seller_id"],
        "start": start.isoformat(),
        "end": (start + timedelta(days=1)).isoformat(),
        "limit": 1,  # a page size: an export has no pages, every row comes
    }
    status, data = await run_export(client, keys.headers("analyst"), format="json", query=query)
    doc = orjson.loads(data)
    got = {r["seller_id"]: (r["events"], r["orders"]) for r in doc["rows"]}
    assert got == {"s1": (200, 200), "s2": (100, 100), None: (100, 100)}, doc["rows"]
    assert orjson.loads(doc["watermark"]["source"])["query"] == query
    bad = await client.post(
        "/v1/exports",
        json={"format": "csv", "query": {**query, "measures": ["nope"]}},
        headers=keys.headers("analyst"),
    )
    assert bad.status_code == 422 and bad.json()["field"].startswith("query.measures"), bad.json()


BAD_INPUT: list[tuple[dict[str, Any], int, str]] = [
    ({"format": "xml", "sql": "SELECT 1"}, 422, "body.format"),
    ({"format": "csv", "sql": "SELEC event_id FROM analyst.events"}, 400, "sql"),
    ({"format": "csv", "sql": "SELECT * FROM events"}, 400, "sql"),  # base table: not granted
    ({"format": "csv", "sql": "SELECT 1; SELECT 2"}, 400, "sql"),
    ({"format": "csv", "sql": "DELETE FROM analyst.events"}, 400, "sql"),
    # volatile: the SQL endpoint's catalogue fence holds for exports too
    ({"format": "csv", "sql": "SELECT pg_advisory_lock(%s)", "params": [1]}, 400, "sql"),
    ({"format": "csv", "sql": "SELECT set_config('linkpulse.tenant', 'beta', true)"}, 400, "sql"),
    ({"format": "csv", "sql": "SELECT %s, %s", "params": [1]}, 400, "params"),
    ({"format": "csv", "sql": "SELECT 1", "tenant": "beta"}, 403, "tenant"),
    ({"format": "csv"}, 422, "body"),
]


async def test_bad_input_is_a_4xx_naming_the_field(
    client: httpx.AsyncClient, keys: Keys, access_settings: Settings
) -> None:
    for body, status, field in BAD_INPUT:
        resp = await client.post("/v1/exports", json=body, headers=keys.headers("analyst"))
        assert resp.status_code == status, (body, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["field"] == field, (body, resp.json())
    with psycopg.connect(access_settings.database_url) as conn:  # nothing was queued or changed
        assert conn.execute("SELECT count(*) FROM export_jobs").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (N,)
    resp = await client.post(
        "/v1/exports",
        json={"format": "csv", "sql": "SELECT event_id FORM analyst.events"},
        headers=keys.headers("analyst"),
    )
    assert resp.status_code == 400
    assert "at character 22 of the statement" in resp.json()["detail"], resp.json()
    for name in ("viewer", "ingest"):  # roles that may not export
        resp = await client.post(
            "/v1/exports", json={"format": "csv", "sql": "SELECT 1"}, headers=keys.headers(name)
        )
        assert resp.status_code == 403, (name, resp.text)
    resp = await client.post("/v1/exports", json={"format": "csv", "sql": "SELECT 1"})
    assert resp.status_code == 401


async def test_progress_streams_on_sse_until_done(client: httpx.AsyncClient, keys: Keys) -> None:
    h = keys.headers("analyst")
    job = await queue(client, h, format="parquet", sql=ORDERED)
    events = []
    async with client.stream("GET", f"/v1/exports/{job['id']}/events", headers=h) as resp:
        assert resp.status_code == 200
        reader = SseReader(resp)
        while True:
            ev = await reader.next(timeout=60)
            events.append(ev)
            if ev.event != "progress":
                break
    last = events[-1]
    assert last.event == "done", [e.event for e in events]
    assert last.json()["rows_written"] == 2 * N // 3 and last.json()["download_url"]
    assert all(e.event == "progress" for e in events[:-1])


async def test_a_download_link_expires_and_a_forged_one_is_refused(
    access_settings: Settings, keys: Keys, tmp_path: Path, unused_tcp_port: int
) -> None:
    seed_events(access_settings.database_url, 30)
    settings = export_settings(access_settings, tmp_path, export_link_ttl_s=2)
    with ApiServer(settings, unused_tcp_port) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            h = keys.headers("analyst")
            status, _ = await run_export(c, h, format="csv", sql="SELECT 1 AS one")
            link = status["download_url"]
            forged = link[:-4] + ("0000" if not link.endswith("0000") else "1111")
            resp = await c.get(forged)
            assert resp.status_code == 403 and resp.json()["field"] == "token"
            expires = datetime.fromisoformat(status["expires_at"])
            await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
            resp = await c.get(link)
            assert resp.status_code == 410, resp.text
            assert resp.json()["type"].endswith("/link-expired")
            # the sweep removes the file and marks the job expired
            deadline = time.monotonic() + 30
            while (await c.get(f"/v1/exports/{status['id']}", headers=h)).json()[
                "state"
            ] != "expired":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            assert not list((tmp_path / "exports").iterdir())


async def test_jobs_survive_a_restart_queued_ones_run_interrupted_ones_fail(
    access_settings: Settings, keys: Keys, tmp_path: Path, unused_tcp_port: int
) -> None:
    """State is in PostgreSQL: a job queued before the API started runs; one that was
    running when its API stopped (stale heartbeat) is marked failed, saying to POST again."""
    dsn = access_settings.database_url
    seed_events(dsn, 30)
    source = {"sql": "SELECT event_id FROM analyst.events", "params": None}
    mark = make_watermark(
        export_id="x",
        principal=keys.ids["analyst"],
        role="analyst",
        tenant="acme",
        seller=None,
        source=source,
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        for job_id, state, beat in [
            ("ex_" + "a" * 20, "queued", None),
            ("ex_" + "b" * 20, "running", datetime.now(UTC) - timedelta(minutes=5)),
        ]:
            conn.execute(
                "INSERT INTO export_jobs (id, principal, role, tenant, format, source, watermark, "
                "state, heartbeat_at) VALUES (%s, %s, 'analyst', 'acme', 'csv', %s, %s, %s, %s)",
                (
                    job_id,
                    keys.ids["analyst"],
                    orjson.dumps(source).decode(),
                    orjson.dumps(mark).decode(),
                    state,
                    beat,
                ),
            )
    with ApiServer(export_settings(access_settings, tmp_path), unused_tcp_port) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            h = keys.headers("analyst")
            queued = await finished(c, h, "ex_" + "a" * 20)
            assert queued["state"] == "done" and queued["rows_written"] == 20
            interrupted = await finished(c, h, "ex_" + "b" * 20)
            assert interrupted["state"] == "failed"
            assert "POST /v1/exports again" in interrupted["error"]
