//! Nothing a publisher sends can stall, disconnect or silently drop: every
//! message ends, in bounded time, stored once or dead-lettered once with a
//! short reason, and no message affects another's progress, the connection or
//! shutdown.

use std::time::Duration;

use lapin::message::BasicGetMessage;
use tokio::time::Instant;
use wfm_worker::{
    broker::{CHECKIN_ROUTING_KEY, VERSION_ROUTING_KEY},
    http,
    message::MAX_REASON_BYTES,
};

use crate::support::{
    CLUSTER, Outgoing, RunningWorker, TestEnv,
    broker::{connection_pids, message_id, unacknowledged},
    checkin_body, header,
    hostile::{Case, Expect, cases},
    process::{free_port, signal, worker_command},
    sample, wait_for_ready, wait_until,
};

const OTHER: &str = "0f8e1c0d-9b7a-4f7e-9a3b-5e2a4d3c6c1f";

fn neighbours(prefix: &str, n: usize) -> Vec<Outgoing> {
    (0..n)
        .map(|i| {
            let cluster = format!("00000000-0000-4000-8000-{i:012}");
            Outgoing::new(checkin_body(&cluster, &format!("{prefix}-{i}")))
                .id(format!("{prefix}-{i}"))
        })
        .collect()
}

/// Where each case ended: rows with its marker (or component), and copies.
async fn outcome(env: &TestEnv, case: &Case, copies: &[BasicGetMessage]) -> (i64, usize) {
    let rows = if case.version {
        let sql = "SELECT count(*) FROM versions WHERE component_name = $1";
        env.db
            .client()
            .await
            .query_one(sql, &[&case.name])
            .await
            .unwrap()
            .get(0)
    } else {
        let sql = "SELECT count(*) FROM clusters_checkins WHERE data->>'marker' = $1";
        env.db
            .client()
            .await
            .query_one(sql, &[&case.name])
            .await
            .unwrap()
            .get(0)
    };
    let copies = copies
        .iter()
        .filter(|m| match header(m, "x-case") {
            Some(name) => name == case.name,
            // Headers too large to carry on: the copy keeps the body.
            None => {
                header(m, "x-wfm-headers-dropped").is_some() && m.delivery.data == case.message.body
            }
        })
        .count();
    (rows, copies)
}

#[tokio::test]
async fn nothing_a_publisher_sends_stalls_disconnects_or_is_dropped() {
    let env = TestEnv::new().await;
    // The largest bodies the worker accepts can quote the most: allow 1 MiB.
    let cases = cases(1 << 20);
    let addr = free_port();
    let log_path =
        std::env::temp_dir().join(format!("wfm-hostile-{}.log", uuid::Uuid::new_v4().simple()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = worker_command(&env)
        .env("WFM_HTTP_ADDR", addr.to_string())
        .env("WFM_LOG_FORMAT", "json")
        .env("WFM_MAX_MESSAGE_BYTES", "1048576")
        .arg("run")
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_ready(addr).await;
    let name = format!("{}-worker", env.broker.topology.exchange);
    let connection = connection_pids(&name).await;
    assert_eq!(connection.len(), 1, "one consuming connection");

    for case in &cases {
        let key = if case.version {
            VERSION_ROUTING_KEY
        } else {
            CHECKIN_ROUTING_KEY
        };
        env.broker
            .publish(key, std::slice::from_ref(&case.message))
            .await;
    }
    // Valid neighbours published after the hostile ones are stored within seconds.
    let published = Instant::now();
    env.broker.publish_checkins(&neighbours("after", 100)).await;
    env.wait_for_rows(
        "SELECT count(*) FROM clusters_checkins WHERE message_id LIKE 'after-%'",
        100,
    )
    .await;
    assert!(
        published.elapsed() < Duration::from_secs(10),
        "neighbours took {:?}",
        published.elapsed()
    );

    let invalid = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::Invalid(_)))
        .count();
    env.wait_for_dead_letters(invalid as u32).await;
    for queue in [
        &env.broker.topology.checkin_queue,
        &env.broker.topology.version_queue,
    ] {
        wait_until(
            "nothing left unacknowledged",
            Duration::from_secs(30),
            || async {
                unacknowledged(queue).await == Some(0) && env.broker.ready(queue).await == 0
            },
        )
        .await;
    }
    let copies = env.broker.take_dead_letters().await;
    assert_eq!(copies.len(), invalid, "one copy per invalid case, no more");
    for case in &cases {
        let (rows, dead) = outcome(&env, case, &copies).await;
        match &case.expect {
            Expect::Stored => assert_eq!((rows, dead), (1, 0), "{}: stored once", case.name),
            Expect::Repeat => {}
            Expect::Invalid(_) => {
                assert_eq!((rows, dead), (0, 1), "{}: dead-lettered once", case.name);
            }
        }
    }
    for copy in &copies {
        let case = header(copy, "x-case").unwrap_or_else(|| "fat-headers".to_owned());
        let expected = cases.iter().find(|c| c.name == case).unwrap();
        let Expect::Invalid(fragment) = expected.expect else {
            unreachable!()
        };
        let reason = header(copy, "x-wfm-error").unwrap();
        assert!(
            reason.contains(fragment),
            "{case}: {reason:?} should mention {fragment:?}"
        );
        assert!(
            reason.len() <= MAX_REASON_BYTES,
            "{case}: reason of {} bytes",
            reason.len()
        );
        assert_eq!(
            header(copy, "x-wfm-error-kind").as_deref(),
            Some("invalid"),
            "{case}"
        );
    }
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM clusters_checkins WHERE data->>'marker' = 'id-none'")
            .await,
        1,
        "a retry without message_id is stored once"
    );

    assert_eq!(
        connection_pids(&name).await,
        connection,
        "the connection was never lost"
    );
    let (_, metrics) = http::get(addr, "/metrics").await.unwrap();
    assert_eq!(
        sample(&metrics, "wfm_reconnects_total", &[]).unwrap_or(0.0),
        0.0
    );
    signal(&child, "-TERM").await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");

    // Logs never carry payloads beyond an excerpt.
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    for filler in ['x', 'y', 'z', 'w', 'k', 'n', 'r', 'f', 'p'] {
        let run: String = std::iter::repeat_n(filler, 100).collect();
        assert!(
            !logs.contains(&run),
            "a log line quotes a payload ({filler})"
        );
    }
    assert!(
        logs.lines().all(|l| l.len() < 4096),
        "log lines are bounded"
    );
}

