//! Fault scenarios: each publishes a known set of checkins, strikes mid-stream
//! (and proves it did: some, not all, were stored when it struck), lets the
//! worker recover by itself, then checks that every valid message is stored
//! exactly once, every invalid one is dead-lettered exactly once, every cluster
//! holds its newest checkin, and the worker still works.
//!
//! Faults target this test's own connections only (a proxy of its own,
//! connection names, its own database), so the suite still runs in parallel.

use std::{process::Stdio, time::Duration};

use tokio::process::Child;

use crate::support::{
    RunningWorker, TestEnv,
    broker::close_connection_named,
    process::{signal, worker_command},
    proxy::Proxy,
    scenario::{Copies, Scenario, scenario},
};

const TOTAL: usize = 20_000;
/// Strike once this many rows are stored: well into the stream, far from its end.
const STRIKE_AT: i64 = 500;

async fn with_backlog() -> (TestEnv, Scenario) {
    let env = TestEnv::new().await;
    let scenario = scenario(TOTAL);
    env.broker.publish_checkins(&scenario.messages).await;
    (env, scenario)
}

/// Records how far the work had got and proves the fault lands mid-stream.
async fn strike_point(env: &TestEnv) -> i64 {
    let stored = env.stored().await;
    assert!(
        stored > 0 && stored < TOTAL as i64 - 100,
        "fault strikes mid-stream: {stored} of {TOTAL} stored"
    );
    stored
}

#[tokio::test]
async fn broker_connection_cut_by_the_network_is_survived() {
    let (env, scenario) = with_backlog().await;
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut settings = env.settings();
    settings.broker.nodes = vec![
        format!("amqp://guest:guest@{}/%2f", proxy.addr)
            .parse()
            .unwrap(),
    ];
    let worker = RunningWorker::start(settings);
    env.wait_for_progress(STRIKE_AT).await;
    proxy.cut();
    strike_point(&env).await;
    // The outage itself lasts a while: the worker must retry, not spin or exit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    env.assert_scenario_outcome(&scenario, Copies::AtLeastOnce)
        .await;
    env.assert_still_working().await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn broker_connection_closed_by_an_operator_is_survived() {
    let (env, scenario) = with_backlog().await;
    let mut settings = env.settings();
    // rabbitmqctl takes about a second to act: small batches keep work going until then.
    settings.pipeline.batch_size = 20;
    settings.pipeline.prefetch = 40;
    let name = settings.broker.connection_name.clone();
    let worker = RunningWorker::start(settings);
    env.wait_for_progress(STRIKE_AT).await;
    close_connection_named(&name).await;
    strike_point(&env).await;
    env.assert_scenario_outcome(&scenario, Copies::AtLeastOnce)
        .await;
    env.assert_still_working().await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn database_cut_for_10_seconds_is_survived_without_acking_anything_meanwhile() {
    let (env, scenario) = with_backlog().await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let mut settings = env.settings();
    settings.database.config = env.db.url_via(proxy.addr).parse().unwrap();
    let worker = RunningWorker::start(settings);
    env.wait_for_progress(STRIKE_AT).await;
    proxy.cut();
    strike_point(&env).await;
    // The outage lasts 10 s by design of the scenario. A COMMIT already on the
    // wire when the cut came may still complete: count from 1 s in.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = env.stored().await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        env.stored().await,
        stored,
        "nothing stored while the database is cut"
    );
    let unfinished = env.broker.ready(&env.broker.topology.checkin_queue).await;
    assert!(unfinished > 0, "the backlog waits in the queue");
    proxy.restore();
    env.assert_scenario_outcome(&scenario, Copies::ExactlyOnce)
        .await;
    env.assert_still_working().await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn database_connections_terminated_by_the_server_are_replaced() {
    let (env, scenario) = with_backlog().await;
    let worker = env.start();
    env.wait_for_progress(STRIKE_AT).await;
    let admin = crate::support::db::connect(crate::support::db::ADMIN_URL).await;
    let terminated: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1) t",
            &[&env.db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(terminated > 0, "the worker's connections were terminated");
    strike_point(&env).await;
    env.assert_scenario_outcome(&scenario, Copies::ExactlyOnce)
        .await;
    env.assert_still_working().await;
    worker.stop().await.unwrap();
}

/// The binary, its logs discarded: a pipe nobody reads would fill up and block
/// the worker's log writes (and so the worker).
async fn spawn_binary(env: &TestEnv) -> Child {
    worker_command(env)
        .arg("run")
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn sigkill_mid_stream_then_restart_loses_nothing_and_stores_nothing_twice() {
    let (env, scenario) = with_backlog().await;
    let mut first = spawn_binary(&env).await;
    env.wait_for_progress(STRIKE_AT).await;
    signal(&first, "-KILL").await;
    first.wait().await.unwrap();
    strike_point(&env).await;
    let mut second = spawn_binary(&env).await;
    env.assert_scenario_outcome(&scenario, Copies::AtLeastOnce)
        .await;
    env.assert_still_working().await;
    signal(&second, "-TERM").await;
    assert!(second.wait().await.unwrap().success());
}

#[tokio::test]
async fn three_replicas_with_one_killed_store_everything_exactly_once() {
    let (env, scenario) = with_backlog().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(spawn_binary(&env).await);
    }
    env.wait_for_progress(STRIKE_AT).await;
    signal(&replicas[0], "-KILL").await;
    replicas[0].wait().await.unwrap();
    strike_point(&env).await;
    env.assert_scenario_outcome(&scenario, Copies::AtLeastOnce)
        .await;
    env.assert_still_working().await;
    for replica in &mut replicas[1..] {
        signal(replica, "-TERM").await;
        assert!(replica.wait().await.unwrap().success());
    }
}

#[tokio::test]
async fn three_replicas_bootstrapping_a_fresh_database_at_once_share_the_work() {
    let (env, scenario) = with_backlog().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(spawn_binary(&env).await);
    }
    env.assert_scenario_outcome(&scenario, Copies::ExactlyOnce)
        .await;
    assert_eq!(
        env.db.count("SELECT count(*) FROM schema_migrations").await,
        wfm_worker::store::MIGRATIONS.len() as i64
    );
    for replica in &mut replicas {
        signal(replica, "-TERM").await;
        assert!(replica.wait().await.unwrap().success());
    }
}

#[tokio::test]
async fn an_exhausted_reconnect_budget_ends_the_worker_with_an_error() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    // Nothing listens there: every connection attempt is refused.
    let closed = crate::support::process::free_port();
    settings.broker.nodes = vec![format!("amqp://guest:guest@{closed}/%2f").parse().unwrap()];
    settings.reconnect_max = 2;
    let error = RunningWorker::start(settings).wait().await.unwrap_err();
    assert!(
        error.to_string().contains("gave up after 3 attempts"),
        "{error}"
    );
}

