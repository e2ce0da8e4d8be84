-- Alerting: silences, the notifier's state and its notification log (issue 12).
--
-- Small, keyed tables, the same on every tier (full, apache, plain): none is
-- time-partitioned, so no "-- @tier:" section is needed (a hypertable's unique
-- key must hold its time column, and these are looked up by id and key).

-- Silences: label matchers (text, like severity="warning"), a period, who and why.
-- Expiring a silence sets ends_at to the time it was expired (as Alertmanager
-- does), so the history of what was muted when stays readable.
CREATE TABLE silences (
    id         text        PRIMARY KEY,
    tenant     text        NOT NULL DEFAULT '',
    matchers   jsonb       NOT NULL,
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz NOT NULL,
    created_by text        NOT NULL,
    comment    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expired_at timestamptz,
    CHECK (ends_at > starts_at OR expired_at IS NOT NULL)
);
CREATE INDEX silences_ends_at ON silences (ends_at DESC);

-- The notifier's dispatcher state (groups, dedup log) and the JetStream stream
-- sequence it reflects, one row per notifier name; written in the same
-- transaction as the notifications it queued, before the message is acked.
CREATE TABLE notifier_state (
    name       text        PRIMARY KEY,
    state      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The notification log and outbox: one row per notification queued for one
-- receiver. `key` is the Idempotency-Key every attempt carries (PagerDuty's
-- dedup_keys are the alert ids in `alert_ids`). status: pending (to send or
-- being retried), delivered, dead (failed for good or for longer than the
-- configured age: also published on the dead-letter subject).
CREATE TABLE notifications (
    key             text        PRIMARY KEY,
    notifier        text        NOT NULL,
    receiver        text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('notify', 'ack')),
    group_key       text        NOT NULL,
    alert_ids       text[]      NOT NULL,
    payload         jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    delivered_at    timestamptz,
    last_status     integer,
    last_error      text        NOT NULL DEFAULT ''
);
CREATE INDEX notifications_pending ON notifications (notifier, receiver, created_at)
    WHERE status = 'pending';
CREATE INDEX notifications_created ON notifications (created_at DESC);
CREATE INDEX notifications_alerts ON notifications USING gin (alert_ids);
