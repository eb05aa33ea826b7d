//! The real binary, as an operator runs it.

use std::time::Duration;

use tokio::process::Command;

use crate::support::{
    CLUSTER, Outgoing, TestEnv, checkin_body,
    process::{signal, worker_command},
    version_body,
};

fn worker(env: &TestEnv) -> Command {
    worker_command(env)
}

#[tokio::test]
async fn the_binary_stores_what_is_published_and_exits_0_on_sigterm() {
    let env = TestEnv::new().await;
    // Logs discarded: an unread pipe would fill and block the worker.
    let mut child = worker(&env)
        .arg("run")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    env.broker
        .publish_checkins(&[Outgoing::new(checkin_body(CLUSTER, "bin")).id("b-1")])
        .await;
    env.broker
        .publish_versions(&[Outgoing::new(version_body(
            "router",
            "stable",
            "v1",
            "2016-08-02T17:00:00Z",
            "",
        ))])
        .await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 1)
        .await;
    env.wait_for_rows("SELECT count(*) FROM versions", 1).await;

    signal(&child, "-TERM").await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within the shutdown timeout")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_wrong_setting_stops_start_up_with_one_line_naming_the_variable() {
    let env = TestEnv::new().await;
    let output = worker(&env)
        .env("WFM_POOL_SIZE", "0")
        .arg("run")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("WFM_POOL_SIZE must not be zero"),
        "{stderr}"
    );

    let output = worker(&env)
        .env("WFM_AMQP_URL", "amqp://guest:hunter2@host:notaport/")
        .arg("run")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("WFM_AMQP_URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");
}

#[tokio::test]
async fn bootstrap_subcommand_applies_the_schema_and_exits_0() {
    let env = TestEnv::new().await;
    let output = worker(&env).arg("bootstrap").output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        env.db.count("SELECT count(*) FROM schema_migrations").await,
        wfm_worker::store::MIGRATIONS.len() as i64
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_name_each_dead_letter() {
    let env = TestEnv::new().await;
    let child = worker(&env)
        .env("WFM_LOG_FORMAT", "json")
        .arg("run")
        .spawn()
        .unwrap();
    env.broker
        .publish_checkins(&[Outgoing::new("not json").id("bad-1")])
        .await;
    env.wait_for_dead_letters(1).await;
    signal(&child, "-TERM").await;
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let dead: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "dead-lettering message")
        .collect();
    assert_eq!(dead.len(), 1, "logged once");
    assert_eq!(dead[0]["message_id"], "bad-1");
    assert_eq!(dead[0]["queue"], env.broker.topology.checkin_queue.as_str());
    assert!(dead[0]["reason"].as_str().unwrap().contains("JSON object"));
}
