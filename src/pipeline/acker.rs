//! Carrying out verdicts on the broker, batch by batch in read order.
//!
//! For each batch: hand-backs first (`basic.reject` / `basic.nack`, one frame
//! each), then the dead-letter copies (published on the dead-letter connection;
//! each original is acked by its own task once the broker confirms the copy, or
//! handed back if it refuses it), then the acks of what was stored.
//!
//! Acks of stored messages are queued on the channel without waiting for them
//! to be written ([`ack_without_waiting`]). They are one `multiple` ack per
//! batch whenever that covers nothing undecided: every delivery with a lower
//! tag has been acked or handed back, *unless* its dead-letter copy is still
//! unconfirmed. Those originals are tracked ([`Unconfirmed`]); a `multiple` ack
//! never reaches past the lowest of them, and stored messages above it are
//! acked one by one. So a broker that blocks publishing (a resource alarm)
//! holds back only the originals of the copies, never the rest of the stream.

use std::{
    collections::BTreeSet,
    future::Future,
    pin::pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Decided, PipelineError, QueueContext, Verdict, breaker::Breaker, decide::message_id,
    metrics::QueueMetrics,
};
use crate::{
    broker::{BrokerError, CopyRefused, DeadLetter, DeadLetters, confirmed},
    message::Rejection,
};

/// A batch being decided, in read order.
pub(super) type Deciding = JoinHandle<Result<Decided, PipelineError>>;

/// How long an original whose copy the broker refused is held before it is
/// handed back: a copy that cannot be placed must not spin.
const REFUSED_COPY_HOLD: Duration = Duration::from_secs(5);

pub(super) struct Acker {
    queue: String,
    /// The channel the deliveries came on, which the acks of stored messages go to.
    channel: Channel,
    breaker: Arc<Breaker>,
    copies: Copies,
}

/// The dead-letter copies in flight on one channel.
#[derive(Clone)]
pub(super) struct Copies {
    publisher: DeadLetters,
    queue: String,
    unconfirmed: Arc<Unconfirmed>,
    tasks: TaskTracker,
    metrics: Arc<QueueMetrics>,
}

/// Delivery tags whose dead-letter copy the broker has not confirmed yet.
#[derive(Default)]
struct Unconfirmed(Mutex<BTreeSet<u64>>);

impl Unconfirmed {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Acker {
    pub fn new(context: &QueueContext, channel: Channel, breaker: Arc<Breaker>) -> Acker {
        Acker {
            queue: context.queue.clone(),
            channel,
            breaker,
            copies: Copies {
                publisher: context.dead_letters.clone(),
                queue: context.queue.clone(),
                unconfirmed: Arc::default(),
                tasks: TaskTracker::new(),
                metrics: context.metrics.clone(),
            },
        }
    }

    pub fn copies(&self) -> Copies {
        self.copies.clone()
    }

    /// Acknowledges batches in the order they were read, until the reader hangs up.
    pub async fn run(self, mut in_order: mpsc::Receiver<Deciding>) -> Result<(), PipelineError> {
        while let Some(task) = in_order.recv().await {
            let decided = task
                .await
                .map_err(|_| PipelineError::Panicked(self.queue.clone()))??;
            match &decided.systemic {
                Some(reason) => self.breaker.trip(reason),
                None if decided.verdicts.contains(&Verdict::Stored) => self.breaker.reset(),
                None => {}
            }
            self.acknowledge(decided).await?;
        }
        Ok(())
    }

    /// Carries out one batch's verdicts (see the module docs for the order).
    pub async fn acknowledge(&self, decided: Decided) -> Result<(), PipelineError> {
        let Decided {
            deliveries,
            verdicts,
            ..
        } = decided;
        let mut stored = Vec::with_capacity(deliveries.len());
        let mut letters = Vec::new();
        for (delivery, verdict) in deliveries.into_iter().zip(verdicts) {
            match verdict {
                Verdict::Stored => stored.push(delivery),
                Verdict::DeadLetter(rejection) => letters.push((delivery, rejection)),
                Verdict::Retry => sent(
                    delivery.acker.reject(REQUEUE_COUNTED).await,
                    "handing a delivery back",
                )?,
                Verdict::Release => {
                    sent(delivery.acker.nack(REQUEUE).await, "releasing a delivery")?
                }
            }
        }
        for (delivery, rejection) in letters {
            self.copies.start(delivery, rejection);
        }
        self.ack_stored(&stored)?;
        self.copies.metrics.batch_acknowledged(stored.len());
        Ok(())
    }

