//! A version event body, read by the worker as it arrives from a publisher:
//! nothing panics, whatever the bytes, and a rejection's reason stays within
//! its bound (it travels in a dead-letter header).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wfm_worker::message::{MAX_REASON_BYTES, VersionEvent, fuzzing};

fuzz_target!(|body: &[u8]| {
    let (envelope, limits) = fuzzing::delivered(body, 8);
    if let Err(rejection) = VersionEvent::parse(&envelope, &limits) {
        assert!(rejection.reason.len() <= MAX_REASON_BYTES, "{rejection}");
    }
});
