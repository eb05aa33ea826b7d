//! Wire messages → validated domain values ("parse, don't validate").
//!
//! Everything past this module holds a [`Checkin`] or a [`VersionEvent`] whose
//! fields are already known good, or a [`Rejection`] that says, naming the field,
//! why the message can never be stored. This module knows neither the broker nor
//! the database: the pipeline hands it an [`Envelope`] of plain values.

mod checkin;
#[cfg(fuzzing)]
pub mod fuzzing;
mod json;
mod names;
mod rejection;
mod scan;
mod shape;
mod time;
mod version;

pub use checkin::{Checkin, MessageKey};
pub use names::{ClusterId, ComponentName, TrainName, VersionName};
pub use rejection::{EXCERPT_CHARS, MAX_REASON_BYTES, Rejection, RejectionKind, bounded, excerpt};
pub use time::{EventTime, TimeCorrection};
pub use version::VersionEvent;

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A parsed message with its position in the batch it arrived in. The one list
/// the pipeline and the store pass between them: results name `index`, so no
/// side table is needed to find the delivery a row came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<T> {
    pub index: usize,
    pub value: T,
}

/// The rules every message is held to (from `WFM_MAX_MESSAGE_BYTES`,
/// `WFM_MAX_JSON_DEPTH`, `WFM_MAX_CLOCK_SKEW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_json_depth: usize,
    /// How far ahead of its receipt a publisher's timestamp may be.
    pub max_clock_skew: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 128 << 10,
            max_json_depth: 64,
            max_clock_skew: Duration::from_secs(300),
        }
    }
}

/// What the broker tells us about one message, borrowed from the delivery.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub body: &'a [u8],
    /// AMQP `message_id` property, the idempotency key of a checkin.
    pub message_id: Option<&'a str>,
    /// AMQP `timestamp` property: seconds since the Unix epoch (AMQP 0-9-1 §4.2.5.4).
    pub timestamp_secs: Option<u64>,
    /// Header `timestamp_in_ms` (RabbitMQ's message-timestamp convention): the same
    /// instant with millisecond precision, preferred when present.
    pub timestamp_ms: Option<i64>,
    pub received_at: DateTime<Utc>,
}

impl<'a> Envelope<'a> {
    /// The body as UTF-8 text no larger than `max_bytes`.
    pub fn text(&self, max_bytes: usize) -> Result<&'a str, Rejection> {
        if self.body.len() > max_bytes {
            return Err(Rejection::invalid(format!(
                "body is {} bytes, over the limit of {max_bytes} bytes",
                self.body.len()
            )));
        }
        std::str::from_utf8(self.body).map_err(|e| {
            Rejection::invalid(format!(
                "body is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ))
        })
    }

    /// The publisher's `message_id`; an empty one counts as absent.
    pub fn message_id(&self) -> Option<&'a str> {
        self.message_id.filter(|id| !id.is_empty())
    }
}
