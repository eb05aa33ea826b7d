//! The measurements. Each phase runs on a private database and topology and
//! verifies its result before it reports a rate.

use std::{path::Path, process::Stdio, time::Duration};

use futures_util::StreamExt;
use lapin::{message::Delivery, options::BasicAckOptions};
use tokio::{process::Command, time::Instant};
use wfm_worker::{
    app,
    broker::{CHECKIN_ROUTING_KEY, VERSION_ROUTING_KEY},
    config::PipelineSettings,
    message::{self, Checkin, Envelope, Item, VersionEvent},
    store::{self, PgConnection, StoreError, WriteOutcome},
};

use crate::{
    env::{BenchEnv, poll_until, wait_for_count},
    payload, procfs,
};

pub struct Limits<'a> {
    pub admin_url: &'a str,
    pub amqp_url: &'a str,
    pub prefetch: u16,
    pub batch_size: usize,
    /// Where the worker's batches end: `batch_size`, and its WFM_BATCH_BYTES
    /// (inherited from this process).
    pub batches: PipelineSettings,
}

/// (1), and (7)'s broker limit: a consumer that only acks, with the worker's
/// prefetch and ack style (one `multiple` ack per batch, batches ending where
/// the worker's do).
pub async fn broker_limit(
    limits: &Limits<'_>,
    backlog: Backlog,
    count: usize,
) -> anyhow::Result<f64> {
    let env = BenchEnv::new(limits.admin_url, limits.amqp_url).await?;
    let (key, body, queue) = backlog.source(&env);
    env.prefill(key, count, body).await?;
    let started = Instant::now();
    let mut consumer = env.consume(&queue, limits.prefetch).await?;
    let (mut received, mut in_batch, mut batch_bytes) = (0, 0, 0);
    let mut pending: Option<Delivery> = None;
    while received < count {
        let delivery = consumer.next().await.expect("consumer open")?;
        received += 1;
        in_batch += 1;
        batch_bytes += delivery.data.len();
        let last = pending.insert(delivery);
        if limits.batches.batch_is_full(in_batch, batch_bytes) || received == count {
            (in_batch, batch_bytes) = (0, 0);
            anyhow::ensure!(
                last.acker.ack(BasicAckOptions { multiple: true }).await?,
                "ack not sent"
            );
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(env.ready(&queue).await? == 0, "queue not drained");
    env.drop_all().await;
    Ok(rate)
}

/// (2) The worker's own batched write statements, driven directly, in the
/// worker's batches: up to the batch size, ending once the bodies reach
/// `batch_bytes`.
pub async fn database_limit(limits: &Limits<'_>, count: usize) -> anyhow::Result<f64> {
    let bodies: Vec<String> = (0..count).map(payload::checkin).collect();
    let ids: Vec<String> = (0..count).map(|i| format!("m-{i}")).collect();
    let received_at = chrono::Utc::now();
    let checkins: Vec<Item<Checkin<'_>>> = bodies
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(index, (body, id))| {
            let envelope = envelope(body, Some(id), received_at);
            let value = Checkin::parse(&envelope, &message::Limits::default())
                .expect("bench payload is valid");
            Item { index, value }
        })
        .collect();
    let body_len = |checkin: &Item<Checkin<'_>>| checkin.value.document.len();
    let stored = "SELECT count(*) FROM clusters_checkins";
    drive_writes(limits, &checkins, body_len, store::write_checkins, stored).await
}

/// (7)'s database limit: the worker's version upsert, driven directly as (2).
pub async fn versions_database_limit(limits: &Limits<'_>, count: usize) -> anyhow::Result<f64> {
    let bodies: Vec<String> = (0..count).map(payload::version).collect();
    let received_at = chrono::Utc::now();
    let versions: Vec<Item<VersionEvent<'_>>> = bodies
        .iter()
        .enumerate()
        .map(|(index, body)| {
            let envelope = envelope(body, None, received_at);
            let value = VersionEvent::parse(&envelope, &message::Limits::default())
                .expect("bench payload is valid");
            Item { index, value }
        })
        .collect();
    let body_len = |version: &Item<VersionEvent<'_>>| bodies[version.index].len();
    let stored = "SELECT count(*) FROM versions";
    drive_writes(limits, &versions, body_len, store::write_versions, stored).await
}

/// `body` as the worker receives it, published now.
fn envelope<'a>(
    body: &'a str,
    message_id: Option<&'a str>,
    received_at: chrono::DateTime<chrono::Utc>,
) -> Envelope<'a> {
    Envelope {
        body: body.as_bytes(),
        message_id,
        timestamp_secs: None,
        timestamp_ms: Some(payload::now_ms()),
        received_at,
    }
}

