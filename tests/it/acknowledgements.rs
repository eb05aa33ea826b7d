//! Which frame hands a message back, seen on the wire: RabbitMQ 4.3+ counts a
//! `basic.reject(requeue)` toward a quorum queue's delivery limit but not a
//! `basic.nack(requeue)` (3.x counts both, so only the frames tell). And the
//! order they go out in: the worker does not wait for its acks to be written,
//! so the wire shows that none is left behind its channel's close.

use std::{collections::BTreeSet, time::Duration};

use crate::support::{
    Outgoing, RunningWorker, TestEnv,
    amqp_tap::{Ack, AmqpTap, Method, requeued_nacks},
    checkin_body,
    process::free_port,
    proxy::Proxy,
    wait_for_ready, wait_until,
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

/// Waits until the broker has sent the worker `n` deliveries in all: from then
/// on they are the worker's to hand back. Not the queue's ready count: it
/// falls to 0 when the queue hands a message to the broker's channel process,
/// which may write the frame later, after the worker's cancel (a stop in that
/// moment finds nothing delivered: seen once, under a full suite's load).
async fn wait_for_deliveries(tap: &AmqpTap, n: usize) {
    wait_until(
        &format!("{n} deliveries to the worker"),
        Duration::from_secs(10),
        || async { tap.delivered() >= n },
    )
    .await;
}

/// A worker consuming through an AMQP tap whose database has just been cut
/// off (through a proxy of the test's own).
///
/// Consuming means its readers run (`/readyz`), not only that the broker
/// counts its consumers: the cut must find start-up over, so that what these
/// tests stop is the pipeline's own shutdown. (A stop while consumers open
/// has its own test, in `shutdown`.)
async fn consuming_with_the_database_cut() -> (TestEnv, AmqpTap, Proxy, RunningWorker) {
    let env = TestEnv::new().await;
    let tap = AmqpTap::start("127.0.0.1:5672".parse().unwrap()).await;
    let database = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let mut settings = env.settings();
    settings.broker.nodes = vec![tap.url().parse().unwrap()];
    settings.database.config = env.db.url_via(database.addr).parse().unwrap();
    let addr = free_port();
    settings.http_addr = Some(addr);
    let worker = RunningWorker::start(settings);
    wait_for_ready(addr).await;
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
    wait_for_deliveries(&tap, 10).await;
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
    for (taken, one) in all.chunks(1).take(2).enumerate() {
        env.broker.publish_checkins(one).await;
        wait_for_deliveries(&tap, taken + 1).await;
    }
    env.broker.publish_checkins(&all[2..]).await;
    wait_for_deliveries(&tap, all.len()).await;
    worker.stop().await.unwrap();
    let acks = tap.acks();
    let nacked = requeued_nacks(&acks);
    assert_eq!(nacked, 10, "batched and buffered alike released: {acks:?}");
    env.broker
        .wait_for_ready(&queue, 10, "the messages to be back")
        .await;
}

#[tokio::test]
async fn what_is_acked_before_the_channel_closes_is_exactly_what_was_stored() {
    let env = TestEnv::new().await;
    let tap = AmqpTap::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut settings = env.settings();
    settings.broker.nodes = vec![tap.url().parse().unwrap()];
    settings.pipeline.batch_size = 10;
    settings.pipeline.prefetch = 50;
    let total = 3000;
    env.broker.publish_checkins(&checkins(total, None)).await;
    let worker = RunningWorker::start(settings);
    // Stopped mid-stream: batches commit, and are acked, up to the moment
    // the channel closes.
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 100)
        .await;
    worker.stop().await.unwrap();

    // One consumer of a fresh queue: the i-th message published (`m-{i}`)
    // is its delivery i + 1.
    let stored: BTreeSet<u64> = env
        .db
        .texts("SELECT message_id FROM clusters_checkins")
        .await
        .iter()
        .map(|id| id.trim_start_matches("m-").parse::<u64>().unwrap() + 1)
        .collect();
    assert!(
        stored.len() < total,
        "shutdown struck mid-stream: {} of {total} stored",
        stored.len()
    );
    let sent = tap.acks_and_closes();
    let first_ack = sent
        .iter()
        .find(|a| a.method == Method::Ack)
        .expect("the worker acked what it stored");
    let on_channel: Vec<&Ack> = sent
        .iter()
        .filter(|a| a.connection == first_ack.connection)
        .filter(|a| a.channel == first_ack.channel || a.channel == 0)
        .collect();
    let close = on_channel
        .iter()
        .position(|a| a.method == Method::Close)
        .expect("the worker closed its channel");
    let mut acked = BTreeSet::new();
    for frame in &on_channel[..close] {
        if frame.method == Method::Ack {
            let from = if frame.multiple {
                1
            } else {
                frame.delivery_tag
            };
            acked.extend(from..=frame.delivery_tag);
        } else {
            // What the reader held but no batch took goes back on shutdown.
            assert!(frame.requeue, "handed back, not dropped: {frame:?}");
        }
    }
    assert_eq!(
        acked, stored,
        "acked before the close: every stored message, and nothing else"
    );
}
