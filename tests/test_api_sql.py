"""The SQL endpoint over HTTP: the real API (auth on), real PostgreSQL with the analyst roles.

Each bad input is refused or cut with a 4xx problem (or an in-band summary for
the row cap) and the database is the same afterwards; a seller key never reads
another seller's rows whatever SQL it sends; JSON lines, CSV and Parquet answers
read back in polars equal to the owner's own read of the rows.
"""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta
from typing import Any

import httpx
import orjson
import polars as pl
import psycopg
import pyarrow.parquet as pq
import pytest

from linkpulse.config import Settings
from linkpulse.store import EventWriter, refresh
from tests.fix_access import Keys
from tests.test_store_writer import BASE, make_events

pytestmark = pytest.mark.integration

SEED = 1307
N_EVENTS = 1500
FETCH_ROWS = 200  # several batches per answer
LIMITS = "admin=60/1000000,analyst=60/1000000,seller=30/100000,operator=1/250"


@pytest.fixture
def access_settings(access_settings: Settings) -> Settings:
    """The access fixtures' settings with small batches, and the operator role's limits small
    enough to hit (1 s, 250 rows)."""
    return access_settings.model_copy(update={"sql_limits": LIMITS, "sql_fetch_rows": FETCH_ROWS})


@pytest.fixture
async def shttp(http: httpx.AsyncClient, access_settings: Settings) -> httpx.AsyncClient:
    """The API over a store of N_EVENTS events (tenants acme and globex), rolled up."""
    with EventWriter(access_settings.database_url) as w:
        w.write_events(make_events(N_EVENTS, seed=SEED, start=BASE))
    with psycopg.connect(access_settings.database_url, autocommit=True) as conn:
        refresh(conn)
        conn.execute("ANALYZE")
    return http