#[tokio::test]
async fn a_200_kb_string_in_a_checkin_is_dead_lettered_with_a_short_reason_on_the_same_connection()
{
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    // Bodies up to 1 MiB allowed: a 200 KB string reaches the parser.
    settings.pipeline.limits.max_bytes = 1 << 20;
    let worker = RunningWorker::start(settings);
    env.broker.publish_checkins(&neighbours("before", 1)).await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 1)
        .await;
    let name = env.settings().broker.connection_name;
    let connection = connection_pids(&name).await;
    let poison = format!(
        r#"{{"id":"{CLUSTER}","components":"{}"}}"#,
        "x".repeat(200_000)
    );
    env.broker
        .publish_checkins(&[Outgoing::new(poison).id("poison")])
        .await;
    env.broker.publish_checkins(&neighbours("after", 50)).await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 51)
        .await;
    env.wait_for_dead_letters(1).await;
    let copies = env.broker.take_dead_letters().await;
    let reason = header(&copies[0], "x-wfm-error").unwrap();
    assert!(
        reason.len() < 200 && reason.starts_with("`components`: invalid type"),
        "{reason}"
    );
    assert_eq!(
        connection_pids(&name).await,
        connection,
        "the connection was never lost"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn two_checkins_nested_100_000_deep_are_dead_lettered_and_shutdown_stays_prompt() {
    let env = TestEnv::new().await;
    let deep = format!(
        r#"{{"id":"{CLUSTER}","components":[],"x":{}}}"#,
        "[".repeat(100_000)
    );
    env.broker
        .publish_checkins(&[
            Outgoing::new(deep.clone()).id("deep-1"),
            Outgoing::new(deep).id("deep-2"),
        ])
        .await;
    env.broker.publish_checkins(&neighbours("after", 50)).await;
    let worker = env.start();
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 50)
        .await;
    env.wait_for_dead_letters(2).await;
    let copies = env.broker.take_dead_letters().await;
    let mut ids: Vec<String> = copies.iter().map(message_id).collect();
    ids.sort();
    assert_eq!(ids, ["deep-1", "deep-2"]);
    for copy in &copies {
        assert!(
            header(copy, "x-wfm-error")
                .unwrap()
                .contains("nested deeper than 64 levels")
        );
    }
    let stopping = Instant::now();
    worker.stop().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn empty_message_ids_count_as_absent_and_a_retry_without_one_is_stored_once() {
    let env = TestEnv::new().await;
    let a = checkin_body(CLUSTER, "a");
    let b = checkin_body(OTHER, "b");
    env.broker
        .publish_checkins(&[
            Outgoing::new(a.clone()).id("").at_secs(1_700_000_000),
            Outgoing::new(b).id(""),
            // A publisher retry of the first: same body, same timestamp, no id.
            Outgoing::new(a).at_secs(1_700_000_000),
        ])
        .await;
    let worker = env.start();
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 2)
        .await;
    let queue = env.broker.topology.checkin_queue.clone();
    wait_until("the queue to drain", Duration::from_secs(10), || async {
        env.broker.ready(&queue).await == 0 && unacknowledged(&queue).await == Some(0)
    })
    .await;
    assert_eq!(
        env.db.count("SELECT count(*) FROM clusters_checkins").await,
        2
    );
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM clusters_checkins WHERE message_id LIKE 'sha256:%'")
            .await,
        2,
        "keys derived from body and timestamp"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_timestamp_in_milliseconds_does_not_pin_the_cluster() {
    let env = TestEnv::new().await;
    let worker = env.start();
    let now = chrono::Utc::now();
    let mistaken = Outgoing::new(checkin_body(CLUSTER, "mistaken"))
        .id("mistaken")
        .at_secs(now.timestamp_millis() as u64);
    env.broker.publish_checkins(&[mistaken]).await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 1)
        .await;
    let year = env
        .db
        .count("SELECT extract(year FROM created_at)::bigint FROM clusters_checkins")
        .await;
    assert_eq!(
        year,
        i64::from(chrono::Datelike::year(&now)),
        "dated on receipt"
    );
    // A real checkin a moment later replaces the cluster's document.
    let later = Outgoing::new(checkin_body(CLUSTER, "real"))
        .id("real")
        .at_secs(now.timestamp() as u64 + 2);
    env.broker.publish_checkins(&[later]).await;
    env.wait_for_rows(
        "SELECT count(*) FROM clusters WHERE data->>'marker' = 'real'",
        1,
    )
    .await;
    worker.stop().await.unwrap();
}
