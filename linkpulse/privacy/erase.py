"""Erase a person's rows from the store: raw events, dead letters, and the rollups they fed.

One transaction deletes the person's events (plain partitions and
TimescaleDB chunks alike, compressed ones included: TimescaleDB 2.11+
deletes from a compressed chunk by decompressing only the batches involved;
an older one refuses, and then the chunks involved are decompressed, the rows
deleted and the chunks compressed again) and the dead letters that mention
them, and on the tiers with rollup tables marks the minutes they were in for
recompute in the same transaction. Then the rollups are refreshed: on those
tiers ``rollups.refresh`` recomputes exactly the marked buckets from the
remaining events; on full TimescaleDB the continuous aggregates are refreshed
over the range the deleted events spanned.

What stays, by design (docs/privacy.md): ``metric_windows``, anomaly scores
and alerts hold aggregates of many people and no user id; rollup buckets whose
raw events retention already dropped cannot be recomputed (they hold counts,
no id).

``dry_run`` counts what would go and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from linkpulse.errors import StoreError
from linkpulse.privacy.person import Person
from linkpulse.query.watermarks import EVENT_SOURCES, WatermarkBumper
from linkpulse.store.capabilities import Tier
from linkpulse.store.migrate import stored_tier
from linkpulse.store.rollups import BUCKET_ORIGIN, ROLLUP_SPECS, refresh

__all__ = ["StoreErasure", "erase_store"]

Step = Callable[[str], None]

_WHERE = "user_id = ANY(%(ids)s) AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"
_COMPRESSED = """
SELECT format('%%I.%%I', c.chunk_schema, c.chunk_name)
FROM timescaledb_information.chunks c
WHERE c.hypertable_schema = current_schema() AND c.hypertable_name = 'events' AND c.is_compressed
  AND EXISTS (SELECT 1 FROM events e
              WHERE e.user_id = ANY(%(ids)s) AND (%(tenant)s::text IS NULL OR e.tenant = %(tenant)s)
                AND e.event_time >= c.range_start AND e.event_time < c.range_end)
