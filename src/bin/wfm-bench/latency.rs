//! (5) Publish→commit latency at a steady offered load.
//!
//! A trigger in the bench's own database sends `pg_notify` per stored checkin;
//! PostgreSQL delivers a notification when the inserting transaction commits,
//! so its arrival (on the same clock as the publish) marks the commit.
//!
//! Its floor, publish→deliver through the broker alone (the same quorum queue
//! and load, a consumer that only acks), shows how much of it is the worker's.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{Channel, options::BasicAckOptions};
use tokio::{sync::mpsc, time::Instant};
use tokio_postgres::{AsyncMessage, NoTls};
use wfm_worker::{app, broker::CHECKIN_ROUTING_KEY};

use crate::{
    env::{self, BenchEnv},
    payload,
    phases::{Limits, batch_totals, stop, worker_command},
    procfs,
};

/// The payload is the message id and the row's insert time in microseconds
/// of the wall clock (`clock_timestamp()`, the time the trigger ran, before
/// the commit), which the bench compares with the publish time on the same
/// clock.
const NOTIFY_ON_COMMIT: &str = "
CREATE FUNCTION wfm_bench_notify() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_notify('wfm_bench', NEW.message_id || ' ' ||
       (extract(epoch FROM clock_timestamp()) * 1000000)::bigint); RETURN NULL; END $$;
CREATE TRIGGER wfm_bench_notify AFTER INSERT ON clusters_checkins
  FOR EACH ROW EXECUTE FUNCTION wfm_bench_notify();
LISTEN wfm_bench;";

pub struct Latencies {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The median of the first, and of the last, message of each burst (a
    /// tick's worth, published at once): what the burst's later messages
    /// wait for.
    pub first_p50_ms: f64,
    pub last_p50_ms: f64,
    /// What the latency cost the worker (not measured for the broker alone):
    /// its CPU per checkin over the steady load, and its mean batch.
    pub cpu_us: f64,
    /// Its context switches (all its threads) per checkin over the load.
    pub switches: f64,
    pub mean_batch: f64,
    /// The median from publish to the row's insert inside the worker's
    /// transaction (the trigger's clock): publish→commit without the
    /// commit and the notification's way back (not measured for the broker).
    pub insert_p50_ms: f64,
    /// The most messages the queue held ready at once, sampled every 100 ms:
    /// a consumer that falls behind leaves them there; messages late before
    /// the queue offers them do not show.
    pub most_ready: u32,
    /// How busy the machine was meanwhile, and what its host stole.
    pub host: procfs::HostLoad,
}

pub async fn latency(
    limits: &Limits<'_>,
    exe: &Path,
    per_second: usize,
    seconds: u64,
) -> anyhow::Result<Latencies> {
    let env = BenchEnv::new(limits.admin_url, limits.amqp_url).await?;
    app::bootstrap(&env.database(1)).await?;
    let (client, mut connection) = tokio_postgres::connect(&env.db_url(), NoTls).await?;
    let (commits, mut committed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let at = Instant::now();
                let (id, insert_us) = n.payload().split_once(' ').unwrap_or((n.payload(), ""));
                let _ = commits.send((id.to_owned(), at, insert_us.parse().ok()));
            }
        }
    });
    client.batch_execute(NOTIFY_ON_COMMIT).await?;
    let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut worker = worker_command(
        &env,
        exe,
        limits.batch_size,
        &env.amqp_url,
        Some(http),
        "wfm-worker",
    )?
    .spawn()?;
    let pid = worker.id().unwrap_or_default();
    let channel = env.connection.create_channel().await?;

    // Warm-up: the worker is consuming once one message has gone through.
    env.publish(
        &channel,
        CHECKIN_ROUTING_KEY,
        "warm-up",
        payload::checkin(0).as_bytes(),
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(60), committed.recv()).await?;

    let (cpu_before, switches_before, batches_before) = (
        procfs::cpu_secs(pid).unwrap_or(f64::NAN),
        procfs::context_switches(pid).unwrap_or(f64::NAN),
        batch_totals(http, &env.topology.checkin_queue).await,
    );
    let host = procfs::HostWatch::start();
    let ready = ReadySampler::start(&env).await?;
    let published = publish_steadily(&env, &channel, per_second, seconds).await?;
    let (latencies, to_insert) = arrivals(&published, &mut committed).await?;
    let most_ready = ready.most().await;
    let host = host.load();
    let cpu = procfs::cpu_secs(pid).unwrap_or(f64::NAN) - cpu_before;
    let switched = procfs::context_switches(pid).unwrap_or(f64::NAN) - switches_before;
    let (messages, count) = batch_totals(http, &env.topology.checkin_queue).await;
    stop(&mut worker).await?;
    env.drop_all().await;
    Ok(Latencies {
        cpu_us: cpu * 1e6 / published.len() as f64,
        switches: switched / published.len() as f64,
        mean_batch: (messages - batches_before.0) / (count - batches_before.1),
        insert_p50_ms: quantiles(to_insert)(0.5),
        most_ready,
        host,
        ..percentiles(latencies)
    })
}

