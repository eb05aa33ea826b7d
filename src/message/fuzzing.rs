//! Entry points for the fuzz targets in `fuzz/`, compiled only with
//! `--cfg fuzzing` (which `cargo fuzz` sets): the fast readers written by hand
//! for speed (issue 13) checked against the slow ones they stand in for, on
//! inputs a coverage-guided fuzzer makes.

use chrono::DateTime;

use super::{Envelope, Limits, Rejection, checkin, json};

pub use super::checkin::Read as CheckinRead;

/// A checkin read by the one-pass walk (`None`: left to serde) and by serde
/// alone, behind the guard, as the worker's serde path reads it.
pub fn checkin_both_ways(
    text: &str,
    max_depth: usize,
) -> (Option<CheckinRead>, Result<CheckinRead, Rejection>) {
    checkin::read_both_ways(text, max_depth)
}

/// Whether the document guard passes `text` (depth, `\u` escapes).
pub fn guard_passes(text: &str, max_depth: usize) -> bool {
    json::guard(text, max_depth).is_ok()
}

/// `body` as a delivery without properties, and the default limits but for
/// the depth (small, for the fuzzer to reach it).
pub fn delivered(body: &[u8], max_depth: usize) -> (Envelope<'_>, Limits) {
    let envelope = Envelope {
        body,
        message_id: None,
        timestamp_secs: None,
        timestamp_ms: None,
        received_at: DateTime::UNIX_EPOCH,
    };
    let limits = Limits {
        max_json_depth: max_depth,
        ..Limits::default()
    };
    (envelope, limits)
}
