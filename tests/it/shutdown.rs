//! Shutdown: a graceful stop loses nothing and stores nothing twice.

use std::time::Duration;

use crate::support::{
    Outgoing, RunningWorker, TestEnv,
    amqp_tap::{AmqpTap, QUEUE_DECLARE},
    checkin_body, wait_until,
};

const TOTAL: i64 = 3000;

fn messages() -> Vec<Outgoing> {
    (0..TOTAL)
        .map(|i| {
            let cluster = format!("00000000-0000-4000-8000-{:012}", i % 100);
            Outgoing::new(checkin_body(&cluster, &i.to_string()))
                .id(format!("m-{i}"))
                .at_secs(1_600_000_000 + i as u64)
        })
        .collect()
}

#[tokio::test]
async fn graceful_shutdown_mid_stream_acks_what_it_stored_and_hands_back_the_rest() {
    let env = TestEnv::new().await;
    env.broker.publish_checkins(&messages()).await;
    let mut settings = env.settings();
    settings.pipeline.batch_size = 10;
    settings.pipeline.prefetch = 50;
    let worker = RunningWorker::start(settings.clone());
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 1)
        .await;
    worker
        .stop()
        .await
        .expect("graceful shutdown exits cleanly");

    let stored = env.db.count("SELECT count(*) FROM clusters_checkins").await;
    assert!(
        stored > 0 && stored < TOTAL,
        "shutdown struck mid-stream: {stored} of {TOTAL} stored"
    );
    // Every stored message was acked and every other one goes back to the
    // queue (the broker requeues a closed channel's deliveries asynchronously).
    let queue = env.broker.topology.checkin_queue.clone();
    wait_until(
        "the unfinished messages to be back in the queue",
        Duration::from_secs(10),
        || async { env.broker.ready(&queue).await as i64 == TOTAL - stored },
    )
    .await;

    let worker = RunningWorker::start(settings);
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", TOTAL)
        .await;
    wait_until("the queue to drain", Duration::from_secs(10), || async {
        env.broker.ready(&queue).await == 0
    })
    .await;
    assert_eq!(
        env.db
            .count("SELECT count(DISTINCT message_id) FROM clusters_checkins")
            .await,
        TOTAL,
        "each message stored exactly once"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_broker_that_stops_answering_during_start_up_does_not_hold_up_shutdown() {
    let env = TestEnv::new().await;
    // A node that is starting or stopping can leave a declare unanswered.
    let tap = AmqpTap::start_holding("127.0.0.1:5672".parse().unwrap(), Some(QUEUE_DECLARE)).await;
    let mut settings = env.settings();
    settings.broker.nodes = vec![tap.url().parse().unwrap()];
    let worker = RunningWorker::start(settings);
    wait_until(
        "the worker to declare its queues",
        Duration::from_secs(10),
        || async { tap.held() },
    )
    .await;
    let stopping = tokio::time::Instant::now();
    worker.stop().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stopped in {:?}",
        stopping.elapsed()
    );
}
