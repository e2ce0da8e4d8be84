-- Analyst views of the scoring branch's output (issue 13: GET /v1/anomalies,
-- GET /v1/forecasts), scoped like the views of 0003: security-barrier views
-- filtering by lp_private.verified_scope(), evaluated once per query, so the
-- tenant condition still drives the (tenant, time) indexes and pruning.
-- roles.setup() grants them (VIEWS in linkpulse/store/roles.py).
--
-- A series key is "tenant|metric|dims_key|window"; a seller sees the series
-- broken down by its own seller only (dims_key "seller_id=<seller>", the
-- seller %-escaped by the flow). A seller id the flow escapes (characters
-- beyond letters, digits and "_.-~") matches nothing: the view fails closed.
-- The same on every tier: views over the plain tables or hypertables.

CREATE VIEW analyst.anomaly_scores WITH (security_barrier) AS
SELECT a.series, a.time, a.score, a.model, a.tenant, a.details
FROM public.anomaly_scores a
WHERE a.tenant = (SELECT v.tenant FROM lp_private.verified_scope() v)
  AND ((SELECT v.seller_id FROM lp_private.verified_scope() v) IS NULL
       OR split_part(a.series, '|', 3)
          = 'seller_id=' || (SELECT v.seller_id FROM lp_private.verified_scope() v));

CREATE VIEW analyst.forecasts WITH (security_barrier) AS
SELECT f.series, f.model, f.step, f.time, f.issued_at, f.tenant, f.metric, f.mean,
       f.lower80, f.upper80, f.lower95, f.upper95
FROM public.forecasts f
WHERE f.tenant = (SELECT v.tenant FROM lp_private.verified_scope() v)
  AND ((SELECT v.seller_id FROM lp_private.verified_scope() v) IS NULL
       OR split_part(f.series, '|', 3)
          = 'seller_id=' || (SELECT v.seller_id FROM lp_private.verified_scope() v));
