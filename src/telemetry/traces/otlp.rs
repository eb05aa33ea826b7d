//! The OTLP exporter and the spans (cargo feature `otlp`).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use super::TracesError;
use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::{
    Context, KeyValue,
    global::{self, BoxedSpan, BoxedTracer},
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{Link, Span, SpanKind, TraceContextExt, Tracer},
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource, propagation::TraceContextPropagator, runtime, trace::SdkTracerProvider,
    trace::span_processor_with_async_runtime::BatchSpanProcessor,
};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The W3C header.
const TRACEPARENT: &str = "traceparent";

/// Links kept per batch span: every message of the largest batch.
const MAX_LINKS: u32 = 10_000;

/// The tracer provider; [`Traces::shutdown`] exports what is left.
pub struct Traces {
    provider: SdkTracerProvider,
}

/// Sets up the exporter and the provider (see [`super::init`]).
pub(super) fn start() -> Result<Traces, TracesError> {
    let protocol = protocol()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|e| TracesError::Exporter(e.to_string()))?;
    let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_max_links_per_span(MAX_LINKS)
        .with_resource(resource())
        .build();
    global::set_tracer_provider(provider.clone());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Traces { provider })
}

fn protocol() -> Result<Protocol, TracesError> {
    let chosen = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    match chosen.as_str() {
        "" | "http/protobuf" => Ok(Protocol::HttpBinary),
        "http/json" => Ok(Protocol::HttpJson),
        other => Err(TracesError::Protocol(other.to_owned())),
    }
}

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), named
/// `wfm-worker` unless those name it.
fn resource() -> Resource {
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    let builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if named {
        builder.build()
    } else {
        builder.with_service_name("wfm-worker").build()
    }
}

impl Traces {
    /// Exports the spans still buffered (within 5 s) and stops.
    pub async fn shutdown(self) {
        let provider = self.provider;
        ENABLED.store(false, Ordering::Relaxed);
        // Blocking: on a thread of its own, while the runtime runs the exporter.
        let done = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        });
        if let Ok(Err(error)) = done.await {
            tracing::warn!(error = %error, "traces not all exported");
        }
    }
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn tracer() -> BoxedTracer {
    global::tracer("wfm-worker")
}

/// AMQP headers as a W3C trace-context carrier.
struct Headers<'a>(&'a FieldTable);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut FieldTable);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.into(), AMQPValue::LongString(value.into()));
    }
}

/// The valid remote contexts the messages carried (others are ignored: a
/// malformed `traceparent` is the publisher's problem, not the batch's).
fn links<'a>(headers: impl Iterator<Item = Option<&'a FieldTable>>) -> Vec<Link> {
    let propagator = TraceContextPropagator::new();
    headers
        .flatten()
        .filter(|h| h.inner().contains_key(TRACEPARENT))
        .filter_map(|h| {
            let context = propagator.extract(&Headers(h));
            let span = context.span().span_context().clone();
            span.is_valid().then(|| Link::with_context(span))
        })
        .collect()
}

/// A batch being processed: ends (and is exported) when dropped.
pub struct BatchSpan(BoxedSpan);

impl BatchSpan {
    /// Records what became of the batch.
    pub fn outcome(&mut self, stored: u64, dead_lettered: usize, handed_back: usize) {
        self.0.set_attributes([
            KeyValue::new("wfm.rows_stored", stored as i64),
            KeyValue::new("wfm.dead_lettered", dead_lettered as i64),
            KeyValue::new("wfm.handed_back", handed_back as i64),
        ]);
    }

    /// Marks the batch failed (the database refused every write).
    pub fn failed(&mut self, reason: &str) {
        self.0
            .set_status(opentelemetry::trace::Status::error(reason.to_owned()));
    }
}

/// The span of a batch from `queue` whose messages carried `headers`; `None`
/// when tracing is off.
pub fn batch_span<'a>(
    queue: &str,
    count: usize,
    headers: impl Iterator<Item = Option<&'a FieldTable>>,
) -> Option<BatchSpan> {
    if !enabled() {
        return None;
    }
    let tracer = tracer();
    let span = tracer
        .span_builder(format!("process {queue}"))
        .with_kind(SpanKind::Consumer)
        .with_links(links(headers))
        .with_attributes([
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", queue.to_owned()),
            KeyValue::new("messaging.batch.message_count", count as i64),
        ])
        .start_with_context(&tracer, &Context::new());
    Some(BatchSpan(span))
}

/// A message being published: ends (and is exported) when dropped.
pub struct PublishSpan {
    _span: BoxedSpan,
}

/// Starts a producer span for one message to `exchange` and puts its context
/// in `headers`; the span ends when the returned value is dropped. `None`
/// (and no header) when tracing is off.
pub fn publish_span(
    exchange: &str,
    routing_key: &str,
    headers: &mut FieldTable,
) -> Option<PublishSpan> {
    if !enabled() {
        return None;
    }
    let tracer = tracer();
    let span = tracer
        .span_builder(format!("publish {exchange}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.operation.name", "publish"),
            KeyValue::new("messaging.destination.name", exchange.to_owned()),
            KeyValue::new(
                "messaging.rabbitmq.destination.routing_key",
                routing_key.to_owned(),
            ),
        ])
        .start_with_context(&tracer, &Context::new());
    let context = Context::new().with_remote_span_context(span.span_context().clone());
    TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(headers));
    Some(PublishSpan { _span: span })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(traceparent: &str) -> FieldTable {
        let mut table = FieldTable::default();
        table.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(traceparent.into()),
        );
        table
    }

    #[test]
    fn links_keep_valid_contexts_and_ignore_the_rest() {
        let valid = headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let garbage = headers("00-not-a-trace-01");
        let zero = headers("00-00000000000000000000000000000000-00f067aa0ba902b7-01");
        let mut number = FieldTable::default();
        number.insert(TRACEPARENT.into(), AMQPValue::LongLongInt(7));
        let all = [
            Some(&valid),
            Some(&garbage),
            None,
            Some(&zero),
            Some(&number),
        ];
        let found = links(all.into_iter());
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(found[0].span_context.is_remote());
    }
}
