"""Subject export and erase on both store lanes: no row of the person left, rollups exact.

On the TimescaleDB lane some of the person's rows sit in a compressed chunk;
the rollups are compared with a GROUP BY over the remaining raw events from
their materialized part alone, so the refresh itself is what is checked.
"""

from __future__ import annotations

import msgspec
import psycopg
import pytest

from linkpulse.config import Settings
from linkpulse.privacy import Pseudonymiser
from linkpulse.privacy.erase import erase_store
from linkpulse.privacy.person import person_of
from linkpulse.privacy.subject import subject_rows
from linkpulse.schemas import BaseEvent
from linkpulse.schemas.outputs import DeadLetter
from linkpulse.store import EventWriter, Tier, migrate, refresh, stored_tier
from tests.test_store_writer import BASE, assert_rollups_match_raw, make_events

pytestmark = pytest.mark.integration

SEED = 41
KEY, OLD_KEY = "current key 0123456789", "previous key 0123456789"
SETTINGS = Settings(privacy_pii_fields="user_id", privacy_key=KEY, privacy_previous_keys=OLD_KEY)
VICTIM = "u7"
ROLLUPS = ("events_1m", "events_1h", "events_1d", "users_1h")


def stored_events() -> list[BaseEvent]:
    """Events of many users over two days; the victim's are stored raw (before
    pseudonymisation was on), under the previous key and under the current one."""
    events = make_events(2_500, seed=SEED, span_s=2 * 86400)
    old, new = Pseudonymiser(OLD_KEY.encode(), "user_id"), Pseudonymiser(KEY.encode(), "user_id")
    out = []
    for i, ev in enumerate(events):
        if ev.user_id == VICTIM and i % 3:
            ev = (old if i % 3 == 1 else new).event(ev)
        out.append(ev)
    return out


def victim_ids(events: list[BaseEvent]) -> set[str]:
    who = person_of(VICTIM, None, SETTINGS)
    return {ev.event_id for ev in events if ev.user_id in who.ids}


def letters() -> list[DeadLetter]:
    def letter(payload: str, seq: int) -> DeadLetter:
        return DeadLetter(
            payload=payload,
            field="$",
            problem="bad",
            source="nats",
            subject="lp.events.acme.x",
            sequence=seq,
            received_at=BASE,
        )

    return [
        letter(msgspec.json.encode({"type": "x", "user_id": VICTIM}).decode(), 1),
        letter('{"type": "x", "user_id": "u70"}', 2),  # another person (a longer id)
        letter('{"user_id": "u7", "broken', 3),  # not JSON, mentions them
        letter('{"type": "x"}', 4),
    ]


def check_export(conn: psycopg.Connection, events: list[BaseEvent]) -> None:
    """Subject export: exactly the person's events (all three forms of the id), in time
    order, and the dead letters about them; a tenant narrows it; nobody gives nothing."""
    mine = victim_ids(events)
    rows = list(subject_rows(conn, person_of(VICTIM, None, SETTINGS)))
    exported = [r for r in rows if r["table"] == "events"]
    assert {r["event_id"] for r in exported} == mine
    assert [r["event_time"] for r in exported] == sorted(r["event_time"] for r in exported)
    by_id = {ev.event_id: ev for ev in events}
    for r in exported:
        ev = by_id[r["event_id"]]
        assert (r["tenant"], r["type"], r["user_id"]) == (ev.tenant, ev.type, ev.user_id)
    assert sorted(r["sequence"] for r in rows if r["table"] == "dead_letters") == [1, 3]
    acme = subject_rows(conn, person_of(VICTIM, "acme", SETTINGS))
    assert {r["event_id"] for r in acme if r["table"] == "events"} == {
        i for i in mine if by_id[i].tenant == "acme"
    }
    assert list(subject_rows(conn, person_of("nobody", None, SETTINGS))) == []


def rollups_of(conn: psycopg.Connection) -> None:
    """Rollups from their materialized part only (full tier), then checked against raw."""
    if stored_tier(conn) is Tier.FULL_TIMESCALE:
        for name in ROLLUPS:
            conn.execute(
                f"ALTER MATERIALIZED VIEW {name} SET (timescaledb.materialized_only = true)"
            )
    assert_rollups_match_raw(conn)


