//! Batching: a batch is written when full or when the linger runs out.

use std::time::Duration;

use crate::support::{Outgoing, RunningWorker, TestEnv, checkin_body, wait_until};

#[tokio::test]
async fn the_linger_flushes_a_partial_batch() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.pipeline.batch_size = 500;
    settings.pipeline.batch_linger = Duration::from_millis(50);
    let worker = RunningWorker::start(settings);
    let messages: Vec<Outgoing> = (0..3)
        .map(|i| {
            Outgoing::new(checkin_body(
                &format!("00000000-0000-4000-8000-{i:012}"),
                "l",
            ))
            .id(format!("l-{i}"))
        })
        .collect();
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
