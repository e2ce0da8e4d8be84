-- Covering indexes on the full tier's continuous aggregates, like the rollup
-- tables' of the other tiers (0002), so a tenant's series (by type, or all
-- types) is an index-only scan of the materialized hypertable's chunks, not a
-- bitmap heap scan. CREATE INDEX on a continuous aggregate makes the index on
-- its materialized hypertable (schema _timescaledb_internal). The plain and
-- Apache-only tiers have these since 0002: nothing to do there.

-- @tier: full
CREATE INDEX events_1m_series ON events_1m (tenant, type, bucket)
    INCLUDE (seller_id, events, revenue, distinct_users);
CREATE INDEX events_1h_series ON events_1h (tenant, type, bucket)
    INCLUDE (seller_id, events, revenue, distinct_users);
CREATE INDEX events_1d_series ON events_1d (tenant, type, bucket)
    INCLUDE (seller_id, events, revenue, distinct_users);
CREATE INDEX events_1m_tenant ON events_1m (tenant, bucket)
    INCLUDE (type, seller_id, events, revenue, distinct_users);
CREATE INDEX events_1h_tenant ON events_1h (tenant, bucket)
    INCLUDE (type, seller_id, events, revenue, distinct_users);
CREATE INDEX events_1d_tenant ON events_1d (tenant, bucket)
    INCLUDE (type, seller_id, events, revenue, distinct_users);
-- Superseded, and each one more index for every refresh to write: 0002's
-- (tenant, type, bucket) and TimescaleDB's default (tenant, bucket DESC).
DO $$
DECLARE
    idx record;
BEGIN
    FOR idx IN
        SELECT format('%I.%I', n.nspname, c.relname) AS name
        FROM timescaledb_information.continuous_aggregates a
        JOIN pg_index i ON i.indrelid = format('%I.%I', a.materialization_hypertable_schema,
                                               a.materialization_hypertable_name)::regclass
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE a.view_schema = current_schema()
          AND a.view_name IN ('events_1m', 'events_1h', 'events_1d')
          AND (c.relname = a.view_name || '_type'
               OR pg_get_indexdef(i.indexrelid) LIKE '% USING btree (tenant, bucket DESC)')
    LOOP
        EXECUTE 'DROP INDEX ' || idx.name;
    END LOOP;
END
$$;
-- @tier: all
