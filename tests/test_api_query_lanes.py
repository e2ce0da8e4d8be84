"""The query answers equal a GROUP BY on the raw events, on both store lanes.

``/v1/series`` and ``/v1/kpis`` are computed by ``linkpulse.query.answers``
on a scoped analyst session; these tests run those functions on each lane
(plain PostgreSQL and the WASM TimescaleDB, where the rollups are continuous
aggregates) and compare every number with the test's own GROUP BY over
``events``. Over HTTP, the real API answers them on the TimescaleDB lane here
(the WASM server serves one connection at a time: the API runs with one
connection per use, ``LINKPULSE_DB_POOL_MAX_IDLE_S=0``), and on the server
lane in ``test_api_query.py`` (scope, paging, audit, bad input). The helpers
here (seeding, the raw expectations) are shared with that module.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from linkpulse.config import Settings
from linkpulse.query import answers
from linkpulse.store import EventWriter, refresh, roles, stored_tier
from tests.api_server import ApiServer
from tests.fix_access import make_key
from tests.fix_db import migrate_with_roles
from tests.fix_redis import REDIS_URL
from tests.test_store_writer import BASE, make_events

pytestmark = pytest.mark.integration

SEED = 1313
START, END = BASE, BASE + timedelta(hours=3)
SPAN = {"start": START.isoformat(), "end": END.isoformat()}
# The test's own definitions, written apart from the catalogue.
RAW: dict[str, str] = {
    "gmv": "coalesce(sum(amount) FILTER (WHERE type = 'payment_settled'), 0)::float8",
    "orders": "count(*) FILTER (WHERE type = 'order_placed')",
    "page_views": "count(*) FILTER (WHERE type = 'page_view')",
    "active_users": "count(DISTINCT user_id)",
    "conversion": "(count(*) FILTER (WHERE type = 'order_placed'))::float8"
    " / nullif(count(*) FILTER (WHERE type = 'page_view'), 0)",
    "payment_failure_rate": "(count(*) FILTER (WHERE type = 'payment_failed'))::float8"
    " / nullif(count(*) FILTER (WHERE type IN ('payment_failed', 'payment_settled')), 0)",
    "refunds": "count(*) FILTER (WHERE type = 'refund_issued')",
}


def seed_store(dsn: str, n: int = 800) -> None:
    """``n`` events of tenants acme and globex (sellers s0..s4) over 3 h, rolled up."""
    with EventWriter(dsn) as w:
        w.write_events(make_events(n, seed=SEED, start=BASE))
    with psycopg.connect(dsn, autocommit=True) as conn:
        refresh(conn)


def raw_series(
    conn: psycopg.Connection[Any],
    metric: str,
    step_s: int,
    *,
    tenant: str = "acme",
    seller: str | None = None,
    start: datetime = START,
    end: datetime = END,
) -> dict[datetime, float]:
    """The metric per step bucket, by a GROUP BY over the raw events."""
    rows = conn.execute(
        f"SELECT date_bin(make_interval(secs => %s), event_time, '2000-01-01Z'), {RAW[metric]}"
        " FROM events WHERE tenant = %s AND event_time >= %s AND event_time < %s"
        " AND (%s::text IS NULL OR seller_id = %s) GROUP BY 1",
        (step_s, tenant, start, end, seller, seller),
    ).fetchall()
    return {t: float(v) for t, v in rows if v is not None}


def raw_total(
    conn: psycopg.Connection[Any],
    metric: str,
    start: datetime,
    end: datetime,
    *,
    tenant: str = "acme",
    seller: str | None = None,
) -> float | None:
    """The metric over [start, end) by an aggregate over the raw events."""
    row = conn.execute(
        f"SELECT {RAW[metric]} FROM events WHERE tenant = %s AND event_time >= %s"
        " AND event_time < %s AND (%s::text IS NULL OR seller_id = %s)",
        (tenant, start, end, seller, seller),
    ).fetchone()
    assert row is not None
    return None if row[0] is None else float(row[0])


def raw_top(
    conn: psycopg.Connection[Any], start: datetime, end: datetime, limit: int | None = None
) -> list[tuple[str, int]]:
    """acme's sellers by orders in [start, end) (most first, then by name), by a GROUP BY."""
    rows = conn.execute(
        "SELECT seller_id, count(*) FROM events WHERE tenant = 'acme' AND type = 'order_placed'"
        " AND event_time >= %s AND event_time < %s GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %s",
        (start, end, limit),
    ).fetchall()
    return [(str(k), int(v)) for k, v in rows]


