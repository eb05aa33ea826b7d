-- When the version event each `versions` row holds was published (its AMQP
-- timestamp, else the time the worker received it). Of two events for the same
-- (component, train, version), the later publish wins whatever order they arrive
-- in: a redelivery, a slower replica or a replay of an old event cannot overwrite
-- a newer release.
--
-- A table of its own, not a column of `versions`: the older API reads `versions`
-- with `SELECT *` into exactly six fields (GetLatestVersions), so that table
-- keeps its six columns. Rows the older service wrote have no publish time here,
-- and any publish replaces them. Additive.
CREATE TABLE IF NOT EXISTS version_publishes (
    component_name varchar(32) NOT NULL,
    train varchar(24) NOT NULL,
    version varchar(32) NOT NULL,
    published_at timestamp NOT NULL,
    PRIMARY KEY (component_name, train, version)
);
