"""EventWriter: exactly-once storage, rollups, incremental refresh.

Tests taking ``lane_dsn`` run on both store lanes (the server of
LINKPULSE_TEST_DATABASE_URL and the WASM TimescaleDB) with the tier the database
has; they hold one connection at a time. Tests of the plain tiers' own
mechanism (the bucket log, pending buckets) force that tier (``plain_dsn``);
tests needing COPY or two connections at once run on the server alone.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest

from linkpulse.errors import StoreError
from linkpulse.schemas import EVENT_CLASS_BY_TYPE, BaseEvent, encode_event
from linkpulse.schemas.outputs import DeadLetter, MetricWindow
from linkpulse.store import EventWriter, Tier, migrate, refresh, stored_tier
from linkpulse.store.rollups import rebuild

BASE = datetime(2026, 11, 20, tzinfo=UTC)
TYPES = ("page_view", "order_placed", "payment_settled", "user_signup", "listing_created")
ROLLUP_SQL = """
SELECT date_bin(%s::interval, event_time, '2000-01-01 00:00:00+00') AS bucket, tenant, type,
       seller_id, count(*), sum(amount), count(DISTINCT user_id)
FROM events GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 NULLS FIRST
"""


def make_events(
    n: int,
    *,
    seed: int = 1,
    start: datetime = BASE,
    span_s: int = 3 * 3600,
    prefix: str = "e",
    tenants: tuple[str, ...] = ("acme", "globex"),
) -> list[BaseEvent]:
    """``n`` valid events, deterministic for a seed, spread over ``span_s`` seconds."""
    rnd = random.Random(seed)
    out: list[BaseEvent] = []
    for i in range(n):
        kind = TYPES[rnd.randrange(len(TYPES))]
        when = start + timedelta(seconds=rnd.randrange(span_s), microseconds=rnd.randrange(10**6))
        fields: dict[str, object] = {
            "event_id": f"{prefix}{i}",
            "tenant": rnd.choice(tenants),
            "event_time": when,
        }
        if kind == "page_view":
            fields["properties"] = {"page": "home"}
            if rnd.random() < 0.5:
                fields["user_id"] = f"u{rnd.randrange(200)}"
        elif kind == "user_signup":
            fields["user_id"] = f"u{rnd.randrange(200)}"
        elif kind == "listing_created":
            fields["seller_id"] = f"s{rnd.randrange(5)}"
            fields["properties"] = {"listing_id": f"l{i}"}
        else:
            fields.update(
                user_id=f"u{rnd.randrange(200)}",
                seller_id=f"s{rnd.randrange(5)}",
                amount=round(rnd.uniform(1, 500), 2),
                currency="USD",
                properties={"order_id": f"o{i}"},
            )
        out.append(EVENT_CLASS_BY_TYPE[kind](**fields))  # type: ignore[arg-type]
    return out


XMIN_SQL = "SELECT xmin::text, ctid::text FROM events_1m WHERE bucket = %s AND tenant = 'acme'"


def rollup_rows(conn: psycopg.Connection, name: str) -> list[tuple[object, ...]]:
    return conn.execute(
        f"SELECT bucket, tenant, type, seller_id, events, revenue, distinct_users FROM {name} "
        "ORDER BY 1, 2, 3, 4 NULLS FIRST"
    ).fetchall()


@pytest.fixture
def store_dsn(pg_dsn: str) -> str:
    """The server's database, migrated with the tier the server offers."""
    migrate(pg_dsn)
    return pg_dsn


@pytest.fixture
def lane_store_dsn(lane_dsn: str) -> str:
    """Each lane's database, migrated with the tier it offers (one connection at a time)."""
    migrate(lane_dsn)
    return lane_dsn


@pytest.fixture
def plain_dsn(pg_dsn: str) -> str:
    """The server's database on the plain tier, forced: for the bucket log's own tests."""
    migrate(pg_dsn, tier="plain")
    return pg_dsn


