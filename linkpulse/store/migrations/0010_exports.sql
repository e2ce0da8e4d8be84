-- Exports: background export jobs of the API (issue 13 §3, docs/exports.md).
--
-- One keyed table, the same on every tier (full, apache, plain): it is small and
-- looked up by id, so it is neither partitioned nor a hypertable.
--
-- state: queued -> running -> done | failed; a done job becomes expired when its
-- file is removed (after LINKPULSE_EXPORT_LINK_TTL_S). A running job refreshes
-- heartbeat_at as it writes; a job whose heartbeat is stale (its API process
-- stopped) is marked failed by the next API that starts or sweeps: an export is
-- a snapshot of one transaction, so it is started again (POST), never resumed.
CREATE TABLE export_jobs (
    id             text        PRIMARY KEY,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    heartbeat_at   timestamptz,
    expires_at     timestamptz,
    principal      text        NOT NULL,
    role           text        NOT NULL,
    tenant         text        NOT NULL,
    seller         text,
    format         text        NOT NULL CHECK (format IN ('csv', 'json', 'jsonl', 'parquet')),
    source         jsonb       NOT NULL,
    watermark      jsonb       NOT NULL,
    state          text        NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'done', 'failed', 'expired')),
    rows_written   bigint      NOT NULL DEFAULT 0,
    bytes_written  bigint      NOT NULL DEFAULT 0,
    estimated_rows bigint,
    file           text,
    error          text        NOT NULL DEFAULT ''
);
CREATE INDEX export_jobs_state_created ON export_jobs (state, created_at);
CREATE INDEX export_jobs_principal_created ON export_jobs (principal, created_at DESC);
