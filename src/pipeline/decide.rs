//! One batch, from deliveries to a [`Verdict`] for each. Carrying the verdicts
//! out on the broker is the acker's (see [`super::acker`]).

use std::time::Instant;

use chrono::Utc;
use lapin::{message::Delivery, types::AMQPValue};

use super::{
    PipelineError, QueueContext, QueueKind,
    retry::{Written, write},
};
use crate::{
    message::{Checkin, Envelope, Item, Rejection, TimeCorrection, VersionEvent},
    store::{RowFailure, WriteOutcome},
    telemetry::traces,
};

/// The final decision for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its rows are committed (or were already stored): ack.
    Stored,
    /// It can never be stored: copy it to the dead-letter exchange, then ack.
    DeadLetter(Rejection),
    /// It failed alone: hand it back, counting the attempt (`basic.reject`).
    Retry,
    /// Handed back through no fault of its own (`basic.nack`).
    Release,
}

/// What became of a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub received: usize,
    /// Rows newly stored; the rest of the valid messages were duplicates.
    pub stored: u64,
    pub deduplicated: u64,
    pub dead_lettered: usize,
    pub retried: usize,
    pub released: usize,
    pub redelivered: usize,
    /// Publisher timestamps replaced by the receipt time.
    pub corrected_times: usize,
    /// New checkins older than the retention horizon (summarised, not kept).
    pub beyond_retention: u64,
}

/// A batch whose every delivery has its verdict.
pub struct Decided {
    pub deliveries: Vec<Delivery>,
    pub verdicts: Vec<Verdict>,
    pub report: BatchReport,
    /// Set when the database failed as a whole: the pipeline pauses the queue.
    pub systemic: Option<String>,
}

impl Decided {
    /// Deliveries handed back unread (a paused or stopping queue).
    pub fn released(deliveries: Vec<Delivery>) -> Decided {
        let report = BatchReport {
            received: deliveries.len(),
            released: deliveries.len(),
            ..BatchReport::default()
        };
        Decided {
            verdicts: vec![Verdict::Release; deliveries.len()],
            deliveries,
            report,
            systemic: None,
        }
    }
}

/// Parses every delivery, writes the valid ones, and gives each its verdict.
/// Transient database errors are retried (see [`super::retry`]) until they
/// pass, shutdown comes (the batch is released), or the channel is lost (the
/// batch is abandoned: the broker redelivers it).
pub async fn decide(
    context: &QueueContext,
    deliveries: Vec<Delivery>,
) -> Result<Decided, PipelineError> {
    let headers = deliveries.iter().map(|d| d.properties.headers().as_ref());
    let mut span = traces::batch_span(&context.queue, deliveries.len(), headers);
    let received_at = Utc::now();
    let limits = &context.settings.limits;
    let mut verdicts = vec![Verdict::Stored; deliveries.len()];
    let envelopes = deliveries.iter().map(|d| envelope(d, received_at));
    let started = Instant::now();
    let (written, corrected) = match context.kind {
        QueueKind::Checkins => {
            let items = parse_all(envelopes, |e| Checkin::parse(e, limits), &mut verdicts);
            let corrected = corrections(context, &items, |c| {
                (c.checked_in_at.corrected, c.cluster_id.as_uuid())
            });
            (write(context, &items).await, corrected)
        }
        QueueKind::Versions => {
            let items = parse_all(envelopes, |e| VersionEvent::parse(e, limits), &mut verdicts);
            let corrected = corrections(context, &items, |v| {
                (v.published_at.corrected, v.component.as_str())
            });
            (write(context, &items).await, corrected)
        }
    };
    let write_time = started.elapsed();
    let mut report = BatchReport {
        received: deliveries.len(),
        redelivered: deliveries.iter().filter(|d| d.redelivered).count(),
        corrected_times: corrected,
        ..BatchReport::default()
    };
    let systemic = match written? {
        Written::Outcome(outcome) => {
            apply(context, &deliveries, outcome, &mut verdicts, &mut report);
            None
        }
        Written::Systemic(reason) => {
            release_valid(&mut verdicts);
            Some(reason)
        }
        Written::Interrupted => {
            release_valid(&mut verdicts);
            None
        }
    };
    tally(&verdicts, &mut report);
    context.metrics.batch_decided(&report, write_time);
    if let Some(span) = span.as_mut() {
        let handed_back = report.retried + report.released;
        span.outcome(report.stored, report.dead_lettered, handed_back);
        if let Some(reason) = &systemic {
            span.failed(reason);
        }
    }
    Ok(Decided {
        deliveries,
        verdicts,
        report,
        systemic,
    })
}

