-- users_1h: the exact distinct active users rollup (issue 13: the KPIs' and
-- series' active_users). One row per (hour, tenant, type, seller_id, user_id)
-- that had at least one event with a user id; `events` counts them. A distinct
-- count of users adds up across no row of events_1m/1h/1d, but the distinct
-- user ids of any set of these rows are exactly the distinct users of the raw
-- events behind them, so
--   SELECT count(DISTINCT user_id) FROM analyst.users_1h
--   WHERE bucket >= :start AND bucket < :end [AND seller_id = ...] [AND type IN (...)]
-- equals count(DISTINCT user_id) over analyst.events for any hour-aligned
-- range, every scope (tenant, seller) and every type or seller filter or
-- grouping (by type, seller_id, hour, day of week), from one row per user and
-- hour instead of one per event.
--
-- It holds user ids (pseudonyms), so it follows the raw horizon, not the
-- rollups' (linkpulse.store.retention), and an erase recomputes it like the
-- other rollups (its buckets never outlive their raw events, so the recompute
-- always finds them).
--
-- Plain and Apache-only tiers: a table refreshed with the other rollups by
-- linkpulse.store.rollups (the writer's minute marks, then one pending bucket
-- per hour, lp_rollup_state row 'users_1h'). Full TimescaleDB: a continuous
-- aggregate with real-time aggregation, refreshed with the others.

INSERT INTO lp_rollup_state (rollup) VALUES ('users_1h');

-- @tier: plain,apache
-- user_id in the "C" collation: a distinct count only compares for equality,
-- which is bytewise under any deterministic collation, and "C" sorts without
-- the locale's strcoll (a distinct count sorts its input).
CREATE TABLE users_1h (
    bucket    timestamptz NOT NULL,
    tenant    text        NOT NULL,
    type      text        NOT NULL,
    seller_id text,
    user_id   text COLLATE "C" NOT NULL,
    events    bigint      NOT NULL
);
-- The key also covers a tenant's range (tenant, bucket leading): an index-only scan.
CREATE UNIQUE INDEX users_1h_key ON users_1h (tenant, bucket, type, seller_id, user_id)
    NULLS NOT DISTINCT;
-- A seller's range (seller keys, seller filters) without reading the tenant's other rows.
CREATE INDEX users_1h_seller ON users_1h (tenant, seller_id, bucket) INCLUDE (type, user_id)
    WHERE seller_id IS NOT NULL;

-- @tier: full
CREATE MATERIALIZED VIEW users_1h
    WITH (timescaledb.continuous, timescaledb.materialized_only = false,
          timescaledb.create_group_indexes = false) AS
SELECT time_bucket(INTERVAL '1 hour', event_time) AS bucket, tenant, type, seller_id, user_id,
       count(*) AS events
FROM events
WHERE user_id IS NOT NULL
GROUP BY 1, 2, 3, 4, 5
WITH NO DATA;
CREATE INDEX users_1h_scope ON users_1h (tenant, bucket) INCLUDE (type, seller_id, user_id);
CREATE INDEX users_1h_seller ON users_1h (tenant, seller_id, bucket) INCLUDE (type, user_id)
    WHERE seller_id IS NOT NULL;

-- @tier: all
-- Scoped like 0003's views (roles.VIEWS grants it).
CREATE VIEW analyst.users_1h WITH (security_barrier) AS
SELECT r.bucket, r.tenant, r.type, r.seller_id, r.user_id, r.events
FROM public.users_1h r
WHERE r.tenant = (SELECT v.tenant FROM lp_private.verified_scope() v)
  AND ((SELECT v.seller_id FROM lp_private.verified_scope() v) IS NULL
       OR r.seller_id = (SELECT v.seller_id FROM lp_private.verified_scope() v));
