//! OpenTelemetry traces, off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
//!
//! The worker follows the messaging conventions for batches: one `process`
//! span per batch, of kind consumer, that *links* to the context each message
//! carried in its W3C `traceparent` header (a batch has many parents, so it
//! picks none). `publish` starts a producer span per message and sends its
//! context in `traceparent`. Export is OTLP over HTTP (`http/protobuf`, or
//! `http/json` with `OTEL_EXPORTER_OTLP_PROTOCOL`), batched on the tokio
//! runtime; the other `OTEL_EXPORTER_OTLP_*` variables (headers, time-out,
//! compression) and `OTEL_SERVICE_NAME` apply as usual.
//!
//! Off, the cost is one relaxed atomic load per batch.
//!
//! The exporter (OpenTelemetry's SDK, OTLP, protobuf) is the cargo feature
//! `otlp`, on by default. A build without it has the same functions, always
//! off, and refuses an OTLP endpoint at start-up rather than drop the traces
//! it asks for.

#[cfg(not(feature = "otlp"))]
mod absent;
#[cfg(feature = "otlp")]
mod otlp;

#[cfg(not(feature = "otlp"))]
use absent::start;
#[cfg(not(feature = "otlp"))]
pub use absent::{BatchSpan, PublishSpan, Traces, batch_span, enabled, publish_span};
#[cfg(feature = "otlp")]
use otlp::start;
#[cfg(feature = "otlp")]
pub use otlp::{BatchSpan, PublishSpan, Traces, batch_span, enabled, publish_span};

#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0} is not supported: use http/protobuf or http/json")]
    Protocol(String),
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(String),
    #[error(
        "an OTLP endpoint is set, but this build has no exporter: build with the cargo feature `otlp` (a default feature), or unset OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )]
    NotBuilt,
}

/// Sets up tracing when an OTLP endpoint is configured. Call inside the tokio
/// runtime: the batch processor runs on it.
pub fn init() -> Result<Option<Traces>, TracesError> {
    if !configured() {
        return Ok(None);
    }
    start().map(Some)
}

/// Whether an OTLP endpoint asks for traces.
fn configured() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldTable;

    use super::*;

    #[test]
    fn nothing_is_traced_or_injected_while_off() {
        let mut table = FieldTable::default();
        assert!(publish_span("wfm", "cluster.checkin", &mut table).is_none());
        assert!(table.inner().is_empty());
        assert!(batch_span("q", 1, std::iter::empty()).is_none());
    }
}
