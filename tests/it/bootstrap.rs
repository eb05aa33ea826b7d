//! Bootstrap: the SQL files applied in order, once, safely in parallel, and
//! harmlessly on a database the older Go service created and filled; the
//! worker's bootstrap connection goes on to write its first batch.

use std::time::Duration;

use wfm_worker::{app, store::MIGRATIONS};

use crate::support::{CLUSTER, Outgoing, TestDb, TestEnv, checkin_body, wait_until};

const TABLES: &str = "SELECT count(*) FROM information_schema.tables
    WHERE table_schema = 'public' AND table_name IN ('clusters', 'clusters_checkins', 'versions')";

#[tokio::test]
async fn bootstrap_on_an_empty_database_creates_the_tables_and_records_each_file() {
    let db = TestDb::create().await;
    let applied = app::bootstrap(&db.settings()).await.unwrap();
    assert_eq!(applied, MIGRATIONS.len());
    assert_eq!(db.count(TABLES).await, 3);
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), MIGRATIONS.len());
    for (row, migration) in rows.iter().zip(MIGRATIONS) {
        assert_eq!(row.get::<_, i64>(0), migration.version);
        assert_eq!(row.get::<_, &str>(1), migration.name);
        assert_eq!(row.get::<_, String>(2), migration.checksum());
    }
}

#[tokio::test]
async fn bootstrap_a_second_time_applies_nothing() {
    let db = TestDb::create().await;
    app::bootstrap(&db.settings()).await.unwrap();
    assert_eq!(app::bootstrap(&db.settings()).await.unwrap(), 0);
    assert_eq!(
        db.count("SELECT count(*) FROM schema_migrations").await,
        MIGRATIONS.len() as i64
    );
}

/// The older service's DDL, verbatim, plus a table of its own we must not touch.
const LEGACY: &str = "
CREATE TABLE clusters (cluster_id uuid PRIMARY KEY, data json);
CREATE TABLE clusters_checkins (checkins_id bigserial PRIMARY KEY, cluster_id uuid, created_at timestamp, data json);
CREATE TABLE versions (version_id bigserial PRIMARY KEY, component_name varchar(32), train varchar(24), version varchar(32), release_timestamp timestamp, data json, unique (component_name, train, version));
CREATE TABLE doctor (doctor_id uuid PRIMARY KEY, data json);
INSERT INTO clusters VALUES ('11111111-1111-1111-1111-111111111111', '{\"id\": \"11111111-1111-1111-1111-111111111111\",  \"components\": []}');
INSERT INTO clusters_checkins (cluster_id, created_at, data) VALUES
  ('11111111-1111-1111-1111-111111111111', '2016-08-01 10:00:00', '{\"old\": 1}'),
  ('11111111-1111-1111-1111-111111111111', '2016-08-02 10:00:00', '{\"old\": 2}');
INSERT INTO versions (component_name, train, version, release_timestamp, data) VALUES
  ('deis-router', 'stable', 'v2.3.0', '2016-07-01 00:00:00', '{\"legacy\": true}');
INSERT INTO doctor VALUES ('22222222-2222-2222-2222-222222222222', '{\"report\": \"kept\"}');
";

const SNAPSHOT: &str = "
SELECT (SELECT json_agg(t ORDER BY cluster_id)::text FROM (SELECT cluster_id, data::text FROM clusters) t)
    || (SELECT json_agg(t ORDER BY checkins_id)::text FROM (SELECT checkins_id, cluster_id, created_at, data::text FROM clusters_checkins) t)
    || (SELECT json_agg(t ORDER BY version_id)::text FROM (SELECT version_id, component_name, train, version, release_timestamp, data::text FROM versions) t)
    || (SELECT json_agg(t)::text FROM (SELECT doctor_id, data::text FROM doctor) t)";

