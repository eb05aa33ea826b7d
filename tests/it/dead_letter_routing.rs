//! Dead letters cannot vanish: a copy the dead-letter queue does not take is
//! either caught by the alternate exchange or leaves its original unacked.

use std::{collections::HashSet, time::Duration};

use lapin::{options::BasicGetOptions, types::FieldTable};

use crate::support::{
    Outgoing, RunningWorker, TestBroker, TestEnv,
    broker::{message_id, unacknowledged},
    checkin_body,
    scenario::scenario,
    wait_until,
};

/// Every message of `queue`, taken (acked).
async fn take_all(env: &TestEnv, queue: &str) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(message) = env
        .broker
        .channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        ids.push(message_id(&message));
    }
    ids
}

#[tokio::test]
async fn copies_that_no_binding_takes_land_in_the_unrouted_queue_and_none_is_lost() {
    let env = TestEnv::new().await;
    let scenario = scenario(10_000);
    env.broker.publish_checkins(&scenario.messages).await;
    let mut settings = env.settings();
    settings.pipeline.batch_size = 50;
    settings.pipeline.prefetch = 100;
    let worker = RunningWorker::start(settings);
    let t = env.broker.topology.clone();
    env.wait_for_dead_letters(5).await;
    env.broker
        .channel
        .queue_unbind(
            t.dead_letter_queue.as_str().into(),
            t.dead_letter_exchange.as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    env.wait_for_rows(
        "SELECT count(*) FROM clusters_checkins",
        scenario.valid.len() as i64,
    )
    .await;
    let unrouted = t.unrouted_queue();
    wait_until(
        "every copy to land somewhere",
        Duration::from_secs(30),
        || async {
            let copies =
                env.broker.ready(&t.dead_letter_queue).await + env.broker.ready(&unrouted).await;
            copies as usize >= scenario.invalid.len()
        },
    )
    .await;
    let routed = take_all(&env, &t.dead_letter_queue).await;
    let caught = take_all(&env, &unrouted).await;
    assert!(
        !routed.is_empty() && !caught.is_empty(),
        "unbound mid-stream: {} then {}",
        routed.len(),
        caught.len()
    );
    let all: Vec<String> = routed.into_iter().chain(caught).collect();
    assert_eq!(all.len(), scenario.invalid.len(), "each copy once");
    assert_eq!(all.into_iter().collect::<HashSet<_>>(), scenario.invalid);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_dead_letter_queue_that_refuses_copies_keeps_their_originals_until_it_takes_them() {
    let env = TestEnv::new().await;
    let t = env.broker.topology.clone();
    // A policy on this test's dead-letter queue only: the broker nacks copies.
    let policy = Policy::set(
        &format!("{}-refuse", t.exchange),
        &t.dead_letter_queue,
        r#"{"max-length":0,"overflow":"reject-publish"}"#,
    )
    .await;
    let fillers = fill_until_refused(&env, &t.dead_letter_exchange).await;
    let messages = vec![
        Outgoing::new(checkin_body("00000000-0000-4000-8000-000000000001", "a")).id("a"),
        Outgoing::new("not json").id("bad-1"),
        Outgoing::new(checkin_body("00000000-0000-4000-8000-000000000002", "b")).id("b"),
        Outgoing::new("still not json").id("bad-2"),
    ];
    env.broker.publish_checkins(&messages).await;
    let worker = env.start();
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 2)
        .await;
    // The copies are refused again and again; the originals stay in their queue.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        env.broker.ready(&t.dead_letter_queue).await,
        fillers,
        "only the fillers"
    );
    let queue = t.checkin_queue.clone();
    wait_for_originals(&env, &queue, 2).await;
    // RabbitMQ 3.10 keeps a quorum queue's limit when its policy is cleared;
    // raising the limit lifts it.
    policy
        .update(r#"{"max-length":1000,"overflow":"reject-publish"}"#)
        .await;
    env.wait_for_dead_letters(fillers + 2).await;
    wait_until(
        "the originals to be acked",
        Duration::from_secs(30),
        || async { env.broker.ready(&queue).await == 0 && unacknowledged(&queue).await == Some(0) },
    )
    .await;
    let mut dead = take_all(&env, &t.dead_letter_queue).await;
    dead.retain(|id| id != "filler");
    dead.sort();
    assert_eq!(dead, ["bad-1", "bad-2"], "each once");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_dead_letter_exchange_declared_without_an_alternate_exchange_still_works() {
    // As an earlier version declared it: the worker's declaration with an
    // alternate exchange is refused (inequivalent arg); it must carry on, and
    // a copy that finds no binding leaves its original in its queue.
    let env = TestEnv::with(TestBroker::create_with_legacy_dead_letter_exchange()).await;
    let t = env.broker.topology.clone();
    let worker = env.start();
    env.broker
        .publish_checkins(&[Outgoing::new("nope").id("bad-1")])
        .await;
    env.wait_for_dead_letters(1).await;
    env.broker
        .channel
        .queue_unbind(
            t.dead_letter_queue.as_str().into(),
            t.dead_letter_exchange.as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    env.broker
        .publish_checkins(&[Outgoing::new("nope").id("bad-2")])
        .await;
    let queue = t.checkin_queue.clone();
    wait_for_originals(&env, &queue, 1).await;
    assert_eq!(
        env.broker.ready(&t.dead_letter_queue).await,
        1,
        "only the first copy"
    );
    assert_eq!(
        env.broker.ready(&t.unrouted_queue()).await,
        0,
        "no alternate exchange"
    );
    env.broker
        .channel
        .queue_bind(
            t.dead_letter_queue.as_str().into(),
            t.dead_letter_exchange.as_str().into(),
            "#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    env.wait_for_dead_letters(2).await;
    let mut dead = take_all(&env, &t.dead_letter_queue).await;
    dead.sort();
    assert_eq!(dead, ["bad-1", "bad-2"]);
    worker.stop().await.unwrap();
}

/// Waits until `queue` holds `n` messages, ready or unacknowledged (the
/// broker's unacknowledged count lags by seconds).
async fn wait_for_originals(env: &TestEnv, queue: &str, n: u64) {
    wait_until(
        "the originals to stay in their queue",
        Duration::from_secs(30),
        || async {
            env.broker.ready(queue).await as u64 + unacknowledged(queue).await.unwrap_or(0) == n
        },
    )
    .await;
}

/// Publishes fillers to the dead-letter exchange until the broker nacks one:
/// the refusing policy is then in force. Returns how many it took.
async fn fill_until_refused(env: &TestEnv, exchange: &str) -> u32 {
    let channel = env.broker.connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let properties = lapin::BasicProperties::default().with_message_id("filler".into());
    for taken in 0.. {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                "filler".into(),
                Default::default(),
                b"filler",
                properties.clone(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        if confirm.is_nack() {
            return taken;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("the loop returns")
}

/// A policy on one queue of this test (name, queue), cleared when dropped.
struct Policy(String, String);

impl Policy {
    async fn set(name: &str, queue: &str, definition: &str) -> Policy {
        let policy = Policy(name.to_owned(), queue.to_owned());
        policy.update(definition).await;
        policy
    }

    async fn update(&self, definition: &str) {
        let (name, queue) = (&self.0, &self.1);
        let pattern = format!("^{}$", regex_escape(queue));
        let args = [
            "set_policy",
            name,
            &pattern,
            definition,
            "--apply-to",
            "queues",
            "--priority",
            "100",
        ];
        let output = tokio::process::Command::new("rabbitmqctl")
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        let cleared = std::process::Command::new("rabbitmqctl")
            .args(["clear_policy", &self.0])
            .output();
        assert!(
            cleared.is_ok_and(|o| o.status.success()),
            "policy {} cleared",
            self.0
        );
    }
}

fn regex_escape(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}
