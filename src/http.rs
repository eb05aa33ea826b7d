//! HTTP for operators: `GET /healthz` (the process is alive), `GET /readyz`
//! (bootstrap done, database reachable, broker connected, consuming; 503 with a
//! JSON body naming what is not), `GET /metrics` (Prometheus text format).
//!
//! Metrics are recorded with the `metrics` facade where the events happen; this
//! module installs the Prometheus recorder and samples the gauges that no event
//! updates (pool connections, queue depth).

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, net::TcpListener};
use tokio_util::sync::CancellationToken;

use crate::readiness::{DatabaseState, QUEUES, QueueState, Readiness};

#[derive(Clone)]
struct AppState {
    readiness: Arc<Readiness>,
    metrics: PrometheusHandle,
}

/// Histogram buckets, in seconds for latencies and messages for batch sizes.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const MESSAGES: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// The process-wide Prometheus recorder (installed once; several in-process
/// workers, as in tests, share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    SECONDS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Suffix("_messages".into()),
                        MESSAGES,
                    )
                })
                .expect("bucket lists are non-empty");
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (an embedding program's): render ours anyway.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            metrics::gauge!("wfm_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Serves until `shutdown` is cancelled. Binding fails start-up, naming the address.
pub async fn serve(
    addr: SocketAddr,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on WFM_HTTP_ADDR {addr}: {e}"),
        )
    })?;
    let metrics = metrics_handle();
    let upkeep = metrics.clone();
    let state = AppState { readiness, metrics };
    let app = Router::new()
        .route("/healthz", routing::get(|| async { "ok\n" }))
        .route("/readyz", routing::get(readyz))
        .route("/metrics", routing::get(render_metrics))
        .with_state(state);
    tracing::info!(addr = %listener.local_addr()?, "serving health and metrics");
    Ok(tokio::spawn(async move {
        let upkeep = async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        tokio::select! {
            result = server => if let Err(error) = result { tracing::error!(%error, "HTTP server failed") },
            () = upkeep => {}
        }
    }))
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Served from state the worker keeps up to date (see `readiness`): no
/// database or broker round trip, a body of fixed fields, no server text.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let r = state.readiness.snapshot();
    let consuming = r.consuming();
    let database = match r.database {
        DatabaseState::Ok => "ok".to_owned(),
        DatabaseState::Unreachable(problem) => format!("unreachable: {}", problem.as_str()),
        DatabaseState::Unknown => "unknown: not heard from recently".to_owned(),
    };
    let ready = r.ready();
    let queues: serde_json::Map<String, serde_json::Value> = r
        .queues
        .iter()
        .map(|(queue, s)| {
            let s = match s {
                QueueState::Consuming => "consuming".to_owned(),
                QueueState::Paused(reason) => format!("paused: {reason}"),
            };
            (queue.clone(), s.into())
        })
        .collect();
    let body = json!({
        "ready": ready,
        "checks": {
            "bootstrap": if r.bootstrapped { "ok" } else { "pending" },
            "database": database,
            "broker": if r.broker_connected { "ok" } else { "disconnected" },
            "consuming": format!("{consuming} of {QUEUES} queues"),
            "queues": queues,
            "dead_letters": match &r.blocked {
                None => "ok".to_owned(),
                Some(reason) => format!("waiting: the broker blocks publishing ({reason})"),
            },
        }
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `GET path` on a loopback HTTP/1.0 server, returning (status, body). This is
/// the container's health probe (`wfm-worker healthcheck`): ten lines here
/// spare the image an HTTP client stack for one loopback request.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
