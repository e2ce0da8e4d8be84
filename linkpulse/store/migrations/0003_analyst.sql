-- Analyst access: security-barrier views in schema `analyst` that show only
-- the caller's scope (tenant, and seller when set). Roles and grants are
-- cluster-wide and named by settings, so linkpulse.store.roles.setup() makes
-- them; this file makes the database objects. See docs/analyst-sql.md.
--
-- Scope is never taken on trust from a setting the analyst can change:
--  * a direct login (psql) is mapped to its scope by session_user in
--    lp_private.analyst_logins, which analysts can't read or write;
--  * the SQL endpoint sets linkpulse.tenant / linkpulse.seller together with
--    linkpulse.scope_token = "<backend pid>.<expiry epoch>.<mac>", where
--    mac = sha256hex(secret || sha256hex(secret || 'tenant|seller|pid|expiry'))
--    and the secret sits in lp_private.scope_secret, readable only by the
--    owner. An analyst who calls set_config() to widen the scope breaks the
--    mac, and every view then raises instead of answering.

CREATE SCHEMA lp_private;
REVOKE ALL ON SCHEMA lp_private FROM PUBLIC;

CREATE TABLE lp_private.scope_secret (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    secret text NOT NULL
);
-- gen_random_uuid() draws from the server's strong random source.
INSERT INTO lp_private.scope_secret (secret)
VALUES (replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));

CREATE TABLE lp_private.analyst_logins (
    role_name text PRIMARY KEY,
    tenant    text NOT NULL,
    seller_id text
);

CREATE FUNCTION lp_private.verified_scope(OUT tenant text, OUT seller_id text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t     text := nullif(current_setting('linkpulse.tenant', true), '');
    s     text := nullif(current_setting('linkpulse.seller', true), '');
    tok   text := nullif(current_setting('linkpulse.scope_token', true), '');
    parts text[];
    sec   text;
    mac   text;
BEGIN
    IF t IS NULL AND s IS NULL AND tok IS NULL THEN
        SELECT l.tenant, l.seller_id INTO tenant, seller_id
        FROM lp_private.analyst_logins l WHERE l.role_name = session_user;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'linkpulse: no analyst scope for role %', session_user
                USING ERRCODE = '42501',
                      HINT = 'use a login made by linkpulse.store.roles, or the SQL endpoint';
        END IF;
        RETURN;
    END IF;
    parts := string_to_array(coalesce(tok, ''), '.');
    IF t IS NULL OR coalesce(array_length(parts, 1), 0) <> 3
       OR parts[1] !~ '^[0-9]{1,10}$' OR parts[2] !~ '^[0-9]{1,12}$' THEN
        RAISE EXCEPTION 'linkpulse: invalid analyst scope' USING ERRCODE = '42501';
    END IF;
    IF parts[1]::bigint <> pg_backend_pid() OR to_timestamp(parts[2]::bigint) < now() THEN
        RAISE EXCEPTION 'linkpulse: analyst scope token expired or not for this session'
            USING ERRCODE = '42501';
    END IF;
    SELECT ss.secret INTO sec FROM lp_private.scope_secret ss;
    mac := encode(sha256(convert_to(sec || encode(sha256(convert_to(
               sec || t || '|' || coalesce(s, '') || '|' || parts[1] || '|' || parts[2],
               'UTF8')), 'hex'), 'UTF8')), 'hex');
    IF mac <> parts[3] THEN
        RAISE EXCEPTION 'linkpulse: invalid analyst scope' USING ERRCODE = '42501';
    END IF;
    tenant := t;
    seller_id := s;
END
$$;
REVOKE ALL ON FUNCTION lp_private.verified_scope() FROM PUBLIC;

CREATE SCHEMA analyst;
REVOKE ALL ON SCHEMA analyst FROM PUBLIC;

-- Each view filters with scalar subqueries, evaluated once per query, so the
-- tenant condition still drives index scans and partition pruning.
CREATE VIEW analyst.events WITH (security_barrier) AS
SELECT e.event_id, e.type, e.event_time, e.tenant, e.user_id, e.seller_id, e.amount,
       e.currency, e.properties, e.schema_version, e.ingested_at
FROM public.events e
WHERE e.tenant = (SELECT v.tenant FROM lp_private.verified_scope() v)
  AND ((SELECT v.seller_id FROM lp_private.verified_scope() v) IS NULL
       OR e.seller_id = (SELECT v.seller_id FROM lp_private.verified_scope() v));

CREATE VIEW analyst.events_1m WITH (security_barrier) AS
SELECT r.bucket, r.tenant, r.type, r.seller_id, r.events, r.revenue, r.distinct_users
FROM public.events_1m r
WHERE r.tenant = (SELECT v.tenant FROM lp_private.verified_scope() v)
  AND ((SELECT v.seller_id FROM lp_private.verified_scope() v) IS NULL
       OR r.seller_id = (SELECT v.seller_id FROM lp_private.verified_scope() v));

CREATE VIEW analyst.events_1h WITH (security_barrier) AS
SELECT r.bucket, r.tenant, r.type, r.seller_id, r.events, r.revenue, r.distinct_users
FROM public.events_1h r
WHERE r.tenant = (SELECT v.tenant FROM lp_private.verified_scope() v)
  AND ((SELECT v.seller_id FROM lp_private.verified_scope() v) IS NULL
       OR r.seller_id = (SELECT v.seller_id FROM lp_private.verified_scope() v));

CREATE VIEW analyst.events_1d WITH (security_barrier) AS
SELECT r.bucket, r.tenant, r.type, r.seller_id, r.events, r.revenue, r.distinct_users
FROM public.events_1d r
WHERE r.tenant = (SELECT v.tenant FROM lp_private.verified_scope() v)
  AND ((SELECT v.seller_id FROM lp_private.verified_scope() v) IS NULL
       OR r.seller_id = (SELECT v.seller_id FROM lp_private.verified_scope() v));

-- A seller-scoped analyst sees only windows whose dimensions name their seller.
CREATE VIEW analyst.metric_windows WITH (security_barrier) AS
SELECT m.metric, m.tenant, m.dims_key, m.dimensions, m."window", m.window_start,
       m.window_end, m.value, m.count, m.sum, m.min, m.max, m.mean, m."distinct",
       m.p50, m.p95, m.p99, m.revision, m.final, m.updated_at
FROM public.metric_windows m
WHERE m.tenant = (SELECT v.tenant FROM lp_private.verified_scope() v)
  AND ((SELECT v.seller_id FROM lp_private.verified_scope() v) IS NULL
       OR m.dimensions ->> 'seller_id' = (SELECT v.seller_id FROM lp_private.verified_scope() v));
