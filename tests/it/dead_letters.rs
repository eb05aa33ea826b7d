//! The dead-letter queue: messages that fail too often end there, and an
//! operator can list and replay what is there.

use std::process::Output;

use tokio::process::Command;

use crate::support::{
    CLUSTER, Outgoing, RunningWorker, TestEnv, broker::AMQP_URL, checkin_body, header, wait_until,
};

#[tokio::test]
async fn a_message_failing_at_every_delivery_is_dead_lettered_after_the_limit_and_the_rest_is_stored()
 {
    let env = TestEnv::new().await;
    // Neither a data error nor a transient one: a raise from a trigger (class P0).
    env.db
        .bootstrap_then(
            "CREATE FUNCTION explode() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.data->>'marker' = 'explode' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER explode BEFORE INSERT ON clusters_checkins FOR EACH ROW EXECUTE FUNCTION explode();",
        )
        .await;
    let messages: Vec<Outgoing> = (0..50)
        .map(|i| {
            let marker = if i == 20 {
                "explode".to_owned()
            } else {
                format!("ok-{i}")
            };
            Outgoing::new(checkin_body(
                &format!("00000000-0000-4000-8000-{i:012}"),
                &marker,
            ))
            .id(format!("m-{i}"))
        })
        .collect();
    env.broker.publish_checkins(&messages).await;
    let mut settings = env.settings();
    settings.pipeline.max_deliveries = 3;
    let worker = RunningWorker::start(settings);
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 49)
        .await;
    env.wait_for_dead_letters(1).await;
    let letters = env.broker.take_dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0]
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "m-20"
    );
    assert_eq!(
        header(&letters[0], "x-wfm-error-kind").as_deref(),
        Some("too-many-deliveries")
    );
    let reason = header(&letters[0], "x-wfm-error").unwrap();
    assert!(
        reason.contains("failed on each of 3 deliveries") && reason.contains("boom"),
        "{reason}"
    );
    assert_eq!(
        env.broker.ready(&env.broker.topology.checkin_queue).await,
        0
    );
    worker.stop().await.unwrap();
}

