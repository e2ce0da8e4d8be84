-- Forecasts: the newest forecast of each series for each future window.
-- One row per (series, model, step, time): `time` is the start of the window
-- forecast (a minute for step '1m', an hour for '1h'), `issued_at` the end of
-- the last window the forecaster had learned when it made it. A newer forecast
-- of the same window replaces the row (the flow upserts only when issued_at is
-- not older), so the table stays one row per future window, and a replay writes
-- the same rows. Time-partitioned on `time` like the other tables of 0001.
CREATE TABLE forecasts (
    series    text             NOT NULL,
    model     text             NOT NULL,
    step      text             NOT NULL,
    time      timestamptz      NOT NULL,
    issued_at timestamptz      NOT NULL,
    tenant    text             NOT NULL DEFAULT '',
    metric    text             NOT NULL DEFAULT '',
    mean      double precision NOT NULL,
    lower80   double precision NOT NULL,
    upper80   double precision NOT NULL,
    lower95   double precision NOT NULL,
    upper95   double precision NOT NULL,
    PRIMARY KEY (series, model, step, time)
) @PARTITION_BY_RANGE(time);
-- @tier: full,apache
SELECT create_hypertable('forecasts', by_range('time', INTERVAL '1 day'));
-- @tier: all
CREATE INDEX forecasts_tenant_metric_time ON forecasts (tenant, metric, step, time);
