"""The writer's SQL statements, kept apart so they can be read in one place.

>>> "ON CONFLICT DO NOTHING" in EVENTS_FROM_STAGE
True
"""

from __future__ import annotations

__all__ = [
    "DEAD_LETTERS_UNNEST",
    "EVENTS_FROM_STAGE",
    "EVENTS_UNNEST",
    "MARK_BUCKETS",
    "MARK_FROM_STAGE",
    "STAGED_JSON",
    "STAGED_ROWS",
    "STAGE_JSON_TABLE",
    "STAGE_TABLE",
    "UNNEST_ROWS",
    "WINDOWS_UPSERT",
    "insert_events",
    "mark_buckets",
]

STAGE_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS lp_stage_events (
    tenant text, event_id text, event_time timestamptz, type text, user_id text,
    seller_id text, amount float8, currency text, properties text, schema_version int2
) ON COMMIT DELETE ROWS
"""
# The JSON path stages each event's canonical JSON (``encode_event``) as is,
# and the server takes the columns apart: nearly no Python work per event.
STAGE_JSON_TABLE = "CREATE TEMP TABLE IF NOT EXISTS lp_stage_json (j jsonb) ON COMMIT DELETE ROWS"

_EVENT_COLS = (
    "tenant, event_id, event_time, type, user_id, seller_id, amount, currency, properties, "
    "schema_version"
)
_EVENT_SELECT = (
    "tenant, event_id, event_time, type, user_id, seller_id, amount::numeric, currency, "
    "properties::jsonb, schema_version"
)
# The staged JSON as the row path's staged columns, converted the same way:
# amount through float8 (as the row path sends it), the defaults encode_event
# omits (schema_version 1, empty properties) filled back in.
_JSON_FIELDS = """
    j->>'tenant' AS tenant, j->>'event_id' AS event_id,
    (j->>'event_time')::timestamptz AS event_time, j->>'type' AS type,
    j->>'user_id' AS user_id, j->>'seller_id' AS seller_id, (j->>'amount')::float8 AS amount,
    j->>'currency' AS currency, coalesce(j->'properties', '{}') AS properties,
    coalesce((j->>'schema_version')::int2, 1) AS schema_version"""

STAGED_ROWS = "lp_stage_events"
STAGED_JSON = f"(SELECT {_JSON_FIELDS} FROM lp_stage_json) AS s"
UNNEST_ROWS = """unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[],
    %s::text[], %s::float8[], %s::text[], %s::text[], %s::int2[])
    AS s(tenant, event_id, event_time, type, user_id, seller_id, amount, currency, properties,
         schema_version)"""


def insert_events(source: str, *, on_conflict: bool = True) -> str:
    """``INSERT INTO events`` from ``source`` (a relation with the staged columns).

    Without ``on_conflict`` the insert fails on a stored key (the writer then
    redoes the batch with it): a batch of new events, the usual case, skips
    ON CONFLICT's extra index probe per row.
    """
    tail = "ON CONFLICT DO NOTHING" if on_conflict else ""
    return f"INSERT INTO events ({_EVENT_COLS})\nSELECT {_EVENT_SELECT} FROM {source}\n{tail}"


# The (tenant, minute) buckets a batch touches go to the rollups' dirty log in
# the batch's transaction. Replays mark their buckets too: a recompute of an
# unchanged bucket is harmless, and marking from the batch rather than from
# RETURNING keeps the insert itself lean. DO UPDATE (not DO NOTHING) so a mark a
# refresh is claiming right now waits for it and is re-made afterwards: see
# linkpulse.store.rollups.
_ON_MARK_CONFLICT = "ON CONFLICT (tenant, bucket) DO UPDATE SET marked_at = excluded.marked_at"


def mark_buckets(source: str) -> str:
    """Mark the (tenant, minute) buckets of the events in ``source`` dirty.

    Existing marks are taken in their physical order, the order a refresh's
    ``DELETE FROM lp_rollup_dirty`` locks them in: a writer and a refresh (or
    two writers) then never hold one mark each while waiting for the other's.
    """
    return f"""
INSERT INTO lp_rollup_dirty (tenant, bucket)
SELECT m.tenant, m.bucket
FROM (SELECT DISTINCT tenant, date_bin('1 minute', event_time, '2000-01-01 00:00:00+00') AS bucket
      FROM {source}) AS m
LEFT JOIN lp_rollup_dirty AS d ON d.tenant = m.tenant AND d.bucket = m.bucket
ORDER BY d.ctid NULLS LAST
{_ON_MARK_CONFLICT}
"""


EVENTS_FROM_STAGE = insert_events(STAGED_ROWS)
EVENTS_UNNEST = insert_events(UNNEST_ROWS)
MARK_FROM_STAGE = mark_buckets(STAGED_ROWS)
MARK_BUCKETS = mark_buckets("unnest(%s::text[], %s::timestamptz[]) AS s(tenant, event_time)")


# A replayed letter meets its origin key (migration 0008) and is skipped.
DEAD_LETTERS_UNNEST = """
INSERT INTO dead_letters (payload, field, problem, reason, source, subject, sequence, received_at)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                     %s::int8[], %s::timestamptz[])
ON CONFLICT DO NOTHING
"""

WINDOWS_UPSERT = """
INSERT INTO metric_windows AS m (
    metric, tenant, dims_key, dimensions, "window", window_start, window_end, value, count,
    sum, min, max, mean, "distinct", p50, p95, p99, revision, final)
SELECT metric, tenant, dims_key, dimensions::jsonb, "window", window_start, window_end, value,
       count, sum, min, max, mean, "distinct", p50, p95, p99, revision, final
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[],
            %s::timestamptz[], %s::float8[], %s::int8[], %s::float8[], %s::float8[],
            %s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::float8[],
            %s::float8[], %s::int4[], %s::bool[])
     AS s(metric, tenant, dims_key, dimensions, "window", window_start, window_end, value,
          count, sum, min, max, mean, "distinct", p50, p95, p99, revision, final)
ON CONFLICT (tenant, metric, dims_key, "window", window_start) DO UPDATE SET
    dimensions = excluded.dimensions, window_end = excluded.window_end,
    value = excluded.value, count = excluded.count, sum = excluded.sum,
    min = excluded.min, max = excluded.max, mean = excluded.mean,
    "distinct" = excluded."distinct", p50 = excluded.p50, p95 = excluded.p95,
    p99 = excluded.p99, revision = excluded.revision, final = excluded.final,
    updated_at = now()
WHERE m.revision <= excluded.revision
"""
