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
use crate::{
    broker::{BrokerError, InBulk, Pace},
    config::PipelineSettings,
    readiness::QueueState,
};

/// Reads until shutdown (Ok) or until the channel fails (Err).
///
/// A batch takes a write permit before its first delivery: while every
/// permit is writing, deliveries wait in the client, and the next batch takes
/// all of them at once. A batch is written as soon as nothing more is ready
/// ("flush on idle": one message at low load costs one transaction, not a
/// linger); only after a full batch (a backlog), or when a good part of a
/// batch was already waiting (a stream), does it wait up to `batch_linger`
/// for more to arrive; while it gathers in bulk so, it tells the connection's
/// socket (its [`Pace`]) that deliveries may come in chunks.
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
    let mut pace = PaceMark::new(&context.pace);
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
        let (batch, gathered) = fill_batch(first, &mut consumer, context, backlog).await?;
        backlog = gathered == Gathered::Full;
        pace.after(gathered);
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
    // Hand back what the client buffered with nack rather than leaving it to
    // the channel's closing: on RabbitMQ 4.3+ a closing channel counts toward
    // each message's `x-delivery-count`, a nack does not (see the module
    // docs of `pipeline`), and a shutdown is no fault of the messages.
    if let Ok(buffered) = cancel_and_drain(channel, consumer).await {
        release(buffered, &to_acker).await;
    }
    Ok(())
}

/// Cancels the consumer and returns the deliveries the client had buffered:
/// after cancel-ok the stream yields them, then ends.
async fn cancel_and_drain(
    channel: &Channel,
    mut consumer: Consumer,
) -> Result<Vec<Delivery>, PipelineError> {
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .map_err(channel_failed("stopping the consumer"))?;
    let mut buffered = Vec::new();
    while let Some(delivery) = consumer.next().await {
        buffered.push(delivery.map_err(channel_failed("receiving deliveries"))?);
    }
    Ok(buffered)
}

/// Hands `buffered` to the acker to be nacked (requeued), after the batches
/// before it.
async fn release(buffered: Vec<Delivery>, to_acker: &mpsc::Sender<Deciding>) {
    if !buffered.is_empty() {
        let released = tokio::spawn(async move { Ok(Decided::released(buffered)) });
        let _ = to_acker.send(released).await;
    }
}

/// Stops consuming, hands back what the client had buffered, waits out the
/// pause (or shutdown), and consumes again.
async fn pause(
    context: &QueueContext,
    channel: &Channel,
    consumer: Consumer,
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
    release(cancel_and_drain(channel, consumer).await?, to_acker).await;
    // A lost channel ends the pause too: when every queue of the connection
    // is paused, nothing else would notice until the pause (up to a minute)
    // ran out, and only then reconnect.
    tokio::select! {
        biased;
        () = context.abandon.cancelled() => return Err(PipelineError::Abandoned(context.queue.clone())),
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

/// A batch that finds at least 1/STREAM_SHARE of its limit (in messages or
/// bytes) ready at once is part of a stream.
const STREAM_SHARE: usize = 8;

/// A batch being gathered. It is full at `batch_size` deliveries, or once its
/// bodies reach `batch_bytes` (the delivery that crosses it is taken: a batch
/// holds at most `batch_bytes` plus one message). The byte bound keeps each
/// statement, and the client buffers that grow to the largest one, small:
/// batches of ~2 KB checkins beyond a few hundred KiB cost throughput, CPU
/// and memory (BENCHMARKS.md, "Batches bounded in bytes").
struct Gathering<'s> {
    deliveries: Vec<Delivery>,
    bytes: usize,
    settings: &'s PipelineSettings,
}

impl<'s> Gathering<'s> {
    fn new(first: Delivery, settings: &'s PipelineSettings) -> Self {
        let mut gathering = Gathering {
            deliveries: Vec::with_capacity(settings.batch_size.min(INITIAL_CAPACITY)),
            bytes: 0,
            settings,
        };
        gathering.push(first);
        gathering
    }

    fn push(&mut self, delivery: Delivery) {
        self.bytes += delivery.data.len();
        self.deliveries.push(delivery);
    }

    fn is_full(&self) -> bool {
        self.settings
            .batch_is_full(self.deliveries.len(), self.bytes)
    }

    /// Whether what was ready at once looks like a stream (see [`fill_batch`]).
    fn is_stream(&self) -> bool {
        self.deliveries.len() >= self.settings.batch_size.div_ceil(STREAM_SHARE)
            || self.bytes >= self.settings.batch_bytes.div_ceil(STREAM_SHARE)
    }
}

/// This reader's part in its connection's [`Pace`]: in bulk from a batch that
/// lingered or filled up until one that was written at once.
struct PaceMark<'p> {
    pace: &'p Pace,
    in_bulk: Option<InBulk>,
}

