//! Checkins: both tables written, event-time order, message_id idempotency.

use wfm_worker::{
    message::{Checkin, Item, Limits},
    store,
};

use crate::support::{
    CLUSTER, Outgoing, TestEnv, checkin_body,
    db::{TestDb, assert_settled_on_one_plan, plans},
    received,
};

const CHECKINS: &str = "SELECT count(*) FROM clusters_checkins";

async fn cluster_marker(env: &TestEnv, cluster: &str) -> String {
    let client = env.db.client().await;
    let id: uuid::Uuid = cluster.parse().unwrap();
    client
        .query_one(
            "SELECT data->>'marker' FROM clusters WHERE cluster_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn checkin_is_stored_verbatim_in_both_tables_at_its_event_time() {
    let env = TestEnv::new().await;
    let worker = env.start();
    let body = checkin_body(CLUSTER, "first");
    env.broker
        .publish_checkins(&[Outgoing::new(body.clone()).id("m-1").at_secs(1_470_157_200)])
        .await;
    env.wait_for_rows(CHECKINS, 1).await;

    let client = env.db.client().await;
    let row = client
        .query_one(
            "SELECT cluster_id::text, created_at::text, data::text, message_id FROM clusters_checkins",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), CLUSTER);
    assert_eq!(row.get::<_, String>(1), "2016-08-02 17:00:00");
    assert_eq!(
        row.get::<_, String>(2),
        body,
        "document stored verbatim, unknown fields kept"
    );
    assert_eq!(row.get::<_, String>(3), "m-1");
    let cluster = client
        .query_one(
            "SELECT data::text, last_checkin_at::text FROM clusters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(cluster.get::<_, String>(0), body);
    assert_eq!(cluster.get::<_, String>(1), "2016-08-02 17:00:00");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn checkin_without_a_timestamp_is_dated_on_receipt() {
    let env = TestEnv::new().await;
    let worker = env.start();
    env.broker
        .publish_checkins(&[Outgoing::new(checkin_body(CLUSTER, "x"))])
        .await;
    env.wait_for_rows(CHECKINS, 1).await;
    let skew = env
        .db
        .count("SELECT abs(extract(epoch FROM (now() AT TIME ZONE 'UTC') - created_at))::bigint FROM clusters_checkins")
        .await;
    assert!(skew < 60, "created_at is {skew} s from now");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn an_older_checkin_arriving_later_is_recorded_but_does_not_replace_the_cluster() {
    let env = TestEnv::new().await;
    let worker = env.start();
    env.broker
        .publish_checkins(&[Outgoing::new(checkin_body(CLUSTER, "newer"))
            .id("n")
            .at_secs(2_000_000_000)])
        .await;
    env.wait_for_rows(CHECKINS, 1).await;
    env.broker
        .publish_checkins(&[Outgoing::new(checkin_body(CLUSTER, "older"))
            .id("o")
            .at_secs(1_000_000_000)])
        .await;
    env.wait_for_rows(CHECKINS, 2).await;
    assert_eq!(cluster_marker(&env, CLUSTER).await, "newer");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn many_checkins_of_one_cluster_in_one_batch_leave_the_newest_by_event_time() {
    let env = TestEnv::new().await;
    // Published before the worker starts, so they arrive as one batch of 200.
    let mut seconds: Vec<u64> = (0..200).map(|i| 1_600_000_000 + i * 7).collect();
    shuffle(&mut seconds);
    let newest = *seconds.iter().max().unwrap();
    let messages: Vec<Outgoing> = seconds
        .iter()
        .map(|&s| {
            Outgoing::new(checkin_body(CLUSTER, &s.to_string()))
                .id(format!("m-{s}"))
                .at_secs(s)
        })
        .collect();
    env.broker.publish_checkins(&messages).await;
    let worker = env.start();
    env.wait_for_rows(CHECKINS, 200).await;
    assert_eq!(cluster_marker(&env, CLUSTER).await, newest.to_string());
    assert_eq!(env.db.count("SELECT count(*) FROM clusters").await, 1);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_id_already_stored_is_not_stored_again() {
    let env = TestEnv::new().await;
    let body = checkin_body(CLUSTER, "dup");
    let dup = Outgoing::new(body).id("same-id").at_secs(1_600_000_000);
    // Twice in one batch ...
    env.broker
        .publish_checkins(&[dup.clone(), dup.clone()])
        .await;
    let worker = env.start();
    env.wait_for_rows(CHECKINS, 1).await;
    // ... and again later, as a redelivery or a publisher retry would, followed
    // by a sentinel: once the sentinel is stored the duplicate has been handled.
    let sentinel = Outgoing::new(checkin_body(CLUSTER, "sentinel"))
        .id("sentinel")
        .at_secs(1_600_000_001);
    env.broker.publish_checkins(&[dup, sentinel]).await;
    env.wait_for_rows(
        "SELECT count(*) FROM clusters_checkins WHERE message_id = 'sentinel'",
        1,
    )
    .await;
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM clusters_checkins WHERE message_id = 'same-id'")
            .await,
        1
    );
    assert_eq!(env.db.count(CHECKINS).await, 2);
    assert_eq!(
        env.broker.ready(&env.broker.topology.checkin_queue).await,
        0
    );
    worker.stop().await.unwrap();
}

/// A deterministic shuffle (xorshift), enough to scramble arrival order.
fn shuffle<T>(items: &mut [T]) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

/// `bodies` parsed as a batch of checkins, the `i`th with message id `ids[i]`.
fn parsed<'a>(bodies: &'a [String], ids: &'a [String]) -> Vec<Item<Checkin<'a>>> {
    bodies
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(index, (body, id))| Item {
            index,
            value: Checkin::parse(&received(body, id), &Limits::default()).unwrap(),
        })
        .collect()
}

/// Every checkin rewrites its cluster's row. The new version must go in the
/// old one's page (a HOT update: no new index entry, and the dead version is
/// pruned in place later), so that a round of checkins from every cluster does
/// not grow `clusters` (`sql/0007`). Packed full, the pages had no room for it:
/// every update moved its row to a new page, and each round grew the table by
/// its whole size until VACUUM. Nothing here waits on pruning, which other
/// databases' open transactions may hold back.
#[tokio::test]
async fn a_clusters_new_row_version_goes_in_the_old_ones_page_so_a_round_of_checkins_does_not_grow_the_table()
 {
    const CLUSTERS: usize = 400;
    let db = TestDb::create().await;
    let pool = db.bootstrapped_pool().await;
    let client = db.client().await;
    let pages = || async {
        let row = client
            .query_one(
                "SELECT pg_relation_size('clusters') / current_setting('block_size')::bigint",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let mut after_first = 0;
    for round in 0..2 {
        let bodies: Vec<String> = (0..CLUSTERS)
            .map(|c| {
                checkin_body(
                    &format!("00000000-0000-4000-8000-{c:012}"),
                    &format!("round {round}"),
                )
            })
            .collect();
        let ids: Vec<String> = (0..CLUSTERS).map(|c| format!("r{round}-c{c}")).collect();
        let checkins = parsed(&bodies, &ids);
        for batch in checkins.chunks(50) {
            let mut conn = pool.get().await.unwrap();
            let outcome = store::write_checkins(&mut conn, batch).await.unwrap();
            assert_eq!(outcome.stored, batch.len() as u64);
        }
        if round == 0 {
            after_first = pages().await;
        }
    }
    let updated: i64 = client
        .query_one(
            "SELECT count(*) FROM clusters WHERE checkin_count = 2 AND data->>'marker' = 'round 1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(updated, CLUSTERS as i64, "every cluster's row rewritten");
    let after_second = pages().await;
    assert_eq!(
        after_second, after_first,
        "clusters grew from {after_first} to {after_second} pages in a round of checkins"
    );
}

/// The checkin statement is planned once per connection, not at every batch
/// (see `assert_settled_on_one_plan`).
#[tokio::test]
async fn the_checkin_statement_settles_on_one_plan_per_connection() {
    const BATCHES: usize = 12;
    let db = TestDb::create().await;
    let pool = db.bootstrapped_pool().await;
    let bodies: Vec<String> = (0..BATCHES * 2)
        .map(|c| checkin_body(&format!("00000000-0000-4000-8000-{c:012}"), "plans"))
        .collect();
    let ids: Vec<String> = (0..bodies.len()).map(|c| format!("plan-{c}")).collect();
    let checkins = parsed(&bodies, &ids);
    let mut conn = pool.get().await.unwrap();
    for batch in checkins.chunks(2) {
        let outcome = store::write_checkins(&mut conn, batch).await.unwrap();
        assert_eq!(outcome.stored, 2);
    }
    let planned = plans(&conn, "INSERT INTO checkin_keys").await;
    assert_settled_on_one_plan(planned, BATCHES as i64);
}
