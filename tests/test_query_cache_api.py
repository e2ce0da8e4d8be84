"""The query cache end to end: the real API (auth on), PostgreSQL and Redis, over HTTP.

A repeated series is served from Redis with the same body and ETag; a 304
answers a client that has it; a closed range is immutable, an open one
private; new data in its range (written and rolled up by the real writer and
refresh, which touch the watermarks) gives the new numbers at once, while
another tenant's entry stays; the hits show on /metrics; a rollup refresh's
NOTIFY warms the dashboard's KPIs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from linkpulse.config import Settings
from linkpulse.query.timegrid import kpi_period
from linkpulse.query.watermarks import NOTIFY_CHANNEL, WatermarkBumper
from linkpulse.schemas import EVENT_CLASS_BY_TYPE
from linkpulse.store import EventWriter, refresh
from tests.fix_access import Keys
from tests.test_api_query_lanes import END, START, check_series, raw_series, seed_store

pytestmark = pytest.mark.integration

SPAN = {"metric": "gmv", "step": "1h", "start": START.isoformat(), "end": END.isoformat()}


@pytest.fixture
def access_settings(access_settings: Settings) -> Settings:
    """The access fixtures' settings, with a cache timeout a loaded test machine can't trip."""
    return access_settings.model_copy(update={"query_cache_timeout_s": 10.0})


@pytest.fixture
def bumper(access_settings: Settings) -> Iterator[WatermarkBumper]:
    """The writers' side, on the API's Redis prefix (as the dataflow's flag sets it)."""
    b = WatermarkBumper(
        access_settings.redis_url, access_settings.redis_key_prefix, bucket_s=3600, timeout_s=10
    )
    yield b
    b.close()


@pytest.fixture
async def chttp(
    http: httpx.AsyncClient, access_api: str, access_settings: Settings
) -> httpx.AsyncClient:
    seed_store(access_settings.database_url)
    return http


def settlement(i: int, at: datetime, tenant: str = "acme") -> Any:
    return EVENT_CLASS_BY_TYPE["payment_settled"](
        event_id=f"new{i}", tenant=tenant, event_time=at, user_id="u1", seller_id="s1",
        amount=1000.0, currency="USD", properties={"order_id": f"o-new{i}"},
    )  # fmt: skip


async def metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    line = next((ln for ln in text.splitlines() if ln.startswith(name)), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


async def test_series_are_cached_validated_and_invalidated_by_new_data(
    chttp: httpx.AsyncClient, keys: Keys, access_settings: Settings, bumper: WatermarkBumper
) -> None:
    h = keys.headers("analyst")
    first = await chttp.get("/v1/series", params=SPAN, headers=h)
    again = await chttp.get("/v1/series", params=SPAN, headers=h)
    assert first.status_code == again.status_code == 200, first.text
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    # The test's range closed days ago: final, so a CDN may keep it for good.
    assert again.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "Authorization" in again.headers["vary"]
    not_modified = await chttp.get(
        "/v1/series", params=SPAN, headers={**h, "If-None-Match": first.headers["etag"]}
    )
    assert not_modified.status_code == 304 and not_modified.content == b""
    admin = keys.headers("admin")
    other = {**SPAN, "tenant": "globex"}
    assert (await chttp.get("/v1/series", params=other, headers=admin)).headers["x-cache"] == "MISS"

    # New data in acme's range: written and rolled up by the real writer and refresh.
    at = START + timedelta(hours=1, minutes=20)
    with EventWriter(access_settings.database_url, watermarks=bumper) as w:
        assert w.write_events([settlement(1, at)]) == 1
    with psycopg.connect(access_settings.database_url, autocommit=True) as conn:
        refresh(conn, watermarks=bumper)
    assert bumper.flush()
    fresh = await chttp.get("/v1/series", params=SPAN, headers=h)
    assert fresh.headers["x-cache"] == "MISS" and fresh.headers["etag"] != first.headers["etag"]
    with psycopg.connect(access_settings.database_url) as conn:
        check_series(fresh.json(), raw_series(conn, "gmv", 3600))
    stale = await chttp.get(
        "/v1/series", params=SPAN, headers={**h, "If-None-Match": first.headers["etag"]}
    )
    assert stale.status_code == 200  # the client's copy is out of date: the new body
    # Another tenant's entry was not touched.
    assert (await chttp.get("/v1/series", params=other, headers=admin)).headers["x-cache"] == "HIT"
    hits = await metric(
        chttp, 'linkpulse_query_cache_requests_total{kind="query.series",result="hit"}'
    )
    assert hits >= 3
    assert await metric(chttp, 'linkpulse_query_cache_entry_bytes_count{kind="query.series"}') >= 3


async def test_an_open_range_is_private(chttp: httpx.AsyncClient, keys: Keys) -> None:
    now = datetime.now(UTC)
    params = {**SPAN, "start": (now - timedelta(hours=2)).isoformat(), "end": now.isoformat()}
    resp = await chttp.get("/v1/series", params=params, headers=keys.headers("viewer"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"].startswith("private, max-age=")


async def test_a_rollup_refresh_warms_the_dashboards_kpis(
    chttp: httpx.AsyncClient, keys: Keys, access_settings: Settings
) -> None:
    h = keys.headers("viewer")
    for _ in range(2):  # twice at most: the 24 h period moves on at the top of each hour
        before = kpi_period("24h", datetime.now(UTC))
        warmed = await metric(chttp, "linkpulse_query_cache_warmed_total")
        with psycopg.connect(access_settings.database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, '{"tenants": ["acme"]}'))
        for _ in range(600):
            if await metric(chttp, "linkpulse_query_cache_warmed_total") > warmed:
                break
            await asyncio.sleep(0.05)
        resp = await chttp.get("/v1/kpis", params={"period": "24h"}, headers=h)
        if kpi_period("24h", datetime.now(UTC)) == before:
            break
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-cache"] == "HIT"