def assert_rollups_match_raw(conn: psycopg.Connection, *names: str) -> None:
    """Each rollup equals a GROUP BY over the raw events (the tier-neutral check)."""
    widths = {"events_1m": "1 minute", "events_1h": "1 hour", "events_1d": "1 day"}
    for name in names or tuple(widths):
        assert rollup_rows(conn, name) == conn.execute(ROLLUP_SQL, (widths[name],)).fetchall(), name


@pytest.mark.slow
def test_100k_events_replays_and_late_events_are_stored_once(store_dsn: str) -> None:
    events = make_events(100_000)
    late = make_events(2_000, seed=7, start=BASE - timedelta(days=2), prefix="late")
    with EventWriter(store_dsn) as w:
        assert w.write_events(events[:60_000]) == 60_000
        # a replay of a stretch already stored, mixed with new events
        assert w.write_events(events[50_000:]) == 40_000
        assert w.write_events(late) == 2_000  # older buckets, a day that had no partition
        assert w.write_events(events[:1000] + late[:10]) == 0
    with psycopg.connect(store_dsn, autocommit=True) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (tenant, event_id)) FROM events"
        ).fetchone()  # type: ignore[misc]
        assert (total, distinct) == (102_000, 102_000)
        refresh(conn)
        assert_rollups_match_raw(conn)


def test_copy_and_insert_paths_store_the_same_rows(pg_dsn: str) -> None:
    migrate(pg_dsn)
    events = make_events(3_000, seed=3)
    with EventWriter(pg_dsn, use_copy=True, batch_size=700) as w:
        assert w.write_events(events[:2000]) == 2000
    with EventWriter(pg_dsn, use_copy=False, batch_size=700) as w:
        assert w.write_events(events) == 1000  # the first 2000 are replays
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT count(*), sum(amount), count(*) FILTER (WHERE properties ? 'page') FROM events"
        ).fetchone()
    expected_sum = sum(round(e.amount, 2) for e in events if e.amount is not None)
    assert rows is not None and rows[0] == 3000
    assert float(rows[1]) == pytest.approx(expected_sum)
    assert rows[2] == sum(1 for e in events if e.type == "page_view")


def test_incremental_refresh_recomputes_only_touched_buckets(plain_dsn: str) -> None:
    first = make_events(500, seed=4, span_s=600)  # 10 minutes from BASE
    with EventWriter(plain_dsn) as w, psycopg.connect(plain_dsn, autocommit=True) as conn:
        w.write_events(first)
        r1 = refresh(conn)
        assert r1.buckets["events_1m"] == 20  # 10 minutes x 2 tenants
        wm1 = conn.execute(
            "SELECT watermark FROM lp_rollup_state WHERE rollup = 'events_1m'"
        ).fetchone()[0]  # type: ignore[index]
        assert wm1 is not None
        untouched = conn.execute(
            XMIN_SQL,
            (BASE,),
        ).fetchall()
        assert untouched
        # a late event lands in minute 5 of acme only
        late = make_events(
            1,
            seed=9,
            start=BASE + timedelta(minutes=5),
            span_s=30,
            prefix="late",
            tenants=("acme",),
        )
        assert w.write_events(late) == 1
        assert conn.execute("SELECT count(*) FROM lp_rollup_dirty").fetchone() == (1,)
        r2 = refresh(conn)
        assert r2.claimed == 1
        assert r2.buckets == {"events_1m": 1, "events_1h": 1, "events_1d": 1, "users_1h": 1}
        wm2 = conn.execute(
            "SELECT watermark FROM lp_rollup_state WHERE rollup = 'events_1m'"
        ).fetchone()[0]  # type: ignore[index]
        assert wm2 > wm1
        assert (
            conn.execute(
                XMIN_SQL,
                (BASE,),
            ).fetchall()
            == untouched
        )
        assert rollup_rows(conn, "events_1m") == conn.execute(ROLLUP_SQL, ("1 minute",)).fetchall()
        # nothing new: a refresh does nothing
        assert refresh(conn).claimed == 0


