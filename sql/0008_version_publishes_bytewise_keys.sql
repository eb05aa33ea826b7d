-- `version_publishes` (sql/0004) is this worker's own table, and only its
-- version upsert uses it: an event for a new (component, train, version) looks
-- it up in the primary key twice, once for the conflict check and once to
-- insert; one for a known triple, once.
-- Compared in the database's collation, each step of those searches goes
-- through the C library's strcoll (PostgreSQL compares with memcmp only in
-- "C"/"POSIX"): on a database in a real locale, as RDS creates them
-- (en_US.UTF-8), that is a locale-aware comparison of three strings at every
-- step; even in C.UTF-8 each column compared is copied and handed to strcoll
-- (BENCHMARKS.md, "Version keys compared bytewise").
--
-- The upsert asks the key for equality only, and equality is bytewise in every
-- collation a database can have as its default (all are deterministic), so no
-- lookup or conflict changes; only the index's internal order does, and it now
-- agrees with the order the worker writes each batch in (sorted bytewise).
--
-- `versions`, the older service's table, keeps its collation: that service,
-- and whoever else reads `versions`, may sort by these columns.
--
-- The table holds one row per release triple (thousands, not millions); the
-- change rewrites only its primary key, under a brief exclusive lock on this
-- table alone.
ALTER TABLE version_publishes
    ALTER COLUMN component_name TYPE varchar(32) COLLATE "C",
    ALTER COLUMN train TYPE varchar(24) COLLATE "C",
    ALTER COLUMN version TYPE varchar(32) COLLATE "C";
