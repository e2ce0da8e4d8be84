-- Core tables: raw events, metric windows, anomaly scores, alert state changes,
-- dead letters. Time-partitioned on every tier: hypertables (1-day chunks) on
-- TimescaleDB, native daily range partitions on plain PostgreSQL (created ahead
-- by `linkpulse db maintain` and on demand by the writer).
--
-- Lines "-- @tier: a,b" start a section applied only on those tiers
-- (full = TimescaleDB with its community licence, apache = Apache-only
-- TimescaleDB, plain = PostgreSQL without TimescaleDB); "-- @tier: all" ends it.
-- "@PARTITION_BY_RANGE(col)" becomes "PARTITION BY RANGE (col)" on plain
-- PostgreSQL and nothing on TimescaleDB, where create_hypertable follows.

CREATE TABLE lp_store_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Events. The key is (tenant, event_time, event_id): a unique key on a
-- partitioned table or hypertable must contain the partition column, and the
-- producer sets both the id and the time, so a replay carries the same pair and
-- is stored once (INSERT ... ON CONFLICT DO NOTHING). Leading with
-- (tenant, event_time) lets the key also serve "time range for a tenant".
CREATE TABLE events (
    tenant         text        NOT NULL,
    event_id       text        NOT NULL,
    event_time     timestamptz NOT NULL,
    type           text        NOT NULL,
    user_id        text,
    seller_id      text,
    amount         numeric,
    currency       text,
    properties     jsonb       NOT NULL DEFAULT '{}',
    schema_version smallint    NOT NULL DEFAULT 1,
    ingested_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, event_time, event_id)
) @PARTITION_BY_RANGE(event_time);
-- @tier: full,apache
SELECT create_hypertable('events', by_range('event_time', INTERVAL '1 day'));
-- @tier: all
CREATE INDEX events_tenant_type_time ON events (tenant, type, event_time DESC);
CREATE INDEX events_tenant_seller_time ON events (tenant, seller_id, event_time DESC)
    WHERE seller_id IS NOT NULL;

-- One row per metric, dimension set, window and window start; a republished
-- window (late data) replaces the row only if its revision is not older.
CREATE TABLE metric_windows (
    metric       text        NOT NULL,
    tenant       text        NOT NULL,
    dims_key     text        NOT NULL,
    dimensions   jsonb       NOT NULL DEFAULT '{}',
    "window"     text        NOT NULL,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    value        double precision,
    count        bigint      NOT NULL DEFAULT 0,
    sum          double precision NOT NULL DEFAULT 0,
    min          double precision,
    max          double precision,
    mean         double precision,
    "distinct"   double precision,
    p50          double precision,
    p95          double precision,
    p99          double precision,
    revision     integer     NOT NULL DEFAULT 0,
    final        boolean     NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, metric, dims_key, "window", window_start)
) @PARTITION_BY_RANGE(window_start);
-- @tier: full,apache
SELECT create_hypertable('metric_windows', by_range('window_start', INTERVAL '1 day'));
-- @tier: all
-- "latest windows of a tenant" (dashboards' first paint); latest per series uses the key.
CREATE INDEX metric_windows_tenant_start ON metric_windows (tenant, window_start DESC);

-- Anomaly scores, one per series, model and time.
CREATE TABLE anomaly_scores (
    series  text             NOT NULL,
    time    timestamptz      NOT NULL,
    score   double precision NOT NULL,
    model   text             NOT NULL,
    tenant  text             NOT NULL DEFAULT '',
    details jsonb            NOT NULL DEFAULT '{}',
    PRIMARY KEY (series, model, time)
) @PARTITION_BY_RANGE(time);
-- @tier: full,apache
SELECT create_hypertable('anomaly_scores', by_range('time', INTERVAL '1 day'));
-- @tier: all
CREATE INDEX anomaly_scores_tenant_time ON anomaly_scores (tenant, time DESC);

-- Alerts: every state change of every alert (pending, firing, acknowledged, resolved).
CREATE TABLE alerts (
    alert_id text        NOT NULL,
    rule     text        NOT NULL,
    series   text        NOT NULL,
    state    text        NOT NULL,
    at       timestamptz NOT NULL,
    tenant   text        NOT NULL DEFAULT '',
    details  jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (alert_id, at, state)
) @PARTITION_BY_RANGE(at);
-- @tier: full,apache
SELECT create_hypertable('alerts', by_range('at', INTERVAL '7 days'));
-- @tier: all
CREATE INDEX alerts_series_at ON alerts (series, at DESC);
CREATE INDEX alerts_tenant_at ON alerts (tenant, at DESC);

-- Dead letters: inputs that could not be used, with the reason and the origin.
CREATE TABLE dead_letters (
    id          bigserial   NOT NULL,
    payload     text        NOT NULL,
    field       text        NOT NULL,
    problem     text        NOT NULL,
    reason      text        NOT NULL,
    source      text        NOT NULL,
    subject     text,
    sequence    bigint,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (id, received_at)
) @PARTITION_BY_RANGE(received_at);
-- @tier: full,apache
SELECT create_hypertable('dead_letters', by_range('received_at', INTERVAL '1 day'));
-- @tier: all
CREATE INDEX dead_letters_received ON dead_letters (received_at DESC);
CREATE INDEX dead_letters_source_seq ON dead_letters (source, sequence);