def window(rev: int, value: float, start: datetime = BASE) -> MetricWindow:
    return MetricWindow(
        metric="orders",
        tenant="acme",
        dims_key="seller_id=s1",
        dimensions={"seller_id": "s1"},
        window="1m",
        window_start=start,
        window_end=start + timedelta(minutes=1),
        value=value,
        count=int(value),
        sum=value,
        revision=rev,
    )


def test_metric_windows_keep_the_newest_revision(lane_store_dsn: str) -> None:
    with EventWriter(lane_store_dsn) as w:
        assert w.upsert_metric_windows([window(0, 3.0), window(1, 4.0)]) == 1
        assert w.upsert_metric_windows([window(0, 99.0)]) == 0  # older revision ignored
        assert (
            w.upsert_metric_windows([window(2, 5.0), window(0, 1.0, BASE - timedelta(days=3))]) == 2
        )
    with psycopg.connect(lane_store_dsn, autocommit=True) as conn:
        rows = conn.execute(
            'SELECT window_start, value, revision, "window" FROM metric_windows ORDER BY 1'
        ).fetchall()
        assert [(r[1], r[2], r[3]) for r in rows] == [(1.0, 0, "1m"), (5.0, 2, "1m")]


def test_dead_letters_are_stored_with_their_origin(lane_store_dsn: str) -> None:
    dl = DeadLetter(
        payload='{"type": "x"\x00}',
        field="type",
        problem="unknown type",
        source="nats",
        subject="linkpulse.events.acme",
        sequence=42,
        received_at=BASE,
    )
    with EventWriter(lane_store_dsn) as w:
        assert w.write_dead_letters([dl, dl]) == 1  # idempotent on its origin (0008)
    with psycopg.connect(lane_store_dsn) as conn:
        row = conn.execute("SELECT reason, subject, sequence, payload FROM dead_letters").fetchone()
    assert row == ("type: unknown type", "linkpulse.events.acme", 42, '{"type": "x"\ufffd}')


def test_writer_without_schema_says_to_migrate(lane_dsn: str) -> None:
    with EventWriter(lane_dsn) as w, pytest.raises(StoreError, match="db migrate"):
        w.write_events(make_events(1))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        EventWriter("postgresql://x/y", batch_size=200_000)
    with pytest.raises(ValueError, match="max_retries"):
        EventWriter("postgresql://x/y", max_retries=-1)


def test_rebuild_equals_group_by_and_clears_the_log(lane_store_dsn: str) -> None:
    with EventWriter(lane_store_dsn) as w:
        w.write_events(make_events(3000, seed=12, span_s=2 * 86400))
    with psycopg.connect(lane_store_dsn, autocommit=True) as conn:
        rebuild(conn)
        assert_rollups_match_raw(conn)
        if stored_tier(conn) is not Tier.FULL_TIMESCALE:  # the bucket log is the plain tiers'
            assert conn.execute("SELECT count(*) FROM lp_rollup_dirty").fetchone() == (0,)


def test_overlapped_batches_make_missing_partitions_and_count_exactly(store_dsn: str) -> None:
    # several batches (the overlapped COPY path), all in days with no partition yet
    late = make_events(2_500, seed=13, start=BASE - timedelta(days=40), span_s=3 * 86400)
    with EventWriter(store_dsn, batch_size=400) as w:
        assert w.write_events(late) == 2_500
        assert w.write_events(late[::-1]) == 0
    with psycopg.connect(store_dsn) as conn:
        assert conn.execute("SELECT count(DISTINCT event_id) FROM events").fetchone() == (2_500,)


