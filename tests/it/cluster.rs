//! A three-node RabbitMQ cluster of the test's own (scripts/rabbitmq-cluster.sh):
//! the node a worker is connected to, or the one leading a work queue, stops
//! mid-stream, and nothing is lost or stored twice. One cluster at a time: each
//! is three Erlang nodes on a two-core machine.

use std::time::Duration;

use tokio::sync::Mutex;

use crate::support::{
    RunningWorker, TestEnv,
    node::PrivateBroker,
    scenario::{Copies, Scenario, scenario},
    wait_until,
};

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const TOTAL: usize = 20_000;

/// Which node (0-based) `pattern` names in a listing of node 0's view.
fn node_index(cluster: &PrivateBroker, text: &str) -> Option<usize> {
    cluster
        .nodes
        .iter()
        .position(|(name, _)| text.contains(name.as_str()))
}

/// The node holding the connection named `name` (by the port it is on).
async fn node_of_connection(cluster: &PrivateBroker, from: usize, name: &str) -> Option<usize> {
    let listed = cluster
        .ctl(
            from,
            &[
                "list_connections",
                "--quiet",
                "--no-table-headers",
                "port",
                "client_properties",
            ],
        )
        .await;
    let line = listed
        .lines()
        .find(|l| l.contains(&format!("\"connection_name\",\"{name}\"")))?;
    let port: u16 = line.split('\t').next()?.trim().parse().ok()?;
    cluster.nodes.iter().position(|(_, p)| *p == port)
}

/// The node leading quorum queue `queue`.
async fn leader_of(cluster: &PrivateBroker, from: usize, queue: &str) -> Option<usize> {
    let listed = cluster
        .ctl(
            from,
            &[
                "list_queues",
                "--quiet",
                "--no-table-headers",
                "name",
                "leader",
            ],
        )
        .await;
    let line = listed
        .lines()
        .find(|l| l.split('\t').next() == Some(queue))?;
    node_index(cluster, line.split('\t').nth(1)?)
}

fn all_nodes(cluster: &PrivateBroker, except: Option<usize>) -> Vec<lapin::uri::AMQPUri> {
    (0..cluster.nodes.len())
        .filter(|i| Some(*i) != except)
        .map(|i| cluster.url(i).parse().unwrap())
        .collect()
}

/// The node went down with some, not all, of the backlog stored.
async fn assert_struck_mid_stream(env: &TestEnv) {
    let stored = env.stored().await;
    assert!(
        stored > 0 && stored < TOTAL as i64 - 100,
        "struck mid-stream: {stored}"
    );
}

/// Every valid message stored once, every invalid one dead-lettered (a copy
/// may repeat from the window the fault struck in), the worker still
/// working; then it stops cleanly.
async fn ends_with_every_message_stored(env: &TestEnv, scenario: &Scenario, worker: RunningWorker) {
    env.assert_scenario_outcome(scenario, Copies::AtLeastOnce)
        .await;
    env.assert_still_working().await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_node_a_worker_is_connected_to_stops_mid_stream_and_nothing_is_lost() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = PrivateBroker::start(3, None).await;
    // The test's own handle stays on node 2; the worker may use nodes 0 and 1.
    let mut env = TestEnv::on(&cluster.url(2)).await;
    let scenario = scenario(TOTAL);
    env.broker.publish_checkins(&scenario.messages).await;
    let mut settings = env.settings();
    settings.broker.nodes = all_nodes(&cluster, Some(2));
    let name = settings.broker.connection_name.clone();
    let worker = RunningWorker::start(settings);
    env.wait_for_progress(500).await;
    let node = node_of_connection(&cluster, 2, &name)
        .await
        .expect("the worker's connection");
    cluster.stop_node(node).await;
    assert_struck_mid_stream(&env).await;
    env.broker.reconnect(&cluster.url(2)).await;
    wait_until(
        "the worker on the other node",
        Duration::from_secs(30),
        || async {
            node_of_connection(&cluster, 2, &name)
                .await
                .is_some_and(|n| n != node)
        },
    )
    .await;
    ends_with_every_message_stored(&env, &scenario, worker).await;
}

#[tokio::test]
async fn the_node_leading_a_work_queue_stops_mid_stream_and_nothing_is_lost() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = PrivateBroker::start(3, None).await;
    // Declared through node 0: its member starts the first election and leads.
    let env_on_0 = TestEnv::on(&cluster.url(0)).await;
    let queue = env_on_0.broker.topology.checkin_queue.clone();
    let leader = leader_of(&cluster, 0, &queue).await.expect("a leader");
    let handle = (0..3).find(|i| *i != leader).expect("another node");
    let mut env = env_on_0;
    env.broker.reconnect(&cluster.url(handle)).await;
    let scenario = scenario(TOTAL);
    env.broker.publish_checkins(&scenario.messages).await;
    let mut settings = env.settings();
    settings.broker.nodes = all_nodes(&cluster, None);
    let worker = RunningWorker::start(settings);
    env.wait_for_progress(500).await;
    cluster.stop_node(leader).await;
    assert_struck_mid_stream(&env).await;
    wait_until("a new leader", Duration::from_secs(30), || async {
        leader_of(&cluster, handle, &queue)
            .await
            .is_some_and(|l| l != leader)
    })
    .await;
    ends_with_every_message_stored(&env, &scenario, worker).await;
}

#[tokio::test]
async fn three_replicas_on_three_nodes_survive_a_node_restart_during_a_100k_backlog() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = PrivateBroker::start(3, None).await;
    let mut env = TestEnv::on(&cluster.url(0)).await;
    let scenario = scenario(100_000);
    env.broker.publish_checkins(&scenario.messages).await;
    let workers: Vec<RunningWorker> = (0..3)
        .map(|i| {
            let mut settings = env.settings();
            settings.broker.nodes = vec![cluster.url(i).parse().unwrap()];
            settings.broker.connection_name = format!("{}-{i}", settings.broker.connection_name);
            RunningWorker::start(settings)
        })
        .collect();
    env.wait_for_progress(5_000).await;
    cluster.stop_node(1).await;
    let stored = env.stored().await;
    assert!(stored > 0 && stored < 99_000, "struck mid-stream: {stored}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_node(1).await;
    env.broker.reconnect(&cluster.url(0)).await;
    env.assert_scenario_outcome(&scenario, Copies::AtLeastOnce)
        .await;
    env.assert_still_working().await;
    for worker in workers {
        worker.stop().await.unwrap();
    }
}
