//! `wfm-worker publish`: the release pipeline's and the clusters' command,
//! through the real broker into the database.

use std::process::Output;

use tokio::process::Command;

use crate::support::{CLUSTER, TestEnv, broker::AMQP_URL, checkin_body};

fn publish(env: &TestEnv, args: &[&str]) -> Command {
    let t = &env.broker.topology;
    let mut command = Command::new(env!("CARGO_BIN_EXE_wfm-worker"));
    command
        .env_clear()
        .env("WFM_AMQP_URL", AMQP_URL)
        .env("WFM_EXCHANGE", &t.exchange)
        .arg("publish")
        .args(args)
        .kill_on_drop(true);
    command
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_published_version_lands_in_the_database() {
    let env = TestEnv::new().await;
    let worker = env.start();
    let notes = std::env::temp_dir().join(format!("{}.json", env.db.name));
    std::fs::write(
        &notes,
        r#"{"description": "Router release", "fixes": "all of them"}"#,
    )
    .unwrap();
    let output = publish(
        &env,
        &[
            "version",
            "--component",
            "deis-router",
            "--train",
            "stable",
            "--version",
            "v2.4.0",
            "--released",
            "2016-08-02T17:00:00Z",
        ],
    )
    .arg("--data-file")
    .arg(&notes)
    .output()
    .await
    .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        uuid::Uuid::parse_str(stdout.trim()).is_ok(),
        "prints the message id: {stdout}"
    );
    env.wait_for_rows(
        "SELECT count(*) FROM versions WHERE component_name = 'deis-router' AND data->>'fixes' = 'all of them'",
        1,
    )
    .await;
    std::fs::remove_file(notes).unwrap();
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_json_lines_file_of_checkins_lands_in_the_database() {
    let env = TestEnv::new().await;
    let worker = env.start();
    let file = std::env::temp_dir().join(format!("{}.jsonl", env.db.name));
    let lines: Vec<String> = (0..3)
        .map(|i| checkin_body(&format!("00000000-0000-4000-8000-{i:012}"), "cli"))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let output = publish(&env, &["checkin", "--file"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 3, "one message id per checkin");
    env.wait_for_rows(
        "SELECT count(DISTINCT message_id) FROM clusters_checkins",
        3,
    )
    .await;
    std::fs::remove_file(file).unwrap();
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_input_is_refused_locally_with_the_workers_reason_and_nothing_is_published() {
    let env = TestEnv::new().await;
    let file = std::env::temp_dir().join(format!("{}-bad.jsonl", env.db.name));
    let good = checkin_body(CLUSTER, "ok");
    std::fs::write(&file, format!("{good}\n{{\"components\": []}}\n")).unwrap();
    let output = publish(&env, &["checkin", "--file"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("message 2 is invalid"), "{stderr}");
    assert!(
        stderr.contains("`id` is missing"),
        "the worker's own reason: {stderr}"
    );
    assert_eq!(
        env.broker.ready(&env.broker.topology.checkin_queue).await,
        0,
        "nothing published"
    );

    let output = publish(
        &env,
        &[
            "version",
            "--component",
            &"c".repeat(33),
            "--train",
            "stable",
            "--version",
            "v1",
            "--released",
            "2016-08-02T17:00:00Z",
        ],
    )
    .output()
    .await
    .unwrap();
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(
        stderr.contains("`component.name` is 33 characters, over the limit of 32"),
        "{stderr}"
    );
    std::fs::remove_file(file).unwrap();
}