    /// One `multiple` ack up to the lowest unconfirmed copy, single acks above it.
    fn ack_stored(&self, stored: &[Delivery]) -> Result<(), PipelineError> {
        let floor = self
            .copies
            .unconfirmed
            .lock()
            .first()
            .copied()
            .unwrap_or(u64::MAX);
        let (below, above): (Vec<&Delivery>, Vec<&Delivery>) =
            stored.iter().partition(|d| d.delivery_tag < floor);
        if let Some(last) = below.iter().max_by_key(|d| d.delivery_tag) {
            ack_without_waiting(&self.channel, last.delivery_tag, true, "acking a batch")?;
        }
        for delivery in above {
            ack_without_waiting(
                &self.channel,
                delivery.delivery_tag,
                false,
                "acking a delivery",
            )?;
        }
        Ok(())
    }
}

/// `basic.reject(requeue)`: counts toward the delivery limit on every version.
const REQUEUE_COUNTED: BasicRejectOptions = BasicRejectOptions { requeue: true };
/// `basic.nack(requeue)`: not counted on RabbitMQ 4.3+ (counted on 3.x).
const REQUEUE: BasicNackOptions = BasicNackOptions {
    requeue: true,
    multiple: false,
};

impl Copies {
    /// Publishes the copy in a task of its own (a blocked broker may hold it for
    /// as long as an alarm lasts); the original is acked once the copy is
    /// confirmed, or handed back if the broker refuses it.
    fn start(&self, delivery: Delivery, rejection: Rejection) {
        tracing::warn!(
            queue = %self.queue, message_id = message_id(&delivery),
            kind = rejection.kind.as_str(), reason = %rejection.reason,
            "dead-lettering message"
        );
        self.unconfirmed.lock().insert(delivery.delivery_tag);
        let copies = self.clone();
        self.tasks
            .spawn(async move { copies.finish(delivery, rejection).await });
    }

    async fn finish(self, delivery: Delivery, rejection: Rejection) {
        let letter = DeadLetter {
            routing_key: delivery.routing_key.as_str(),
            body: &delivery.data,
            properties: &delivery.properties,
            queue: &self.queue,
            rejection: &rejection,
        };
        let copied = match self.publisher.publish(letter).await {
            Ok(confirm) => confirmed(confirm).await,
            Err(refused) => Err(refused),
        };
        // Whatever happens to the original, it leaves the set only after its
        // frame is sent, so no `multiple` ack can overtake it.
        match copied {
            Ok(()) => {
                if delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap_or(false)
                {
                    self.metrics.dead_lettered(rejection.kind);
                }
            }
            Err(refused) => self.hand_back(&delivery, &refused).await,
        }
        self.unconfirmed.lock().remove(&delivery.delivery_tag);
    }

    async fn hand_back(&self, delivery: &Delivery, refused: &CopyRefused) {
        tracing::error!(queue = %self.queue, message_id = message_id(delivery), error = %refused, "the broker did not take a dead-letter copy; the original stays in its queue");
        self.metrics.dead_letter_refused();
        tokio::time::sleep(REFUSED_COPY_HOLD).await;
        let _ = delivery.acker.nack(REQUEUE).await;
    }

    /// Waits for the copies in flight, until `abandon` is cancelled (their
    /// originals, unacked, are then redelivered when the channel closes).
    pub async fn wait_for_confirms(&self, abandon: &CancellationToken) {
        self.tasks.close();
        tokio::select! {
            () = self.tasks.wait() => {}
            () = abandon.cancelled() => {}
        }
    }
}

/// Queues a `basic.ack` on `channel` and returns without waiting for lapin to
/// write it.
///
/// `Delivery::acker` goes through lapin's internal command task, which wakes
/// lapin's I/O thread for the command, spawns a task that queues the frame
/// (waking it again), and is woken back once the frame is out: at 1,000
/// checkins/s a fifth of the worker's context switches (BENCHMARKS.md, "Acks
/// nobody waits for"). Nothing here needs to know when the frame left:
/// - lapin writes a connection's method frames in the order they were queued,
///   and the channel's close is queued only after the acker has finished
///   (`run_queue`), so a close cannot overtake an ack;
/// - a dead-letter original is acked through its `Delivery::acker`, which is
///   awaited: it leaves [`Unconfirmed`] only once its frame is out, so no
///   `multiple` ack queued later can go out before it;
/// - a frame that is never written means the connection failed, which the
///   reader and `watch_channel` see; the broker then redelivers whatever was
///   not acked, and deduplication stores it once.
///
/// A channel that is already closing or closed answers on the first poll, and
/// that error is returned. (`basic.ack` is the same frame on RabbitMQ 3.x and
/// 4.x.)
fn ack_without_waiting(
    channel: &Channel,
    delivery_tag: u64,
    multiple: bool,
    doing: &'static str,
) -> Result<(), PipelineError> {
    // The frame is queued on the first poll; what is left (the wait for its
    // write) is dropped, so lapin's thread has no one to wake.
    let ack = pin!(channel.basic_ack(delivery_tag, BasicAckOptions { multiple }));
    match ack.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Err(source)) => Err(BrokerError::Channel { doing, source }.into()),
        Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
    }
}

/// lapin answers `Ok(false)` without sending anything when the channel is gone.
fn sent(result: lapin::Result<bool>, doing: &'static str) -> Result<(), PipelineError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(BrokerError::ChannelClosed(doing).into()),
        Err(source) => Err(BrokerError::Channel { doing, source }.into()),
    }
}