def check_series(body: dict[str, Any], expected: dict[datetime, float]) -> None:
    """Every point equals the raw GROUP BY (0 where it has no row), and not all are 0."""
    got = {datetime.fromisoformat(p["t"]): p["value"] for p in body["points"]}
    assert set(expected) <= set(got), sorted(set(expected) - set(got))
    for t, value in got.items():
        assert value == pytest.approx(expected.get(t, 0.0), rel=1e-12), (t, body["source"])
    assert any(v for v in expected.values()), "the seed gave nothing to compare"


def check_kpis(conn: psycopg.Connection[Any], body: dict[str, Any], seller: str | None) -> None:
    """value / previous / week_ago of every KPI equal raw aggregates of those periods."""
    start, end = datetime.fromisoformat(body["start"]), datetime.fromisoformat(body["end"])
    length, week = end - start, timedelta(days=7)
    nonzero = 0
    for k in body["kpis"]:
        for field, (s, e) in (
            ("value", (start, end)),
            ("previous", (start - length, start)),
            ("week_ago", (start - week, end - week)),
        ):
            raw = raw_total(conn, k["name"], s, e, seller=seller)
            want = 0.0 if raw is None and k["unit"] != "ratio" else raw
            if want is None:  # a ratio of nothing
                assert k[field] is None, (k["name"], field)
            else:
                assert k[field] == pytest.approx(want, rel=1e-12), (k["name"], field)
            nonzero += bool(k[field])
    assert nonzero >= 4, body


async def _answer(
    dsn: str, fn: Any, *, seller: str | None = None, tenant: str = "acme", **kw: Any
) -> dict[str, Any]:
    settings = Settings()
    with psycopg.connect(dsn, autocommit=True) as conn:
        secret = roles.scope_secret(conn)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        async with roles.analyst_session_async(
            aconn, analyst_role=settings.analyst_role, secret=secret, tenant=tenant,
            seller_id=seller,
        ) as scoped:  # fmt: skip
            body: dict[str, Any] = await fn(scoped, tenant=tenant, seller=seller, **kw)
    return body


def prepare_store(dsn: str) -> str:
    """Migrate, set up the analyst roles and seed (``seed_store``); return ``dsn``."""
    migrate_with_roles(dsn)
    seed_store(dsn)
    return dsn


@pytest.fixture
def seeded(lane_dsn: str) -> str:
    return prepare_store(lane_dsn)


@pytest.mark.parametrize(
    ("metric", "step", "source"),
    [
        ("gmv", "1h", "events_1h"),
        ("orders", "5m", "events_1m"),
        ("active_users", "1h", "users_1h"),
        ("conversion", "15m", "events_1m"),
    ],
)
async def test_series_equal_the_raw_group_by(
    seeded: str, metric: str, step: str, source: str
) -> None:
    step_s = {"5m": 300, "15m": 900, "1h": 3600}[step]
    body = await _answer(
        seeded, answers.series, metric=metric, start=START, end=END, step=step, event_type=None,
        max_points=10_000, now=END + timedelta(days=1),
    )  # fmt: skip
    with psycopg.connect(seeded) as conn:
        tier = stored_tier(conn)
        check_series(body, raw_series(conn, metric, step_s))
    assert body["source"] == source, tier
    assert body["final_before"] == answers.iso(END)