/// Publish→deliver through the broker alone, at the same load on the same
/// kind of queue, to a consumer with the worker's prefetch that takes each
/// delivery as it arrives and acks what has arrived, as the worker does.
pub async fn broker_latency(
    limits: &Limits<'_>,
    per_second: usize,
    seconds: u64,
) -> anyhow::Result<Latencies> {
    let env = BenchEnv::new(limits.admin_url, limits.amqp_url).await?;
    let mut consumer = env
        .consume(&env.topology.checkin_queue, limits.prefetch)
        .await?;
    let (delivered, mut arrived) = mpsc::unbounded_channel();
    let (taken, to_ack) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let at = Instant::now();
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string());
            let _ = delivered.send((id.unwrap_or_default(), at, None));
            if taken.send(delivery.acker).is_err() {
                return;
            }
        }
    });
    tokio::spawn(ack_what_arrived(to_ack));
    let channel = env.connection.create_channel().await?;
    let host = procfs::HostWatch::start();
    let ready = ReadySampler::start(&env).await?;
    let published = publish_steadily(&env, &channel, per_second, seconds).await?;
    let (latencies, _) = arrivals(&published, &mut arrived).await?;
    let most_ready = ready.most().await;
    let host = host.load();
    env.drop_all().await;
    Ok(Latencies {
        most_ready,
        host,
        ..percentiles(latencies)
    })
}

/// Acks deliveries in arrival order, each ack covering all that arrived
/// before it (`multiple`), in a task of its own. A consumer that waited for
/// each ack to go out before it took the next delivery timed a burst's later
/// messages behind its own acks: the floor's first-to-last spread at
/// 1,000/s was 0.5–0.7 ms that way, 0.2–0.3 ms this way (BENCHMARKS.md).
async fn ack_what_arrived(mut to_ack: mpsc::UnboundedReceiver<lapin::Acker>) {
    while let Some(mut last) = to_ack.recv().await {
        while let Ok(later) = to_ack.try_recv() {
            last = later;
        }
        let multiple = BasicAckOptions { multiple: true };
        if last.ack(multiple).await.is_err() {
            return;
        }
    }
}

/// Publishes `per_second` checkins for `seconds`, a hundredth of a second's
/// worth every 10 ms (a burst); returns when each was published and its
/// place in its burst, by message id.
async fn publish_steadily(
    env: &BenchEnv,
    channel: &Channel,
    per_second: usize,
    seconds: u64,
) -> anyhow::Result<HashMap<String, Sent>> {
    let total = per_second * seconds as usize;
    let per_tick = per_second / 100;
    let mut published = HashMap::with_capacity(total);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for start in (0..total).step_by(per_tick) {
        tick.tick().await;
        for i in start..(start + per_tick).min(total) {
            let (id, body) = (format!("lat-{i}"), payload::checkin(i));
            let sent = Sent {
                at: Instant::now(),
                wall_us: wall_clock_us(),
                place: i - start,
            };
            published.insert(id.clone(), sent);
            env.publish(channel, CHECKIN_ROUTING_KEY, &id, body.as_bytes())
                .await?;
        }
    }
    Ok(published)
}