impl<'p> PaceMark<'p> {
    fn new(pace: &'p Pace) -> Self {
        PaceMark {
            pace,
            in_bulk: None,
        }
    }

    fn after(&mut self, gathered: Gathered) {
        match gathered {
            Gathered::AtOnce => self.in_bulk = None,
            Gathered::Lingered | Gathered::Full => {
                if self.in_bulk.is_none() {
                    self.in_bulk = Some(self.pace.in_bulk());
                }
            }
        }
    }
}

/// Deliveries a batch makes room for at first: a typical full batch without
/// regrowing, not `batch_size` slots when the byte bound closes batches early.
const INITIAL_CAPACITY: usize = 256;

/// How a batch was gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gathered {
    /// What was there, a few messages: written at once.
    AtOnce,
    /// Many were there (or the last batch was full): waited for more.
    Lingered,
    /// Full, whether at once or after lingering.
    Full,
}

/// Gathers the deliveries after `first` that are already here, until the batch
/// is full; after a full batch (`backlog`), or when at least 1/STREAM_SHARE of
/// a batch was here, also those arriving within `batch_linger` of the first.
async fn fill_batch(
    first: Delivery,
    consumer: &mut Consumer,
    context: &QueueContext,
    backlog: bool,
) -> Result<(Vec<Delivery>, Gathered), PipelineError> {
    let receiving = channel_failed("receiving deliveries");
    let mut batch = Gathering::new(first, &context.settings);
    while !batch.is_full() {
        match consumer.next().now_or_never() {
            Some(Some(delivery)) => batch.push(delivery.map_err(&receiving)?),
            // Nothing more ready (or the consumer ended: the next read says so).
            Some(None) | None => break,
        }
    }
    // A few messages at a time: written at once. Many already waiting: a
    // stream (a backlog, or a load the database can only follow in bulk) —
    // wait a little for the batch to fill, which costs far less than more
    // transactions.
    if batch.is_full() {
        return Ok((batch.deliveries, Gathered::Full));
    }
    if !backlog && !batch.is_stream() {
        return Ok((batch.deliveries, Gathered::AtOnce));
    }
    let deadline = Instant::now() + context.settings.batch_linger;
    while !batch.is_full() {
        match timeout_at(deadline, consumer.next()).await {
            Ok(Some(delivery)) => batch.push(delivery.map_err(&receiving)?),
            // Ended or lingered long enough: write what we have.
            Ok(None) | Err(_) => break,
        }
    }
    let gathered = if batch.is_full() {
        Gathered::Full
    } else {
        Gathered::Lingered
    };
    Ok((batch.deliveries, gathered))
}

#[cfg(test)]
mod tests {
    use super::{Gathered, Pace, PaceMark};

    #[test]
    fn a_reader_is_in_bulk_from_a_batch_that_lingered_or_filled_until_one_written_at_once() {
        let pace = Pace::default();
        let mut mark = PaceMark::new(&pace);
        mark.after(Gathered::AtOnce);
        assert!(!pace.bulk());
        mark.after(Gathered::Full);
        assert!(pace.bulk());
        mark.after(Gathered::Lingered);
        assert!(pace.bulk());
        mark.after(Gathered::AtOnce);
        assert!(!pace.bulk(), "a batch written at once ends the bulk");
        mark.after(Gathered::Lingered);
        assert!(pace.bulk());
        drop(mark);
        assert!(!pace.bulk(), "a reader that stops leaves no mark");
    }
}