def test_coarse_rollups_wait_for_their_interval_without_losing_buckets(plain_dsn: str) -> None:
    intervals = {"events_1m": 0.0, "events_1h": 3600.0, "events_1d": 3600.0}
    with EventWriter(plain_dsn) as w, psycopg.connect(plain_dsn, autocommit=True) as conn:
        w.write_events(make_events(300, seed=14, span_s=600))
        first = refresh(conn, min_interval_s=intervals)
        assert first.buckets["events_1d"] > 0  # never refreshed before: due
        w.write_events(make_events(50, seed=15, span_s=600, prefix="n"))
        second = refresh(conn, min_interval_s=intervals)
        assert second.buckets["events_1m"] > 0
        assert second.buckets["events_1h"] == second.buckets["events_1d"] == 0
        assert conn.execute(
            "SELECT count(*) FROM lp_rollup_pending WHERE rollup = 'events_1d'"
        ).fetchone() == (2,)  # two tenants, one day
        assert rollup_rows(conn, "events_1m") == conn.execute(ROLLUP_SQL, ("1 minute",)).fetchall()
        assert rollup_rows(conn, "events_1d") != conn.execute(ROLLUP_SQL, ("1 day",)).fetchall()
        third = refresh(conn)  # no interval: everything due
        assert third.claimed == 0 and third.buckets["events_1d"] == 2
        for name, width in (("events_1h", "1 hour"), ("events_1d", "1 day")):
            assert rollup_rows(conn, name) == conn.execute(ROLLUP_SQL, (width,)).fetchall()


def test_refreshes_racing_with_writers_lose_no_bucket(store_dsn: str) -> None:
    import threading

    batches = [make_events(1_000, seed=100 + i, span_s=300, prefix=f"r{i}-") for i in range(20)]
    done = threading.Event()

    errors: list[Exception] = []

    def write() -> None:
        try:
            with EventWriter(store_dsn, batch_size=250) as w:
                for batch in batches:
                    w.write_events(batch)
        except Exception as e:  # reported by the assertion below
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=write)
    passes = 0
    with psycopg.connect(store_dsn, autocommit=True) as conn:
        t.start()
        while not done.is_set():  # refresh again and again while the writer runs
            refresh(conn)
            passes += 1
        t.join()
        assert errors == []
        refresh(conn)
        assert passes >= 2
        assert_rollups_match_raw(conn, "events_1m", "events_1h")


# -- the JSON path (write_event_json) ------------------------------------------------------------

ROW_SQL = "SELECT (to_jsonb(e) - 'ingested_at')::text FROM events e ORDER BY tenant, event_id"


def tricky_events() -> list[BaseEvent]:
    """Events whose columns could come out differently by the two paths."""
    plus2 = timezone(timedelta(hours=2))
    props: list[dict[str, object]] = [
        {"page": "home"},
        {"page": "search", "q": 'back\\slash "quoted" \\n not a newline', "tab": "a\tb\nc\r"},
        {"page": "product", "ü": "naïve café ✓ 𝄞", "nested": {"a": [1, 2.5, None, True]}},
        {"page": "cart", "f": 0.1 + 0.2, "big": 1e20, "tiny": 1.5e-7, "neg": -0.0, "int": 2**53},
        {"page": "account", "ctrl": "\x01\x1f\x7f", "slashes": "\\\\", "u": "\u2028\u2029"},
    ]
    out: list[BaseEvent] = [
        EVENT_CLASS_BY_TYPE["page_view"](
            event_id=f"pv{i}",
            tenant="acme",
            event_time=BASE + timedelta(seconds=i, microseconds=123_457 * i % 10**6),
            properties=p,
        )
        for i, p in enumerate(props)
    ]
    amounts = [0.1 + 0.2, 123.456789012345678, 1e-7, 999_999_999_999.99, 12.5, 0.0, 7.0]
    for i, amount in enumerate(amounts):
        out.append(
            EVENT_CLASS_BY_TYPE["order_placed"](
                event_id=f"o{i}",
                tenant="globex",
                event_time=(BASE + timedelta(minutes=i, microseconds=999_999)).astimezone(plus2),
                user_id=f"u{i}",
                seller_id="s\\1",
                amount=amount,
                currency="EUR",
                properties={"order_id": f"o{i}"},
            )
        )
    # only what the type requires: user_id and the defaults are absent from the JSON
    out.append(
        EVENT_CLASS_BY_TYPE["user_signup"](
            event_id="bare", tenant="acme", event_time=BASE, user_id="u-\\u00e9"
        )
    )
    out.append(
        EVENT_CLASS_BY_TYPE["user_signup"](
            event_id="w1", tenant="acme", event_time=BASE, user_id="ü\\"
        )
    )
    return out


