//! `wfm-bench --cluster`: the worker on private RabbitMQ clusters of this
//! machine (scripts/rabbitmq-cluster.sh), BENCHMARKS.md.
//!
//! 13. backlog drain through a one-node broker, and through a three-node
//!     cluster (quorum queues replicated to all three) by one worker and by
//!     three (one per node)
//! 14. recovery while checkins arrive at a steady rate: the node leading the
//!     work queue stops (the worker stays connected elsewhere), then the node
//!     the worker is connected to stops. Measured: the longest time without a
//!     stored row, and for the worker's node the time from the stop command to
//!     `/readyz` answering 200 again (every queue consuming).

use std::{net::SocketAddr, path::Path, time::Duration};

use lapin::{Connection, ConnectionProperties};
use tokio::time::Instant;
use wfm_worker::{app, broker::CHECKIN_ROUTING_KEY, http};

mod load;

use load::{Progress, Publisher};

use crate::{
    env::{BenchEnv, poll_until, wait_for_count},
    nodes::Nodes,
    payload,
    phases::{Limits, stop, worker_command},
};

pub struct Recovery {
    pub what: &'static str,
    pub stall_secs: f64,
    pub ready_again_secs: Option<f64>,
    pub worker_node_led: bool,
}

/// (13): drain rate of `count` checkins by `workers` workers, worker `w`
/// given the URLs of the nodes `urls(w)`.
pub async fn drain(
    limits: &Limits<'_>,
    exe: &Path,
    nodes: &Nodes,
    count: usize,
    workers: usize,
) -> anyhow::Result<f64> {
    let url = nodes.url(0);
    let env = BenchEnv::new(limits.admin_url, &url).await?;
    app::bootstrap(&env.database(1)).await?;
    env.prefill(CHECKIN_ROUTING_KEY, count, payload::checkin)
        .await?;
    let client = env.client().await?;
    let started = Instant::now();
    let mut running = Vec::new();
    for w in 0..workers {
        let urls = if workers == 1 {
            nodes.urls(0..nodes.nodes.len())
        } else {
            nodes.url(w % nodes.nodes.len())
        };
        running.push(
            worker_command(&env, exe, limits.batch_size, &urls, None, &format!("w{w}"))?.spawn()?,
        );
    }
    wait_for_count(
        &client,
        "the backlog to be stored",
        "SELECT count(*) FROM clusters_checkins",
        count as i64,
        Duration::from_millis(10),
    )
    .await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    for worker in &mut running {
        stop(worker).await?;
    }
    verify(&env, &client, count as i64).await?;
    env.drop_all().await;
    Ok(rate)
}

/// Every row once, none missing; nothing left in the queue.
async fn verify(
    env: &BenchEnv,
    client: &tokio_postgres::Client,
    at_least: i64,
) -> anyhow::Result<()> {
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT message_id) FROM clusters_checkins",
            &[],
        )
        .await?;
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    anyhow::ensure!(
        rows == distinct,
        "{rows} rows but {distinct} distinct messages"
    );
    anyhow::ensure!(
        rows >= at_least,
        "{rows} rows stored of {at_least} confirmed"
    );
    anyhow::ensure!(
        env.ready(&env.topology.checkin_queue).await? == 0,
        "messages left"
    );
    Ok(())
}

/// How a node goes away.
#[derive(Clone, Copy, PartialEq)]
pub enum Fault {
    /// `rabbitmqctl stop`: a graceful stop (upgrades, drains).
    Stop,
    /// SIGKILL of the node's Erlang VM: a crash.
    Kill,
}

/// (14) on a three-node cluster, checkins arriving at `rate` a second: the
/// leader's node stops (the worker connected elsewhere), the worker's node
/// stops, the worker's node crashes. Each struck node starts again before
/// the next strike; the publisher stays on a node that is not struck.
pub async fn recovery(
    limits: &Limits<'_>,
    exe: &Path,
    nodes: &Nodes,
    rate: usize,
) -> anyhow::Result<Vec<Recovery>> {
    // Declared through node 2: the queues' leaders start there.
    let mut env = BenchEnv::new(limits.admin_url, &nodes.url(2)).await?;
    app::bootstrap(&env.database(1)).await?;
    let client = env.client().await?;
    let queue = env.topology.checkin_queue.clone();
    anyhow::ensure!(
        nodes.leader_of(0, &queue).await? == 2,
        "node 2 does not lead"
    );
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let name = format!("{}-recovery", env.topology.exchange);
    let urls = nodes.urls([0, 1]);
    let mut worker =
        worker_command(&env, exe, limits.batch_size, &urls, Some(addr), &name)?.spawn()?;
    wait_ready(addr, true).await?;
    let progress = Progress::watch(env.client().await?);
    let mut confirmed = 0;
    let mut results = Vec::new();
    let plan = [
        (
            "leader's node stops, worker connected elsewhere",
            Fault::Stop,
            false,
        ),
        ("worker's node stops", Fault::Stop, true),
        ("worker's node crashes (SIGKILL)", Fault::Kill, true),
    ];
    for (what, fault, workers_node) in plan {
        // Every node runs again here: any of them lists the cluster's connections.
        let worker_node = nodes.node_of_connection(0, &name).await?;
        let target = if workers_node {
            worker_node
        } else {
            nodes.leader_of(worker_node, &queue).await?
        };
        anyhow::ensure!(
            workers_node || target != worker_node,
            "the worker is on the leader's node"
        );
        let led = nodes.leader_of(worker_node, &queue).await? == target;
        let safe = (0..3)
            .find(|n| *n != target && *n != worker_node)
            .unwrap_or(worker_node);
        // Probe and publish through a node that stays up.
        env.connection =
            Connection::connect(&nodes.url(safe), ConnectionProperties::default()).await?;
        let publisher = Publisher::start(&env, &nodes.url(safe), rate, confirmed).await?;
        let mut r = strike(
            nodes,
            target,
            fault,
            &progress,
            workers_node.then_some(addr),
        )
        .await?;
        confirmed = publisher.stop().await?;
        (r.what, r.worker_node_led) = (what, workers_node && led);
        results.push(r);
        nodes.start_node(target).await?;
    }
    progress.stop();
    // Every confirmed message stored before the worker stops (a graceful stop
    // hands back deliveries not yet in a batch).
    wait_for_count(
        &client,
        "every confirmed checkin to be stored",
        "SELECT count(DISTINCT message_id) FROM clusters_checkins",
        confirmed as i64,
        Duration::from_millis(50),
    )
    .await?;
    stop(&mut worker).await?;
    verify(&env, &client, confirmed as i64).await?;
    env.drop_all().await;
    Ok(results)
}

