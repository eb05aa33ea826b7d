//! Exact deduplication of checkins: keys in two rotating generations, looked
//! up by index however many there are.

use std::time::Duration;

use chrono::Utc;
use tokio_postgres::types::Type;
use wfm_worker::{
    message::{Checkin, Item, Limits},
    store::{self, INSERT_CHECKINS, KEYS_LOCK},
};

use crate::support::{
    TestEnv,
    db::TestDb,
    history::{CHECKINS, at, day, maintain, midnight},
    received, wait_until,
};

#[tokio::test]
async fn a_redelivery_is_recognised_across_a_key_rotation() {
    let env = TestEnv::new().await;
    let worker = env.start();
    let message = at("k-1", "00000000-0000-4000-8000-000000000001", midnight(0));
    env.broker
        .publish_checkins(std::slice::from_ref(&message))
        .await;
    env.wait_for_rows(CHECKINS, 1).await;
    let rotate = || async {
        env.db
            .client()
            .await
            .batch_execute(
                "UPDATE checkin_key_generation SET rotated_at = rotated_at - interval '2 days'",
            )
            .await
            .unwrap();
        assert!(maintain(&env, &day()).await.keys_rotated);
    };
    rotate().await;
    env.broker
        .publish_checkins(std::slice::from_ref(&message))
        .await;
    env.assert_still_working().await;
    assert_eq!(
        env.db.count(CHECKINS).await,
        2,
        "k-1 not stored again within the window"
    );
    rotate().await;
    // Two windows on, the key is forgotten: an ordinary table still refuses the
    // duplicate by its unique message_id index.
    env.broker.publish_checkins(&[message]).await;
    let queue = env.broker.topology.checkin_queue.clone();
    wait_until(
        "the republish to be consumed",
        Duration::from_secs(10),
        || async { env.broker.ready(&queue).await == 0 },
    )
    .await;
    env.assert_still_working().await;
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM clusters_checkins WHERE message_id = 'k-1'")
            .await,
        1
    );
    worker.stop().await.unwrap();
}

/// Deduplication looks each key up in both generations by index, however many
/// keys there are: a batch must not cost more as the key table grows.
#[tokio::test]
async fn key_lookups_stay_index_lookups_as_the_key_table_grows() {
    let env = TestEnv::new().await;
    env.db
        .bootstrap_then(
            "INSERT INTO checkin_keys SELECT g % 2, 'old-' || g FROM generate_series(1, 200000) g;
             ANALYZE checkin_keys; ANALYZE checkin_key_generation;",
        )
        .await;
    let mut client = env.db.client().await;
    let tx = client.transaction().await.unwrap();
    let ids: Vec<uuid::Uuid> = (0..500).map(|_| uuid::Uuid::new_v4()).collect();
    let times = vec![Utc::now().naive_utc(); 500];
    let documents = vec![r#"{"components":[]}"#; 500];
    let keys: Vec<String> = (0..500).map(|i| format!("new-{i}")).collect();
    let explain = format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {INSERT_CHECKINS}");
    let plan: Vec<String> = tx
        .query_typed(
            &explain,
            &[
                (&ids, Type::UUID_ARRAY),
                (&times, Type::TIMESTAMP_ARRAY),
                (&documents, Type::TEXT_ARRAY),
                (&keys, Type::TEXT_ARRAY),
            ],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    tx.rollback().await.unwrap();
    let plan = plan.join("\n");
    assert!(!plan.contains("Seq Scan on checkin_keys"), "{plan}");
    assert!(
        plan.contains("Index Only Scan using checkin_keys_"),
        "{plan}"
    );

    // The worker prepares the statement once per connection: after a few
    // executions PostgreSQL may keep a generic plan, which must probe too.
    client
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan;
             PREPARE w(uuid[], timestamp[], text[], text[]) AS {INSERT_CHECKINS}"
        ))
        .await
        .unwrap();
    let generic: Vec<String> = client
        .query(
            "EXPLAIN (COSTS OFF) EXECUTE w(array_fill(gen_random_uuid(), ARRAY[500]),
               array_fill(localtimestamp, ARRAY[500]), array_fill('{}'::text, ARRAY[500]),
               array_fill('k'::text, ARRAY[500]))",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let generic = generic.join("\n");
    assert!(!generic.contains("Seq Scan on checkin_keys"), "{generic}");
    assert!(
        generic.contains("Index Only Scan using checkin_keys_"),
        "{generic}"
    );
}

/// Writes one new checkin of cluster 1 on `conn`; how many rows it stored.
async fn write_one(conn: &mut store::PgConnection, message_id: &str) -> u64 {
    let body = r#"{"id":"00000000-0000-4000-8000-000000000001","components":[]}"#;
    let value = Checkin::parse(&received(body, message_id), &Limits::default()).unwrap();
    let outcome = store::write_checkins(conn, &[Item { index: 0, value }]).await;
    outcome.unwrap().stored
}

#[tokio::test]
async fn a_writer_takes_the_key_lock_before_it_touches_a_table() {
    let db = TestDb::create().await;
    // One connection, its statements prepared by a first write (preparing
    // them reads the tables' definitions).
    let pool = db.bootstrapped_pool().await;
    assert_eq!(
        write_one(&mut pool.get().await.unwrap(), "warm-up").await,
        1
    );

    // A rotation holds the key lock exclusively; this one also holds the
    // history table, so a writer's lock wait tells which it asked for first.
    let mut rotation = db.client().await;
    let rotation = rotation.transaction().await.unwrap();
    rotation
        .execute("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
        .await
        .unwrap();
    rotation
        .batch_execute("LOCK TABLE clusters_checkins IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        write_one(&mut pool.get().await.unwrap(), "behind-the-rotation").await
    });
    // Only this test's database: parallel tests wait for locks of their own
    // (a `transactionid` wait between two writers, say), and pg_locks shows
    // the whole server's.
    let waiting = "SELECT l.locktype FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                    WHERE NOT l.granted AND a.datname = current_database()";
    wait_until(
        "the writer to wait for a lock",
        Duration::from_secs(10),
        || async { !db.texts(waiting).await.is_empty() },
    )
    .await;
    assert_eq!(db.texts(waiting).await, ["advisory"]);

    rotation.rollback().await.unwrap();
    assert_eq!(writer.await.unwrap(), 1);
}
