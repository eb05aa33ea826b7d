//! `wfm-bench --tracing`: what OpenTelemetry costs at full backlog speed.
//!
//! 15. the backlog drain with tracing off and on (OTLP/HTTP protobuf to a
//!     local sink that answers 200 and discards), alternated `pairs` times so
//!     drift hits both alike; medians, and the export traffic seen.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

use crate::{
    pairs::Pairs,
    phases::{Backlog, Limits, worker_drain_with},
};

pub struct Overhead {
    /// Tracing off (base) and on (variant).
    pub drains: Pairs,
    pub requests: u64,
    pub bytes: u64,
}

pub async fn overhead(
    limits: &Limits<'_>,
    exe: &Path,
    count: usize,
    pairs: usize,
) -> anyhow::Result<Overhead> {
    let sink = Sink::start().await?;
    let endpoint = format!("http://{}", sink.addr);
    let traced = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let traced = &traced;
    let drains = Pairs::measure(pairs, |on| async move {
        let env: &[(&str, &str)] = if on { traced } else { &[] };
        let rate = worker_drain_with(
            limits,
            exe,
            Backlog::Checkins,
            count,
            limits.batch_size,
            env,
        )
        .await?
        .rate;
        let kind = if on { "on" } else { "off" };
        eprintln!("  (15) tracing {kind:<3} {rate:>9.0} msgs/s");
        Ok(rate)
    })
    .await?;
    let requests = sink.requests.load(Ordering::Relaxed);
    anyhow::ensure!(requests > 0, "no spans were exported");
    Ok(Overhead {
        drains,
        requests,
        bytes: sink.bytes.load(Ordering::Relaxed),
    })
}

/// An OTLP/HTTP endpoint that takes everything and keeps nothing.
struct Sink {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Sink {
    async fn start() -> anyhow::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (requests, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counters = (requests.clone(), bytes.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, counters.0.clone(), counters.1.clone()));
            }
        });
        Ok(Sink {
            addr,
            requests,
            bytes,
        })
    }
}

async fn serve(stream: TcpStream, requests: Arc<AtomicU64>, bytes: Arc<AtomicU64>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        let mut length = 0usize;
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
        requests.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(length as u64, Ordering::Relaxed);
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
