//! Wire messages → validated domain values ("parse, don't validate").
//!
//! Everything past this module holds a [`Checkin`] or a [`VersionEvent`] whose
//! fields are already known good, or a [`Rejection`] that says, naming the field,
//! why the message can never be stored. This module knows neither the broker nor
//! the database: the pipeline hands it an [`Envelope`] of plain values.

mod checkin;
mod names;
mod rejection;
mod version;

pub use checkin::Checkin;
pub use names::{ClusterId, ComponentName, TrainName, VersionName};
pub use rejection::{Rejection, RejectionKind};
pub use version::VersionEvent;

use chrono::{DateTime, NaiveDateTime, Utc};

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

    /// When the event happened, in UTC: the publisher's timestamp when set, else receipt.
    pub fn event_time(&self) -> Result<NaiveDateTime, Rejection> {
        let stamped = match (self.timestamp_ms, self.timestamp_secs) {
            (Some(ms), _) => DateTime::from_timestamp_millis(ms),
            (None, Some(secs)) => i64::try_from(secs)
                .ok()
                .and_then(|secs| DateTime::from_timestamp(secs, 0)),
            (None, None) => return Ok(self.received_at.naive_utc()),
        };
        stamped
            .map(|at| at.naive_utc())
            .ok_or_else(|| Rejection::invalid("AMQP timestamp is out of range".to_owned()))
    }
}

/// Parses a whole JSON document into `T`, naming the offending path on failure.
/// The document must be one JSON object: serde would otherwise accept an array
/// for a struct, field by position.
fn parse_object<'a, T: serde::Deserialize<'a>>(text: &'a str, what: &str) -> Result<T, Rejection> {
    if !text.trim_start().starts_with('{') {
        return Err(Rejection::invalid(format!("{what} must be a JSON object")));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| json_rejection(e.inner(), &e.path().to_string()))?;
    de.end().map_err(|e| json_rejection(&e, "."))?;
    Ok(parsed)
}

fn json_rejection(error: &serde_json::Error, path: &str) -> Rejection {
    use serde_json::error::Category;
    match error.classify() {
        Category::Data => Rejection::invalid(format!("`{path}`: {error}")),
        Category::Io | Category::Syntax | Category::Eof => {
            Rejection::invalid(format!("body is not valid JSON: {error}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: &[u8]) -> Envelope<'_> {
        Envelope {
            body,
            message_id: None,
            timestamp_secs: None,
            timestamp_ms: None,
            received_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn oversized_body_is_refused_before_reading() {
        let err = envelope(b"12345").text(4).unwrap_err();
        assert_eq!(err.reason, "body is 5 bytes, over the limit of 4 bytes");
    }

    #[test]
    fn non_utf8_body_is_refused() {
        let err = envelope(b"{\xff}").text(100).unwrap_err();
        assert!(err.reason.contains("not UTF-8"), "{}", err.reason);
    }

    #[test]
    fn event_time_prefers_milliseconds_then_seconds_then_receipt() {
        let mut e = envelope(b"");
        assert_eq!(e.event_time().unwrap(), e.received_at.naive_utc());
        e.timestamp_secs = Some(1_600_000_000);
        assert_eq!(e.event_time().unwrap().and_utc().timestamp(), 1_600_000_000);
        e.timestamp_ms = Some(1_600_000_000_123);
        assert_eq!(
            e.event_time().unwrap().and_utc().timestamp_millis(),
            1_600_000_000_123
        );
    }

    #[test]
    fn absurd_timestamp_is_refused() {
        let mut e = envelope(b"");
        e.timestamp_secs = Some(u64::MAX);
        assert!(e.event_time().is_err());
    }
}
