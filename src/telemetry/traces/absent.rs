//! Traces in a build without the exporter (no cargo feature `otlp`): always
//! off. The span types are uninhabited, so the pipeline's and the publisher's
//! code is the same in both builds.

use lapin::types::FieldTable;

use super::TracesError;

/// Never made: there is no provider to shut down.
pub enum Traces {}

impl Traces {
    pub async fn shutdown(self) {
        match self {}
    }
}

/// Refuses an OTLP endpoint: asked-for traces would otherwise vanish.
pub(super) fn start() -> Result<Traces, TracesError> {
    Err(TracesError::NotBuilt)
}

pub fn enabled() -> bool {
    false
}

pub enum BatchSpan {}

impl BatchSpan {
    pub fn outcome(&mut self, _stored: u64, _dead_lettered: usize, _handed_back: usize) {
        match *self {}
    }

    pub fn failed(&mut self, _reason: &str) {
        match *self {}
    }
}

pub fn batch_span<'a>(
    _queue: &str,
    _count: usize,
    _headers: impl Iterator<Item = Option<&'a FieldTable>>,
) -> Option<BatchSpan> {
    None
}

pub enum PublishSpan {}

pub fn publish_span(
    _exchange: &str,
    _routing_key: &str,
    _headers: &mut FieldTable,
) -> Option<PublishSpan> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_otlp_endpoint_is_refused_naming_the_feature() {
        let refused = start().err().expect("refused").to_string();
        assert!(refused.contains("`otlp`"), "{refused}");
        assert!(refused.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{refused}");
    }
}
