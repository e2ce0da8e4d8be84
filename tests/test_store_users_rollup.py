"""users_1h (migration 0014): the exact distinct-active-users rollup, on both store lanes.

After a refresh the rollup's rows equal a GROUP BY over the raw events, and a
distinct count over it, through the scoped analyst view, equals the raw
``count(DISTINCT user_id)`` for hour-aligned ranges, a tenant and a seller scope
and a type filter. Late events are picked up by the next refresh; an erase
leaves no row of the person (its raw-horizon retention: test_store_retention.py).
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from linkpulse.config import Settings
from linkpulse.privacy.erase import erase_store
from linkpulse.privacy.person import Person
from linkpulse.store import EventWriter, Tier, migrate, refresh, roles, stored_tier
from linkpulse.store.rollups import rebuild
from tests.test_store_writer import BASE, make_events

pytestmark = pytest.mark.integration
ANALYST = Settings().analyst_role  # the API's group role, as the query lane tests use

RAW_ROWS = """
SELECT date_bin('1 hour', event_time, '2000-01-01 00:00:00+00'), tenant, type, seller_id,
       user_id, count(*)
FROM events WHERE user_id IS NOT NULL GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
"""
ROLLUP_ROWS = (
    "SELECT bucket, tenant, type, seller_id, user_id, events FROM users_1h ORDER BY 1, 2, 3, 4, 5"
)
# the same distinct count over raw events and over the rollup, one scope's view each
DISTINCT = (
    "SELECT count(DISTINCT user_id) FROM analyst.{} WHERE {} >= %s AND {} < %s"
    " AND (%s::text IS NULL OR type = %s::text)"
)


def assert_matches_raw(conn: psycopg.Connection[Any]) -> None:
    # user ids compared as text: the rollup's column is in the "C" collation on plain tiers
    assert conn.execute(ROLLUP_ROWS).fetchall() == conn.execute(RAW_ROWS).fetchall()


def distinct_counts(
    conn: psycopg.Connection[Any], secret: str, seed: int
) -> list[tuple[object, ...]]:
    """(scope, range, type, raw count, rollup count) for random hour-aligned ranges."""
    rnd = random.Random(seed)
    out = []
    for tenant, seller in (("acme", None), ("globex", None), ("acme", "s1"), ("globex", "s3")):
        for _ in range(4):
            start = BASE + timedelta(hours=rnd.randrange(0, 40))
            end = start + timedelta(hours=rnd.randrange(1, 30))
            kind = rnd.choice((None, "order_placed", "page_view"))
            with roles.analyst_session(
                conn, analyst_role=ANALYST, secret=secret, tenant=tenant, seller_id=seller
            ) as s:
                args = (start, end, kind, kind)
                raw = s.execute(DISTINCT.format("events", "event_time", "event_time"), args)
                want = raw.fetchone()
                got = s.execute(DISTINCT.format("users_1h", "bucket", "bucket"), args).fetchone()
            out.append((tenant, seller, start, end, kind, want, got))
    return out


def chunk_intervals(conn: psycopg.Connection[Any]) -> dict[str, timedelta]:
    """Time interval of each hypertable's chunks, a continuous aggregate's by its view name."""
    rows = conn.execute(
        "SELECT coalesce(a.view_name, d.hypertable_name), d.time_interval"
        " FROM timescaledb_information.dimensions d"
        " LEFT JOIN timescaledb_information.continuous_aggregates a"
        "   ON a.materialization_hypertable_name = d.hypertable_name"
    ).fetchall()
    return dict(rows)


@pytest.fixture
def users_dsn(lane_dsn: str) -> str:
    migrate(lane_dsn)
    with psycopg.connect(lane_dsn, autocommit=True) as conn:
        roles.setup(conn, analyst_role=ANALYST)
    return lane_dsn


def test_users_rollup_equals_raw_distinct_counts_and_forgets_the_erased(users_dsn: str) -> None:
    seed = 4141
    events = make_events(1500, seed=seed, span_s=2 * 86400)
    late = make_events(200, seed=seed + 1, start=BASE + timedelta(hours=3), prefix="late")
    with EventWriter(users_dsn) as w:
        w.write_events(events)
    with psycopg.connect(users_dsn, autocommit=True) as conn:
        tier = stored_tier(conn)
        refresh(conn)
        assert_matches_raw(conn)
    with EventWriter(users_dsn) as w:
        assert w.write_events(late) == 200  # late events in hours already rolled up
    with psycopg.connect(users_dsn, autocommit=True) as conn:
        report = refresh(conn)
        if tier is not Tier.FULL_TIMESCALE:
            assert report.buckets["users_1h"] == 6  # three late hours, two tenants
        assert_matches_raw(conn)
        assert (
            conn.execute("SELECT count(*) FROM users_1h").fetchone()
            < conn.execute("SELECT count(*) FROM events WHERE user_id IS NOT NULL").fetchone()
        )  # fewer rows than the raw events it answers for
        secret = roles.scope_secret(conn)
        counts = distinct_counts(conn, secret, seed)
        rebuild(conn, only=["users_1h"])  # the one-pass rebuild gives the same rows
        assert_matches_raw(conn)
        if tier is Tier.FULL_TIMESCALE:  # its chunks never outlive the raw chunks (0016)
            assert chunk_intervals(conn)["users_1h"] == chunk_intervals(conn)["events"]
        # an erase leaves no row of the person, and the rest still equal to the raw events
        person = "SELECT count(*) FROM users_1h WHERE user_id = 'u7'"
        assert conn.execute(person).fetchone() != (0,)
        erase_store(conn, Person(user_id="u7", tenant=None, ids=("u7",), label="u7"))
        assert conn.execute(person).fetchone() == (0,)
        assert_matches_raw(conn)
    assert all(c[-1] == c[-2] for c in counts), f"seed {seed}: {counts}"
    assert any(c[-1] != (0,) for c in counts if c[1] is not None), f"seed {seed}: sellers empty"
