-- Access: API keys (stored only as hashes) and the audit log (issue 11).
--
-- api_keys: one row per key. key_id is the key's visible prefix ("lp_3f9a2c1d"),
-- shown by `linkpulse keys list` and in the audit log; key_hash is the sha256 of
-- the whole key (the key itself is printed once at creation and never stored).
-- A key is usable while revoked_at is null and expires_at is null or in the future.
CREATE TABLE api_keys (
    key_id       text        PRIMARY KEY,
    key_hash     text        NOT NULL UNIQUE,
    name         text        NOT NULL DEFAULT '',
    role         text        NOT NULL
        CHECK (role IN ('admin', 'operator', 'analyst', 'viewer', 'ingest', 'seller')),
    tenant       text        NOT NULL,
    seller       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    -- a seller key is scoped to one seller; no other role carries one
    CHECK ((role = 'seller') = (seller IS NOT NULL))
);

-- audit_log: who (principal, role, scope), what (action, resource), when, the
-- outcome and how many rows or events were sent. Written in batches by the API
-- (off the request path) and by the keys CLI. A hypertable on TimescaleDB; a
-- plain table on PostgreSQL (it needs no partitions made ahead: it is small
-- next to events, and `at DESC` serves every query of GET /v1/audit).
CREATE TABLE audit_log (
    id        bigserial   NOT NULL,
    at        timestamptz NOT NULL,
    principal text        NOT NULL,
    role      text,
    tenant    text,
    seller    text,
    action    text        NOT NULL,
    resource  text        NOT NULL DEFAULT '',
    scope     jsonb       NOT NULL DEFAULT '{}',
    outcome   text        NOT NULL,
    status    integer,
    items     bigint      NOT NULL DEFAULT 0,
    detail    text        NOT NULL DEFAULT '',
    PRIMARY KEY (id, at)
);
-- @tier: full,apache
SELECT create_hypertable('audit_log', by_range('at', INTERVAL '7 days'));
-- @tier: all
CREATE INDEX audit_log_at ON audit_log (at DESC);
CREATE INDEX audit_log_principal_at ON audit_log (principal, at DESC);
CREATE INDEX audit_log_action_at ON audit_log (action, at DESC);
