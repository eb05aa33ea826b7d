-- The three tables of the Workflow Manager API (Go), exactly as that service
-- bootstrapped them. Databases it created already hold them, with rows: every
-- statement here must be a no-op on such a database.
CREATE TABLE IF NOT EXISTS clusters (
    cluster_id uuid PRIMARY KEY,
    data json
);

CREATE TABLE IF NOT EXISTS clusters_checkins (
    checkins_id bigserial PRIMARY KEY,
    cluster_id uuid,
    created_at timestamp,
    data json
);

CREATE TABLE IF NOT EXISTS versions (
    version_id bigserial PRIMARY KEY,
    component_name varchar(32),
    train varchar(24),
    version varchar(32),
    release_timestamp timestamp,
    data json,
    unique (component_name, train, version)
);
