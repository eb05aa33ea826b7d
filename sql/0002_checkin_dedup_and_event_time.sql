-- What the queue worker adds, additively: nothing existing is dropped or rewritten.

-- The AMQP message_id of the message a checkin came from. A unique index makes
-- redeliveries and publisher retries idempotent (ON CONFLICT (message_id) DO
-- NOTHING). Rows written by the older service have NULL here, and NULLs never
-- conflict with each other, so they are untouched.
ALTER TABLE clusters_checkins ADD COLUMN IF NOT EXISTS message_id text;
CREATE UNIQUE INDEX IF NOT EXISTS clusters_checkins_message_id_key
    ON clusters_checkins (message_id);

-- Event time of the checkin whose document is in clusters.data, so that a late
-- (older) checkin never overwrites a newer one.
ALTER TABLE clusters ADD COLUMN IF NOT EXISTS last_checkin_at timestamp;

-- Clusters recorded by the older service get the time of their newest recorded
-- checkin; only the new column is written, clusters.data is left as it was.
UPDATE clusters AS c
   SET last_checkin_at = newest.created_at
  FROM (SELECT cluster_id, max(created_at) AS created_at
          FROM clusters_checkins
         GROUP BY cluster_id) AS newest
 WHERE c.cluster_id = newest.cluster_id
   AND c.last_checkin_at IS NULL;
