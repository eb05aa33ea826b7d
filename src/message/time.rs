//! Event time: when a message says it happened, and when that cannot be believed.
//!
//! Clusters' newest state and versions' newest publish are decided by event time,
//! so one wrong timestamp would pin a row for ever: a checkin dated in the year
//! 55,000 (milliseconds in the seconds property, a common publisher bug) would
//! never be replaced. A publisher's time more than `WFM_MAX_CLOCK_SKEW` ahead of
//! receipt, before the Unix epoch (AMQP timestamps cannot express that), or out
//! of range is replaced by the receipt time; the message is stored, and the
//! replacement is counted and logged. Late (old) times are believed: checkins
//! arrive late after an outage, and that is what the event-time rule is for.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};

use super::Envelope;

/// Why the publisher's timestamp was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeCorrection {
    /// Further ahead of receipt than `WFM_MAX_CLOCK_SKEW`.
    AheadOfReceipt,
    /// Before 1970 or beyond what a timestamp can hold.
    OutOfRange,
}

impl TimeCorrection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AheadOfReceipt => "ahead of receipt by more than WFM_MAX_CLOCK_SKEW",
            Self::OutOfRange => "out of range",
        }
    }
}

/// The event time of a message, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTime {
    pub at: NaiveDateTime,
    /// Set when the publisher's time was replaced by the receipt time.
    pub corrected: Option<TimeCorrection>,
}

impl Envelope<'_> {
    /// The publisher's timestamp (milliseconds header first, then the seconds
    /// property) when it is believable, else the time of receipt.
    pub fn event_time(&self, max_skew: std::time::Duration) -> EventTime {
        let received = EventTime {
            at: self.received_at.naive_utc(),
            corrected: None,
        };
        let stamped = match (self.timestamp_ms, self.timestamp_secs) {
            (Some(ms), _) => DateTime::from_timestamp_millis(ms),
            (None, Some(secs)) => i64::try_from(secs)
                .ok()
                .and_then(|secs| DateTime::from_timestamp(secs, 0)),
            (None, None) => return received,
        };
        let latest = TimeDelta::from_std(max_skew)
            .ok()
            .and_then(|skew| self.received_at.checked_add_signed(skew))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let corrected = match stamped {
            Some(at) if at < DateTime::UNIX_EPOCH => TimeCorrection::OutOfRange,
            Some(at) if at > latest => TimeCorrection::AheadOfReceipt,
            Some(at) => {
                return EventTime {
                    at: at.naive_utc(),
                    corrected: None,
                };
            }
            None => TimeCorrection::OutOfRange,
        };
        EventTime {
            corrected: Some(corrected),
            ..received
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SKEW: Duration = Duration::from_secs(300);

    fn envelope() -> Envelope<'static> {
        Envelope {
            body: b"",
            message_id: None,
            timestamp_secs: None,
            timestamp_ms: None,
            received_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn event_time_prefers_milliseconds_then_seconds_then_receipt() {
        let mut e = envelope();
        assert_eq!(e.event_time(SKEW).at, e.received_at.naive_utc());
        e.timestamp_secs = Some(1_600_000_000);
        assert_eq!(e.event_time(SKEW).at.and_utc().timestamp(), 1_600_000_000);
        e.timestamp_ms = Some(1_600_000_000_123);
        let time = e.event_time(SKEW);
        assert_eq!(time.at.and_utc().timestamp_millis(), 1_600_000_000_123);
        assert_eq!(time.corrected, None);
    }

    #[test]
    fn milliseconds_in_the_seconds_property_are_replaced_by_receipt() {
        let mut e = envelope();
        e.timestamp_secs = Some(1_700_000_000_000);
        let time = e.event_time(SKEW);
        assert_eq!(time.at, e.received_at.naive_utc());
        assert_eq!(time.corrected, Some(TimeCorrection::AheadOfReceipt));
    }

    #[test]
    fn a_little_skew_is_believed_and_more_is_not() {
        let mut e = envelope();
        e.timestamp_secs = Some(1_700_000_000 + 299);
        assert_eq!(e.event_time(SKEW).corrected, None);
        e.timestamp_secs = Some(1_700_000_000 + 301);
        assert_eq!(
            e.event_time(SKEW).corrected,
            Some(TimeCorrection::AheadOfReceipt)
        );
    }

    #[test]
    fn absurd_timestamps_are_replaced_not_refused() {
        let mut e = envelope();
        e.timestamp_secs = Some(u64::MAX);
        assert_eq!(
            e.event_time(SKEW).corrected,
            Some(TimeCorrection::OutOfRange)
        );
        e.timestamp_ms = Some(i64::MIN);
        assert_eq!(
            e.event_time(SKEW).corrected,
            Some(TimeCorrection::OutOfRange)
        );
        e.timestamp_ms = Some(-1);
        assert_eq!(
            e.event_time(SKEW).corrected,
            Some(TimeCorrection::OutOfRange)
        );
        e.timestamp_ms = Some(i64::MAX);
        assert_eq!(
            e.event_time(SKEW).corrected,
            Some(TimeCorrection::OutOfRange)
        );
    }

    #[test]
    fn late_checkins_are_believed() {
        let mut e = envelope();
        e.timestamp_secs = Some(0);
        assert_eq!(e.event_time(SKEW).at.and_utc().timestamp(), 0);
    }
}
