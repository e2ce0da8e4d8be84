-- users_1h holds user ids (0014): on the full tier its materialized chunks must
-- not outlive the raw chunks an erase recomputes it from. A continuous
-- aggregate's chunks default to 10 x the raw interval (10 days); make them the
-- raw events' 1 day, so its retention policy (tiers.py: a day inside the raw
-- horizon) drops them with, never after, the raw events they came from. Only
-- chunks made from now on change (a store that already materialized users_1h
-- keeps its existing 10-day chunks until retention drops them).
-- Nothing to do on the other tiers: users_1h is a table, its retention deletes
-- rows by bucket (linkpulse.store.retention).

-- @tier: full
SELECT set_chunk_time_interval('users_1h', INTERVAL '1 day');