#[tokio::test]
async fn bootstrap_on_a_database_the_older_service_filled_loses_and_alters_nothing() {
    let db = TestDb::create().await;
    let client = db.client().await;
    client.batch_execute(LEGACY).await.unwrap();
    let before: String = client.query_one(SNAPSHOT, &[]).await.unwrap().get(0);

    assert_eq!(
        app::bootstrap(&db.settings()).await.unwrap(),
        MIGRATIONS.len()
    );

    let after: String = client.query_one(SNAPSHOT, &[]).await.unwrap().get(0);
    assert_eq!(before, after, "existing rows changed");
    // The cluster's event time is taken from its newest recorded checkin, so a
    // late, older checkin cannot overwrite the document the old service kept.
    let newest: String = client
        .query_one("SELECT last_checkin_at::text FROM clusters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(newest, "2016-08-02 10:00:00");
}

#[tokio::test]
async fn four_bootstraps_at_once_all_succeed_and_apply_each_file_once() {
    let db = TestDb::create().await;
    let settings = db.settings();
    let runs = (0..4).map(|_| {
        let settings = settings.clone();
        tokio::spawn(async move { app::bootstrap(&settings).await })
    });
    let mut applied = 0;
    for run in futures_util::future::join_all(runs).await {
        applied += run.unwrap().expect("every concurrent bootstrap succeeds");
    }
    assert_eq!(
        applied,
        MIGRATIONS.len(),
        "each file applied by exactly one replica"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM schema_migrations").await,
        MIGRATIONS.len() as i64
    );
}

#[tokio::test]
async fn a_changed_schema_file_refuses_start_up_naming_the_file() {
    let db = TestDb::create().await;
    app::bootstrap(&db.settings()).await.unwrap();
    db.client()
        .await
        .execute(
            "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    let error = app::bootstrap(&db.settings())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("sql/0001_legacy_schema.sql"), "{error}");
    assert!(error.contains("must never change"), "{error}");
}

/// Rows as the older service wrote them (`json.Marshal(Version.Data)`: the
/// release's data, or `null`), and as the worker before 0005 wrote them (the
/// whole event).
const VERSIONS_OF_BOTH: &str = r#"
INSERT INTO versions (component_name, train, version, release_timestamp, data) VALUES
  ('router', 'stable', 'v1', '2016-07-01 00:00:00', '{"description":"old service","fixes":"f"}'),
  ('router', 'stable', 'v2', '2016-07-02 00:00:00', 'null'),
  ('router', 'beta', 'v3', '2016-07-03 00:00:00',
   '{"component":{"name":"router"},"version":{"train":"beta","version":"v3","released":"2016-07-03T00:00:00Z","data":{"description": "kept  verbatim"}}}'),
  ('router', 'beta', 'v4', '2016-07-04 00:00:00',
   '{"component":{"name":"router"},"version":{"train":"beta","version":"v4","released":"2016-07-04T00:00:00Z"}}'),
  ('router', 'beta', 'v5', '2016-07-05 00:00:00',
   '{"component":{"name":"other"},"version":{"train":"beta","version":"v5"}}');
"#;

#[tokio::test]
async fn versions_the_worker_wrote_whole_are_repaired_and_the_older_services_are_untouched() {
    let db = TestDb::create().await;
    let client = db.client().await;
    client.batch_execute(LEGACY).await.unwrap();
    client.batch_execute(VERSIONS_OF_BOTH).await.unwrap();
    app::bootstrap(&db.settings()).await.unwrap();
    let rows = client
        .query("SELECT version, data::text FROM versions WHERE component_name = 'router' ORDER BY version", &[])
        .await
        .unwrap();
    let data: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        data,
        [
            (
                "v1".to_owned(),
                r#"{"description":"old service","fixes":"f"}"#.to_owned()
            ),
            ("v2".to_owned(), "null".to_owned()),
            (
                "v3".to_owned(),
                r#"{"description": "kept  verbatim"}"#.to_owned()
            ),
            ("v4".to_owned(), "null".to_owned()),
            // Not this row's own triple: not the worker's shape, left alone.
            (
                "v5".to_owned(),
                r#"{"component":{"name":"other"},"version":{"train":"beta","version":"v5"}}"#
                    .to_owned()
            ),
        ]
    );
    let legacy: String = client
        .query_one(
            "SELECT data::text FROM versions WHERE component_name = 'deis-router'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(legacy, r#"{"legacy": true}"#);
}

#[tokio::test]
async fn the_worker_writes_its_first_batch_on_the_connection_that_bootstrapped() {
    let env = TestEnv::new().await;
    // Hold the bootstrap, to find the worker's bootstrapping backend waiting on it.
    let holder = env.db.hold_bootstrap().await;
    let worker = env.start();
    let waiting = "SELECT pid FROM pg_stat_activity
        WHERE datname = current_database() AND wait_event = 'advisory'";
    wait_until(
        "the worker's bootstrap to wait for its lock",
        Duration::from_secs(30),
        || async { holder.query_opt(waiting, &[]).await.unwrap().is_some() },
    )
    .await;
    let bootstrapped: i32 = holder.query_one(waiting, &[]).await.unwrap().get(0);
    holder.release().await;
    env.broker
        .publish_checkins(&[Outgoing::new(checkin_body(CLUSTER, "first"))])
        .await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 1)
        .await;

    // Besides its readiness probe's ("SELECT 1"), the worker holds one
    // connection: the bootstrap's, whose last statement was the write's COMMIT.
    let backends = holder
        .query(
            "SELECT pid, query FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'wfm-worker'
                AND query <> 'SELECT 1'",
            &[],
        )
        .await
        .unwrap();
    let backends: Vec<(i32, String)> = backends.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(backends, [(bootstrapped, "COMMIT".to_owned())]);
    worker.stop().await.unwrap();
}
