//! Reading a queue: batches of deliveries, each decided in a task of its own,
//! handed to the acker in read order; and pausing when the breaker trips.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions},
    types::FieldTable,
};
use tokio::{
    sync::{Semaphore, mpsc},
    time::{Instant, timeout_at},
};

use super::{
    Decided, PipelineError, QueueContext, acker::Deciding, breaker::Breaker, decide::decide,
};
use crate::{broker::BrokerError, readiness::QueueState};

/// Reads until shutdown (Ok) or until the channel fails (Err).
pub(super) async fn read(
    context: &QueueContext,
    channel: &Channel,
    mut consumer: Consumer,
    breaker: &Breaker,
    to_acker: mpsc::Sender<Deciding>,
) -> Result<(), PipelineError> {
    // Permits are taken in read order, before a batch's task starts: with one
    // permit, a batch is written only after the previous one committed.
    let writes = Arc::new(Semaphore::new(context.kind.in_flight()));
    context
        .readiness
        .set_queue(&context.queue, QueueState::Consuming);
    loop {
        // Only the wait for a batch's first delivery is raced: a batch started
        // is finished, so no delivery is ever dropped unhandled (a later
        // `multiple` ack would ack it unseen).
        let first = tokio::select! {
            biased;
            () = context.shutdown.cancelled() => break,
            () = breaker.tripped() => {
                consumer = pause(context, channel, consumer, breaker, &to_acker).await?;
                continue;
            }
            first = consumer.next() => first,
        };
        let Some(first) = first else {
            return Err(PipelineError::ConsumerCancelled(context.queue.clone()));
        };
        let batch = fill_batch(
            first.map_err(channel_failed("receiving deliveries"))?,
            &mut consumer,
            context,
        )
        .await?;
        let task = if breaker.is_tripped() {
            // Read before the pause began: back it goes, untouched.
            tokio::spawn(async move { Ok(Decided::released(batch)) })
        } else {
            let Ok(permit) = writes.clone().acquire_owned().await else {
                unreachable!("the semaphore is never closed");
            };
            let context = context.clone();
            tokio::spawn(async move {
                let decided = decide(&context, batch).await;
                drop(permit);
                decided
            })
        };
        if to_acker.send(task).await.is_err() {
            // The acker stopped on an error; it reports it.
            return Ok(());
        }
    }
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    Ok(())
}

/// Stops consuming, hands back what the client had buffered, waits out the
/// pause (or shutdown), and consumes again.
async fn pause(
    context: &QueueContext,
    channel: &Channel,
    mut consumer: Consumer,
    breaker: &Breaker,
    to_acker: &mpsc::Sender<Deciding>,
) -> Result<Consumer, PipelineError> {
    let (reason, pause) = breaker.pause();
    tracing::error!(queue = %context.queue, reason = %reason, pause_secs = pause.as_secs(), "systemic database failure: consumption paused, messages handed back");
    context.metrics.paused();
    context
        .readiness
        .set_queue(&context.queue, QueueState::Paused(reason));
    let tag = consumer.tag();
    channel
        .basic_cancel(tag.clone(), BasicCancelOptions::default())
        .await
        .map_err(channel_failed("stopping the consumer"))?;
    // After cancel-ok the stream yields what was buffered, then ends.
    let mut buffered = Vec::new();
    while let Some(delivery) = consumer.next().await {
        buffered.push(delivery.map_err(channel_failed("receiving deliveries"))?);
    }
    if !buffered.is_empty() {
        let released = tokio::spawn(async move { Ok(Decided::released(buffered)) });
        let _ = to_acker.send(released).await;
    }
    tokio::select! {
        () = context.shutdown.cancelled() => {}
        () = tokio::time::sleep(pause) => {}
    }
    let consumer = channel
        .basic_consume(
            context.queue.as_str().into(),
            tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(channel_failed("consuming again after a pause"))?;
    context
        .readiness
        .set_queue(&context.queue, QueueState::Consuming);
    tracing::info!(queue = %context.queue, "consuming again after a pause");
    Ok(consumer)
}

fn channel_failed(doing: &'static str) -> impl Fn(lapin::Error) -> PipelineError {
    move |source| PipelineError::Broker(BrokerError::Channel { doing, source })
}

/// Gathers deliveries after `first` until the batch is full or the linger has
/// passed since the first.
async fn fill_batch(
    first: Delivery,
    consumer: &mut Consumer,
    context: &QueueContext,
) -> Result<Vec<Delivery>, PipelineError> {
    let receiving = channel_failed("receiving deliveries");
    let mut batch = Vec::with_capacity(context.settings.batch_size);
    batch.push(first);
    let deadline = Instant::now() + context.settings.batch_linger;
    while batch.len() < context.settings.batch_size {
        match timeout_at(deadline, consumer.next()).await {
            Ok(Some(delivery)) => batch.push(delivery.map_err(&receiving)?),
            // Ended or lingered long enough: write what we have.
            Ok(None) | Err(_) => break,
        }
    }
    Ok(batch)
}
