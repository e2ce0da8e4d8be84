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
    "STAGE_TABLE",
    "WINDOWS_UPSERT",
]

STAGE_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS lp_stage_events (
    tenant text, event_id text, event_time timestamptz, type text, user_id text,
    seller_id text, amount float8, currency text, properties text, schema_version int2
) ON COMMIT DELETE ROWS
"""

_EVENT_COLS = (
    "tenant, event_id, event_time, type, user_id, seller_id, amount, currency, properties, "
    "schema_version"
)
_EVENT_SELECT = (
    "tenant, event_id, event_time, type, user_id, seller_id, amount::numeric, currency, "
    "properties::jsonb, schema_version"
)

EVENTS_FROM_STAGE = f"""
INSERT INTO events ({_EVENT_COLS})
SELECT {_EVENT_SELECT} FROM lp_stage_events
ON CONFLICT DO NOTHING
"""

EVENTS_UNNEST = f"""
INSERT INTO events ({_EVENT_COLS})
SELECT {_EVENT_SELECT}
FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[], %s::text[],
            %s::float8[], %s::text[], %s::text[], %s::int2[])
     AS s(tenant, event_id, event_time, type, user_id, seller_id, amount, currency,
          properties, schema_version)
ON CONFLICT DO NOTHING
"""

# The (tenant, minute) buckets a batch touches go to the rollups' dirty log in
# the batch's transaction. Replays mark their buckets too: a recompute of an
# unchanged bucket is harmless, and marking from the batch rather than from
# RETURNING keeps the insert itself lean. DO UPDATE (not DO NOTHING) so a mark a
# refresh is claiming right now waits for it and is re-made afterwards: see
# linkpulse.store.rollups.
_ON_MARK_CONFLICT = "ON CONFLICT (tenant, bucket) DO UPDATE SET marked_at = excluded.marked_at"
MARK_FROM_STAGE = f"""
INSERT INTO lp_rollup_dirty (tenant, bucket)
SELECT DISTINCT tenant, date_bin('1 minute', event_time, '2000-01-01 00:00:00+00')
FROM lp_stage_events
{_ON_MARK_CONFLICT}
"""
MARK_BUCKETS = f"""
INSERT INTO lp_rollup_dirty (tenant, bucket)
SELECT * FROM unnest(%s::text[], %s::timestamptz[])
{_ON_MARK_CONFLICT}
"""


DEAD_LETTERS_UNNEST = """
INSERT INTO dead_letters (payload, field, problem, reason, source, subject, sequence, received_at)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                     %s::int8[], %s::timestamptz[])
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