/// Strikes node `node` after 3 s of steady storage; measures until 5 s of
/// steady storage follow the outage.
async fn strike(
    nodes: &Nodes,
    node: usize,
    fault: Fault,
    progress: &Progress,
    ready: Option<SocketAddr>,
) -> anyhow::Result<Recovery> {
    progress.wait_steady(Duration::from_secs(3)).await?;
    let struck = Instant::now();
    let watch = ready.map(|addr| tokio::spawn(ready_again(addr, struck)));
    match fault {
        Fault::Stop => nodes.stop_node(node).await?,
        Fault::Kill => nodes.kill_node(node).await?,
    }
    progress.wait_steady(Duration::from_secs(5)).await?;
    let ready_again_secs = match watch {
        Some(task) => Some(task.await??),
        None => None,
    };
    Ok(Recovery {
        what: "",
        stall_secs: progress.longest_gap_since(struck).as_secs_f64(),
        ready_again_secs,
        worker_node_led: false,
    })
}

/// Seconds from `since` to /readyz answering 200 after it stopped doing so.
async fn ready_again(addr: SocketAddr, since: Instant) -> anyhow::Result<f64> {
    wait_ready(addr, false).await?;
    wait_ready(addr, true).await?;
    Ok(since.elapsed().as_secs_f64())
}

async fn wait_ready(addr: SocketAddr, ready: bool) -> anyhow::Result<()> {
    poll_until(
        "readiness",
        Duration::from_millis(20),
        Duration::from_secs(120),
        || async { Ok(matches!(http::get(addr, "/readyz").await, Ok((200, _))) == ready) },
    )
    .await
}

/// Phases 13-14, one run, printed as a table.
pub async fn report(
    limits: &Limits<'_>,
    exe: &Path,
    script: &Path,
    count: usize,
    rate: usize,
) -> anyhow::Result<()> {
    let one = {
        let nodes = Nodes::start(script, 1).await?;
        drain(limits, exe, &nodes, count, 1).await?
    };
    eprintln!("  (13) one node             {one:>9.0} msgs/s");
    let nodes = Nodes::start(script, 3).await?;
    let three = drain(limits, exe, &nodes, count, 1).await?;
    eprintln!("  (13) three nodes, 1 worker {three:>9.0} msgs/s");
    let three_workers = drain(limits, exe, &nodes, count, 3).await?;
    eprintln!("  (13) three nodes, 3 workers {three_workers:>9.0} msgs/s");
    let recoveries = recovery(limits, exe, &nodes, rate).await?;
    drop(nodes);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("\nwfm-bench --cluster\n");
    println!("| measurement | result | target |");
    println!("|---|---:|---|");
    println!("| (13) backlog of {count} checkins, one-node broker, 1 worker | {one:.0} msgs/s | |");
    println!(
        "| (13) the same, three-node cluster (quorum queues on 3 nodes), 1 worker | {three:.0} msgs/s | |"
    );
    println!(
        "| (13) the same, three-node cluster, 3 workers (one per node) | {three_workers:.0} msgs/s | |"
    );
    for r in &recoveries {
        let ready = r.ready_again_secs.map_or(String::new(), |s| {
            format!("; consuming again (/readyz 200) {s:.1} s after the strike")
        });
        let led = if r.worker_node_led {
            " (it also led the queue)"
        } else {
            ""
        };
        let worst = r.ready_again_secs.unwrap_or(0.0).max(r.stall_secs);
        println!(
            "| (14) {}{led}, {rate} checkins/s arriving | longest time without a stored row {:.1} s{ready} | < 10 s: {} |",
            r.what,
            r.stall_secs,
            verdict(worst < 10.0)
        );
    }
    Ok(())
}
