//! Series no single event updates — pool connections, each queue's depth and
//! consumers, the broker's blocking — and every app-level series registered at
//! zero when the worker starts, so dashboards and alerts see them from the
//! first scrape.

use std::time::Duration;

use lapin::{Channel, options::QueueDeclareOptions, types::FieldTable};
use tokio_util::sync::CancellationToken;

use crate::{config::Topology, store::Pool};

/// Steps whose recoveries `wfm_reconnects_total` counts.
pub(super) const STEPS: [&str; 2] = ["bootstrap", "consume"];

/// Registers every app-level series at zero.
pub(super) fn register(topology: &Topology) {
    for step in STEPS {
        metrics::counter!("wfm_reconnects_total", "step" => step).increment(0);
    }
    // Registered, not set: each connection's watch adds and takes away its own
    // block (see `supervise::watch_dead_letters`); setting it here would wipe
    // a block another worker in the same process holds.
    metrics::gauge!("wfm_broker_blocked").increment(0.0);
    metrics::gauge!("wfm_ready").set(0.0);
    for state in ["idle", "in_use"] {
        metrics::gauge!("wfm_pool_connections", "state" => state).set(0.0);
    }
    for queue in queues(topology) {
        metrics::gauge!("wfm_queue_messages", "queue" => queue.clone()).set(0.0);
        metrics::gauge!("wfm_queue_consumers", "queue" => queue).set(0.0);
    }
    crate::store::rds::register_metrics();
}

fn queues(topology: &Topology) -> [String; 3] {
    [
        topology.checkin_queue.clone(),
        topology.version_queue.clone(),
        topology.dead_letter_queue.clone(),
    ]
}

/// Gauges no event updates: pool connections, and each queue's depth and
/// consumers (a passive declare, which changes nothing on the broker).
pub(super) async fn sample(
    channel: Channel,
    pool: Pool,
    topology: Topology,
    stop: CancellationToken,
) {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queues = queues(&topology);
    loop {
        let state = pool.state();
        metrics::gauge!("wfm_pool_connections", "state" => "idle").set(state.idle_connections);
        metrics::gauge!("wfm_pool_connections", "state" => "in_use")
            .set(state.connections - state.idle_connections);
        for queue in &queues {
            if let Ok(declared) = channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                metrics::gauge!("wfm_queue_messages", "queue" => queue.clone())
                    .set(declared.message_count());
                metrics::gauge!("wfm_queue_consumers", "queue" => queue.clone())
                    .set(declared.consumer_count());
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    let _ = channel.close(200, "sampler stopped".into()).await;
}
