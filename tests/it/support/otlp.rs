//! A stand-in OpenTelemetry collector: accepts OTLP/HTTP JSON exports
//! (`POST /v1/traces`) and keeps every span it was sent.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

pub struct Collector {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, kept.clone()));
            }
        });
        Collector { addr, spans, task }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// HTTP/1.1 with keep-alive: requests with a Content-Length body, one after another.
async fn serve(stream: TcpStream, spans: Arc<Mutex<Vec<Value>>>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        if let Ok(export) = serde_json::from_slice::<Value>(&body) {
            spans.lock().unwrap().extend(spans_of(&export));
        }
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn spans_of(export: &Value) -> Vec<Value> {
    let list = |v: &Value, key: &str| v[key].as_array().cloned().unwrap_or_default();
    list(export, "resourceSpans")
        .iter()
        .flat_map(|r| list(r, "scopeSpans"))
        .flat_map(|s| list(&s, "spans"))
        .collect()
}

/// An integer attribute of a span (OTLP JSON writes int64 as a string or a number).
pub fn int_attribute(span: &Value, key: &str) -> Option<i64> {
    let attribute = span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?;
    let value = &attribute["value"]["intValue"];
    value.as_i64().or_else(|| value.as_str()?.parse().ok())
}
