-- Checkin documents are ~2 KB, just over the TOAST threshold, so most are
-- compressed on insert; lz4 costs a fraction of pglz's CPU (measured: the
-- batched checkin write ran 1.7x faster, see BENCHMARKS.md). Only values
-- written from now on are affected; existing rows are not rewritten.
-- PostgreSQL before 14, or built without lz4, keeps its default compression.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE 'ALTER TABLE clusters_checkins ALTER COLUMN data SET COMPRESSION lz4';
        EXECUTE 'ALTER TABLE clusters ALTER COLUMN data SET COMPRESSION lz4';
        EXECUTE 'ALTER TABLE versions ALTER COLUMN data SET COMPRESSION lz4';
    END IF;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 compression is not available; keeping the default';
END
$$;