fn parse_all<'a, T>(
    envelopes: impl Iterator<Item = Envelope<'a>>,
    parse: impl Fn(&Envelope<'a>) -> Result<T, Rejection>,
    verdicts: &mut [Verdict],
) -> Vec<Item<T>> {
    let mut items = Vec::with_capacity(verdicts.len());
    for (index, envelope) in envelopes.enumerate() {
        match parse(&envelope) {
            Ok(value) => items.push(Item { index, value }),
            Err(rejection) => verdicts[index] = Verdict::DeadLetter(rejection),
        }
    }
    items
}

/// Logs, once per message, each publisher timestamp that was not believed,
/// and counts them. The subject is borrowed: formatted only when logged, not
/// for every message of every batch.
fn corrections<'a, T: 'a, S: std::fmt::Display + 'a>(
    context: &QueueContext,
    items: &'a [Item<T>],
    of: impl Fn(&'a T) -> (Option<TimeCorrection>, S),
) -> usize {
    let mut corrected = 0;
    for item in items {
        if let (Some(correction), subject) = of(&item.value) {
            corrected += 1;
            tracing::warn!(queue = %context.queue, subject = %subject, problem = correction.as_str(), "publisher timestamp not believed; using the receipt time");
        }
    }
    corrected
}

fn release_valid(verdicts: &mut [Verdict]) {
    for verdict in verdicts.iter_mut() {
        if *verdict == Verdict::Stored {
            *verdict = Verdict::Release;
        }
    }
}

/// Turns the write's failures into verdicts: refused data is dead-lettered; a
/// message failing alone is retried until its delivery limit, then
/// dead-lettered; a superseded event shares its winner's fate.
fn apply(
    context: &QueueContext,
    deliveries: &[Delivery],
    outcome: WriteOutcome,
    verdicts: &mut [Verdict],
    report: &mut BatchReport,
) {
    report.stored = outcome.stored;
    report.beyond_retention = outcome.beyond_retention;
    for (index, failure) in outcome.failed {
        verdicts[index] = match failure {
            RowFailure::Refused(rejection) => Verdict::DeadLetter(rejection),
            RowFailure::Failed(error) => retry_or_give_up(context, &deliveries[index], error),
        };
    }
    for (loser, winner) in outcome.superseded {
        if verdicts[winner] != Verdict::Stored {
            verdicts[loser] = Verdict::Release;
        }
    }
    let written = verdicts.iter().filter(|v| **v == Verdict::Stored).count() as u64;
    report.deduplicated = written.saturating_sub(outcome.stored + outcome.beyond_retention);
}

fn retry_or_give_up(context: &QueueContext, delivery: &Delivery, error: String) -> Verdict {
    let attempts = delivery_count(delivery) + 1;
    if attempts >= context.settings.max_deliveries {
        return Verdict::DeadLetter(Rejection::too_many_deliveries(format!(
            "failed on each of {attempts} deliveries; last error: {error}"
        )));
    }
    tracing::warn!(queue = %context.queue, message_id = message_id(delivery), attempt = attempts, error = %error, "message failed alone; handing it back for another attempt");
    Verdict::Retry
}

fn tally(verdicts: &[Verdict], report: &mut BatchReport) {
    for verdict in verdicts {
        match verdict {
            Verdict::Stored => {}
            Verdict::DeadLetter(_) => report.dead_lettered += 1,
            Verdict::Retry => report.retried += 1,
            Verdict::Release => report.released += 1,
        }
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

/// The message id for logs (at most 255 bytes: an AMQP shortstr).
pub(super) fn message_id(delivery: &Delivery) -> &str {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map_or("-", |id| id.as_str())
}

/// Earlier deliveries of this message, as counted by the quorum queue. A first
/// delivery has none, whatever header a publisher may have set.
fn delivery_count(delivery: &Delivery) -> u32 {
    if !delivery.redelivered {
        return 0;
    }
    header_int(delivery, "x-delivery-count").map_or(0, |n| n.clamp(0, u32::MAX as i64) as u32)
}

/// An integer header of any integer type; anything else counts as absent.
fn header_int(delivery: &Delivery, name: &str) -> Option<i64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}
