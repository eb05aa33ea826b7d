//! Batching: a batch is written when full or when the linger runs out, in one
//! round trip to the database.

use std::time::Duration;

use crate::support::{
    Outgoing, RunningWorker, TestEnv, checkin_body, gate::Gate, version_body, wait_until,
};

#[tokio::test]
async fn the_linger_flushes_a_partial_batch() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.pipeline.batch_size = 500;
    settings.pipeline.batch_linger = Duration::from_millis(50);
    let worker = RunningWorker::start(settings);
    let messages: Vec<Outgoing> = (0..3).map(|i| numbered("l", i)).collect();
    env.broker.publish_checkins(&messages).await;
    // 3 of 500: only the linger can have written them.
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 3)
        .await;
    let queue = env.broker.topology.checkin_queue.clone();
    wait_until(
        "the partial batch to be acked",
        Duration::from_secs(10),
        || async { env.broker.ready(&queue).await == 0 },
    )
    .await;
    worker.stop().await.unwrap();
}

/// A backlog of messages is written in batches that end once their bodies
/// reach WFM_BATCH_BYTES, however many messages WFM_BATCH_SIZE would allow.
#[tokio::test]
async fn a_batch_ends_once_its_bodies_reach_the_byte_limit() {
    let env = TestEnv::new().await;
    let messages: Vec<Outgoing> = (0..30).map(|i| numbered("b", i)).collect();
    let body = messages[0].body.len();
    env.broker.publish_checkins(&messages).await;
    let mut settings = env.settings();
    settings.pipeline.batch_size = 500;
    // Two bodies stay below it, the third reaches it: three per batch at most.
    settings.pipeline.batch_bytes = 2 * body + 1;
    let worker = RunningWorker::start(settings);
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 30)
        .await;
    worker.stop().await.unwrap();
    // A batch is one transaction: its rows share their `xmin`.
    let client = env.db.client().await;
    let row = client
        .query_one(
            "SELECT max(n), count(*) FROM (SELECT count(*) AS n FROM clusters_checkins
              GROUP BY xmin::text) batches",
            &[],
        )
        .await
        .unwrap();
    let (largest, batches): (i64, i64) = (row.get(0), row.get(1));
    assert!(largest <= 3, "a batch of {largest} messages");
    assert!(batches >= 10, "{batches} batches for 30 messages");
}

/// BEGIN, the key lock, the write and COMMIT go out before any reply comes
/// back: behind a gate that withholds every reply inside a transaction, a
/// writer that waited for one (BEGIN's, say) would never commit.
#[tokio::test]
async fn a_batch_is_written_in_one_round_trip() {
    let env = TestEnv::new().await;
    let gate = Gate::start("127.0.0.1:5432".parse().unwrap()).await;
    let mut settings = env.settings();
    settings.database.config = env.db.url_via(gate.addr).parse().unwrap();
    let worker = RunningWorker::start(settings);
    // Start-up (bootstrap, first connections, statements prepared) goes
    // through the open gate.
    let checkin = |i: usize| numbered("r", i);
    let version = |i: usize| {
        Outgoing::new(version_body(
            "router",
            "stable",
            &format!("v{i}"),
            "2016-08-02T17:00:00Z",
            "",
        ))
    };
    env.broker.publish_checkins(&[checkin(0)]).await;
    env.broker.publish_versions(&[version(0)]).await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 1)
        .await;
    env.wait_for_rows("SELECT count(*) FROM versions", 1).await;

    gate.arm();
    let checkins: Vec<_> = (1..=20).map(checkin).collect();
    env.broker.publish_checkins(&checkins).await;
    env.broker.publish_versions(&[version(1), version(2)]).await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 21)
        .await;
    env.wait_for_rows("SELECT count(*) FROM versions", 3).await;
    assert!(
        gate.passed() >= 2,
        "{} transactions through the gate",
        gate.passed()
    );

    // Anything else the worker does in a transaction may wait: let it finish.
    gate.disarm();
    worker.stop().await.unwrap();
}

/// The `i`th checkin of a test tagged `tag`: cluster `i`, id `{tag}-{i}`.
fn numbered(tag: &str, i: usize) -> Outgoing {
    Outgoing::new(checkin_body(
        &format!("00000000-0000-4000-8000-{i:012}"),
        tag,
    ))
    .id(format!("{tag}-{i}"))
}
