//! Topology: a queue that exists with other arguments stops start-up, saying so.

use lapin::{Connection, ConnectionProperties, options::QueueDeleteOptions, types::FieldTable};

use crate::support::{RunningWorker, TestEnv, broker::AMQP_URL};

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
