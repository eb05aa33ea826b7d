//! Broker-wide conditions, each on a private node of its own (they change
//! settings every connection of a node sees): a resource alarm, the consumer
//! acknowledgement time-out, and frames larger than RabbitMQ's default.

use std::{sync::Mutex, time::Duration};

use lapin::types::AMQPValue;
use wfm_worker::http;

use crate::support::{
    Outgoing, RunningWorker, TestEnv, checkin_body,
    node::PrivateBroker,
    process::free_port,
    proxy::Proxy,
    sample,
    scenario::{Copies, scenario},
    wait_until,
};

const CHECKINS: &str = "SELECT count(*) FROM clusters_checkins";

/// Unacknowledged messages of `queue` on node 0 (the broker's count lags: poll it).
async fn unacknowledged(node: &PrivateBroker, queue: &str) -> Option<u64> {
    let listed = node
        .ctl(
            0,
            &[
                "list_queues",
                "--quiet",
                "--no-table-headers",
                "name",
                "messages_unacknowledged",
            ],
        )
        .await;
    listed
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .and_then(|(_, n)| n.trim().parse().ok())
}

async fn alarms(node: &PrivateBroker) -> String {
    node.ctl(0, &["eval", "rabbit_alarm:get_alarms()."]).await
}

#[tokio::test]
async fn during_a_memory_alarm_valid_messages_keep_flowing_and_dead_letters_wait() {
    let node = PrivateBroker::start(1, None).await;
    let env = TestEnv::on(&node.url(0)).await;
    let messages: Vec<Outgoing> = (0..5_000)
        .map(|i| {
            let body = if i % 1000 == 500 {
                "not json".to_owned()
            } else {
                checkin_body(
                    &format!("00000000-0000-4000-8000-{:012}", i % 300),
                    &i.to_string(),
                )
            };
            Outgoing::new(body).id(format!("m-{i}"))
        })
        .collect();
    env.broker.publish_checkins(&messages).await;
    node.ctl(0, &["set_vm_memory_high_watermark", "0.000001"])
        .await;
    wait_until("the memory alarm", Duration::from_secs(30), || async {
        alarms(&node).await.contains("memory")
    })
    .await;

    let mut settings = env.settings();
    let addr = free_port();
    settings.http_addr = Some(addr);
    let worker = RunningWorker::start(settings);
    env.wait_for_rows(CHECKINS, 4_995).await;
    let body = Mutex::new(String::new());
    wait_until(
        "readiness to show the block",
        Duration::from_secs(20),
        || async {
            let (_, text) = http::get(addr, "/readyz").await.unwrap();
            let blocked = text.contains("waiting: the broker blocks publishing");
            *body.lock().unwrap() = text;
            blocked
        },
    )
    .await;
    let (_, metrics) = http::get(addr, "/metrics").await.unwrap();
    assert_eq!(sample(&metrics, "wfm_broker_blocked", &[]), Some(1.0));
    let dead = env.broker.topology.dead_letter_queue.clone();
    assert_eq!(
        env.broker.ready(&dead).await,
        0,
        "copies wait for the alarm to clear"
    );

    node.ctl(0, &["set_vm_memory_high_watermark", "0.4"]).await;
    env.wait_for_dead_letters(5).await;
    let queue = env.broker.topology.checkin_queue.clone();
    wait_until("every original acked", Duration::from_secs(30), || async {
        env.broker.ready(&queue).await == 0 && unacknowledged(&node, &queue).await == Some(0)
    })
    .await;
    assert_eq!(
        env.db.count(CHECKINS).await,
        4_995,
        "each valid message stored once"
    );
    assert_eq!(
        env.broker.take_dead_letters().await.len(),
        5,
        "each copy once"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_brokers_consumer_timeout_closing_the_channel_is_recovered_not_fatal() {
    let node = PrivateBroker::start(
        1,
        Some("[{rabbit, [{consumer_timeout, 3000}, {channel_tick_interval, 1000}]}]."),
    )
    .await;
    let env = TestEnv::on(&node.url(0)).await;
    // Large enough that the cut below lands with valid messages still to store
    // even on a loaded 2-core run (with 3,000, the worker once drained them all
    // between two looks at the row count, and the time-out had nothing to hold).
    let scenario = scenario(20_000);
    env.broker.publish_checkins(&scenario.messages).await;
    let database = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let mut settings = env.settings();
    settings.database.config = env.db.url_via(database.addr).parse().unwrap();
    settings.pipeline.batch_size = 50;
    settings.pipeline.prefetch = 100;
    // Far beyond the deadline below: a batch whose channel is gone must give
    // up its wait for a database connection, not wait this out first.
    settings.database.pool_wait = Duration::from_secs(300);
    let name = settings.broker.connection_name.clone();
    let worker = RunningWorker::start(settings);
    env.wait_for_progress(300).await;
    let first = connection_of(&node, &name).await;
    // A database outage holds the batch unacknowledged past the time-out: the
    // broker closes the channel (406 PRECONDITION_FAILED, delivery
    // acknowledgement timed out).
    database.cut();
    let stored = env.stored().await;
    let valid = scenario.valid.len() as i64;
    assert!(
        stored > 0 && stored < valid,
        "struck mid-stream: {stored} of {valid} valid"
    );
    // What it takes: the time-out (3 s) and the broker's next tick (1 s); the
    // channel watch noticing (0.25 s), and the batches in flight giving up
    // their wait for a pool connection; a reconnect; each look through
    // `rabbitmqctl` on the private node. ~5 s on an idle machine; the margin is
    // for a loaded 2-core CI run.
    wait_until(
        "a new connection after the time-out",
        Duration::from_secs(60),
        || async {
            connection_of(&node, &name)
                .await
                .is_some_and(|c| Some(c) != first)
        },
    )
    .await;
    database.restore();
    env.assert_scenario_outcome(&scenario, Copies::AtLeastOnce)
        .await;
    worker.stop().await.expect("the worker never gave up");
}

/// The consuming connection asks for RabbitMQ's default frame size (lapin's
/// buffers then stay small); a broker configured for larger frames can carry
/// headers that need one. That message ends the connection once, and the next
/// one, asking for the broker's size, takes it: nothing waits behind it.
#[tokio::test]
async fn headers_beyond_the_default_frame_size_are_taken_on_a_broker_that_allows_them() {
    let node = PrivateBroker::start(1, Some("[{rabbit, [{frame_max, 1048576}]}].")).await;
    let env = TestEnv::on(&node.url(0)).await;
    let cluster = |i: usize| format!("00000000-0000-4000-8000-{:012}", i % 300);
    let mut messages: Vec<Outgoing> = (0..2_000)
        .map(|i| Outgoing::new(checkin_body(&cluster(i), &i.to_string())).id(format!("m-{i}")))
        .collect();
    // 300 KB of headers: beyond RabbitMQ's default frame (128 KiB), within this
    // broker's (the test's publisher negotiated the broker's size).
    let mut fat = Outgoing::new(checkin_body(&cluster(7), "fat")).id("fat");
    for i in 0..60 {
        fat = fat.header(
            &format!("fat-{i}"),
            AMQPValue::LongString("f".repeat(5_000).into()),
        );
    }
    messages.insert(1_000, fat);
    env.broker.publish_checkins(&messages).await;
    let settings = env.settings();
    let name = settings.broker.connection_name.clone();
    let worker = RunningWorker::start(settings);
    env.wait_for_rows(CHECKINS, 2_001).await;
    let fat_rows = "SELECT count(*) FROM clusters_checkins WHERE data->>'marker' = 'fat'";
    assert_eq!(env.db.count(fat_rows).await, 1, "the message stored once");
    assert_eq!(
        frame_max_of(&node, &name).await.as_deref(),
        Some("1048576"),
        "the connection that took it asked for the broker's frame size"
    );
    let queue = env.broker.topology.checkin_queue.clone();
    wait_until("every message acked", Duration::from_secs(30), || async {
        env.broker.ready(&queue).await == 0 && unacknowledged(&node, &queue).await == Some(0)
    })
    .await;
    assert_eq!(env.db.count(CHECKINS).await, 2_001, "each stored once");
    worker.stop().await.unwrap();
}

/// The negotiated `frame_max` of the connection named `name` on node 0.
async fn frame_max_of(node: &PrivateBroker, name: &str) -> Option<String> {
    connection_info(node, name, "frame_max").await
}

/// The pid of the connection named `name` on node 0.
async fn connection_of(node: &PrivateBroker, name: &str) -> Option<String> {
    connection_info(node, name, "pid").await
}

/// `item` (a `rabbitmqctl list_connections` column) of the connection named
/// `name` on node 0.
async fn connection_info(node: &PrivateBroker, name: &str, item: &str) -> Option<String> {
    let listed = node
        .ctl(
            0,
            &[
                "list_connections",
                "--quiet",
                "--no-table-headers",
                item,
                "client_properties",
            ],
        )
        .await;
    listed
        .lines()
        .find(|line| line.contains(&format!("\"connection_name\",\"{name}\"")))
        .and_then(|line| line.split('\t').next())
        .map(str::to_owned)
}
