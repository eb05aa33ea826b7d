//! OpenTelemetry: `publish` sends each message's context in `traceparent`,
//! and the worker's span for a batch links to the contexts its messages
//! carried (it picks no parent). Off without an endpoint.

use std::{collections::BTreeSet, process::Stdio, time::Duration};

use lapin::types::AMQPValue;
use serde_json::Value;

use crate::support::{
    CLUSTER, Outgoing, TestEnv, checkin_body,
    otlp::{Collector, int_attribute},
    process,
};

/// (trace id, span id) of a span or a link, hex.
fn context(v: &Value) -> (String, String) {
    let hex = |key: &str| v[key].as_str().unwrap_or_default().to_ascii_lowercase();
    (hex("traceId"), hex("spanId"))
}

fn kind(span: &Value) -> i64 {
    match &span["kind"] {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) if s == "SPAN_KIND_PRODUCER" => 4,
        Value::String(s) if s == "SPAN_KIND_CONSUMER" => 5,
        _ => 0,
    }
}

const PRODUCER: i64 = 4;
const CONSUMER: i64 = 5;

fn traced(command: &mut tokio::process::Command, collector: &Collector) {
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
}

#[tokio::test]
async fn a_batch_span_links_to_every_message_context_and_publish_sends_one() {
    let env = TestEnv::new().await;
    let collector = Collector::start().await;

    // Three checkins through `publish`, traced.
    let file = std::env::temp_dir().join(format!("{}.jsonl", env.db.name));
    let lines: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|m| checkin_body(CLUSTER, m))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let mut publish = process::worker_command(&env);
    traced(&mut publish, &collector);
    let output = publish
        .args(["publish", "checkin", "--file"])
        .arg(&file)
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let producers: BTreeSet<_> = collector
        .spans()
        .iter()
        .filter(|s| kind(s) == PRODUCER)
        .map(context)
        .collect();
    assert_eq!(
        producers.len(),
        3,
        "one producer span per message, exported before exit"
    );

    // Two with contexts of their own, one with a malformed header, one without.
    let theirs = [
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
    ];
    let mut messages: Vec<Outgoing> = theirs
        .iter()
        .enumerate()
        .map(|(i, (trace, span))| {
            Outgoing::new(checkin_body(CLUSTER, &format!("t{i}")))
                .id(format!("t{i}"))
                .header(
                    "traceparent",
                    AMQPValue::LongString(format!("00-{trace}-{span}-01").into()),
                )
        })
        .collect();
    messages.push(
        Outgoing::new(checkin_body(CLUSTER, "bad"))
            .id("bad")
            .header("traceparent", AMQPValue::LongString("00-zz-yy-01".into())),
    );
    messages.push(Outgoing::new(checkin_body(CLUSTER, "none")).id("none"));
    env.broker.publish_checkins(&messages).await;

    let mut worker = process::worker_command(&env);
    traced(&mut worker, &collector);
    let mut child = worker.stderr(Stdio::null()).arg("run").spawn().unwrap();
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 7)
        .await;
    process::signal(&child, "-TERM").await;
    assert!(child.wait().await.unwrap().success());

    let batches: Vec<Value> = collector
        .spans()
        .into_iter()
        .filter(|s| kind(s) == CONSUMER)
        .collect();
    let queue = &env.broker.topology.checkin_queue;
    assert!(!batches.is_empty(), "batch spans exported at shutdown");
    let mut linked = BTreeSet::new();
    let mut counted = 0;
    for batch in &batches {
        assert_eq!(batch["name"], format!("process {queue}"));
        assert!(
            batch["parentSpanId"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "a batch picks no parent: {batch}"
        );
        counted += int_attribute(batch, "messaging.batch.message_count").unwrap();
        for link in batch["links"].as_array().into_iter().flatten() {
            assert!(linked.insert(context(link)), "each message linked once");
        }
    }
    assert_eq!(counted, 7, "every message in a traced batch");
    let mut expected = producers.clone();
    expected.extend(theirs.iter().map(|(t, s)| (t.to_string(), s.to_string())));
    assert_eq!(
        linked, expected,
        "links to every valid context, nothing else"
    );
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_no_header_is_added() {
    let env = TestEnv::new().await;
    let collector = Collector::start().await;
    let mut publish = process::worker_command(&env);
    // The collector is running, but no endpoint names it.
    publish.env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
    let file = std::env::temp_dir().join(format!("{}.json", env.db.name));
    std::fs::write(&file, checkin_body(CLUSTER, "quiet")).unwrap();
    let output = publish
        .args(["publish", "checkin", "--file"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(output.status.success());
    let delivery = env
        .broker
        .get_checkin()
        .await
        .expect("the message is queued");
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    assert!(!headers.inner().contains_key("traceparent"));
    assert!(collector.spans().is_empty());
}

#[tokio::test]
async fn an_unsupported_protocol_stops_start_up_with_the_reason() {
    let env = TestEnv::new().await;
    let mut worker = process::worker_command(&env);
    let output = worker
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .stderr(Stdio::piped())
        .arg("run")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("exits at once")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported"),
        "{stderr}"
    );
}