def _lines(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    return [orjson.loads(line) for line in resp.content.splitlines()]


def _rows(resp: httpx.Response) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(header, rows, summary) of a JSON lines answer."""
    lines = _lines(resp)
    head, *rows, tail = lines
    return head["@linkpulse"], rows, tail["@linkpulse"]["summary"]


async def _sql(
    http: httpx.AsyncClient, keys: Keys, who: str, sql: str, *params: Any, **kw: Any
) -> httpx.Response:
    body: dict[str, Any] = {"sql": sql, "params": list(params)}
    if "tenant" in kw:
        body["tenant"] = kw.pop("tenant")
    headers = {**keys.headers(who), **kw.pop("headers", {})}
    return await http.post("/v1/sql", json=body, headers=headers, **kw)


def _problem(resp: httpx.Response, status: int, slug: str, field: str = "sql") -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["type"].endswith("/" + slug), body
    assert body["field"] == field, body
    return str(body["detail"])


def _owner_frame(dsn: str, sql: str, *params: Any) -> pl.DataFrame:
    with psycopg.connect(dsn) as conn:
        return pl.read_database(sql, conn, execute_options={"params": list(params)})


def _json(texts: pl.Series) -> list[Any]:
    return [orjson.loads(t) for t in texts]


RESULT_SQL = (
    "SELECT event_id, type, event_time, seller_id, amount::numeric(12,2) AS amount, "
    "amount AS amount_f, properties, schema_version "
    "FROM events WHERE event_time >= $1 ORDER BY event_id"
)
OWNER_SQL = (
    "SELECT event_id, type, event_time, seller_id, amount::numeric(12,2) AS amount, "
    "amount::float8 AS amount_f, properties::text AS properties, schema_version "
    "FROM events WHERE tenant = 'acme' AND event_time >= %s ORDER BY event_id"
)


async def _jsonl_csv_parquet_read_back_equal_to_the_owners_read(
    shttp: httpx.AsyncClient, keys: Keys, access_settings: Settings
) -> None:
    since = BASE + timedelta(minutes=30)
    want = _owner_frame(access_settings.database_url, OWNER_SQL, since)
    assert want.height > 3 * FETCH_ROWS, f"seed {SEED}: too few rows to span batches"

    parquet = await _sql(
        shttp, keys, "analyst", RESULT_SQL, since.isoformat(), params={"format": "parquet"}
    )
    assert parquet.status_code == 200, parquet.text
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    got = pl.read_parquet(io.BytesIO(parquet.content))
    assert got.schema["amount"] == pl.Decimal(12, 2)
    assert got.schema["event_time"] == pl.Datetime("us", "UTC")
    utc = want.with_columns(pl.col("event_time").dt.convert_time_zone("UTC"))
    assert got.drop("properties").equals(utc.drop("properties")), f"seed {SEED}"
    assert _json(got["properties"]) == _json(want["properties"])
    meta = pq.ParquetFile(io.BytesIO(parquet.content)).metadata.metadata
    assert orjson.loads(meta[b"linkpulse.summary"]) == {
        "rows": want.height,
        "truncated": False,
        "row_cap": 1_000_000,
        "complete": True,
    }

    csv = await _sql(
        shttp,
        keys,
        "analyst",
        RESULT_SQL,
        since.isoformat(),
        headers={"Accept": "text/csv"},
    )
    assert csv.headers["content-type"] == "text/csv; charset=utf-8"
    head = orjson.loads(csv.text.splitlines()[0].removeprefix("# linkpulse "))
    assert [c["type"] for c in head["columns"]] == [
        "text", "text", "timestamptz", "text", "numeric(12,2)", "numeric", "jsonb", "int2",
    ]  # fmt: skip
    got_csv = pl.read_csv(
        io.BytesIO(csv.content), comment_prefix="#", schema_overrides={"amount": pl.String}
    ).with_columns(
        pl.col("event_time").str.to_datetime(time_unit="us", time_zone="UTC"),
        pl.col("amount").cast(pl.Decimal(12, 2)),
        pl.col("schema_version").cast(pl.Int16),
    )
    assert (
        got_csv.select(want.columns)
        .drop("properties")
        .equals(
            want.with_columns(pl.col("event_time").dt.convert_time_zone("UTC")).drop("properties")
        )
    ), f"seed {SEED}"

    head_j, rows, summary = _rows(await _sql(shttp, keys, "analyst", RESULT_SQL, since.isoformat()))
    assert head_j["columns"][2] == {"name": "event_time", "type": "timestamptz"}
    assert summary["rows"] == len(rows) == want.height and summary["complete"] is True
    assert [r["event_id"] for r in rows] == want["event_id"].to_list()
    assert [r["properties"] for r in rows] == _json(want["properties"])


async def _the_row_cap_cuts_and_says_so(shttp: httpx.AsyncClient, keys: Keys) -> None:
    sql = "SELECT event_id FROM events ORDER BY event_id"
    _, rows, summary = _rows(await _sql(shttp, keys, "operator", sql))
    assert len(rows) == 250
    assert summary == {"rows": 250, "truncated": True, "row_cap": 250, "complete": False}
    resp = await _sql(shttp, keys, "operator", sql, params={"format": "csv"})
    assert resp.headers["linkpulse-row-cap"] == "250"
    last = orjson.loads(resp.text.splitlines()[-1].removeprefix("# linkpulse "))
    assert last["summary"]["truncated"] is True
    assert len(resp.text.splitlines()) == 1 + 1 + 250 + 1  # header comment, names, rows, summary
    resp = await _sql(shttp, keys, "operator", sql, params={"format": "parquet"})
    assert pl.read_parquet(io.BytesIO(resp.content)).height == 250
    # exactly at the cap is not a cut
    _, rows, summary = _rows(await _sql(shttp, keys, "operator", sql + " LIMIT 250"))
    assert (len(rows), summary["truncated"]) == (250, False)


async def _too_long_is_a_422_naming_the_limit(shttp: httpx.AsyncClient, keys: Keys) -> None:
    resp = await _sql(
        shttp, keys, "operator", "SELECT count(*) FROM generate_series(1, 100000000) a"
    )
    detail = _problem(resp, 422, "statement-timeout")
    assert "1 s limit" in detail


def _snapshot(dsn: str) -> dict[str, Any]:
    """What an analyst must never change: data, objects, large objects, the roles' powers."""
    with psycopg.connect(dsn) as conn:
        out: dict[str, Any] = {
            t: conn.execute(
                f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {t} t"
            ).fetchone()
            for t in ("events", "events_1m", "events_1h", "events_1d", "metric_windows", "api_keys")
        }
        out["objects"] = conn.execute(
            "SELECT md5(string_agg(n.nspname || '.' || c.relname || c.relkind::text, ',' "
            "ORDER BY 1)) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"
        ).fetchone()
        out["functions"] = conn.execute(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()
        out["large_objects"] = conn.execute(
            "SELECT count(*) FROM pg_largeobject_metadata"
        ).fetchone()
        out["roles"] = conn.execute(
            "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb FROM pg_roles "
            "WHERE rolname IN ('linkpulse_sql', 'linkpulse_analyst') ORDER BY 1"
        ).fetchall()
        out["grants"] = conn.execute(
            "SELECT count(*) FROM information_schema.role_table_grants "
            "WHERE grantee IN ('linkpulse_sql', 'linkpulse_analyst')"
        ).fetchone()
    return out


BAD: list[tuple[str, int, str, int | None]] = [
    ("SELECT event_id FROM events WHERE", 400, "sql-syntax", 34),
    ("SELECT evnt_id FROM events", 400, "sql-error", 8),  # the database's own position
    ("SELECT 1; DELETE FROM events", 400, "sql-multiple-statements", 11),
    ("INSERT INTO events (event_id) VALUES ('x')", 400, "sql-not-allowed", 1),
    ("UPDATE events SET amount = 0", 400, "sql-not-allowed", 1),
    ("DELETE FROM events", 400, "sql-not-allowed", 1),
    ("TRUNCATE events", 400, "sql-not-allowed", 1),
    ("DROP VIEW analyst.events", 400, "sql-not-allowed", 1),
    ("CREATE TABLE stolen AS SELECT * FROM events", 400, "sql-not-allowed", 1),
    ("COPY (SELECT * FROM events) TO '/tmp/stolen'", 400, "sql-not-allowed", 1),
    ("SET ROLE postgres", 400, "sql-not-allowed", 1),
    ("RESET ROLE", 400, "sql-not-allowed", 1),
    ("COMMIT", 400, "sql-not-allowed", 1),
    ("DO $$ BEGIN DELETE FROM events; END $$", 400, "sql-not-allowed", 1),
    (
        "WITH d AS (DELETE FROM events RETURNING *) SELECT count(*) FROM d",
        400,
        "sql-not-allowed",
        24,
    ),
    ("SELECT * INTO stolen FROM events", 400, "sql-not-allowed", 15),
    ("SELECT * FROM events FOR UPDATE", 400, "sql-not-allowed", None),
    ("SELECT set_config('role', 'postgres', true)", 400, "sql-function-not-allowed", 8),
    ("SELECT lo_from_bytea(0, 'x')", 400, "sql-function-not-allowed", None),
    ("SELECT pg_advisory_lock(1)", 400, "sql-function-not-allowed", None),
    ("SELECT count(*) FROM public.events", 403, "sql-permission-denied", None),
    ("SELECT secret FROM lp_private.scope_secret", 403, "sql-permission-denied", None),
    ("SELECT lp_private.verified_scope()", 403, "sql-permission-denied", None),
    ("SELECT 1 / (count(*) - count(*)) FROM events", 400, "sql-error", None),
]


async def _each_bad_statement_is_refused_and_the_database_is_unchanged(
    shttp: httpx.AsyncClient, keys: Keys, access_settings: Settings
) -> None:
    before = _snapshot(access_settings.database_url)
    for sql, status, slug, position in BAD:
        for route in ("/v1/sql", "/v1/sql/explain"):
            resp = await shttp.post(route, json={"sql": sql}, headers=keys.headers("analyst"))
            if route.endswith("explain") and slug == "sql-error" and position is None:
                continue  # a runtime error (division by zero) needs the statement to run
            detail = _problem(resp, status, slug)
            if position is not None:
                assert f"position {position} of sql" in detail, (sql, detail)
    assert _snapshot(access_settings.database_url) == before


async def _bad_requests_name_their_field(shttp: httpx.AsyncClient, keys: Keys) -> None:
    h = keys.headers("analyst")
    _problem(await _sql(shttp, keys, "analyst", "SELECT $1, $2", 1), 400, "sql-params", "params")
    _problem(await _sql(shttp, keys, "analyst", "SELECT 1", 1), 400, "sql-params", "params")
    resp = await shttp.post("/v1/sql?format=xlsx", json={"sql": "SELECT 1"}, headers=h)
    _problem(resp, 400, "unknown-format", "format")
    resp = await shttp.post(
        "/v1/sql", json={"sql": "SELECT 1"}, headers={**h, "Accept": "image/png"}
    )
    _problem(resp, 406, "not-acceptable", "Accept")
    resp = await _sql(shttp, keys, "analyst", "SELECT 1", tenant="globex")
    _problem(resp, 403, "forbidden", "tenant")
    for who in ("viewer", "ingest"):
        assert (await _sql(shttp, keys, who, "SELECT 1")).status_code == 403
    resp = await shttp.post("/v1/sql", json={"sql": "SELECT 1", "extra": 1}, headers=h)
    assert resp.status_code == 422, resp.text


async def _params_are_bound_not_spliced(shttp: httpx.AsyncClient, keys: Keys) -> None:
    _, rows, _ = _rows(
        await _sql(
            shttp,
            keys,
            "analyst",
            "SELECT $1::text AS a, $2::int + 1 AS b, $3 AS c",
            "x'; DROP TABLE events; --",
            41,
            None,
        )
    )
    assert rows == [{"a": "x'; DROP TABLE events; --", "b": 42, "c": None}]


SELLER_ATTEMPTS = [
    "SELECT DISTINCT seller_id FROM events",
    "SELECT DISTINCT seller_id FROM events WHERE seller_id = 's2' OR seller_id <> 's1' OR true",
    "SELECT DISTINCT seller_id FROM events WHERE tenant = 'globex' OR seller_id IS NULL OR 1 = 1",
    "WITH x AS (SELECT * FROM events) SELECT DISTINCT seller_id FROM x",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
    "SELECT DISTINCT e.seller_id FROM r, events e",
    "SELECT DISTINCT seller_id FROM events_1h UNION SELECT DISTINCT seller_id FROM events_1d",
    "SELECT DISTINCT s FROM (SELECT coalesce(seller_id, 'none') AS s FROM events) q",
    "SELECT DISTINCT seller_id FROM jsonb_to_recordset((SELECT jsonb_agg(e) FROM events e)) "
    "AS t(seller_id text)",
    "SELECT DISTINCT seller_id FROM events, set_config('linkpulse.seller', '', true)",
]


async def _a_seller_never_reads_another_sellers_rows(
    shttp: httpx.AsyncClient, keys: Keys, access_settings: Settings
) -> None:
    with psycopg.connect(access_settings.database_url) as conn:
        others = conn.execute(
            "SELECT count(*) FROM events WHERE tenant = 'acme' AND seller_id IS DISTINCT FROM 's1'"
        ).fetchone()
    assert others is not None and others[0] > 0, f"seed {SEED}: no other seller to hide"
    for sql in SELLER_ATTEMPTS:
        resp = await _sql(shttp, keys, "seller", sql)
        if resp.status_code != 200:  # refused outright is fine too, as long as it's a 4xx
            assert 400 <= resp.status_code < 500, (sql, resp.text)
            continue
        _, rows, _ = _rows(resp)
        assert {v for r in rows for v in r.values()} <= {"s1", 1, 2, 3}, (sql, rows)
    # a set_config in the statement, SET ROLE or another tenant are refused by name
    _problem(
        await _sql(shttp, keys, "seller", SELLER_ATTEMPTS[-1]), 400, "sql-function-not-allowed"
    )
    _problem(
        await _sql(shttp, keys, "seller", "SET ROLE linkpulse_analyst"), 400, "sql-not-allowed"
    )
    _problem(
        await _sql(shttp, keys, "seller", "SELECT 1", tenant="globex"), 403, "forbidden", "tenant"
    )
    # and counted, a seller's figures are exactly its own
    _, rows, _ = _rows(await _sql(shttp, keys, "seller", "SELECT count(*) AS n FROM events"))
    with psycopg.connect(access_settings.database_url) as conn:
        mine = conn.execute(
            "SELECT count(*) FROM events WHERE tenant = 'acme' AND seller_id = 's1'"
        ).fetchone()
    assert mine is not None and rows == [{"n": mine[0]}]


async def _an_admin_reads_the_tenant_it_names(
    shttp: httpx.AsyncClient, keys: Keys, access_settings: Settings
) -> None:
    _, rows, _ = _rows(
        await _sql(shttp, keys, "admin", "SELECT DISTINCT tenant FROM events", tenant="globex")
    )
    assert rows == [{"tenant": "globex"}]


async def _explain_gives_the_plan_and_advice(shttp: httpx.AsyncClient, keys: Keys) -> None:
    resp = await shttp.post(
        "/v1/sql/explain",
        json={
            "sql": "SELECT date_trunc('hour', event_time) AS h, type, count(*), sum(amount) "
            "FROM events GROUP BY 1, 2"
        },
        headers=keys.headers("analyst"),
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["plan"][0]["Plan"]["Node Type"]
    assert body["estimated_rows"] > 0
    codes = [a["code"] for a in body["advice"]]
    assert codes[:2] == ["no-time-filter", "use-rollup"], body["advice"]
    assert "analyst.events_1h" in body["advice"][1]["message"]
    resp = await shttp.post(
        "/v1/sql/explain",
        json={
            "sql": "SELECT sum(events) FROM events_1h WHERE bucket >= $1",
            "params": [BASE.isoformat()],
        },
        headers=keys.headers("seller"),
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["advice"] == []


async def _every_query_is_in_the_audit_log(
    shttp: httpx.AsyncClient, keys: Keys, access_settings: Settings
) -> None:
    marker = "SELECT 'audit-me' AS m"
    assert (await _sql(shttp, keys, "analyst", marker)).status_code == 200
    assert (await _sql(shttp, keys, "analyst", "DELETE FROM events -- audit-me")).status_code == 400
    rows: list[Any] = []
    for _ in range(100):  # the audit log is written in batches (LINKPULSE_AUDIT_FLUSH_S)
        with psycopg.connect(access_settings.database_url) as conn:
            rows = conn.execute(
                "SELECT action, outcome, status, items, principal, scope->>'tenant' FROM audit_log "
                "WHERE detail LIKE '%audit-me%' ORDER BY id"
            ).fetchall()
        if len(rows) == 2:
            break
        await asyncio.sleep(0.1)
    analyst_id = keys.ids["analyst"]
    assert rows == [
        ("sql.query", "ok", 200, 1, analyst_id, "acme"),
        ("sql.query", "refused", 400, 0, analyst_id, None),
    ]


async def _an_error_after_the_first_rows_ends_the_stream_saying_so(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    sql = "SELECT n, 1 / (n - 700) AS boom FROM generate_series(1, 2000) n"
    _, rows, summary = _rows(await _sql(http, keys, "analyst", sql))
    assert len(rows) == summary["rows"] and 0 < len(rows) < 700
    assert summary["complete"] is False
    assert summary["error"]["status"] == 400 and "division by zero" in summary["error"]["detail"]
    # the same error in the first batch is a plain 400 problem
    _problem(await _sql(http, keys, "analyst", sql.replace("700", "7")), 400, "sql-error")


async def _a_client_that_leaves_gives_its_connection_back(
    http: httpx.AsyncClient, keys: Keys, base_url: str
) -> None:
    sql = "SELECT n FROM generate_series(1, 1000000) n"
    for _ in range(6):  # more than the analyst pool's 4 connections
        async with httpx.AsyncClient(base_url=base_url, timeout=20) as c:
            async with c.stream(
                "POST", "/v1/sql", json={"sql": sql}, headers=keys.headers("analyst")
            ) as resp:
                assert resp.status_code == 200
                async for _ in resp.aiter_bytes():
                    break  # leave after the first chunk
    _, rows, _ = _rows(await _sql(http, keys, "analyst", "SELECT 1 AS one"))
    assert rows == [{"one": 1}]


# Each running-API fixture costs seconds to start: one per group of checks.


async def test_answers_in_every_format_and_their_limits(
    shttp: httpx.AsyncClient, keys: Keys, access_settings: Settings, access_api: str
) -> None:
    await _jsonl_csv_parquet_read_back_equal_to_the_owners_read(shttp, keys, access_settings)
    await _the_row_cap_cuts_and_says_so(shttp, keys)
    await _too_long_is_a_422_naming_the_limit(shttp, keys)
    await _an_error_after_the_first_rows_ends_the_stream_saying_so(shttp, keys)
    await _a_client_that_leaves_gives_its_connection_back(shttp, keys, access_api)


async def test_bad_input_is_refused_and_changes_nothing(
    shttp: httpx.AsyncClient, keys: Keys, access_settings: Settings
) -> None:
    await _each_bad_statement_is_refused_and_the_database_is_unchanged(shttp, keys, access_settings)
    await _bad_requests_name_their_field(shttp, keys)
    await _params_are_bound_not_spliced(shttp, keys)


async def test_scope_holds_for_sellers_and_admins_pick_a_tenant(
    shttp: httpx.AsyncClient, keys: Keys, access_settings: Settings
) -> None:
    await _a_seller_never_reads_another_sellers_rows(shttp, keys, access_settings)
    await _an_admin_reads_the_tenant_it_names(shttp, keys, access_settings)


async def test_explain_advice_and_the_audit_log(
    shttp: httpx.AsyncClient, keys: Keys, access_settings: Settings
) -> None:
    await _explain_gives_the_plan_and_advice(shttp, keys)
    await _every_query_is_in_the_audit_log(shttp, keys, access_settings)
