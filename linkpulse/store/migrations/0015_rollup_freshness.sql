-- Rollup freshness for the query layer (issue 13 §1: a read from a rollup is
-- exact). analyst.rollup_stale(start, end) gives, for each rollup, the start of
-- its earliest bucket overlapping [start, end) that may differ from the raw
-- events right now (NULL: none does), for the caller's verified tenant only.
-- linkpulse.query reads a rollup before that bucket and the next finer clean
-- source (finer rollup, else raw events) from it on, so answers never lag the
-- writer. It exposes no row of any table: one timestamp per rollup, in scope
-- (users_1h too, migration 0014: the same logs, the same rule).
-- SECURITY DEFINER: analysts read neither the rollup logs nor TimescaleDB's
-- catalogue. EXECUTE stays with PUBLIC: only roles with USAGE on the analyst
-- schema (the analyst roles) can name it, and it raises without a valid scope.

-- @tier: plain,apache
-- The rollups are tables: a bucket is stale while a minute of it is in the
-- writer's dirty log (stale for every rollup) or it is pending for that
-- rollup (claimed by a refresh that did not recompute this rollup yet).
CREATE FUNCTION analyst.rollup_stale(p_start timestamptz, p_end timestamptz)
RETURNS TABLE (rollup text, stale_from timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
WITH scope AS (SELECT v.tenant FROM lp_private.verified_scope() v),
spec (rollup, width) AS (
    VALUES ('events_1m', interval '1 minute'), ('events_1h', interval '1 hour'),
           ('events_1d', interval '1 day'), ('users_1h', interval '1 hour')
)
SELECT s.rollup, least(
    (SELECT min(p.bucket) FROM public.lp_rollup_pending p
     WHERE p.rollup = s.rollup AND p.tenant = (SELECT tenant FROM scope)
       AND p.bucket >= date_bin(s.width, p_start, timestamptz '2000-01-01 00:00:00+00')
       AND p.bucket < p_end),
    (SELECT date_bin(s.width, min(d.bucket), timestamptz '2000-01-01 00:00:00+00')
     FROM public.lp_rollup_dirty d
     WHERE d.tenant = (SELECT tenant FROM scope)
       AND d.bucket >= date_bin(s.width, p_start, timestamptz '2000-01-01 00:00:00+00')
       AND d.bucket < p_end))
FROM spec s
$$;

-- @tier: full
-- The rollups are real-time continuous aggregates: buckets from the
-- watermark on are computed from the raw events at query time; below it, a
-- bucket is stale when TimescaleDB logged a change there not yet refreshed
-- (the hypertable's log, for every aggregate, and each aggregate's own log),
-- counted only where raw chunks exist: a dropped chunk's range is logged too,
-- but there the rollup is the only copy and is final. Not per tenant (the
-- logs are not): stale for one tenant is stale for all, which is exact, only
-- slower. Times in the logs are TimescaleDB's internal microseconds.
CREATE FUNCTION analyst.rollup_stale(p_start timestamptz, p_end timestamptz)
RETURNS TABLE (rollup text, stale_from timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
WITH scope AS (SELECT v.tenant FROM lp_private.verified_scope() v),
spec (rollup, width) AS (
    VALUES ('events_1m', interval '1 minute'), ('events_1h', interval '1 hour'),
           ('events_1d', interval '1 day'), ('users_1h', interval '1 hour')
),
agg AS (
    SELECT s.rollup, s.width, c.mat_hypertable_id, c.raw_hypertable_id,
           _timescaledb_functions.cagg_watermark(c.mat_hypertable_id) AS wm
    FROM spec s
    JOIN _timescaledb_catalog.continuous_agg c
      ON c.user_view_schema = 'public' AND c.user_view_name = s.rollup
    WHERE (SELECT tenant FROM scope) IS NOT NULL
),
logged AS (
    SELECT a.rollup, l.lowest_modified_value AS lo, l.greatest_modified_value AS hi
    FROM agg a
    JOIN _timescaledb_catalog.continuous_aggs_hypertable_invalidation_log l
      ON l.hypertable_id = a.raw_hypertable_id
    UNION ALL
    SELECT a.rollup, m.lowest_modified_value, m.greatest_modified_value
    FROM agg a
    JOIN _timescaledb_catalog.continuous_aggs_materialization_invalidation_log m
      ON m.materialization_id = a.mat_hypertable_id
),
raw AS (
    SELECT _timescaledb_functions.to_unix_microseconds(c.range_start) AS rs,
           _timescaledb_functions.to_unix_microseconds(c.range_end) AS re
    FROM timescaledb_information.chunks c
    WHERE c.hypertable_schema = 'public' AND c.hypertable_name = 'events'
),
bounds AS (
    SELECT _timescaledb_functions.to_unix_microseconds(p_start) AS ps,
           _timescaledb_functions.to_unix_microseconds(p_end) AS pe
)
SELECT a.rollup,
       (SELECT date_bin(a.width, _timescaledb_functions.to_timestamp(
                   min(greatest(l.lo, r.rs, b.ps))), timestamptz '2000-01-01 00:00:00+00')
        FROM logged l CROSS JOIN bounds b JOIN raw r
          ON greatest(l.lo, r.rs, b.ps) < least(r.re, b.pe, a.wm)
         AND l.hi >= greatest(l.lo, r.rs, b.ps)
        WHERE l.rollup = a.rollup)
FROM agg a
$$;
-- @tier: all