def test_export_then_erase_leaves_no_row_of_the_person_and_exact_rollups(lane_dsn: str) -> None:
    migrate(lane_dsn)
    events = stored_events()
    mine = victim_ids(events)
    assert len(mine) >= 10, f"seed {SEED}: the victim should have events"
    with EventWriter(lane_dsn) as w:
        w.write_events(events)
        w.write_dead_letters(letters())
    who = person_of(VICTIM, None, SETTINGS)
    assert len(who.ids) == 3  # raw, current key, previous key
    with psycopg.connect(lane_dsn, autocommit=True) as conn:
        refresh(conn)
        tier = stored_tier(conn)
        compressed: list[str] = []
        if tier is Tier.FULL_TIMESCALE:
            chunk = conn.execute(
                "SELECT format('%I.%I', chunk_schema, chunk_name) "
                "FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'events' ORDER BY range_start LIMIT 1"
            ).fetchone()
            assert chunk is not None
            conn.execute("SELECT compress_chunk(%s::regclass)", (chunk[0],))
            in_chunk = conn.execute(
                f"SELECT count(*) FROM {chunk[0]} WHERE user_id = ANY(%s)", (list(who.ids),)
            ).fetchone()
            assert in_chunk is not None and in_chunk[0] > 0, "the victim must be in that chunk"
            compressed = [chunk[0]]
        total = conn.execute("SELECT count(*) FROM events").fetchone()
        check_export(conn, events)

        dry = erase_store(conn, who, dry_run=True)
        assert (dry.events, dry.dead_letters, dry.dry_run) == (len(mine), 2, True)
        assert dry.compressed_chunks == compressed
        assert conn.execute("SELECT count(*) FROM events").fetchone() == total  # unchanged

        done = erase_store(conn, who)
        assert (done.events, done.dead_letters) == (len(mine), 2)
        assert done.compressed_chunks == compressed and done.buckets > 0
        assert conn.execute(
            "SELECT count(*) FROM events WHERE user_id = ANY(%s)", (list(who.ids),)
        ).fetchone() == (0,)
        left = {r[0] for r in conn.execute("SELECT event_id FROM events").fetchall()}
        assert left == {ev.event_id for ev in events} - mine  # nobody else's row went
        payloads = [r[0] for r in conn.execute("SELECT payload FROM dead_letters ORDER BY 1")]
        assert payloads == sorted(['{"type": "x", "user_id": "u70"}', '{"type": "x"}'])
        rollups_of(conn)
        if tier is Tier.FULL_TIMESCALE:
            # nothing of the person hides in compressed batches either
            assert conn.execute(
                "SELECT is_compressed FROM timescaledb_information.chunks "
                "WHERE format('%%I.%%I', chunk_schema, chunk_name) = %s",
                (compressed[0],),
            ).fetchone() == (True,)
            conn.execute("SELECT decompress_chunk(%s::regclass)", (compressed[0],))
            assert conn.execute(
                "SELECT count(*) FROM events WHERE user_id = ANY(%s)", (list(who.ids),)
            ).fetchone() == (0,)
        again = erase_store(conn, who)  # an unknown (or erased) person: zero, no error
        assert (again.events, again.dead_letters, again.buckets) == (0, 0, 0)


def test_erase_touches_the_query_cache_watermarks_of_the_erased_minutes(
    pg_dsn: str, redis_prefix: str
) -> None:
    import redis

    from linkpulse.query.watermarks import WatermarkTarget, touched, version_key
    from tests.fix_redis import REDIS_URL

    migrate(pg_dsn)
    events = stored_events()
    mine = [ev for ev in events if ev.event_id in victim_ids(events)]
    with EventWriter(pg_dsn) as w:
        w.write_events(events)
    bumper = WatermarkTarget(REDIS_URL, redis_prefix).bumper()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        erase_store(conn, person_of(VICTIM, None, SETTINGS), watermarks=bumper)
    assert bumper.flush()
    bumper.close()
    r = redis.Redis.from_url(REDIS_URL)
    try:
        erased = {
            version_key(redis_prefix, "events", ev.tenant, b)
            for ev in mine
            for b in touched(ev.event_time, None, 3600)
        }
        assert all(r.exists(k) for k in erased), sorted(k for k in erased if not r.exists(k))
        others = set(r.scan_iter(f"{redis_prefix}wm:events:*")) - {k.encode() for k in erased}
        assert others == set()  # nobody else's minutes are forgotten
    finally:
        for k in r.scan_iter(f"{redis_prefix}*"):
            r.delete(k)
        r.close()
