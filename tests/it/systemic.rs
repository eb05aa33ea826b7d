//! A database that refuses every write is not a reason to blame messages:
//! the queue pauses, hands everything back, says why, and resumes by itself.

use std::{sync::Mutex, time::Duration};

use wfm_worker::http;

use crate::support::{
    Outgoing, RunningWorker, TestEnv, checkin_body, process::free_port, sample, wait_until,
};

const TOTAL: i64 = 5_000;
const CHECKINS: &str = "SELECT count(*) FROM clusters_checkins";

fn stream() -> Vec<Outgoing> {
    (0..TOTAL)
        .map(|i| {
            let cluster = format!("00000000-0000-4000-8000-{:012}", i % 300);
            Outgoing::new(checkin_body(&cluster, &i.to_string()))
                .id(format!("s-{i}"))
                .at_secs(1_600_000_000 + i as u64)
        })
        .collect()
}

#[tokio::test]
async fn a_revoked_grant_pauses_the_queue_without_dead_lettering_and_it_resumes_when_granted_again()
{
    let env = TestEnv::new().await;
    let role = env.db.worker_role().await;
    env.broker.publish_checkins(&stream()).await;
    let mut settings = env.settings();
    settings.database = env.db.settings_as(&role);
    // Small batches: the stream lasts long enough to strike in the middle.
    settings.pipeline.batch_size = 50;
    settings.pipeline.prefetch = 100;
    let addr = free_port();
    settings.http_addr = Some(addr);
    let worker = RunningWorker::start(settings);
    env.wait_for_rows(CHECKINS, 500).await;

    let admin = env.db.client().await;
    admin
        .batch_execute(&format!("REVOKE INSERT ON clusters_checkins FROM {role}"))
        .await
        .unwrap();
    let body = Mutex::new(String::new());
    wait_until(
        "readiness to report the pause",
        Duration::from_secs(20),
        || async {
            let (status, text) = http::get(addr, "/readyz").await.unwrap();
            let paused =
                status == 503 && text.contains("paused: every write fails (SQLSTATE 42501)");
            *body.lock().unwrap() = text;
            paused
        },
    )
    .await;
    let stored = env.db.count(CHECKINS).await;
    assert!(
        stored > 0 && stored < TOTAL,
        "struck mid-stream: {stored} of {TOTAL}"
    );
    // Paused: nothing stored, nothing dead-lettered, however long it lasts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.db.count(CHECKINS).await,
        stored,
        "nothing stored while refused"
    );
    let dead = env.broker.topology.dead_letter_queue.clone();
    assert_eq!(env.broker.ready(&dead).await, 0, "nothing dead-lettered");
    let (_, metrics) = http::get(addr, "/metrics").await.unwrap();
    let queue = env.broker.topology.checkin_queue.as_str();
    assert!(sample(&metrics, "wfm_queue_pauses_total", &[("queue", queue)]).unwrap() >= 1.0);

    admin
        .batch_execute(&format!("GRANT INSERT ON clusters_checkins TO {role}"))
        .await
        .unwrap();
    env.wait_for_rows(CHECKINS, TOTAL).await;
    assert_eq!(
        env.db
            .count("SELECT count(DISTINCT message_id) FROM clusters_checkins")
            .await,
        TOTAL,
        "everything stored once"
    );
    assert_eq!(env.db.count(CHECKINS).await, TOTAL);
    assert_eq!(
        env.broker.ready(&dead).await,
        0,
        "still nothing dead-lettered"
    );
    wait_until("readiness to recover", Duration::from_secs(10), || async {
        matches!(http::get(addr, "/readyz").await, Ok((200, _)))
    })
    .await;
    worker.stop().await.unwrap();
}
