//! Topology: connected and declared while the database is bootstrapped (but
//! nothing consumed before the schema is in place); a queue that exists with
//! other arguments stops start-up, saying so.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties, options::QueueDeleteOptions, types::FieldTable};

use crate::support::{
    CLUSTER, Outgoing, RunningWorker, TestEnv,
    broker::{AMQP_URL, connection_pids},
    checkin_body, wait_until,
};

#[tokio::test]
async fn the_broker_is_connected_while_the_schema_is_applied_and_nothing_is_consumed_before_it() {
    let env = TestEnv::new().await;
    let queue = &env.broker.topology.checkin_queue;
    env.broker
        .publish_checkins(&[Outgoing::new(checkin_body(CLUSTER, "early"))])
        .await;
    let holder = env.db.hold_bootstrap().await;
    let worker = env.start();
    let name = env.settings().broker.connection_name;
    let dead_letter_name = format!("{name} dead letters");
    wait_until(
        "both broker connections while the bootstrap waits",
        Duration::from_secs(30),
        || async {
            !connection_pids(&name).await.is_empty()
                && !connection_pids(&dead_letter_name).await.is_empty()
        },
    )
    .await;
    let schema = "SELECT count(*) FROM pg_class WHERE relname = 'clusters_checkins'";
    assert_eq!(env.db.count(schema).await, 0, "the bootstrap is still held");
    assert_eq!(env.broker.consumers(queue).await, 0, "nothing consumed yet");
    assert_eq!(env.broker.ready(queue).await, 1);

    holder.release().await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 1)
        .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_work_queue_declared_with_other_arguments_stops_start_up_with_the_reason() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    // A classic queue where the worker wants a quorum queue.
    let queue = format!("{}.classic", env.broker.topology.exchange);
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    settings.broker.topology.checkin_queue = queue.clone();

    let error = RunningWorker::start(settings)
        .wait()
        .await
        .expect_err("start-up stops")
        .to_string();
    assert!(
        error.contains(&format!("cannot declare queue {queue}")),
        "{error}"
    );
    assert!(
        error.contains("PRECONDITION_FAILED") || error.contains("inequivalent arg"),
        "{error}"
    );
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}
