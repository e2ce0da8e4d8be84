"""analyst.rollup_stale (migration 0015) on the plain tier: what is stale, for whom.

The lanes test (``test_api_query_lanes.py``) checks the split answers equal the
raw events on both tiers with new events in the writer's dirty log; this one
checks the function's scope (a tenant's stale buckets are its own, and no scope
is refused) and the other path, buckets pending for a rollup a refresh skipped.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from linkpulse.config import Settings
from linkpulse.query import answers
from linkpulse.store import EventWriter, refresh, roles
from tests.fix_db import migrate_with_roles
from tests.test_api_query_lanes import _answer, check_series, raw_series, seed_store
from tests.test_store_writer import BASE, make_events

pytestmark = pytest.mark.integration

SEED = 1515


async def _stale(dsn: str, tenant: str, start: Any, end: Any) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        secret = roles.scope_secret(conn)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        async with roles.analyst_session_async(
            aconn, analyst_role=Settings().analyst_role, secret=secret, tenant=tenant
        ) as scoped:
            cur = await scoped.execute(
                "SELECT rollup, stale_from FROM analyst.rollup_stale(%s, %s)", (start, end)
            )
            return dict(await cur.fetchall())


@pytest.fixture
def store(pg_dsn: str) -> str:
    migrate_with_roles(pg_dsn)
    seed_store(pg_dsn, n=300)
    return pg_dsn


async def test_stale_buckets_are_the_scopes_own_and_pending_ones_count(store: str) -> None:
    start, end = BASE, BASE + timedelta(hours=3)
    assert set((await _stale(store, "acme", start, end)).values()) == {None}  # all refreshed
    late = make_events(40, seed=SEED, start=BASE + timedelta(minutes=75), span_s=1800,
                       prefix="late", tenants=("globex",))  # fmt: skip
    with EventWriter(store) as w:
        w.write_events(late)
    first = min(e.event_time for e in late)
    minute = first.replace(second=0, microsecond=0)
    assert set((await _stale(store, "acme", start, end)).values()) == {None}, "globex's only"
    dirty = await _stale(store, "globex", start, end)
    assert dirty["events_1m"] == minute and dirty["events_1h"] == minute.replace(minute=0)
    assert dirty["events_1d"] == BASE  # a dirty minute is stale for every rollup
    # A refresh that skips the hourly and daily rollups (as `db maintain` does between
    # their intervals) leaves their buckets pending, the minutes clean.
    with psycopg.connect(store, autocommit=True) as conn:
        refresh(conn, min_interval_s={"events_1h": 3600.0, "events_1d": 3600.0})
    pending = await _stale(store, "globex", start, end)
    assert pending["events_1m"] is None and pending["events_1h"] == minute.replace(minute=0)
    assert pending["events_1d"] == BASE
    body = await _answer(
        store, answers.series, tenant="globex", metric="orders", start=start, end=end,
        step="1h", event_type=None, max_points=100, now=end,
    )  # fmt: skip
    assert body["sources"] == ["events_1h", "events_1m"]  # no raw events needed
    with psycopg.connect(store) as conn:
        check_series(body, raw_series(conn, "orders", 3600, tenant="globex"))


async def test_no_scope_no_answer(store: str) -> None:
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("BEGIN READ ONLY")
        conn.execute(f"SET LOCAL ROLE {Settings().analyst_role}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="analyst scope"):
            conn.execute("SELECT * FROM analyst.rollup_stale(now(), now())")
