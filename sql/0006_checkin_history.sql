-- Checkin history at scale: cluster summaries, deduplication keys of their own,
-- and what time-partitioning and retention need. Additive: `clusters_checkins`
-- stays an ordinary table until `wfm-worker migrate partition-checkins` is run.

-- Cluster summaries, maintained by the worker in the same upsert as the
-- cluster's document: the older API's reports (age, checkins, persistent) can
-- be answered from `clusters` alone, and survive the retention of history.
-- Back-filled once from the history there is.
ALTER TABLE clusters ADD COLUMN IF NOT EXISTS first_checkin_at timestamp;
ALTER TABLE clusters ADD COLUMN IF NOT EXISTS checkin_count bigint;
UPDATE clusters AS c
   SET first_checkin_at = h.first_at, checkin_count = h.checkins
  FROM (SELECT cluster_id, min(created_at) AS first_at, count(*) AS checkins
          FROM clusters_checkins
         GROUP BY cluster_id) AS h
 WHERE c.cluster_id = h.cluster_id
   AND c.checkin_count IS NULL;
CREATE INDEX IF NOT EXISTS clusters_first_checkin_at ON clusters (first_checkin_at);
CREATE INDEX IF NOT EXISTS versions_latest ON versions (component_name, train, release_timestamp DESC);

-- Deduplication keys, remembered for one to two rotation windows: a unique
-- index on a partitioned `clusters_checkins` must include `created_at`, which
-- differs between deliveries of a message without a publisher timestamp. Two
-- generations; the current one takes new keys, both are checked. Writers hold
-- a shared advisory lock for their transaction; a rotation takes it exclusively,
-- empties the older generation and makes it current, so all writers always agree
-- on the current generation.
CREATE TABLE IF NOT EXISTS checkin_key_generation (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    current smallint NOT NULL CHECK (current IN (0, 1)),
    rotated_at timestamp NOT NULL
);
INSERT INTO checkin_key_generation (current, rotated_at)
VALUES (0, now() AT TIME ZONE 'UTC')
ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS checkin_keys (
    generation smallint NOT NULL,
    message_id text NOT NULL,
    PRIMARY KEY (generation, message_id)
) PARTITION BY LIST (generation);
CREATE TABLE IF NOT EXISTS checkin_keys_0 PARTITION OF checkin_keys FOR VALUES IN (0);
CREATE TABLE IF NOT EXISTS checkin_keys_1 PARTITION OF checkin_keys FOR VALUES IN (1);

-- The oldest checkin time history keeps (set by retention; NULL: everything).
-- A checkin older than this still counts in its cluster's summary.
CREATE TABLE IF NOT EXISTS checkin_history (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    horizon timestamp
);
INSERT INTO checkin_history (horizon) VALUES (NULL) ON CONFLICT DO NOTHING;

-- Creates and attaches the partition `name` of [lower, upper) unless it exists.
-- Created apart and attached (SHARE UPDATE EXCLUSIVE on the parent, which
-- inserts do not wait for) rather than `CREATE TABLE … PARTITION OF` (ACCESS
-- EXCLUSIVE); the CHECK constraint matching the bound spares the attach its
-- validation scan. Returns whether it created it.
CREATE OR REPLACE FUNCTION wfm_create_checkin_partition(name text, lower timestamp, upper timestamp)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass(quote_ident(name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE format('CREATE TABLE %I (LIKE clusters_checkins INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMPRESSION)', name);
    ELSE
        EXECUTE format('CREATE TABLE %I (LIKE clusters_checkins INCLUDING DEFAULTS INCLUDING STORAGE)', name);
    END IF;
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (created_at IS NOT NULL AND created_at >= %L AND created_at < %L)',
                   name, name || '_range', lower, upper);
    EXECUTE format('ALTER TABLE clusters_checkins ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, lower, upper);
    RETURN true;
END
$$;

-- The state of an online conversion of `clusters_checkins` to a partitioned
-- table (`wfm-worker migrate partition-checkins`), so that an interrupted one
-- resumes where it stopped: the boundary below which the existing table becomes
-- the first partition.
CREATE TABLE IF NOT EXISTS checkin_conversion (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    boundary timestamp NOT NULL,
    started_at timestamp NOT NULL
);
