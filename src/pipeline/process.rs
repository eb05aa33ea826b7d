//! One batch, from deliveries to a decision for each: stored (its rows
//! committed), to be dead-lettered (with its reason), or to be handed back for
//! a later attempt. Carrying out the decisions on the broker is [`super::commit`].

use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::{message::Delivery, types::AMQPValue};
use tokio_util::sync::CancellationToken;

use super::{PipelineError, QueueKind, metrics};
use crate::{
    config::PipelineSettings,
    message::{Checkin, Envelope, Rejection, RejectionKind, VersionEvent},
    store::{self, BatchOutcome, ErrorClass, Pool, StoreError},
};

/// Everything a queue's batches need.
#[derive(Clone)]
pub struct QueueContext {
    pub kind: QueueKind,
    pub queue: String,
    pub pool: Pool,
    /// Where rejected messages are copied to.
    pub dead_letter_exchange: String,
    pub settings: PipelineSettings,
    /// Cancelled when this connection's deliveries can no longer be acked (the
    /// channel failed, or shutdown ran out of time): batches stop retrying.
    pub abandon: CancellationToken,
}

/// What became of a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub received: usize,
    /// Rows newly stored; the rest of the valid messages were duplicates.
    pub stored: u64,
    pub dead_lettered: usize,
    /// Of those, valid messages (refused by the database, or failing too often).
    pub refused: usize,
    /// Handed back to the broker for another attempt.
    pub requeued: usize,
}

