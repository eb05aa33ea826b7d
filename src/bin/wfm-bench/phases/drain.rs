//! (3), (4), (7): the real worker binary drains a pre-filled queue, timed
//! from its spawn to the last row committed and split at the first row
//! stored; what it cost (CPU, context switches, memory) is read from
//! `/proc` at that moment.

use std::{path::Path, time::Duration};

use tokio::time::Instant;

use super::{Backlog, Limits, stop, worker_command};
use crate::{
    env::{BenchEnv, poll_until, wait_for_count},
    payload, procfs,
};

/// (3), (4), (7): the real binary drains a pre-filled queue; timed from spawn
/// to the last row committed, then verified (every row, every ack).
pub async fn worker_drain(
    limits: &Limits<'_>,
    exe: &Path,
    backlog: Backlog,
    count: usize,
    batch_size: usize,
) -> anyhow::Result<Drain> {
    worker_drain_with(limits, exe, backlog, count, batch_size, &[]).await
}

/// [`worker_drain`], the worker given the extra environment `vars`.
pub async fn worker_drain_with(
    limits: &Limits<'_>,
    exe: &Path,
    backlog: Backlog,
    count: usize,
    batch_size: usize,
    vars: &[(&str, &str)],
) -> anyhow::Result<Drain> {
    let env = BenchEnv::new(limits.admin_url, limits.amqp_url).await?;
    let (key, body, queue) = backlog.source(&env);
    env.prefill(key, count, body).await?;
    let client = env.client().await?;
    let started = Instant::now();
    let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut worker = worker_command(
        &env,
        exe,
        batch_size,
        &env.amqp_url,
        Some(http),
        "wfm-worker",
    )?
    .envs(vars.iter().copied())
    .spawn()?;
    // The highest id is an index lookup; count(*) at 100 Hz would load the database.
    let newest = match backlog {
        Backlog::Checkins => "SELECT coalesce(max(checkins_id), 0) FROM clusters_checkins",
        Backlog::Versions => "SELECT coalesce(max(version_id), 0) FROM versions",
    };
    let (first_at, first) = first_rows(&client, newest, started).await?;
    wait_for_count(
        &client,
        "the backlog to be stored",
        newest,
        count as i64,
        Duration::from_millis(10),
    )
    .await?;
    let done_at = Instant::now();
    let rate = count as f64 / (done_at - started).as_secs_f64();
    let start = Start {
        first_row_ms: (first_at - started).as_secs_f64() * 1e3,
        after_rate: (count as f64 - first as f64) / (done_at - first_at).as_secs_f64(),
    };
    let pid = worker.id().unwrap_or_default();
    let us_per_msg = 1e6 / count as f64;
    let cpu_us_per_msg = procfs::cpu_secs(pid).unwrap_or(0.0) * us_per_msg;
    let cpu_split_us = procfs::cpu_by_thread(pid).map(|split| split.scaled(us_per_msg));
    let switches_per_msg = procfs::context_switches(pid).unwrap_or(f64::NAN) / count as f64;
    let peak_rss_kib = procfs::peak_rss_kib(pid).unwrap_or_default();
    let resident = procfs::resident(pid, exe);
    let mean_batch = mean_batch(http, &queue).await;
    poll_until(
        "the queue to be drained",
        Duration::from_millis(20),
        Duration::from_secs(60),
        || async { Ok(env.ready(&queue).await? == 0) },
    )
    .await?;
    stop(&mut worker).await?;
    verify(&env, &client, backlog, count, &queue).await?;
    env.drop_all().await;
    Ok(Drain {
        rate,
        start,
        peak_rss_kib,
        cpu_us_per_msg,
        cpu_split_us,
        switches_per_msg,
        resident,
        mean_batch,
    })
}

/// Polls `newest` every 2 ms until a row is stored: when that was seen, and
/// the highest id then. Until the worker has applied the schema the query
/// fails, which counts as nothing stored.
async fn first_rows(
    client: &tokio_postgres::Client,
    newest: &str,
    started: Instant,
) -> anyhow::Result<(Instant, i64)> {
    loop {
        let stored = client
            .query_one(newest, &[])
            .await
            .map_or(0, |row| row.get::<_, i64>(0));
        if stored > 0 {
            return Ok((Instant::now(), stored));
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "timed out waiting for the first rows to be stored"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn verify(
    env: &BenchEnv,
    client: &tokio_postgres::Client,
    backlog: Backlog,
    count: usize,
    queue: &str,
) -> anyhow::Result<()> {
    let check = match backlog {
        Backlog::Checkins => {
            "SELECT count(*), count(DISTINCT message_id), (SELECT count(*) FROM clusters) FROM clusters_checkins"
        }
        Backlog::Versions => "SELECT count(*), count(*), 0::bigint FROM versions",
    };
    let row = client.query_one(check, &[]).await?;
    let (rows, distinct, clusters): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    anyhow::ensure!(
        rows == count as i64 && distinct == count as i64,
        "stored {rows} rows ({distinct} distinct) of {count}"
    );
    if let Backlog::Checkins = backlog {
        let expected = payload::CLUSTERS.min(count) as i64;
        anyhow::ensure!(
            clusters == expected,
            "{clusters} clusters, expected {expected}"
        );
    }
    // The worker has closed its connection: anything unacked would be ready again.
    anyhow::ensure!(
        env.ready(queue).await? == 0,
        "messages left unacked in {queue}"
    );
    Ok(())
}

/// What a worker drain measured.
pub struct Drain {
    /// Messages per second from spawn to the last row committed.
    pub rate: f64,
    /// The same split at the first row stored.
    pub start: Start,
    pub peak_rss_kib: u64,
    /// The worker's CPU time (all threads, user + system) per stored message,
    /// from spawn to the last row committed.
    pub cpu_us_per_msg: f64,
    /// The same by kind of thread (µs per message), read at the same time.
    pub cpu_split_us: Option<procfs::CpuByThread>,
    /// The worker's context switches (all its threads) per stored message,
    /// from spawn to the last row committed.
    pub switches_per_msg: f64,
    /// The resident set at the end of the drain, by kind.
    pub resident: Option<procfs::Resident>,
    /// Messages per batch written, on average (from the worker's metrics).
    pub mean_batch: f64,
}

/// Mean of `wfm_batch_size_messages` for `queue`, scraped from the worker.
async fn mean_batch(http: std::net::SocketAddr, queue: &str) -> f64 {
    let (messages, batches) = batch_totals(http, queue).await;
    messages / batches
}

/// Messages written in batches, and batches, for `queue` so far (the sum and
/// count of `wfm_batch_size_messages`, scraped from the worker; NaN if they
/// cannot be read).
pub async fn batch_totals(http: std::net::SocketAddr, queue: &str) -> (f64, f64) {
    let Ok((_, text)) = wfm_worker::http::get(http, "/metrics").await else {
        return (f64::NAN, f64::NAN);
    };
    let label = format!("queue=\"{queue}\"");
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (
        value("wfm_batch_size_messages_sum"),
        value("wfm_batch_size_messages_count"),
    )
}

/// A drain split where its first row was seen stored: before it the worker
/// started (the process, applying the schema to the fresh database, its
/// connections and consumers) and wrote its first batch; after it, it only
/// drained.
#[derive(Debug, Clone, Copy, Default)]
pub struct Start {
    /// From spawn to the first poll (every 2 ms) that saw a row.
    pub first_row_ms: f64,
    /// Messages per second from that poll to the last row committed.
    pub after_rate: f64,
}
