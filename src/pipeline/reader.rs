//! Reading a queue: batches of deliveries, each decided in a task of its own,
//! handed to the acker in read order; and pausing when the breaker trips.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
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
///
/// A batch takes a write permit before its first delivery: while every
/// permit is writing, deliveries wait in the client, and the next batch takes
/// all of them at once. A batch is written as soon as nothing more is ready
/// ("flush on idle": one message at low load costs one transaction, not a
/// linger); only after a full batch, a sign of a backlog, does the next wait
/// up to `batch_linger` for more to arrive.
pub(super) async fn read(
    context: &QueueContext,
    channel: &Channel,
    mut consumer: Consumer,
    breaker: &Breaker,
    to_acker: mpsc::Sender<Deciding>,
) -> Result<(), PipelineError> {
    // With one permit, a batch is written only after the previous one committed.
    let writes = Arc::new(Semaphore::new(context.kind.in_flight()));
    let mut backlog = false;
    context
        .readiness
        .set_queue(&context.queue, QueueState::Consuming);
    loop {
        // Only the waits before a batch's first delivery are raced: a batch
        // started is finished, so no delivery is ever dropped unhandled (a
        // later `multiple` ack would ack it unseen).
        let permit = tokio::select! {
            biased;
            () = context.shutdown.cancelled() => break,
            permit = writes.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let first = tokio::select! {
            biased;
            () = context.shutdown.cancelled() => break,
            () = breaker.tripped() => {
                drop(permit);
                consumer = pause(context, channel, consumer, breaker, &to_acker).await?;
                continue;
            }
            first = consumer.next() => first,
        };
        let Some(first) = first else {
            return Err(PipelineError::ConsumerCancelled(context.queue.clone()));
        };
        let first = first.map_err(channel_failed("receiving deliveries"))?;
        let batch = fill_batch(first, &mut consumer, context, backlog).await?;
        backlog = batch.len() == context.settings.batch_size;
        let task = if breaker.is_tripped() {
            // Read before the pause began: back it goes, untouched.
            tokio::spawn(async move { Ok(Decided::released(batch)) })
        } else {
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

/// Gathers the deliveries after `first` that are already here, up to the
/// batch size; after a full batch (`backlog`), also those arriving within
/// `batch_linger` of the first.
async fn fill_batch(
    first: Delivery,
    consumer: &mut Consumer,
    context: &QueueContext,
    backlog: bool,
) -> Result<Vec<Delivery>, PipelineError> {
    let receiving = channel_failed("receiving deliveries");
    let size = context.settings.batch_size;
    let mut batch = Vec::with_capacity(size);
    batch.push(first);
    while batch.len() < size {
        match consumer.next().now_or_never() {
            Some(Some(delivery)) => batch.push(delivery.map_err(&receiving)?),
            // Nothing more ready (or the consumer ended: the next read says so).
            Some(None) | None => break,
        }
    }
    if !backlog || batch.len() == size {
        return Ok(batch);
    }
    let deadline = Instant::now() + context.settings.batch_linger;
    while batch.len() < size {
        match timeout_at(deadline, consumer.next()).await {
            Ok(Some(delivery)) => batch.push(delivery.map_err(&receiving)?),
            // Ended or lingered long enough: write what we have.
            Ok(None) | Err(_) => break,
        }
    }
    Ok(batch)
}
