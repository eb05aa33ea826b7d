//! The pipeline's counters and histograms, recorded once per batch (never per
//! message, to keep the hot path free of label allocations). Names follow the
//! Prometheus conventions: `wfm_` prefix, unit suffixes, `_total` counters.

use std::time::Duration;

use metrics::{counter, histogram};

use super::BatchReport;
use crate::message::RejectionKind;

/// After a batch is settled (before its ack).
pub(super) fn batch_settled(
    queue: &str,
    report: &BatchReport,
    valid: usize,
    redelivered: usize,
    write: Duration,
) {
    let q = || queue.to_owned();
    counter!("wfm_messages_received_total", "queue" => q()).increment(report.received as u64);
    counter!("wfm_messages_stored_total", "queue" => q()).increment(report.stored);
    let deduplicated = (valid as u64)
        .saturating_sub(report.stored + report.refused as u64 + report.requeued as u64);
    counter!("wfm_messages_deduplicated_total", "queue" => q()).increment(deduplicated);
    counter!("wfm_messages_requeued_total", "queue" => q()).increment(report.requeued as u64);
    counter!("wfm_redeliveries_total", "queue" => q()).increment(redelivered as u64);
    histogram!("wfm_batch_size_messages", "queue" => q()).record(report.received as f64);
    histogram!("wfm_batch_write_duration_seconds", "queue" => q()).record(write.as_secs_f64());
}

/// After a dead-letter copy is confirmed.
pub(super) fn dead_lettered(queue: &str, kind: RejectionKind) {
    counter!("wfm_messages_dead_lettered_total", "queue" => queue.to_owned(), "reason" => kind.as_str()).increment(1);
}

/// After a batch's ack is sent.
pub(super) fn acked(queue: &str, messages: usize) {
    counter!("wfm_acks_total", "queue" => queue.to_owned()).increment(1);
    counter!("wfm_messages_acked_total", "queue" => queue.to_owned()).increment(messages as u64);
}
