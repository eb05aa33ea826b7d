//! `wfm-bench --history`: what checkin history costs at scale (BENCHMARKS.md).
//!
//! 8. backlog drain into a partitioned table vs an ordinary one, in one run,
//!    while maintenance creates and drops partitions during the partitioned drain
//! 9. dropping a day of history by retention vs `DELETE`: time and WAL bytes
//! 10. converting a legacy table of millions of rows while the worker ingests:
//!     wall time, the longest ingestion pause, rows before and after
//! 11. the reports at a million clusters: full-history aggregations vs the
//!     summaries, p99 and identical results
//! 12. the cost of the summary columns: the batched write with and without them
//!
//! History rows made in SQL carry small documents (`{"id":…}`): the sizes that
//! matter here are row counts, not document bytes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tokio_postgres::Client;
use wfm_worker::{
    app,
    broker::CHECKIN_ROUTING_KEY,
    config::{HistorySettings, Period},
};

mod report;

pub use report::report;

use crate::{
    env::{BenchEnv, wait_for_count},
    pairs::Pairs,
    payload,
    phases::{Limits, spawn_worker, stop},
};

/// (8): (ordinary, partitioned) drain rates of `count` checkins.
pub async fn partitioned_drain(
    limits: &Limits<'_>,
    exe: &std::path::Path,
    count: usize,
    pairs: usize,
) -> anyhow::Result<Pairs> {
    Pairs::measure(pairs, |partitioned| async move {
        let rate = drain(limits, exe, count, partitioned).await?;
        let kind = if partitioned {
            "partitioned"
        } else {
            "ordinary"
        };
        eprintln!("  (8) {kind:<12} {rate:>9.0} msgs/s");
        Ok(rate)
    })
    .await
}