fn dlq(env: &TestEnv, args: &[&str]) -> Command {
    let t = &env.broker.topology;
    let mut command = Command::new(env!("CARGO_BIN_EXE_wfm-worker"));
    command
        .env_clear()
        .env("WFM_AMQP_URL", AMQP_URL)
        .env("WFM_DEAD_LETTER_QUEUE", &t.dead_letter_queue)
        .arg("dlq")
        .args(args)
        .kill_on_drop(true);
    command
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn list_shows_dead_letters_and_replay_returns_them_to_their_queue_once_confirmed() {
    let env = TestEnv::new().await;
    wfm_worker::app::bootstrap(&env.db.settings())
        .await
        .unwrap();
    let client = env.db.client().await;
    client
        .batch_execute("ALTER TABLE clusters_checkins ADD CONSTRAINT not_yet CHECK (data->>'marker' <> 'later')")
        .await
        .unwrap();
    env.broker
        .publish_checkins(&[
            Outgoing::new(checkin_body(CLUSTER, "later")).id("fixable"),
            Outgoing::new("not json").id("hopeless"),
        ])
        .await;
    let worker = env.start();
    env.wait_for_dead_letters(2).await;

    let listed = stdout(&dlq(&env, &["list"]).output().await.unwrap());
    let queue = &env.broker.topology.checkin_queue;
    let fixable = listed
        .lines()
        .find(|l| l.starts_with("fixable"))
        .expect(&listed);
    assert!(
        fixable.contains(queue.as_str())
            && fixable.contains("rejected-by-database")
            && fixable.contains("not_yet"),
        "{fixable}"
    );
    let hopeless = listed
        .lines()
        .find(|l| l.starts_with("hopeless"))
        .expect(&listed);
    assert!(
        hopeless.contains("invalid: must be a JSON object")
            || hopeless.contains("invalid: a checkin must be a JSON object"),
        "{hopeless}"
    );
    // Messages taken and not acked go back when the command's connection
    // closes; the broker requeues them asynchronously.
    env.wait_for_dead_letters(2).await;
    assert_eq!(
        env.broker
            .ready(&env.broker.topology.dead_letter_queue)
            .await,
        2,
        "listing changes nothing"
    );

    let dry = dlq(&env, &["replay", "--all", "--dry-run"])
        .output()
        .await
        .unwrap();
    assert_eq!(stdout(&dry).lines().count(), 3, "header and two rows");
    // Messages taken and not acked go back when the command's connection
    // closes; the broker requeues them asynchronously.
    env.wait_for_dead_letters(2).await;
    assert_eq!(
        env.broker
            .ready(&env.broker.topology.dead_letter_queue)
            .await,
        2,
        "a dry run changes nothing"
    );

    // The cause is fixed; replay the fixable message only.
    client
        .batch_execute("ALTER TABLE clusters_checkins DROP CONSTRAINT not_yet")
        .await
        .unwrap();
    stdout(
        &dlq(&env, &["replay", "--message-id", "fixable"])
            .output()
            .await
            .unwrap(),
    );
    env.wait_for_rows(
        "SELECT count(*) FROM clusters_checkins WHERE message_id = 'fixable'",
        1,
    )
    .await;
    // The message not replayed was held unacked by the command: back once the
    // broker has requeued it (asynchronously, after the command's connection closed).
    env.wait_for_dead_letters(1).await;
    assert_eq!(
        env.broker
            .ready(&env.broker.topology.dead_letter_queue)
            .await,
        1,
        "only the fixable message left the dead-letter queue"
    );

    // Replaying the hopeless one puts it back, once, with its reason.
    stdout(&dlq(&env, &["replay", "--all"]).output().await.unwrap());
    let dead = env.broker.topology.dead_letter_queue.clone();
    wait_until(
        "the hopeless message to be dead-lettered again",
        std::time::Duration::from_secs(20),
        || async { env.broker.ready(&dead).await == 1 },
    )
    .await;
    let letters = env.broker.take_dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        header(&letters[0], "x-wfm-replays").as_deref(),
        Some("LongLongInt(1)")
    );
    assert!(
        header(&letters[0], "x-wfm-error")
            .unwrap()
            .contains("JSON object")
    );
    assert_eq!(
        env.db.count("SELECT count(*) FROM clusters_checkins").await,
        1
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn replaying_hundreds_of_hopeless_messages_ends_and_says_what_it_did() {
    let env = TestEnv::new().await;
    let hopeless: Vec<Outgoing> = (0..300)
        .map(|i| Outgoing::new("not json").id(format!("h-{i}")))
        .collect();
    env.broker.publish_checkins(&hopeless).await;
    let worker = env.start();
    env.wait_for_dead_letters(300).await;

    let listed = dlq(&env, &["list"]).output().await.unwrap();
    assert_eq!(
        stdout(&listed).lines().count(),
        101,
        "header and the first 100"
    );
    let said = String::from_utf8_lossy(&listed.stderr);
    assert!(
        said.contains("300 message(s) in the dead-letter queue; 100 shown"),
        "{said}"
    );
    env.wait_for_dead_letters(300).await;

    let replay = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        dlq(&env, &["replay", "--all"]).output(),
    )
    .await
    .expect("a replay ends")
    .unwrap();
    stdout(&replay);
    let said = String::from_utf8_lossy(&replay.stderr);
    assert!(
        said.contains("replayed 300 of the 300 message(s)"),
        "{said}"
    );
    // Each comes back once, dead-lettered again with its reason.
    env.wait_for_dead_letters(300).await;
    let queue = env.broker.topology.checkin_queue.clone();
    wait_until(
        "the replays to be consumed",
        std::time::Duration::from_secs(30),
        || async { env.broker.ready(&queue).await == 0 },
    )
    .await;
    let letters = env.broker.take_dead_letters().await;
    assert_eq!(letters.len(), 300);
    let ids: std::collections::HashSet<String> = letters
        .iter()
        .map(crate::support::broker::message_id)
        .collect();
    assert_eq!(ids.len(), 300, "each once");
    assert!(
        letters
            .iter()
            .all(|l| header(l, "x-wfm-replays").as_deref() == Some("LongLongInt(1)")),
        "replayed exactly once each"
    );
    worker.stop().await.unwrap();
}
