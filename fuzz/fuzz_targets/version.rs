//! A version event body, read by the worker as it arrives from a publisher:
//! nothing panics, whatever the bytes, and a rejection's reason stays within
//! its bound (it travels in a dead-letter header).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wfm_worker::message::{Envelope, Limits, MAX_REASON_BYTES, VersionEvent};

fuzz_target!(|body: &[u8]| {
    let envelope = Envelope {
        body,
        message_id: None,
        timestamp_secs: None,
        timestamp_ms: None,
        received_at: chrono::DateTime::UNIX_EPOCH,
    };
    let limits = Limits {
        max_json_depth: 8,
        ..Limits::default()
    };
    if let Err(rejection) = VersionEvent::parse(&envelope, &limits) {
        assert!(rejection.reason.len() <= MAX_REASON_BYTES, "{rejection}");
    }
});