async def test_a_seller_series_and_kpis_equal_its_raw_rows(seeded: str) -> None:
    body = await _answer(
        seeded, answers.series, seller="s1", metric="gmv", start=START, end=END, step="1h",
        event_type=None, max_points=10_000, now=END,
    )  # fmt: skip
    kpis = await _answer(
        seeded, answers.kpis, seller="s1", start=START + timedelta(hours=1), end=END
    )
    with psycopg.connect(seeded) as conn:  # one connection at a time (the WASM server)
        check_series(body, raw_series(conn, "gmv", 3600, seller="s1"))
        check_kpis(conn, kpis, "s1")


async def test_kpis_equal_raw_aggregates_of_each_period(seeded: str) -> None:
    body = await _answer(seeded, answers.kpis, start=START + timedelta(hours=1), end=END)
    assert [k["name"] for k in body["kpis"]] == [
        "gmv", "orders", "conversion", "active_users", "payment_failure_rate", "refunds",
    ]  # fmt: skip
    by_name = {k["name"]: k for k in body["kpis"]}
    assert by_name["gmv"]["source"] == "events_1h"
    assert by_name["active_users"]["source"] == "users_1h"
    assert by_name["orders"]["week_ago"] == 0 and by_name["orders"]["change_week"] is None
    assert by_name["orders"]["change"] == pytest.approx(
        by_name["orders"]["value"] / by_name["orders"]["previous"] - 1
    )
    with psycopg.connect(seeded) as conn:
        check_kpis(conn, body, None)


async def test_events_after_the_last_refresh_are_in_every_answer(seeded: str) -> None:
    """New events in rolled-up hours, before any refresh: series, KPIs and top still equal
    the raw GROUP BY; the read is split (the rollup, then finer sources). After the
    refresh the rollup alone answers again, with the same numbers. On the TimescaleDB
    lane the late events sit below the aggregates' watermark, where real-time
    aggregation does not see them: the split is what makes them count there too."""
    late = make_events(120, seed=SEED + 1, start=START + timedelta(minutes=90),
                       span_s=90 * 60, prefix="late")  # fmt: skip
    with EventWriter(seeded) as w:
        w.write_events(late)
    kpi_range = {"start": START + timedelta(hours=1), "end": END}

    async def answer_all() -> tuple[dict[str, Any], ...]:
        series = await _answer(
            seeded, answers.series, metric="gmv", start=START, end=END, step="1h",
            event_type=None, max_points=10_000, now=END,
        )  # fmt: skip
        minutes = await _answer(
            seeded, answers.series, metric="orders", start=START, end=END, step="5m",
            event_type=None, max_points=10_000, now=END,
        )  # fmt: skip
        kpis = await _answer(seeded, answers.kpis, **kpi_range)
        top = await _answer(
            seeded, answers.top, measure="orders", dimension="seller_id", limit=10, **kpi_range
        )
        return series, minutes, kpis, top

    def check(series: dict[str, Any], minutes: dict[str, Any], kpis: dict[str, Any],
              top: dict[str, Any]) -> None:  # fmt: skip
        with psycopg.connect(seeded) as conn:  # one connection at a time (the WASM server)
            check_series(series, raw_series(conn, "gmv", 3600))
            check_series(minutes, raw_series(conn, "orders", 300))
            check_kpis(conn, kpis, None)
            rows = raw_top(conn, kpi_range["start"], kpi_range["end"])
        assert {r["key"]: r["value"] for r in top["rows"]} == dict(rows)

    stale = await answer_all()
    check(*stale)
    with psycopg.connect(seeded) as conn:
        tier = stored_tier(conn)
        first_late = min(e.event_time for e in late if e.tenant == "acme")
    series, minutes, kpis, top = stale
    # The hour before the first late event is clean in events_1h; from that minute on
    # neither rollup is, so raw events answer it.
    assert series["sources"] == ["events_1h", "events_1m", "events"], (tier, first_late)
    assert minutes["sources"] == ["events_1m", "events"], tier
    # The KPI period starts in the late events' hour: events_1h answers none of it,
    # nor users_1h (hourly) the active users.
    by_name = {k["name"]: k for k in kpis["kpis"]}
    assert by_name["gmv"]["sources"] == ["events_1m", "events"], (tier, by_name["gmv"])
    assert by_name["active_users"]["sources"] == ["events"], tier
    assert top["sources"][-1] == "events", tier

    with psycopg.connect(seeded, autocommit=True) as conn:
        refresh(conn)
    fresh = await answer_all()
    check(*fresh)
    assert fresh[0]["sources"] == ["events_1h"] and fresh[1]["sources"] == ["events_1m"], tier
    users = next(k for k in fresh[2]["kpis"] if k["name"] == "active_users")
    assert users["sources"] == ["users_1h"], tier
    assert fresh[0]["points"] == series["points"], tier


