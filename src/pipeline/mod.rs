//! The pipeline: deliveries → batch → parse → write → ack or dead-letter.
//!
//! One task per queue, each on its own channel. A task collects up to
//! `batch_size` deliveries (or what arrived within `batch_linger` of the first),
//! processes them, and only then collects the next batch; lapin keeps receiving
//! meanwhile (up to the prefetch), so consuming overlaps with writing. Because a
//! channel's batches finish strictly in order, once a batch is settled every
//! delivery tag up to its highest is settled, and one `multiple` ack suffices.

mod process;

pub use process::{BatchReport, QueueContext, process_batch};

use futures_util::StreamExt;
use lapin::{Channel, Consumer, message::Delivery, options::BasicCancelOptions};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;

/// Which kind of message a queue carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Checkins,
    Versions,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker cancelled the consumer of queue {0} (was the queue deleted?)")]
    ConsumerCancelled(String),
}

/// Consumes `consumer` until `shutdown` is cancelled, then stops taking
/// deliveries, lets the batch in hand finish (it is never interrupted: its rows
/// commit and it is acked), and closes the channel, which hands any deliveries
/// still buffered back to the broker unacked.
pub async fn run_queue(
    context: QueueContext,
    channel: Channel,
    mut consumer: Consumer,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let queue = context.queue.clone();
    tracing::info!(queue = %queue, "consuming");
    loop {
        let batch = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            batch = collect_batch(&mut consumer, &context) => batch?,
        };
        if batch.is_empty() {
            return Err(PipelineError::ConsumerCancelled(queue));
        }
        process_batch(&context, batch).await?;
    }
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    let _ = channel.close(200, "worker shutting down".into()).await;
    tracing::info!(queue = %queue, "stopped consuming");
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
