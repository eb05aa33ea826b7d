//! A queue's counters and histograms. Registered once per queue when the
//! worker starts — so every series exists, at zero, from the first scrape
//! (`rate()` and `absent()` need that) — and updated through the handles, once
//! per batch: no label lookups or allocations on the hot path. Names follow
//! the Prometheus conventions: `wfm_` prefix, unit suffixes, `_total` counters.

use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};

use super::BatchReport;
use crate::message::RejectionKind;

/// The handles of one queue's series (label `queue`).
pub struct QueueMetrics {
    received: Counter,
    stored: Counter,
    deduplicated: Counter,
    retried: Counter,
    released: Counter,
    redeliveries: Counter,
    corrected_times: Counter,
    beyond_retention: Counter,
    acked: Counter,
    acks: Counter,
    dead_lettered: [Counter; 3],
    dead_letter_refused: Counter,
    paused: Counter,
    batch_size: Histogram,
    write_duration: Histogram,
}

impl QueueMetrics {
    /// Registers every series of `queue` at zero.
    pub fn register(queue: &str) -> QueueMetrics {
        let q = || queue.to_owned();
        let dead_lettered = RejectionKind::ALL.map(|kind| {
            counter!("wfm_messages_dead_lettered_total", "queue" => q(), "reason" => kind.as_str())
        });
        QueueMetrics {
            received: counter!("wfm_messages_received_total", "queue" => q()),
            stored: counter!("wfm_messages_stored_total", "queue" => q()),
            deduplicated: counter!("wfm_messages_deduplicated_total", "queue" => q()),
            retried: counter!("wfm_messages_retried_total", "queue" => q()),
            released: counter!("wfm_messages_released_total", "queue" => q()),
            redeliveries: counter!("wfm_redeliveries_total", "queue" => q()),
            corrected_times: counter!("wfm_event_times_corrected_total", "queue" => q()),
            beyond_retention: counter!("wfm_checkins_beyond_retention_total", "queue" => q()),
            acked: counter!("wfm_messages_acked_total", "queue" => q()),
            acks: counter!("wfm_acks_total", "queue" => q()),
            dead_lettered,
            dead_letter_refused: counter!("wfm_dead_letter_copies_refused_total", "queue" => q()),
            paused: counter!("wfm_queue_pauses_total", "queue" => q()),
            batch_size: histogram!("wfm_batch_size_messages", "queue" => q()),
            write_duration: histogram!("wfm_batch_write_duration_seconds", "queue" => q()),
        }
    }

    /// After a batch is decided (before it is acknowledged).
    pub(super) fn batch_decided(&self, report: &BatchReport, write: Duration) {
        self.received.increment(report.received as u64);
        self.stored.increment(report.stored);
        self.deduplicated.increment(report.deduplicated);
        self.retried.increment(report.retried as u64);
        self.released.increment(report.released as u64);
        self.redeliveries.increment(report.redelivered as u64);
        self.corrected_times
            .increment(report.corrected_times as u64);
        self.beyond_retention.increment(report.beyond_retention);
        self.batch_size.record(report.received as f64);
        self.write_duration.record(write.as_secs_f64());
    }

    /// After a batch's acks are sent (`acked` messages; dead letters are
    /// counted when their copy is confirmed).
    pub(super) fn batch_acknowledged(&self, acked: usize) {
        if acked > 0 {
            self.acks.increment(1);
        }
        self.acked.increment(acked as u64);
    }

    /// After a dead-letter copy is confirmed and its original acked.
    pub(super) fn dead_lettered(&self, kind: RejectionKind) {
        let i = RejectionKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("ALL lists every kind");
        self.dead_lettered[i].increment(1);
        self.acked.increment(1);
    }

    pub(super) fn dead_letter_refused(&self) {
        self.dead_letter_refused.increment(1);
    }

    pub(super) fn paused(&self) {
        self.paused.increment(1);
    }
}
