//! Shutdown: a graceful stop loses nothing and stores nothing twice.

use std::time::Duration;

use crate::support::{
    Outgoing, RunningWorker, TestEnv,
    amqp_tap::{AmqpTap, BASIC_CONSUME, Hold, Method, QUEUE_DECLARE, requeued_nacks},
    checkin_body, version_body, wait_until,
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

/// Ten checkins and ten version events, waiting in their queues.
async fn both_queues_filled(env: &TestEnv) {
    let checkins: Vec<_> = (0..10)
        .map(|i| {
            let cluster = format!("00000000-0000-4000-8000-{i:012}");
            Outgoing::new(checkin_body(&cluster, "early")).id(format!("c-{i}"))
        })
        .collect();
    let versions: Vec<_> = (0..10)
        .map(|i| {
            let body = version_body(
                "deis-router",
                "stable",
                &format!("v{i}"),
                "2016-08-02T17:00:00Z",
                "early",
            );
            Outgoing::new(body).id(format!("v-{i}"))
        })
        .collect();
    env.broker.publish_checkins(&checkins).await;
    env.broker.publish_versions(&versions).await;
}

/// Starts a worker whose broker holds back the answer to its second
/// `basic.consume`: one queue's consumer is open and receiving, the other not
/// yet, so start-up is not over. Returns once the open one has its ten.
async fn stopping_point(env: &TestEnv, until_released: bool) -> (AmqpTap, RunningWorker) {
    let hold = Hold {
        method: BASIC_CONSUME,
        nth: 2,
        until_released,
    };
    let tap = AmqpTap::start_with("127.0.0.1:5672".parse().unwrap(), Some(hold)).await;
    let mut settings = env.settings();
    settings.broker.nodes = vec![tap.url().parse().unwrap()];
    settings.shutdown_timeout = Duration::from_secs(2);
    let worker = RunningWorker::start(settings);
    wait_until(
        "one queue's ten deliveries while the other consumer opens",
        Duration::from_secs(10),
        || async { tap.held() && tap.delivered() >= 10 },
    )
    .await;
    (tap, worker)
}

async fn wait_for_all_back(env: &TestEnv) {
    let topology = &env.broker.topology;
    for queue in [&topology.checkin_queue, &topology.version_queue] {
        env.broker
            .wait_for_ready(queue, 10, "the messages to be back")
            .await;
    }
}

/// RabbitMQ 4.3+ counts a closing channel's deliveries toward their delivery
/// limit and not a `basic.nack`, so a stop as consumption starts lets the
/// consumers finish opening and hands back what they received with nack.
#[tokio::test]
async fn a_stop_while_consumers_open_hands_back_their_deliveries_with_nack_not_the_close() {
    let env = TestEnv::new().await;
    both_queues_filled(&env).await;
    let (tap, worker) = stopping_point(&env, true).await;
    worker.request_stop();
    tap.release();
    worker.stop().await.expect("a clean stop");
    let acks = tap.acks();
    let nacked = requeued_nacks(&acks);
    assert!(
        nacked >= 10 && nacked == tap.delivered(),
        "every delivery ({}) nacked: {acks:?}",
        tap.delivered()
    );
    assert!(acks.iter().all(|a| a.method == Method::Nack), "{acks:?}");
    wait_for_all_back(&env).await;
    let stored = env.db.count("SELECT count(*) FROM clusters_checkins").await
        + env.db.count("SELECT count(*) FROM versions").await;
    assert_eq!(stored, 0, "a stop before the readers ran stores nothing");
}

/// A broker that never answers the consume does not hold the stop beyond the
/// shutdown timeout (2 s here) and the close's own wait for an answer (5 s);
/// the close hands back what it delivered.
#[tokio::test]
async fn a_stop_while_the_broker_never_answers_a_consume_ends_within_the_shutdown_timeout() {
    let env = TestEnv::new().await;
    both_queues_filled(&env).await;
    let (_tap, worker) = stopping_point(&env, false).await;
    let stopping = tokio::time::Instant::now();
    worker.stop().await.expect("a clean stop");
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(12),
        "waited for the consume up to the shutdown timeout, no longer: {took:?}"
    );
    wait_for_all_back(&env).await;
}