def stored(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute(ROW_SQL).fetchall()]


def check_json_path_stores_what_write_events_does(dsn: str, use_copy: bool | None) -> None:
    events = tricky_events() + make_events(300, seed=21)
    with EventWriter(dsn, use_copy=use_copy, batch_size=128) as w:
        assert w.write_events(events) == len(events)
    with psycopg.connect(dsn, autocommit=True) as conn:
        by_rows = stored(conn)
        conn.execute("TRUNCATE events, lp_rollup_dirty")
    with EventWriter(dsn, use_copy=use_copy, batch_size=128) as w:
        assert w.write_event_json([encode_event(e) for e in events]) == len(events)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert stored(conn) == by_rows
    assert len(by_rows) == len(events)
    assert any('"schema_version": 1' in r and '"properties": {}' in r for r in by_rows)
    assert any('"amount": 0.3' in r for r in by_rows)  # float8 -> numeric, as the row path


def test_json_path_stores_every_column_as_write_events_does(lane_store_dsn: str) -> None:
    # COPY where the server has it; the WASM TimescaleDB has not: INSERT there
    check_json_path_stores_what_write_events_does(lane_store_dsn, use_copy=None)


def test_json_path_without_copy_stores_every_column_too(store_dsn: str) -> None:
    check_json_path_stores_what_write_events_does(store_dsn, use_copy=False)


def test_json_path_replays_and_mixed_paths_store_each_event_once(lane_store_dsn: str) -> None:
    events = make_events(2_500, seed=22)
    payloads = [encode_event(e) for e in events]
    with EventWriter(lane_store_dsn, batch_size=400) as w:
        assert w.write_event_json(payloads[:1000]) == 1000
        # replays spread over several overlapped batches, mixed with new events
        assert w.write_event_json(payloads[500:1500]) == 500
        assert w.write_events(events[1200:2000]) == 500
        assert w.write_event_json(payloads + payloads[:50]) == 500  # duplicates in the batch
        assert w.write_events(events) == 0
        assert w.write_event_json(payloads[::-1]) == 0
        assert w.retries == 0  # a replayed key is not a lost connection
    with psycopg.connect(lane_store_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone() == (
            2_500,
            2_500,
        )
        refresh(conn)
        assert_rollups_match_raw(conn, "events_1m", "events_1h")


def test_json_path_marks_buckets_and_makes_missing_partitions(plain_dsn: str) -> None:
    late = make_events(900, seed=23, start=BASE - timedelta(days=40), span_s=2 * 86400)
    with EventWriter(plain_dsn, batch_size=300) as w:
        assert w.write_event_json([encode_event(e) for e in late]) == 900
    with psycopg.connect(plain_dsn, autocommit=True) as conn:
        marked = conn.execute("SELECT tenant, bucket FROM lp_rollup_dirty ORDER BY 1, 2").fetchall()
        expected = sorted({(e.tenant, e.event_time.replace(second=0, microsecond=0)) for e in late})
        assert marked == expected


def test_json_copy_text_refuses_documents_with_raw_line_breaks() -> None:
    from linkpulse.store._rows import json_copy_text

    with pytest.raises(ValueError, match="compact"):
        json_copy_text([b'{"a":\n1}'])
    with pytest.raises(ValueError, match="compact"):
        json_copy_text([b'{"a":\t1}'])