ORDER BY 1
"""
_DELETE = f"""
WITH d AS (DELETE FROM events WHERE {_WHERE} RETURNING tenant, event_time)
INSERT INTO lp_erase_rows SELECT tenant, event_time FROM d
"""
_LETTERS = """
SELECT id, received_at, payload FROM dead_letters
WHERE EXISTS (SELECT 1 FROM unnest(%s::text[]) AS q(s) WHERE strpos(payload, q.s) > 0)
"""


@dataclass
class StoreErasure:
    """What an erase did to the store (or, with ``dry_run``, would do)."""

    tier: str
    events: int = 0
    dead_letters: int = 0
    tenants: list[str] = field(default_factory=list)
    first: datetime | None = None
    last: datetime | None = None
    compressed_chunks: list[str] = field(default_factory=list)
    decompressed: bool = False
    buckets: int = 0
    dry_run: bool = False


def erase_store(
    conn: psycopg.Connection,
    who: Person,
    *,
    dry_run: bool = False,
    step: Step | None = None,
    watermarks: WatermarkBumper | None = None,
) -> StoreErasure:
    """Delete ``who``'s events and dead letters, recompute the rollups (``conn``: autocommit).

    ``watermarks``: the query cache's (``linkpulse.query.watermarks``); the minutes the
    deleted events were in are touched, so no cached answer still counts them.
    """
    say = step or (lambda _: None)
    tier = stored_tier(conn)
    if tier is None:
        msg = "the store has no schema yet: run `linkpulse db migrate` first"
        raise StoreError(msg)
    report = StoreErasure(tier=tier.value, dry_run=dry_run)
    args: dict[str, object] = {"ids": list(who.ids), "tenant": who.tenant}
    say("finding the person's events")
    with conn.transaction(force_rollback=dry_run):
        conn.execute(
            "CREATE TEMP TABLE lp_erase_rows (tenant text, event_time timestamptz) ON COMMIT DROP"
        )
        if tier is Tier.FULL_TIMESCALE:
            report.compressed_chunks = [r[0] for r in conn.execute(_COMPRESSED, args).fetchall()]
        if dry_run:
            conn.execute(
                f"INSERT INTO lp_erase_rows SELECT tenant, event_time FROM events WHERE {_WHERE}",
                args,
            )
        else:
            say("deleting the person's events")
            report.decompressed = _delete_events(conn, args, report.compressed_chunks)
        summary = conn.execute(
            "SELECT count(*), min(event_time), max(event_time), "
            "coalesce(array_agg(DISTINCT tenant ORDER BY tenant), '{}'), "
            "count(DISTINCT (tenant, date_bin('1 minute', event_time, %s))) FROM lp_erase_rows",
            (BUCKET_ORIGIN,),
        ).fetchone()
        assert summary is not None
        report.events, report.first, report.last, report.tenants, report.buckets = summary
        erased_minutes = conn.execute(
            "SELECT DISTINCT tenant, date_trunc('minute', event_time) FROM lp_erase_rows"
        ).fetchall()
        say("finding the dead letters that mention them")
        letters = [
            (i, at)
            for i, at, payload in conn.execute(_LETTERS, (who.quoted(),)).fetchall()
            if who.mentioned_in(payload)
        ]
        report.dead_letters = len(letters)
        if dry_run:
            return report
        if tier is not Tier.FULL_TIMESCALE and report.events:
            from linkpulse.store._sql import mark_buckets  # the writer's marking, reused

            conn.execute(mark_buckets("lp_erase_rows"))
        say(f"deleting {report.dead_letters} dead letters")
        if letters:
            conn.execute(
                "DELETE FROM dead_letters WHERE (id, received_at) IN "
                "(SELECT * FROM unnest(%s::int8[], %s::timestamptz[]))",
                ([i for i, _ in letters], [at for _, at in letters]),
            )
    if watermarks is not None and erased_minutes:
        full = tier is Tier.FULL_TIMESCALE  # real-time aggregates: the rollups change at once
        sources = EVENT_SOURCES if full else ("events",)
        watermarks.touch_rows(sources, erased_minutes, tenant=0, at=1)
    if report.events:
        say(f"recomputing the rollups over {report.buckets} touched minutes")
        _refresh_rollups(conn, tier, report, watermarks)
    return report


def _delete_events(conn: psycopg.Connection, args: dict[str, object], chunks: list[str]) -> bool:
    """Move the rows into ``lp_erase_rows`` (one DELETE ... RETURNING, so a row written
    meanwhile is either deleted and marked, or left whole); True when compressed
    chunks had to be decompressed first."""
    try:
        with conn.transaction():  # a savepoint: a refusal leaves the outer transaction usable
            conn.execute(_DELETE, args)
        return False
    except (psycopg.errors.FeatureNotSupported, psycopg.errors.ObjectNotInPrerequisiteState):
        if not chunks:
            raise
    for chunk in chunks:  # TimescaleDB before 2.11: no DML on compressed chunks
        conn.execute("SELECT decompress_chunk(%s::regclass, if_compressed => true)", (chunk,))
    conn.execute(_DELETE, args)
    for chunk in chunks:
        conn.execute("SELECT compress_chunk(%s::regclass, if_not_compressed => true)", (chunk,))
    return True


def _refresh_rollups(
    conn: psycopg.Connection,
    tier: Tier,
    report: StoreErasure,
    watermarks: WatermarkBumper | None,
) -> None:
    if tier is not Tier.FULL_TIMESCALE:
        # the marked buckets, recomputed from the remaining events (and touched)
        refresh(conn, tier, watermarks=watermarks)
        return
    for spec in ROLLUP_SPECS:
        # whole buckets around the deleted events (refresh_continuous_aggregate
        # only recomputes buckets wholly inside its window)
        conn.execute(
            sql.SQL(
                "CALL refresh_continuous_aggregate({name}, date_bin({w}, {first}, {o}), "
                "date_bin({w}, {last}, {o}) + {w})"
            ).format(
                name=sql.Literal(spec.name),
                w=sql.Literal(spec.width),
                first=sql.Literal(report.first),
                last=sql.Literal(report.last),
                o=sql.Literal(BUCKET_ORIGIN),
            )
        )