/// Writes `items` with `write` on one connection to a database of the
/// phase's own, in the worker's batches (`body_len` gives each item's body
/// size), one after the other; returns the rate once `stored` (a count)
/// finds a row per item.
async fn drive_writes<T>(
    limits: &Limits<'_>,
    items: &[Item<T>],
    body_len: impl Fn(&Item<T>) -> usize,
    write: impl AsyncFn(&mut PgConnection, &[Item<T>]) -> Result<WriteOutcome, StoreError>,
    stored: &str,
) -> anyhow::Result<f64> {
    let env = BenchEnv::new(limits.admin_url, limits.amqp_url).await?;
    let settings = env.database(1);
    app::bootstrap(&settings).await?;
    let pool = store::connect_pool(&settings).await?;
    let started = Instant::now();
    let mut rest = items;
    while !rest.is_empty() {
        let (batch, after) = rest.split_at(batch_end(rest.iter().map(&body_len), limits));
        let mut conn = pool.get().await?;
        write(&mut conn, batch).await?;
        rest = after;
    }
    let rate = items.len() as f64 / started.elapsed().as_secs_f64();
    let rows: i64 = env.client().await?.query_one(stored, &[]).await?.get(0);
    anyhow::ensure!(
        rows == items.len() as i64,
        "a database phase stored {rows} rows of {}",
        items.len()
    );
    drop(pool);
    env.drop_all().await;
    Ok(rate)
}

/// How many of `bodies` (their lengths) the worker's reader would put in one
/// batch.
fn batch_end(bodies: impl ExactSizeIterator<Item = usize>, limits: &Limits<'_>) -> usize {
    let (mut bytes, len) = (0, bodies.len());
    for (at, body) in bodies.enumerate() {
        bytes += body;
        if limits.batches.batch_is_full(at + 1, bytes) {
            return at + 1;
        }
    }
    len
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

/// Which queue a phase fills.
#[derive(Clone, Copy)]
pub enum Backlog {
    Checkins,
    Versions,
}

impl Backlog {
    /// The routing key, the body of the `i`th message, and the queue.
    fn source(self, env: &BenchEnv) -> (&'static str, fn(usize) -> String, String) {
        let t = &env.topology;
        match self {
            Self::Checkins => (
                CHECKIN_ROUTING_KEY,
                payload::checkin,
                t.checkin_queue.clone(),
            ),
            Self::Versions => (
                VERSION_ROUTING_KEY,
                payload::version,
                t.version_queue.clone(),
            ),
        }
    }
}

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

pub fn spawn_worker(
    env: &BenchEnv,
    exe: &Path,
    batch_size: usize,
) -> anyhow::Result<tokio::process::Child> {
    Ok(worker_command(env, exe, batch_size, &env.amqp_url, None, "wfm-worker")?.spawn()?)
}

/// The worker on the brokers `amqp_urls` (WFM_AMQP_URL), serving HTTP on
/// `http` when given, its connection named `name`.
pub fn worker_command(
    env: &BenchEnv,
    exe: &Path,
    batch_size: usize,
    amqp_urls: &str,
    http: Option<std::net::SocketAddr>,
    name: &str,
) -> anyhow::Result<Command> {
    let t = &env.topology;
    // Several workers at once each need a port of their own.
    let http = match http {
        Some(addr) => addr,
        None => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?,
    };
    let mut command = Command::new(exe);
    command
        .arg("run")
        .env("WFM_HTTP_ADDR", http.to_string())
        .env("WFM_DATABASE_URL", env.db_url())
        .env("WFM_AMQP_URL", amqp_urls)
        .env("WFM_CONNECTION_NAME", name)
        .env("WFM_EXCHANGE", &t.exchange)
        .env("WFM_CHECKIN_QUEUE", &t.checkin_queue)
        .env("WFM_VERSION_QUEUE", &t.version_queue)
        .env("WFM_DEAD_LETTER_EXCHANGE", &t.dead_letter_exchange)
        .env("WFM_DEAD_LETTER_QUEUE", &t.dead_letter_queue)
        .env("WFM_BATCH_SIZE", batch_size.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    Ok(command)
}

/// SIGTERM, then wait for the graceful exit.
pub async fn stop(worker: &mut tokio::process::Child) -> anyhow::Result<()> {
    let pid = worker.id().unwrap_or_default().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await?;
    let status = tokio::time::timeout(Duration::from_secs(40), worker.wait()).await??;
    anyhow::ensure!(status.success(), "worker exited with {status}");
    Ok(())
}