/// Samples the checkin queue's ready count on a channel of its own (a
/// passive declare every 100 ms) until [`ReadySampler::most`]. A failed declare ends the
/// sampling with what it had seen.
struct ReadySampler {
    most: Arc<AtomicU32>,
    channel: Channel,
    task: tokio::task::JoinHandle<()>,
}

impl ReadySampler {
    async fn start(env: &BenchEnv) -> anyhow::Result<Self> {
        let channel = env.connection.create_channel().await?;
        let queue = env.topology.checkin_queue.clone();
        let most = Arc::new(AtomicU32::new(0));
        let (seen, sampling) = (most.clone(), channel.clone());
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                let Ok(ready) = env::ready_on(&sampling, &queue).await else {
                    return;
                };
                seen.fetch_max(ready, Ordering::Relaxed);
            }
        });
        Ok(ReadySampler {
            most,
            channel,
            task,
        })
    }

    /// The most seen ready at once; stops sampling.
    async fn most(self) -> u32 {
        self.task.abort();
        let _ = self.channel.close(200, "".into()).await;
        self.most.load(Ordering::Relaxed)
    }
}

/// When a message was published, and its place in its burst.
struct Sent {
    at: Instant,
    /// The same moment on the wall clock, in microseconds since the epoch,
    /// to compare with PostgreSQL's `clock_timestamp()`.
    wall_us: i64,
    place: usize,
}

fn wall_clock_us() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

/// A message seen at the end of its way: its id, when, and (for a commit)
/// when its row was inserted, in microseconds of the wall clock.
type Arrival = (String, Instant, Option<i64>);

/// Milliseconds from publish to arrival of every message in `published`,
/// with its place in its burst; and from publish to the insert, where the
/// arrivals say when that was.
async fn arrivals(
    published: &HashMap<String, Sent>,
    arrived: &mut mpsc::UnboundedReceiver<Arrival>,
) -> anyhow::Result<(Vec<(usize, f64)>, Vec<f64>)> {
    let mut latencies = Vec::with_capacity(published.len());
    let mut to_insert = Vec::new();
    while latencies.len() < published.len() {
        let (id, at, inserted_us) = tokio::time::timeout(Duration::from_secs(30), arrived.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("arrivals ended"))?;
        if let Some(sent) = published.get(&id) {
            let ms = at.duration_since(sent.at).as_secs_f64() * 1000.0;
            latencies.push((sent.place, ms));
            to_insert.extend(inserted_us.map(|us| (us - sent.wall_us) as f64 / 1000.0));
        }
    }
    Ok((latencies, to_insert))
}

fn percentiles(latencies: Vec<(usize, f64)>) -> Latencies {
    let last = latencies.iter().map(|(place, _)| *place).max().unwrap_or(0);
    let median_at = |place: usize| {
        let of_place = latencies.iter().filter(|(p, _)| *p == place);
        quantiles(of_place.map(|(_, ms)| *ms).collect())(0.5)
    };
    let (first_p50_ms, last_p50_ms) = (median_at(0), median_at(last));
    let at = quantiles(latencies.into_iter().map(|(_, ms)| ms).collect());
    Latencies {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
        first_p50_ms,
        last_p50_ms,
        cpu_us: f64::NAN,
        switches: f64::NAN,
        mean_batch: f64::NAN,
        insert_p50_ms: f64::NAN,
        most_ready: 0,
        host: procfs::HostLoad::UNMEASURED,
    }
}

/// The `q`-quantiles of `values` (NaN if there are none).
fn quantiles(mut values: Vec<f64>) -> impl Fn(f64) -> f64 {
    values.sort_by(f64::total_cmp);
    move |q| {
        let at = ((values.len() as f64 - 1.0) * q).round() as usize;
        values.get(at).copied().unwrap_or(f64::NAN)
    }
}