#[tokio::test]
async fn a_connection_left_on_a_read_only_node_is_replaced_and_the_batch_retried() {
    let env = TestEnv::new().await;
    // A failover that leaves the worker on a replica: every write is refused
    // with 25006 (read_only_sql_transaction) until the "failover" ends. The
    // trigger also counts the distinct backends that tried, in sequences (the
    // one thing a rolled-back transaction does not undo).
    env.db
        .bootstrap_then(
            "CREATE TABLE failover (on_replica boolean NOT NULL);
             INSERT INTO failover VALUES (true);
             CREATE SEQUENCE last_backend MINVALUE 0 START 0;
             CREATE SEQUENCE backends_tried;
             CREATE FUNCTION read_only() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF (SELECT on_replica FROM failover) THEN
                 IF (SELECT last_value FROM last_backend) <> pg_backend_pid() THEN
                   PERFORM nextval('backends_tried');
                   PERFORM setval('last_backend', pg_backend_pid());
                 END IF;
                 RAISE EXCEPTION 'cannot execute INSERT in a read-only transaction' USING ERRCODE = '25006';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER read_only BEFORE INSERT ON clusters_checkins FOR EACH ROW EXECUTE FUNCTION read_only();",
        )
        .await;
    let mut settings = env.settings();
    // One pooled connection: a second backend means the first was retired.
    settings.database.pool_size = 1;
    let worker = RunningWorker::start(settings);
    let body = crate::support::checkin_body(crate::support::CLUSTER, "after-failover");
    env.broker
        .publish_checkins(&[crate::support::Outgoing::new(body).id("f-1")])
        .await;

    let tried = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM backends_tried";
    env.wait_for_rows(tried, 2).await;
    assert_eq!(
        env.stored().await,
        0,
        "nothing stored, nothing acked, while on the replica"
    );
    env.db
        .client()
        .await
        .batch_execute("UPDATE failover SET on_replica = false")
        .await
        .unwrap();
    env.wait_for_rows(
        "SELECT count(*) FROM clusters_checkins WHERE message_id = 'f-1'",
        1,
    )
    .await;
    assert_eq!(
        env.broker.ready(&env.broker.topology.checkin_queue).await,
        0
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_dead_node_in_the_broker_list_is_skipped() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    // Nothing listens on the first: wherever the shuffle puts it, the worker
    // ends on the live node within a connect time-out.
    let dead = crate::support::process::free_port();
    settings.broker.nodes = vec![
        format!("amqp://guest:guest@{dead}/%2f").parse().unwrap(),
        settings.broker.nodes[0].clone(),
    ];
    let worker = RunningWorker::start(settings);
    env.assert_still_working().await;
    worker.stop().await.unwrap();
}
