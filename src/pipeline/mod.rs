//! The pipeline: deliveries → batch → parse → write → ack or dead-letter.
//!
//! Per queue, on a channel of its own, two tasks:
//! - the reader collects up to `batch_size` deliveries (or what arrived within
//!   `batch_linger` of the first) and starts settling each batch in a task of
//!   its own (parse, write, dead-letter), up to `in_flight` at once;
//! - the acker takes those tasks in the order they were started and commits
//!   each settled batch on the channel: dead-letter copies, hand-backs and the
//!   batch's ack in one broker transaction.
//!
//! Acks leave strictly in batch order, so when a batch is acked every delivery
//! with a lower tag on the channel is settled too, and one `multiple` ack per
//! batch is safe. Collecting and decoding the next batch overlaps with writing
//! the previous one; with `in_flight` > 1 (checkins only: their event-time rule
//! makes the order of batches irrelevant) writes overlap too, on the pool.

mod commit;
mod metrics;
mod process;

pub use process::{BatchReport, QueueContext, Settled, process_batch, settle_batch};

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::{Channel, Consumer, message::Delivery, options::BasicCancelOptions};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinHandle,
    time::{Instant, timeout_at},
};
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;

/// Which kind of message a queue carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Checkins,
    Versions,
}

impl QueueKind {
    /// Batches of this queue that may be written at once. Versions stay one at
    /// a time: a republish of a triple must win over the publish before it.
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

type Settling = JoinHandle<Result<Settled, PipelineError>>;

/// Consumes `consumer` until `shutdown` is cancelled, then stops taking
/// deliveries, lets the batches in hand finish (a batch is never interrupted:
/// its rows commit and it is acked), and closes the channel, which hands any
/// deliveries still buffered back to the broker unacked.
pub async fn run_queue(
    context: QueueContext,
    channel: Channel,
    mut consumer: Consumer,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let queue = context.queue.clone();
    tracing::info!(queue = %queue, "consuming");
    let (settling, in_order) = mpsc::channel(context.kind.in_flight());
    let acker = tokio::spawn(ack_in_order(
        in_order,
        channel.clone(),
        context.dead_letter_exchange.clone(),
        queue.clone(),
    ));
    let read = read_batches(&context, &mut consumer, &shutdown, settling).await;
    if read.is_err() {
        // The channel is gone: batches still retrying their write could never be acked.
        context.abandon.cancel();
    }
    let acked = acker
        .await
        .unwrap_or_else(|_| Err(PipelineError::Panicked(queue.clone())));
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    let _ = channel.close(200, "worker shutting down".into()).await;
    tracing::info!(queue = %queue, "stopped consuming");
    // The reader's error is the cause; when the reader only saw the acker hang
    // up, the acker's is.
    read.and(acked)
}

async fn read_batches(
    context: &QueueContext,
    consumer: &mut Consumer,
    shutdown: &CancellationToken,
    settling: mpsc::Sender<Settling>,
) -> Result<(), PipelineError> {
    // Permits are taken here, in batch order, before a batch's task starts:
    // with one permit, a batch is written only after the previous one committed.
    let writes = Arc::new(Semaphore::new(context.kind.in_flight()));
    loop {
        let batch = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            batch = collect_batch(consumer, context) => batch?,
        };
        if batch.is_empty() {
            return Err(PipelineError::ConsumerCancelled(context.queue.clone()));
        }
        let Ok(permit) = writes.clone().acquire_owned().await else {
            unreachable!("the semaphore is never closed");
        };
        let context = context.clone();
        let task = tokio::spawn(async move {
            let settled = settle_batch(&context, batch).await;
            drop(permit);
            settled
        });
        if settling.send(task).await.is_err() {
            // The acker stopped on an error; it reports it.
            return Ok(());
        }
    }
}

/// Acks settled batches in the order they were started.
async fn ack_in_order(
    mut in_order: mpsc::Receiver<Settling>,
    channel: Channel,
    dead_letter_exchange: String,
    queue: String,
) -> Result<(), PipelineError> {
    while let Some(task) = in_order.recv().await {
        let settled = task
            .await
            .map_err(|_| PipelineError::Panicked(queue.clone()))??;
        let report = settled.commit(&channel, &dead_letter_exchange).await?;
        tracing::debug!(queue = %queue, received = report.received, stored = report.stored, dead_lettered = report.dead_lettered, "batch acked");
    }
    Ok(())
}

/// Waits for one delivery, then gathers more until the batch is full or the
/// linger has passed since the first. An empty batch means the consumer ended.
async fn collect_batch(
    consumer: &mut Consumer,
    context: &QueueContext,
) -> Result<Vec<Delivery>, PipelineError> {
    let channel_failed = |source| {
        PipelineError::Broker(BrokerError::Channel {
            doing: "receiving deliveries",
            source,
        })
    };
    let mut batch = Vec::with_capacity(context.settings.batch_size);
    match consumer.next().await {
        None => return Ok(batch),
        Some(delivery) => batch.push(delivery.map_err(channel_failed)?),
    }
    let deadline = Instant::now() + context.settings.batch_linger;
    while batch.len() < context.settings.batch_size {
        match timeout_at(deadline, consumer.next()).await {
            Ok(Some(delivery)) => batch.push(delivery.map_err(channel_failed)?),
            // Ended or lingered long enough: write what we have.
            Ok(None) | Err(_) => break,
        }
    }
    Ok(batch)
}
