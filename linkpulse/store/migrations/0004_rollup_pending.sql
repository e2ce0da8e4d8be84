-- Buckets of each rollup waiting for its next refresh. A refresh turns the
-- writer's minute marks (lp_rollup_dirty) into one pending bucket per rollup,
-- then recomputes the rollups that are due; coarse rollups can thus be
-- refreshed less often (each pass of a touched day costs the whole day's raw
-- rows) without losing a mark. See linkpulse.store.rollups.
CREATE TABLE lp_rollup_pending (
    rollup    text        NOT NULL,
    tenant    text        NOT NULL,
    bucket    timestamptz NOT NULL,
    marked_at timestamptz NOT NULL,
    PRIMARY KEY (rollup, tenant, bucket)
);
