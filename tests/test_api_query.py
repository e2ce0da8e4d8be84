"""The query API over HTTP: the real API (auth on) on the server lane, real PostgreSQL.

Numbers are checked against the test's own GROUP BY over the raw events
(``tests/test_api_query_lanes.py`` runs the same answers on both lanes); here:
the scope (a seller key sees its seller only, an admin picks a tenant, a
viewer can't), keyset paging, the audit log, and each bad input answered by a
4xx problem+json naming the field.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from linkpulse.query.watermarks import WatermarkBumper
from linkpulse.store import EventWriter, refresh
from linkpulse.store.partitions import ensure_partitions
from tests.fix_access import Keys
from tests.test_api_query_lanes import END, START, check_kpis, check_series, raw_series, seed_store
from tests.test_store_writer import make_events

pytestmark = pytest.mark.integration

SPAN = {"start": START.isoformat(), "end": END.isoformat()}


@pytest.fixture
async def qhttp(
    http: httpx.AsyncClient, access_api: str, access_settings: Any
) -> httpx.AsyncClient:
    seed_store(access_settings.database_url)
    return http


def _problem(resp: httpx.Response, status: int, field: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = resp.json()
    assert body["field"] == field, body
    return body


async def test_series_kpis_and_top_equal_the_raw_group_by(
    qhttp: httpx.AsyncClient, keys: Keys, access_settings: Any
) -> None:
    h = keys.headers("analyst")
    series = (await qhttp.get("/v1/series", params={"metric": "gmv", "step": "1h", **SPAN},
                              headers=h)).json()  # fmt: skip
    kpis = await qhttp.get(
        "/v1/kpis", params={"start": (START + timedelta(hours=1)).isoformat(), "end": SPAN["end"]},
        headers=h,
    )  # fmt: skip
    top = (await qhttp.get("/v1/top", params={"measure": "orders", "limit": 3, **SPAN},
                           headers=h)).json()  # fmt: skip
    with psycopg.connect(access_settings.database_url) as conn:
        assert series["source"] == "events_1h" and series["tenant"] == "acme"
        check_series(series, raw_series(conn, "gmv", 3600))
        check_kpis(conn, kpis.json(), None)
        rows = conn.execute(
            "SELECT seller_id, count(*) FROM events WHERE tenant = 'acme' AND type ="
            " 'order_placed' AND event_time >= %s AND event_time < %s GROUP BY 1"
            " ORDER BY 2 DESC, 1 LIMIT 3",
            (START, END),
        ).fetchall()
    assert [(r["key"], r["value"]) for r in top["rows"]] == rows
    assert top["source"] == "events_1h"


async def test_a_seller_key_sees_only_its_seller(
    qhttp: httpx.AsyncClient, keys: Keys, access_settings: Any
) -> None:
    h = keys.headers("seller")  # acme / s1
    body = {"measures": ["orders", "gmv"], "dimensions": ["seller_id"], **SPAN}
    resp = await qhttp.post("/v1/query", json=body, headers=h)
    assert resp.status_code == 200, resp.text
    assert [r[0] for r in resp.json()["rows"]] == ["s1"]
    series = (await qhttp.get("/v1/series", params={"metric": "orders", "step": "15m", **SPAN},
                              headers=h)).json()  # fmt: skip
    assert series["seller"] == "s1"
    with psycopg.connect(access_settings.database_url) as conn:
        check_series(series, raw_series(conn, "orders", 900, seller="s1"))
    # a filter naming another seller reads nothing: the database confines the session
    body["filters"] = [{"dimension": "seller_id", "op": "eq", "value": "s2"}]
    assert (await qhttp.post("/v1/query", json=body, headers=h)).json()["rows"] == []
    other = await qhttp.get("/v1/series", params={"metric": "gmv", "seller": "s2"}, headers=h)
    _problem(other, 403, "seller")


async def test_an_admin_picks_a_tenant_a_viewer_cannot(
    qhttp: httpx.AsyncClient, keys: Keys, access_settings: Any
) -> None:
    params = {"metric": "orders", "step": "1h", "tenant": "globex", **SPAN}
    admin = (await qhttp.get("/v1/series", params=params, headers=keys.headers("admin"))).json()
    assert admin["tenant"] == "globex"
    with psycopg.connect(access_settings.database_url) as conn:
        check_series(admin, raw_series(conn, "orders", 3600, tenant="globex"))
    viewer = await qhttp.get("/v1/series", params=params, headers=keys.headers("viewer"))
    _problem(viewer, 403, "tenant")
    own = {k: v for k, v in params.items() if k != "tenant"}
    beta = await qhttp.get("/v1/series", params=own, headers=keys.headers("beta_viewer"))
    assert beta.status_code == 200 and beta.json()["tenant"] == "beta"
    assert all(p["value"] == 0 for p in beta.json()["points"])


async def test_keyset_pages_cover_the_result_once(qhttp: httpx.AsyncClient, keys: Keys) -> None:
    h = keys.headers("analyst")
    body: dict[str, Any] = {
        "measures": ["events", "gmv"], "dimensions": ["seller_id", "type"], "grain": "1h",
        "order": [{"by": "events", "desc": True}], **SPAN,
    }  # fmt: skip
    whole = (await qhttp.post("/v1/query", json=body, headers=h)).json()
    assert whole["next_cursor"] is None and len(whole["rows"]) > 10
    assert whole["source"] == "events_1h"
    pages: list[list[Any]] = []
    cursor = None
    while True:
        resp = await qhttp.post("/v1/query", json={**body, "limit": 4, "cursor": cursor}, headers=h)
        page = resp.json()
        pages.extend(page["rows"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == whole["rows"]
    events = [r[3] for r in pages]
    assert events == sorted(events, reverse=True)
    # a cursor of another query, or altered, is refused naming it
    first = (await qhttp.post("/v1/query", json={**body, "limit": 1}, headers=h)).json()
    other = {**body, "grain": "1d", "cursor": first["next_cursor"]}
    _problem(await qhttp.post("/v1/query", json=other, headers=h), 400, "cursor")
    _problem(await qhttp.post("/v1/query", json={**body, "cursor": "x!"}, headers=h), 400, "cursor")


async def test_heatmap_query_reads_the_hourly_rollup(qhttp: httpx.AsyncClient, keys: Keys) -> None:
    body = {"measures": ["events"], "dimensions": ["day_of_week", "hour_of_day"], **SPAN}
    resp = (await qhttp.post("/v1/query", json=body, headers=keys.headers("viewer"))).json()
    assert resp["source"] == "events_1h"
    assert [c["name"] for c in resp["columns"]] == ["day_of_week", "hour_of_day", "events"]
    assert {(r[0], r[1]) for r in resp["rows"]} == {(5, 0), (5, 1), (5, 2)}  # a Friday, 0-3 h
    misaligned = {**body, "start": (START + timedelta(seconds=30)).isoformat()}
    resp = (await qhttp.post("/v1/query", json=misaligned, headers=keys.headers("viewer"))).json()
    assert resp["source"] == "events"


# (method, path, input, status, field): one server for all (a server per case cost ~20 s here)
BAD_INPUT: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("GET", "/v1/series", {"metric": "nope"}, 422, "metric"),
        ("GET", "/v1/series", {"metric": "gmv", "start": SPAN["end"], "end": SPAN["start"]}, 422,
         "end"),
        ("GET", "/v1/series", {"metric": "gmv", "step": "1m", "start": "2026-01-01T00:00:00Z",
                               "end": "2026-03-01T00:00:00Z"}, 422, "step"),
        ("GET", "/v1/series", {"metric": "gmv", "step": "2m"}, 422, "step"),
        ("GET", "/v1/series", {"metric": "gmv", "start": "2026-01-01T00:00:00"}, 422,
         "query.start"),
        ("GET", "/v1/top", {"dimension": "colour"}, 422, "dimension"),
        ("GET", "/v1/kpis", {"period": "2w"}, 422, "period"),
        ("GET", "/v1/kpis", {"start": SPAN["start"]}, 422, "end"),
        ("GET", "/v1/anomalies", {"cursor": "bm90IGEgY3Vyc29y"}, 400, "cursor"),
        ("POST", "/v1/query", {"measures": ["events", "nope"], **SPAN}, 422, "measures[1]"),
        ("POST", "/v1/query", {"measures": ["events"], "dimensions": ["colour"], **SPAN}, 422,
         "dimensions[0]"),
        ("POST", "/v1/query", {"measures": ["events"], "grain": "1m", "start":
                               "2020-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, 422,
         "grain"),
        ("POST", "/v1/query", {"measures": ["events"], "order": [{"by": "gmv"}], **SPAN}, 422,
         "order[0].by"),
        ("POST", "/v1/query", {"measures": ["events"], "filters": [{"dimension": "hour_of_day",
                               "value": "x"}], **SPAN}, 422, "filters[0].value"),
        ("POST", "/v1/query", {"measures": ["late_events"], "dimensions": ["type"], **SPAN}, 422,
         "measures"),
        ("POST", "/v1/query", {"measures": ["events"], "start": SPAN["end"], "end": SPAN["start"]},
         422, "end"),
]  # fmt: skip


async def test_bad_input_is_a_4xx_naming_the_field(http: httpx.AsyncClient, keys: Keys) -> None:
    h = keys.headers("analyst")
    for method, path, payload, status, field in BAD_INPUT:
        if method == "GET":
            resp = await http.get(path, params=payload, headers=h)
        else:
            resp = await http.post(path, json=payload, headers=h)
        try:
            _problem(resp, status, field)
        except AssertionError as e:
            raise AssertionError(f"{method} {path} {payload}: {e}") from e
    malformed = {**h, "content-type": "application/json"}
    resp = await http.post("/v1/query", content=b'{"measures": ["events"', headers=malformed)
    assert resp.status_code == 422 and resp.json()["field"].startswith("body"), resp.text


def _score(series: str, minute: int, score: float) -> tuple[Any, ...]:
    t = START + timedelta(minutes=minute)
    details = {"series": series, "time": t.isoformat(), "score": score, "raw": 3.0,
               "value": 1.0, "expected": 2.0, "lower": 0.5, "upper": 3.5, "direction": "down",
               "warm": True, "model": "ens", "explanation": "low", "details": {"kind": "level"},
               "revision": 0}  # fmt: skip
    return (series, t, score, "ens", series.split("|")[0], orjson.dumps(details).decode())


async def test_anomalies_and_forecasts_are_scoped_and_paged(
    qhttp: httpx.AsyncClient, keys: Keys, access_settings: Any
) -> None:
    rows = [
        _score("acme|gmv||1m", 1, 0.5),
        _score("acme|gmv|seller_id=s1|1m", 2, 0.99),
        _score("acme|orders|seller_id=s2|1m", 3, 0.7),
        _score("globex|gmv||1m", 4, 0.9),
    ]
    with psycopg.connect(access_settings.database_url, autocommit=True) as conn:
        for table in ("anomaly_scores", "forecasts"):  # the plain tier's daily partition
            ensure_partitions(conn, table, [START.date()])
        conn.cursor().executemany(
            "INSERT INTO anomaly_scores (series, time, score, model, tenant, details)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
            rows,
        )
        conn.cursor().executemany(
            "INSERT INTO forecasts (series, model, step, time, issued_at, tenant, metric, mean,"
            " lower80, upper80, lower95, upper95) VALUES (%s, 'hw', '1m', %s, %s, %s, %s, 1, 0,"
            " 2, -1, 3)",
            [(s, START + timedelta(minutes=i), START, s.split("|")[0], s.split("|")[1])
             for i, s in enumerate(["acme|gmv||1m", "acme|gmv|seller_id=s1|1m", "globex|gmv||1m"])],
        )  # fmt: skip
    params = {**SPAN, "limit": 1}
    seen, cursor = [], None
    while True:
        page = (await qhttp.get("/v1/anomalies", params={**params, "cursor": cursor} if cursor
                                else params, headers=keys.headers("viewer"))).json()  # fmt: skip
        assert "items" in page, page
        seen += [(i["series"], i["score"], i["raw_score"]) for i in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == [
        ("acme|orders|seller_id=s2|1m", 0.7, 3.0),
        ("acme|gmv|seller_id=s1|1m", 0.99, 3.0),
        ("acme|gmv||1m", 0.5, 3.0),
    ]
    mine = (await qhttp.get("/v1/anomalies", params=SPAN, headers=keys.headers("seller"))).json()
    assert [i["series"] for i in mine["items"]] == ["acme|gmv|seller_id=s1|1m"]
    high = await qhttp.get("/v1/anomalies", params={**SPAN, "min_score": 0.8},
                           headers=keys.headers("viewer"))  # fmt: skip
    assert [i["score"] for i in high.json()["items"]] == [0.99]
    fc = (await qhttp.get("/v1/forecasts", params=SPAN, headers=keys.headers("seller"))).json()
    assert [(i["series"], i["value"], i["lower"], i["upper"]) for i in fc["items"]] == [
        ("acme|gmv|seller_id=s1|1m", 1.0, 0.0, 2.0)
    ]
    admin = await qhttp.get("/v1/forecasts", params={**SPAN, "tenant": "globex"},
                            headers=keys.headers("admin"))  # fmt: skip
    assert [i["series"] for i in admin.json()["items"]] == ["globex|gmv||1m"]


async def test_every_read_is_in_the_audit_log(
    qhttp: httpx.AsyncClient, keys: Keys, access_settings: Any
) -> None:
    await qhttp.get(
        "/v1/series", params={"metric": "orders", **SPAN}, headers=keys.headers("seller")
    )
    for _ in range(100):  # the audit log is written in batches (audit_flush_s = 0.2)
        with psycopg.connect(access_settings.database_url) as conn:
            row = conn.execute(
                "SELECT principal, seller, scope->>'metric', items FROM audit_log"
                " WHERE action = 'query.series'"
            ).fetchone()
        if row:
            break
        await asyncio.sleep(0.1)
    assert row == (keys.ids["seller"], "s1", "orders", 180)  # 3 h of 1-minute points


async def test_a_repeated_series_is_served_from_the_cache_until_its_data_changes(
    qhttp: httpx.AsyncClient, keys: Keys, access_settings: Any
) -> None:
    h = keys.headers("analyst")
    params = {"metric": "orders", "step": "1h", **SPAN}
    first = await qhttp.get("/v1/series", params=params, headers=h)
    again = await qhttp.get("/v1/series", params=params, headers=h)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    assert first.headers["cache-control"].startswith("public")  # 2026-11-20 is long closed
    cached = await qhttp.get("/v1/series", params=params, headers={**h, "If-None-Match":
                             first.headers["etag"]})  # fmt: skip
    assert cached.status_code == 304 and cached.content == b""
    # one more order in the range, through the writer with the cache's watermarks
    bumper = WatermarkBumper(
        access_settings.redis_url, access_settings.redis_key_prefix,
        bucket_s=access_settings.query_cache_bucket_s, timeout_s=10,
    )  # fmt: skip
    order = [e for e in make_events(50, seed=7, start=START, span_s=60, prefix="x",
                                    tenants=("acme",)) if e.type == "order_placed"][:1]  # fmt: skip
    assert order
    with EventWriter(access_settings.database_url, watermarks=bumper) as w:
        w.write_events(order)
    bumper.flush()
    # before any refresh: the raw write invalidates the entry, and the answer has the order
    # (events_1h is stale in that hour: the finer sources answer it)
    unrefreshed = await qhttp.get("/v1/series", params=params, headers=h)
    assert unrefreshed.headers["x-cache"] == "MISS"
    assert unrefreshed.json()["points"][0]["value"] == first.json()["points"][0]["value"] + 1
    assert unrefreshed.json()["sources"][-1] == "events"
    with psycopg.connect(access_settings.database_url, autocommit=True) as conn:
        refresh(conn, watermarks=bumper)
    bumper.flush()
    bumper.close()
    after = await qhttp.get("/v1/series", params=params, headers=h)
    assert after.headers["x-cache"] == "MISS"  # the refresh touched events_1h there
    assert after.json()["points"] == unrefreshed.json()["points"]
    assert after.json()["sources"] == ["events_1h"]