async fn drain(
    limits: &Limits<'_>,
    exe: &std::path::Path,
    count: usize,
    partitioned: bool,
) -> anyhow::Result<f64> {
    let env = BenchEnv::new(limits.admin_url, limits.amqp_url).await?;
    app::bootstrap(&env.database(2)).await?;
    let client = env.client().await?;
    if partitioned {
        daily_partitions(&env, &client).await?;
    }
    env.prefill(CHECKIN_ROUTING_KEY, count, payload::checkin)
        .await?;
    let churning = Arc::new(AtomicBool::new(partitioned));
    let churn = tokio::spawn(churn(env.database(1), env.db_url(), churning.clone()));
    let started = Instant::now();
    let mut worker = spawn_worker(&env, exe, limits.batch_size)?;
    // The highest id: an index lookup, while maintenance swaps partitions.
    wait_for_count(
        &client,
        "the backlog to be stored",
        "SELECT coalesce(max(checkins_id), 0) FROM clusters_checkins",
        count as i64,
        Duration::from_millis(10),
    )
    .await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    churning.store(false, Ordering::Relaxed);
    let cycles = churn.await??;
    anyhow::ensure!(
        !partitioned || cycles > 0,
        "maintenance churned during the drain"
    );
    stop(&mut worker).await?;
    let stored: i64 = client
        .query_one(
            "SELECT count(DISTINCT message_id) FROM clusters_checkins",
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(stored == count as i64, "stored {stored} of {count}");
    env.drop_all().await;
    Ok(rate)
}

/// Converted, with a day partition for the last three days and the next three.
async fn daily_partitions(env: &BenchEnv, client: &Client) -> anyhow::Result<()> {
    app::partition_checkins(&env.database(1), &HistorySettings::default()).await?;
    client
        .batch_execute("ALTER TABLE clusters_checkins DETACH PARTITION clusters_checkins_legacy; DROP TABLE clusters_checkins_legacy")
        .await?;
    for days in -3..=3 {
        create_day(client, days).await?;
    }
    Ok(())
}

async fn create_day(client: &Client, days_from_today: i64) -> anyhow::Result<()> {
    let lower = midnight(days_from_today);
    let upper = lower + chrono::Duration::days(1);
    client
        .query_one(
            "SELECT wfm_create_checkin_partition($1, $2, $3)",
            &[&Period::Day.partition_name(lower), &lower, &upper],
        )
        .await?;
    Ok(())
}

fn midnight(days_from_today: i64) -> chrono::NaiveDateTime {
    let today = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight");
    today + chrono::Duration::days(days_from_today)
}

/// While `churning`: every 300 ms an old day partition is created and a
/// maintenance run with a 10-day retention drops it. Returns the cycles.
async fn churn(
    database: wfm_worker::config::DatabaseSettings,
    url: String,
    churning: Arc<AtomicBool>,
) -> anyhow::Result<u32> {
    let client = crate::env::connect(&url).await?;
    let retention = HistorySettings {
        retention: Some(Duration::from_secs(10 * 86_400)),
        ..HistorySettings::default()
    };
    let mut cycles = 0;
    while churning.load(Ordering::Relaxed) {
        create_day(&client, -20 - i64::from(cycles)).await?;
        let report = app::maintain(&database, &retention).await?;
        anyhow::ensure!(
            report.skipped || !report.dropped.is_empty(),
            "the old partition was dropped"
        );
        cycles += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(cycles)
}

/// (9): time and WAL bytes of removing one day of `rows` checkins.
pub struct Removal {
    pub seconds: f64,
    pub wal_bytes: i64,
}

const WAL_NOW: &str = "SELECT pg_current_wal_insert_lsn()::text";
const WAL_SINCE: &str =
    "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)::bigint";
/// A day of small checkins, `$2` of them, dated through the day `$1`.
const FILL_DAY: &str = "INSERT INTO clusters_checkins (cluster_id, created_at, data, message_id)
    SELECT md5(n::text)::uuid, $1::timestamp + (n % 86400) * interval '1 second',
           '{\"id\":\"x\",\"components\":[]}', 'fill-' || n
      FROM generate_series(1, $2::bigint) AS n";

/// (9) by retention: a partitioned table, one old day of `rows`, then the
/// maintenance run that drops it.
pub async fn drop_by_retention(limits: &Limits<'_>, rows: i64) -> anyhow::Result<Removal> {
    let env = BenchEnv::new(limits.admin_url, limits.amqp_url).await?;
    app::bootstrap(&env.database(1)).await?;
    let client = env.client().await?;
    daily_partitions(&env, &client).await?;
    create_day(&client, -30).await?;
    client.execute(FILL_DAY, &[&midnight(-30), &rows]).await?;
    client.batch_execute("CHECKPOINT").await?;
    let lsn: String = client.query_one(WAL_NOW, &[]).await?.get(0);
    let retention = HistorySettings {
        retention: Some(Duration::from_secs(20 * 86_400)),
        ..HistorySettings::default()
    };
    let started = Instant::now();
    let report = app::maintain(&env.database(1), &retention).await?;
    let seconds = started.elapsed().as_secs_f64();
    let wal_bytes = client.query_one(WAL_SINCE, &[&lsn]).await?.get(0);
    anyhow::ensure!(report.dropped.len() == 1, "dropped {:?}", report.dropped);
    env.drop_all().await;
    Ok(Removal { seconds, wal_bytes })
}

/// (9) by DELETE: an ordinary table holding the same day, deleted.
pub async fn drop_by_delete(limits: &Limits<'_>, rows: i64) -> anyhow::Result<Removal> {
    let env = BenchEnv::new(limits.admin_url, limits.amqp_url).await?;
    app::bootstrap(&env.database(1)).await?;
    let client = env.client().await?;
    client.execute(FILL_DAY, &[&midnight(-30), &rows]).await?;
    client.batch_execute("CHECKPOINT").await?;
    let lsn: String = client.query_one(WAL_NOW, &[]).await?.get(0);
    let started = Instant::now();
    let deleted = client
        .execute(
            "DELETE FROM clusters_checkins WHERE created_at < $1",
            &[&midnight(-29)],
        )
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let wal_bytes = client.query_one(WAL_SINCE, &[&lsn]).await?.get(0);
    anyhow::ensure!(deleted == rows as u64, "deleted {deleted} of {rows}");
    env.drop_all().await;
    Ok(Removal { seconds, wal_bytes })
}

/// (10): converting a legacy table while the worker ingests.
pub struct Conversion {
    pub rows_before: i64,
    pub rows_after: i64,
    pub ingested: i64,
    pub seconds: f64,
    /// The longest time no checkin was written while the conversion ran.
    pub longest_pause_ms: f64,
    /// When that pause began, seconds after the conversion started.
    pub pause_began_s: f64,
    /// How long the switch held its lock, and in how many attempts.
    pub switch_ms: f64,
    pub switch_attempts: u32,
}

/// `$2` small checkins spread over the 30 days before `$1`.
const FILL_MONTH: &str = "INSERT INTO clusters_checkins (cluster_id, created_at, data, message_id)
    SELECT md5((n % 1000000)::text)::uuid, $1::timestamp - (n % 2592000) * interval '1 second',
           '{\"id\":\"x\",\"components\":[]}', 'legacy-' || n
      FROM generate_series(1, $2::bigint) AS n";
const WRITTEN: &str = "SELECT last_value FROM clusters_checkins_checkins_id_seq";

pub async fn convert_while_ingesting(
    limits: &Limits<'_>,
    exe: &std::path::Path,
    rows: i64,
    rate: usize,
) -> anyhow::Result<Conversion> {
    let env = BenchEnv::new(limits.admin_url, limits.amqp_url).await?;
    app::bootstrap(&env.database(1)).await?;
    let client = env.client().await?;
    client.execute(FILL_MONTH, &[&midnight(0), &rows]).await?;
    client.batch_execute("ANALYZE clusters_checkins").await?;
    let mut worker = spawn_worker(&env, exe, limits.batch_size)?;
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = tokio::spawn(publish_steadily(
        env.amqp_url.clone(),
        env.topology.clone(),
        rate,
        publishing.clone(),
    ));
    let watching = Arc::new(AtomicBool::new(true));
    let monitor = tokio::spawn(longest_pause(env.db_url(), watching.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let report = app::partition_checkins(&env.database(1), &HistorySettings::default()).await?;
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    watching.store(false, Ordering::Relaxed);
    publishing.store(false, Ordering::Relaxed);
    let (longest_pause, pause_began) = monitor.await??;
    let ingested = publisher.await?? as i64;
    wait_for_count(
        &client,
        "the ingested checkins to be stored",
        "SELECT count(*) FROM clusters_checkins",
        rows + ingested,
        Duration::from_millis(200),
    )
    .await?;
    stop(&mut worker).await?;
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT message_id) FROM clusters_checkins",
            &[],
        )
        .await?;
    let (rows_after, distinct): (i64, i64) = (row.get(0), row.get(1));
    anyhow::ensure!(
        rows_after == rows + ingested && distinct == rows_after && !report.already,
        "{rows_after} rows ({distinct} distinct), expected {rows} + {ingested}"
    );
    env.drop_all().await;
    Ok(Conversion {
        rows_before: rows,
        rows_after,
        ingested,
        seconds,
        longest_pause_ms: longest_pause.as_secs_f64() * 1000.0,
        pause_began_s: pause_began.checked_duration_since(started).map_or_else(
            || -(started - pause_began).as_secs_f64(),
            |d| d.as_secs_f64(),
        ),
        switch_ms: report.switch.as_secs_f64() * 1000.0,
        switch_attempts: report.attempts,
    })
}

/// Publishes `rate` checkins a second (unique ids) until `publishing` ends;
/// returns how many.
async fn publish_steadily(
    amqp_url: String,
    topology: wfm_worker::config::Topology,
    rate: usize,
    publishing: Arc<AtomicBool>,
) -> anyhow::Result<usize> {
    let connection =
        lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    let per_tick = (rate / 100).max(1);
    let mut published = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while publishing.load(Ordering::Relaxed) {
        tick.tick().await;
        for _ in 0..per_tick {
            let body = payload::checkin(published);
            channel
                .basic_publish(
                    topology.exchange.as_str().into(),
                    CHECKIN_ROUTING_KEY.into(),
                    Default::default(),
                    body.as_bytes(),
                    payload::properties(&format!("live-{published}"), payload::now_ms()),
                )
                .await?;
            published += 1;
        }
    }
    anyhow::ensure!(channel.wait_for_confirms().await?.is_empty(), "unroutable");
    let _ = connection.close(200, "".into()).await;
    Ok(published)
}

/// The longest interval in which the checkin sequence did not move, and when
/// it began.
async fn longest_pause(
    url: String,
    watching: Arc<AtomicBool>,
) -> anyhow::Result<(Duration, Instant)> {
    let client = crate::env::connect(&url).await?;
    let mut last: i64 = client.query_one(WRITTEN, &[]).await?.get(0);
    let mut moved = Instant::now();
    let mut longest = (Duration::ZERO, moved);
    while watching.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now: i64 = client.query_one(WRITTEN, &[]).await?.get(0);
        if now != last {
            if moved.elapsed() > longest.0 {
                longest = (moved.elapsed(), moved);
            }
            (last, moved) = (now, Instant::now());
        }
    }
    Ok(longest)
}
