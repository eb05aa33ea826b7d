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

use crate::{env::BenchEnv, payload};

mod drain;
pub use drain::{Start, batch_totals, worker_drain, worker_drain_with};

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
