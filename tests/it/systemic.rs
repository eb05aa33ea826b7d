//! A database that refuses every write is not a reason to blame messages:
//! the queue pauses, hands everything back, says why, and resumes by itself.

use std::{net::SocketAddr, sync::Mutex, time::Duration};

use wfm_worker::{config::Settings, http};

use crate::support::{
    Outgoing, RunningWorker, TestEnv,
    broker::{close_connection_named, connection_pids},
    checkin_body,
    process::free_port,
    sample, version_body, wait_until,
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

/// Publishes [`stream`], and settings for a worker that consumes it as a role
/// whose grants the test can revoke, in small batches (the stream lasts long
/// enough to strike in the middle), serving HTTP on the returned address.
async fn on_the_stream(env: &TestEnv) -> (String, Settings, SocketAddr) {
    let role = env.db.worker_role().await;
    env.broker.publish_checkins(&stream()).await;
    let mut settings = env.settings();
    settings.database = env.db.settings_as(&role);
    settings.pipeline.batch_size = 50;
    settings.pipeline.prefetch = 100;
    let addr = free_port();
    settings.http_addr = Some(addr);
    (role, settings, addr)
}

#[tokio::test]
async fn a_revoked_grant_pauses_the_queue_without_dead_lettering_and_it_resumes_when_granted_again()
{
    let env = TestEnv::new().await;
    let (role, settings, addr) = on_the_stream(&env).await;
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

/// Every queue of a connection paused, then the connection lost: the pause
/// gives way at once and the worker reconnects, instead of sleeping the pause
/// out (here far longer than this test's deadline) before noticing.
#[tokio::test]
async fn a_connection_lost_while_every_queue_is_paused_is_replaced_at_once() {
    let env = TestEnv::new().await;
    let (role, mut settings, addr) = on_the_stream(&env).await;
    settings.pipeline.first_pause = Duration::from_secs(300);
    let name = settings.broker.connection_name.clone();
    let worker = RunningWorker::start(settings);
    env.wait_for_rows(CHECKINS, 500).await;

    let admin = env.db.client().await;
    let revoke = format!("REVOKE INSERT ON clusters_checkins, version_publishes FROM {role}");
    admin.batch_execute(&revoke).await.unwrap();
    let versions: Vec<Outgoing> = (0..20)
        .map(|i| {
            let version = format!("v1.{i}.0");
            Outgoing::new(version_body(
                "deis-router",
                "stable",
                &version,
                "2016-08-02T17:00:00Z",
                "n",
            ))
            .id(format!("v-{i}"))
        })
        .collect();
    env.broker.publish_versions(&versions).await;
    let topology = &env.broker.topology;
    wait_until("both queues to pause", Duration::from_secs(30), || async {
        let (_, text) = http::get(addr, "/readyz").await.unwrap();
        [&topology.checkin_queue, &topology.version_queue]
            .iter()
            .all(|queue| is_paused(&text, queue))
    })
    .await;
    let stored = env.db.count(CHECKINS).await;
    assert!(
        stored > 0 && stored < TOTAL,
        "struck mid-stream: {stored} of {TOTAL}"
    );

    let first = connection_pids(&name).await;
    close_connection_named(&name).await;
    let grant = format!("GRANT INSERT ON clusters_checkins, version_publishes TO {role}");
    admin.batch_execute(&grant).await.unwrap();
    wait_until(
        "a new broker connection, long before the pause ends",
        Duration::from_secs(45),
        || async {
            let now = connection_pids(&name).await;
            !now.is_empty() && now.iter().all(|pid| !first.contains(pid))
        },
    )
    .await;
    env.wait_for_rows(CHECKINS, TOTAL).await;
    env.wait_for_rows("SELECT count(*) FROM versions", 20).await;
    let dead = env.broker.topology.dead_letter_queue.clone();
    assert_eq!(env.broker.ready(&dead).await, 0, "nothing dead-lettered");
    worker.stop().await.unwrap();
}

/// Whether the `/readyz` body says `queue` is paused.
fn is_paused(readyz: &str, queue: &str) -> bool {
    let body: serde_json::Value = serde_json::from_str(readyz).unwrap_or_default();
    body["checks"]["queues"][queue]
        .as_str()
        .is_some_and(|state| state.starts_with("paused"))
}
