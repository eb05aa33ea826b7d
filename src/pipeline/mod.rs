//! The pipeline: deliveries → batch → verdicts → acknowledgements.
//!
//! Per queue, on a channel of its own:
//! - the reader ([`reader`]) takes a write permit (`in_flight` of them), then
//!   every delivery already there, up to `batch_size` messages or
//!   `batch_bytes` of bodies (after a full batch, or when an eighth of one was
//!   there, also what arrives within `batch_linger`), and decides the batch in a task of its own;
//! - deciding ([`decide`]) parses every delivery, writes the valid ones in one
//!   transaction (retried by [`retry`] while the failure is transient), and
//!   gives each delivery its [`Verdict`];
//! - the acker ([`acker`]) carries the verdicts out on the broker, batch by
//!   batch in the order the batches were read.
//!
//! What each verdict becomes on the broker, and why (RabbitMQ 3.x and 4.3+):
//!
//! | verdict | frame | counts toward `x-delivery-count` |
//! |---|---|---|
//! | [`Verdict::Stored`] | `basic.ack` (one `multiple` ack per batch when it can) | — |
//! | [`Verdict::DeadLetter`] | copy confirmed on the dead-letter connection, then `basic.ack` | — |
//! | [`Verdict::Retry`] | `basic.reject(requeue)` | yes, on 3.x and 4.3+ |
//! | [`Verdict::Release`] | `basic.nack(requeue)` | on 3.x; not on 4.3+ |
//!
//! RabbitMQ 4.3 stopped counting `basic.nack(requeue=true)` in a quorum queue's
//! `x-delivery-count` (rabbitmq-server PR #15387); only `basic.reject` (and a
//! channel closing) still counts. A message that fails alone must reach
//! `WFM_MAX_DELIVERIES` on every version, so it is rejected. A message that is
//! handed back through no fault of its own (a systemic failure, shutdown, a
//! dead-letter copy the broker did not take) is nacked: on 4.3+ that costs it
//! none of its attempts; on 3.x it does, which only shortens the attempts left
//! to a message that later fails alone.

mod acker;
mod breaker;
mod decide;
mod metrics;
mod reader;
mod retry;

pub use decide::{BatchReport, Decided, Verdict, decide};
pub use metrics::QueueMetrics;

use std::sync::Arc;

use lapin::{Channel, Consumer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{BrokerError, DeadLetters, Pace},
    config::PipelineSettings,
    readiness::Readiness,
    store::Pool,
};

/// Which kind of message a queue carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Checkins,
    Versions,
}

impl QueueKind {
    /// Batches of this queue that may be written at once. Both kinds decide
    /// "newest" by event time in SQL, so the order batches commit in does not
    /// matter; versions stay one at a time only because they are few.
    pub fn in_flight(self) -> usize {
        match self {
            Self::Checkins => 2,
            Self::Versions => 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker cancelled the consumer of queue {0} (was the queue deleted?)")]
    ConsumerCancelled(String),
    #[error("a batch of queue {0} panicked")]
    Panicked(String),
    #[error("a batch of queue {0} was abandoned unacknowledged; the broker redelivers it")]
    Abandoned(String),
}

/// Everything a queue's batches need.
#[derive(Clone)]
pub struct QueueContext {
    pub kind: QueueKind,
    pub queue: String,
    pub pool: Pool,
    pub dead_letters: DeadLetters,
    pub settings: PipelineSettings,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<QueueMetrics>,
    /// The consuming connection's: whether this queue's reader takes its
    /// deliveries in bulk tells lapin's thread how to wait for them.
    pub pace: Pace,
    /// Cancelled when this connection's deliveries can no longer be acked (the
    /// channel failed, or shutdown ran out of time): batches stop retrying.
    pub abandon: CancellationToken,
    /// Cancelled on shutdown: batches stop retrying and hand their messages back.
    pub shutdown: CancellationToken,
}

/// Abandons the connection's batches when `channel` stops working. The reader
/// notices a closed channel only while it waits for deliveries; when every
/// write is stuck (a database outage) it waits on them instead, and the broker
/// closing the channel (its consumer time-out) would go unnoticed.
async fn watch_channel(channel: Channel, abandon: CancellationToken) {
    while channel.status().connected() {
        tokio::select! {
            () = abandon.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
        }
    }
    tracing::warn!(
        channel = channel.id(),
        "broker channel closed; abandoning its unacknowledged batches"
    );
    abandon.cancel();
}

/// Consumes `consumer` until `context.shutdown` is cancelled, then stops taking
/// deliveries, lets the batches in hand finish (a batch is never cut in the
/// middle: its rows commit and it is acked), waits for dead-letter copies still
/// unconfirmed, and closes the channel. Deliveries the client had buffered
/// but no batch had taken are nacked (requeued) after the last batch.
pub async fn run_queue(
    context: QueueContext,
    channel: Channel,
    consumer: Consumer,
) -> Result<(), PipelineError> {
    let queue = context.queue.clone();
    tracing::info!(queue = %queue, "consuming");
    let (to_acker, in_order) = mpsc::channel(context.kind.in_flight());
    let breaker = Arc::new(breaker::Breaker::new(context.settings.first_pause));
    let acker = acker::Acker::new(&context, channel.clone(), breaker.clone());
    let copies = acker.copies();
    let acking = tokio::spawn(acker.run(in_order));
    let watching = tokio::spawn(watch_channel(channel.clone(), context.abandon.clone()));
    let read = reader::read(&context, &channel, consumer, &breaker, to_acker).await;
    if read.is_err() {
        // The channel is gone: batches still retrying their write could never be acked.
        context.abandon.cancel();
    }
    let acked = acking
        .await
        .unwrap_or_else(|_| Err(PipelineError::Panicked(queue.clone())));
    watching.abort();
    copies.wait_for_confirms(&context.abandon).await;
    let _ = channel.close(200, "worker shutting down".into()).await;
    tracing::info!(queue = %queue, "stopped consuming");
    // The reader's error is the cause; when the reader only saw the acker hang
    // up, the acker's is.
    read.and(acked)
}
