-- Dashboard layouts (issue 14): where each widget sits and what it asks, per user.
--
-- A layout never holds data, a tenant filter or a seller: whoever opens one sees it
-- with their own scope. owner is the principal's id (an API key's visible prefix,
-- jwt:<sub>, local); tenant is the owner's home tenant, and a shared layout is
-- listed to the other principals of that tenant only. A small keyed table, the same
-- on every tier (no "-- @tier:" section).
CREATE TABLE layouts (
    id         text        PRIMARY KEY,
    tenant     text        NOT NULL,
    owner      text        NOT NULL,
    name       text        NOT NULL,
    shared     boolean     NOT NULL DEFAULT false,
    document   jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- a user's own layouts, newest first (the one the dashboard opens)
CREATE INDEX layouts_owner ON layouts (tenant, owner, updated_at DESC);
-- the tenant's shared layouts
CREATE INDEX layouts_shared ON layouts (tenant, updated_at DESC) WHERE shared;
