-- Dead letters are idempotent on their origin. A resumed dataflow replays the
-- messages after its last snapshot, and a replayed bad message carries the same
-- source, subject, stream sequence and stream time (received_at), so the
-- writer's INSERT ... ON CONFLICT DO NOTHING stores it once, with no lookup
-- before each write (that lookup had no retry: a store restart stopped the flow).
--
-- The key includes received_at because a unique index on a partitioned table
-- or a hypertable must contain the partition column. Letters without a
-- subject or sequence (NULLs never conflict) are kept at least once, as before.
-- Duplicates stored before this key existed are removed first (the oldest row
-- of each origin stays). The key leads with (source, sequence), so it also
-- serves the lookups the old dead_letters_source_seq index did.
DELETE FROM dead_letters AS d
USING dead_letters AS k
WHERE d.source = k.source AND d.subject = k.subject AND d.sequence = k.sequence
  AND d.received_at = k.received_at AND d.id > k.id;
CREATE UNIQUE INDEX dead_letters_origin ON dead_letters (source, sequence, subject, received_at);
DROP INDEX dead_letters_source_seq;