#[derive(Debug, Clone)]
pub(super) enum Disposition {
    Stored,
    DeadLetter(Rejection),
    /// Failed alone, neither transiently nor for its data (the error).
    Retry(String),
    /// Handed back to the broker for another attempt.
    Requeue,
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// A batch whose every delivery has its decision, waiting to be committed on
/// the broker (see [`Settled::commit`]).
pub struct Settled {
    pub report: BatchReport,
    pub(super) deliveries: Vec<Delivery>,
    pub(super) dispositions: Vec<Disposition>,
    pub(super) queue: String,
}

/// Processes one batch of deliveries from `context.queue` and commits it on
/// `channel` (the seam tests drive one batch through).
///
/// Acks only after the batch's transaction has committed, in the same broker
/// transaction that publishes the dead-letter copies. Returns an error only
/// when the broker channel fails, in which case nothing was acked and the
/// broker redelivers.
pub async fn process_batch(
    context: &QueueContext,
    channel: &lapin::Channel,
    deliveries: Vec<Delivery>,
) -> Result<BatchReport, PipelineError> {
    let settled = settle_batch(context, deliveries).await?;
    Ok(settled
        .commit(channel, &context.dead_letter_exchange)
        .await?)
}

/// Everything of [`process_batch`] but the broker side. Transient database errors are
/// retried here, with capped exponential backoff, for as long as it takes:
/// nothing is acked or dropped meanwhile.
pub async fn settle_batch(
    context: &QueueContext,
    deliveries: Vec<Delivery>,
) -> Result<Settled, PipelineError> {
    let received_at = Utc::now();
    let envelopes: Vec<Envelope<'_>> = deliveries
        .iter()
        .map(|d| envelope(d, received_at))
        .collect();
    let max = context.settings.max_message_bytes;
    let mut dispositions = vec![Disposition::Stored; deliveries.len()];
    let parsed = match context.kind {
        QueueKind::Checkins => Parsed::Checkins(parse_all(
            &envelopes,
            |e| Checkin::parse(e, max),
            &mut dispositions,
        )),
        QueueKind::Versions => Parsed::Versions(parse_all(
            &envelopes,
            |e| VersionEvent::parse(e, max),
            &mut dispositions,
        )),
    };
    let started = Instant::now();
    let Some(stored) = write_retrying(context, &parsed, &mut dispositions).await else {
        return Err(PipelineError::Abandoned(context.queue.clone()));
    };
    let write = started.elapsed();
    let valid = parsed.indices().len();
    drop(parsed);
    drop(envelopes);
    let redelivered = deliveries.iter().filter(|d| d.redelivered).count();
    let settled = settle(context, deliveries, dispositions, stored).await;
    metrics::batch_settled(&context.queue, &settled.report, valid, redelivered, write);
    Ok(settled)
}

/// The valid messages of a batch, with their indices in the batch.
enum Parsed<'a> {
    Checkins((Vec<Checkin<'a>>, Vec<usize>)),
    Versions((Vec<VersionEvent<'a>>, Vec<usize>)),
}

impl Parsed<'_> {
    fn indices(&self) -> &[usize] {
        match self {
            Self::Checkins((_, indices)) | Self::Versions((_, indices)) => indices,
        }
    }

    async fn write(&self, pool: &Pool) -> Result<BatchOutcome, StoreError> {
        match self {
            Self::Checkins((items, _)) => store::write_checkins(pool, items).await,
            Self::Versions((items, _)) => store::write_versions(pool, items).await,
        }
    }
}

/// Parses every envelope; rejected ones get their disposition, the valid ones
/// come back with their index in the batch.
fn parse_all<'a, T>(
    envelopes: &[Envelope<'a>],
    parse: impl Fn(&Envelope<'a>) -> Result<T, Rejection>,
    dispositions: &mut [Disposition],
) -> (Vec<T>, Vec<usize>) {
    let mut items = Vec::with_capacity(envelopes.len());
    let mut indices = Vec::with_capacity(envelopes.len());
    for (i, envelope) in envelopes.iter().enumerate() {
        match parse(envelope) {
            Ok(item) => {
                items.push(item);
                indices.push(i);
            }
            Err(rejection) => dispositions[i] = Disposition::DeadLetter(rejection),
        }
    }
    (items, indices)
}

/// Writes the valid items, retrying the whole batch while the failure is
/// systemic (transient, or every single item failing alike).
///
/// A batch of several messages that all fail alike is taken as a systemic
/// failure (a revoked grant, a missing table) and retried whole; a single
/// message failing alone is handed back to the broker, which counts its
/// deliveries. Returns `None` when the batch is abandoned.
async fn write_retrying(
    context: &QueueContext,
    parsed: &Parsed<'_>,
    dispositions: &mut [Disposition],
) -> Option<u64> {
    let indices = parsed.indices();
    if indices.is_empty() {
        return Some(0);
    }
    let mut delay = BACKOFF_START;
    let mut attempt = 1u32;
    loop {
        match parsed.write(&context.pool).await {
            Ok(outcome) if outcome.failed.len() < indices.len() || indices.len() == 1 => {
                record(outcome.refused, outcome.failed, indices, dispositions);
                return Some(outcome.stored);
            }
            Ok(outcome) => tracing::warn!(
                queue = %context.queue, attempt, error = %outcome.failed[0].1,
                "every message of the batch failed alike; retrying the batch"
            ),
            Err(error) => tracing::warn!(
                queue = %context.queue, attempt, error = %error, transient = error.class() == ErrorClass::Transient,
                "database write failed; retrying the batch"
            ),
        }
        tokio::select! {
            () = context.abandon.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(BACKOFF_CAP);
        attempt += 1;
    }
}

fn record(
    refused: Vec<(usize, Rejection)>,
    failed: Vec<(usize, String)>,
    indices: &[usize],
    dispositions: &mut [Disposition],
) {
    for (item, rejection) in refused {
        dispositions[indices[item]] = Disposition::DeadLetter(rejection);
    }
    for (item, error) in failed {
        dispositions[indices[item]] = Disposition::Retry(error);
    }
}

/// Turns each failure into its final decision: a message failing alone is
/// handed back until its delivery limit, then dead-lettered.
async fn settle(
    context: &QueueContext,
    deliveries: Vec<Delivery>,
    mut dispositions: Vec<Disposition>,
    stored: u64,
) -> Settled {
    let mut report = BatchReport {
        received: deliveries.len(),
        stored,
        ..BatchReport::default()
    };
    for (delivery, disposition) in deliveries.iter().zip(&mut dispositions) {
        if let Disposition::Retry(error) = disposition {
            let count = delivery_count(delivery);
            if count + 1 >= context.settings.max_deliveries {
                let reason = format!(
                    "failed on each of {} deliveries; last error: {error}",
                    count + 1
                );
                *disposition = Disposition::DeadLetter(Rejection {
                    kind: RejectionKind::TooManyDeliveries,
                    reason,
                    sqlstate: None,
                });
            } else {
                tracing::warn!(queue = %context.queue, message_id = message_id(delivery), attempt = count + 1, error = %error, "message failed; handing it back for another attempt");
                // Not at once: a message that fails at every delivery must not spin hot.
                tokio::time::sleep(BACKOFF_START * 2u32.pow(count.min(6))).await;
                *disposition = Disposition::Requeue;
            }
        }
        match disposition {
            Disposition::DeadLetter(rejection) => {
                report.dead_lettered += 1;
                if rejection.kind != RejectionKind::Invalid {
                    report.refused += 1;
                }
            }
            Disposition::Requeue => report.requeued += 1,
            Disposition::Stored | Disposition::Retry(_) => {}
        }
    }
    Settled {
        report,
        deliveries,
        dispositions,
        queue: context.queue.clone(),
    }
}

fn envelope(delivery: &Delivery, received_at: chrono::DateTime<Utc>) -> Envelope<'_> {
    let properties = &delivery.properties;
    Envelope {
        body: &delivery.data,
        message_id: properties.message_id().as_ref().map(|id| id.as_str()),
        timestamp_secs: *properties.timestamp(),
        timestamp_ms: header_int(delivery, "timestamp_in_ms"),
        received_at,
    }
}

pub(super) fn message_id(delivery: &Delivery) -> &str {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map_or("-", |id| id.as_str())
}

/// Earlier deliveries of this message, as counted by the quorum queue.
fn delivery_count(delivery: &Delivery) -> u32 {
    header_int(delivery, "x-delivery-count").map_or(0, |n| n.clamp(0, u32::MAX as i64) as u32)
}

pub(super) fn header_int(delivery: &Delivery, name: &str) -> Option<i64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}
