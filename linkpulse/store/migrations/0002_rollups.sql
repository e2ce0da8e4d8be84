-- Rollups events_1m, events_1h, events_1d: the same names and columns on
-- every tier (bucket, tenant, type, seller_id, events, revenue, distinct_users).
-- Full TimescaleDB: continuous aggregates with real-time aggregation, each
-- computed from the raw hypertable (distinct users do not add up across
-- buckets, so 1h/1d are not built on 1m); elsewhere: tables refreshed
-- incrementally by linkpulse.store.rollups from a log of touched buckets.
-- distinct_users is an exact count(DISTINCT user_id) on both, so both answer
-- the same numbers.

-- Touched (tenant, minute) buckets not yet rolled up; the writer adds to it in
-- the same transaction as the events, a refresh claims (deletes) what it
-- recomputes. Present on every tier so a forced lower tier can use it.
CREATE TABLE lp_rollup_dirty (
    tenant    text        NOT NULL,
    bucket    timestamptz NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, bucket)
);

-- Progress of each rollup: the ingested_at high-water mark it has covered.
CREATE TABLE lp_rollup_state (
    rollup         text PRIMARY KEY,
    watermark      timestamptz,
    refreshed_at   timestamptz,
    last_buckets   bigint NOT NULL DEFAULT 0,
    total_buckets  bigint NOT NULL DEFAULT 0
);
INSERT INTO lp_rollup_state (rollup) VALUES ('events_1m'), ('events_1h'), ('events_1d');

-- @tier: plain,apache
CREATE TABLE events_1m (
    bucket         timestamptz NOT NULL,
    tenant         text        NOT NULL,
    type           text        NOT NULL,
    seller_id      text,
    events         bigint      NOT NULL,
    revenue        numeric,
    distinct_users bigint      NOT NULL
);
CREATE TABLE events_1h (LIKE events_1m);
CREATE TABLE events_1d (LIKE events_1m);
CREATE UNIQUE INDEX events_1m_key ON events_1m (tenant, bucket, type, seller_id) NULLS NOT DISTINCT;
CREATE UNIQUE INDEX events_1h_key ON events_1h (tenant, bucket, type, seller_id) NULLS NOT DISTINCT;
CREATE UNIQUE INDEX events_1d_key ON events_1d (tenant, bucket, type, seller_id) NULLS NOT DISTINCT;
-- Covering: a tenant's (or a type's) series is an index-only scan.
CREATE INDEX events_1m_type ON events_1m (tenant, type, bucket)
    INCLUDE (seller_id, events, revenue, distinct_users);
CREATE INDEX events_1h_type ON events_1h (tenant, type, bucket)
    INCLUDE (seller_id, events, revenue, distinct_users);
CREATE INDEX events_1d_type ON events_1d (tenant, type, bucket)
    INCLUDE (seller_id, events, revenue, distinct_users);

-- @tier: full
CREATE MATERIALIZED VIEW events_1m
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', event_time) AS bucket, tenant, type, seller_id,
       count(*) AS events, sum(amount) AS revenue, count(DISTINCT user_id) AS distinct_users
FROM events
GROUP BY 1, 2, 3, 4
WITH NO DATA;
CREATE MATERIALIZED VIEW events_1h
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', event_time) AS bucket, tenant, type, seller_id,
       count(*) AS events, sum(amount) AS revenue, count(DISTINCT user_id) AS distinct_users
FROM events
GROUP BY 1, 2, 3, 4
WITH NO DATA;
CREATE MATERIALIZED VIEW events_1d
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', event_time) AS bucket, tenant, type, seller_id,
       count(*) AS events, sum(amount) AS revenue, count(DISTINCT user_id) AS distinct_users
FROM events
GROUP BY 1, 2, 3, 4
WITH NO DATA;
CREATE INDEX events_1m_type ON events_1m (tenant, type, bucket);
CREATE INDEX events_1h_type ON events_1h (tenant, type, bucket);
CREATE INDEX events_1d_type ON events_1d (tenant, type, bucket);
-- Compression of raw events: segments by tenant and type, ordered by time.
ALTER TABLE events SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'tenant, type',
    timescaledb.compress_orderby = 'event_time DESC'
);
