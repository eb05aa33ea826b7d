//! Which frame hands a message back, seen on the wire: RabbitMQ 4.3+ counts a
//! `basic.reject(requeue)` toward a quorum queue's delivery limit but not a
//! `basic.nack(requeue)` (3.x counts both, so only the frames tell).

use std::time::Duration;

use crate::support::{
    Outgoing, RunningWorker, TestEnv,
    amqp_tap::{Ack, AmqpTap, Method},
    checkin_body,
    proxy::Proxy,
};

fn checkins(n: usize, poison: Option<usize>) -> Vec<Outgoing> {
    (0..n)
        .map(|i| {
            let marker = if Some(i) == poison {
                "explode".to_owned()
            } else {
                format!("ok-{i}")
            };
            let cluster = format!("00000000-0000-4000-8000-{i:012}");
            Outgoing::new(checkin_body(&cluster, &marker)).id(format!("m-{i}"))
        })
        .collect()
}

/// How many `basic.nack(requeue)` frames the worker sent.
fn requeued_nacks(acks: &[Ack]) -> usize {
    acks.iter()
        .filter(|a| a.method == Method::Nack && a.requeue)
        .count()
}

/// A worker consuming through an AMQP tap whose database has just been cut
/// off (through a proxy of the test's own).
async fn consuming_with_the_database_cut() -> (TestEnv, AmqpTap, Proxy, RunningWorker) {
    let env = TestEnv::new().await;
    let tap = AmqpTap::start("127.0.0.1:5672".parse().unwrap()).await;
    let database = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let mut settings = env.settings();
    settings.broker.nodes = vec![tap.url().parse().unwrap()];
    settings.database.config = env.db.url_via(database.addr).parse().unwrap();
    let worker = RunningWorker::start(settings);
    env.broker.wait_for_consumers().await;
    database.cut();
    (env, tap, database, worker)
}

#[tokio::test]
async fn a_message_failing_alone_is_handed_back_with_reject_which_every_broker_counts() {
    let env = TestEnv::new().await;
    env.db
        .bootstrap_then(
            "CREATE FUNCTION explode() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.data->>'marker' = 'explode' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER explode BEFORE INSERT ON clusters_checkins FOR EACH ROW EXECUTE FUNCTION explode();",
        )
        .await;
    let tap = AmqpTap::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut settings = env.settings();
    settings.broker.nodes = vec![tap.url().parse().unwrap()];
    settings.pipeline.max_deliveries = 3;
    env.broker.publish_checkins(&checkins(20, Some(7))).await;
    let worker = RunningWorker::start(settings);
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 19)
        .await;
    env.wait_for_dead_letters(1).await;
    let acks = tap.acks();
    let rejects: Vec<_> = acks.iter().filter(|a| a.method == Method::Reject).collect();
    assert_eq!(
        rejects.len(),
        2,
        "two attempts handed back, the third dead-lettered: {acks:?}"
    );
    assert!(rejects.iter().all(|r| r.requeue));
    assert!(
        acks.iter().all(|a| a.method != Method::Nack),
        "a failing message is never nacked: {acks:?}"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_during_a_database_outage_releases_the_batch_with_nack_and_stops_promptly() {
    let (env, tap, _database, worker) = consuming_with_the_database_cut().await;
    env.broker.publish_checkins(&checkins(10, None)).await;
    // The batch is read and retries its write while the database is away.
    let queue = env.broker.topology.checkin_queue.clone();
    env.broker
        .wait_for_ready(&queue, 0, "the batch to be taken")
        .await;
    let stopping = tokio::time::Instant::now();
    worker.stop().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        stopping.elapsed()
    );
    let acks = tap.acks();
    let nacked = requeued_nacks(&acks);
    assert_eq!(nacked, 10, "every message released: {acks:?}");
    assert!(acks.iter().all(|a| a.method == Method::Nack), "{acks:?}");
    env.broker
        .wait_for_ready(&queue, 10, "the messages to be back")
        .await;
}

#[tokio::test]
async fn deliveries_waiting_behind_stuck_writes_are_nacked_on_shutdown_not_left_to_the_close() {
    let (env, tap, _database, worker) = consuming_with_the_database_cut().await;
    let queue = env.broker.topology.checkin_queue.clone();
    let all = checkins(10, None);
    // One message at a time until every write permit is held by a batch
    // retrying against the cut database; the rest wait in the client.
    for one in all.chunks(1).take(2) {
        env.broker.publish_checkins(one).await;
        env.broker
            .wait_for_ready(&queue, 0, "the batch to be taken")
            .await;
    }
    env.broker.publish_checkins(&all[2..]).await;
    env.broker
        .wait_for_ready(&queue, 0, "the rest to be delivered")
        .await;
    worker.stop().await.unwrap();
    let acks = tap.acks();
    let nacked = requeued_nacks(&acks);
    assert_eq!(nacked, 10, "batched and buffered alike released: {acks:?}");
    env.broker
        .wait_for_ready(&queue, 10, "the messages to be back")
        .await;
}