@pytest.mark.timescale
async def test_the_api_answers_over_http_on_the_timescale_lane(
    timescale_dsn: str, nats_settings: Settings, nc: object, redis_prefix: str,
    unused_tcp_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The real API (auth on, its key looked up in the store) over the WASM TimescaleDB,
    which serves one connection at a time: with one connection per use
    (``LINKPULSE_DB_POOL_MAX_IDLE_S=0``, at most one per pool) and the services that
    hold one of their own turned off (cache warmer, audit watch), each request takes
    one connection at a time, and its series, KPIs and top N equal the raw GROUP BY."""
    dsn = prepare_store(timescale_dsn)
    secret, _ = await make_key(dsn, "analyst")  # acme's analyst: closed before the API starts
    settings = Settings(**{
        **nats_settings.model_dump(), "database_url": dsn, "redis_url": REDIS_URL,
        "redis_key_prefix": redis_prefix, "db_pool_min": 0, "db_pool_max": 1,
        "db_pool_max_idle_s": 0, "query_cache_warm": False, "audit_watch": False,
        "query_cache_ttl_s": 0,  # the pg lane's answers to the same query are never read
        "audit_flush_s": 0.2,
    })  # fmt: skip
    # The SQL login's password, as libpq finds it in production too (the server asks for
    # one, never checks it; the analyst pool's DSN carries none: docs/analyst-sql.md).
    passfile = tmp_path / "pgpass"
    port = psycopg.conninfo.conninfo_to_dict(dsn)["port"]
    passfile.write_text(f"127.0.0.1:{port}:*:{settings.analyst_sql_login}:unchecked\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    h = {"Authorization": f"Bearer {secret}"}
    kpi_range = {"start": (START + timedelta(hours=1)).isoformat(), "end": END.isoformat()}
    with ApiServer(settings, unused_tcp_port) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            got = [
                await c.get(path, params=params, headers=h)
                for path, params in (
                    ("/v1/series", {"metric": "gmv", "step": "1h", **SPAN}),
                    ("/v1/series", {"metric": "orders", "step": "5m", **SPAN}),
                    ("/v1/kpis", kpi_range),
                    ("/v1/top", {"measure": "orders", "limit": 3, **SPAN}),
                )
            ]
    for resp in got:
        assert resp.status_code == 200, resp.text
    series, minutes, kpis, top = (r.json() for r in got)
    with psycopg.connect(dsn) as conn:  # the API has stopped: its connections are closed
        tier = stored_tier(conn)
        check_series(series, raw_series(conn, "gmv", 3600))
        check_series(minutes, raw_series(conn, "orders", 300))
        check_kpis(conn, kpis, None)
        rows = raw_top(conn, START, END, 3)
        audited = conn.execute(
            "SELECT action, count(*) FROM audit_log GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert tier == "full_timescale", tier
    assert (series["source"], minutes["source"], top["source"]) == (
        "events_1h", "events_1m", "events_1h",
    ), tier  # fmt: skip
    assert [(r["key"], r["value"]) for r in top["rows"]] == rows and rows, rows
    # the audit writer got its connection too, in turn (flushed by the API's stop at the latest)
    assert audited == [("query.kpis", 1), ("query.series", 2), ("query.top", 1)], audited
