//! (11) the reports at a million clusters, and (12) what the summary columns
//! cost the batched write (see `history`).

use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::{
    Client,
    types::{ToSql, Type},
};
use wfm_worker::{app, store};

use crate::{env::BenchEnv, payload, phases::Limits};

/// One report: p99 of the full-history form and of the summary form.
pub struct Report {
    pub name: &'static str,
    pub history_p99_ms: f64,
    pub summary_p99_ms: f64,
    pub rows: usize,
    pub identical: bool,
}

/// `$2` checkins per cluster of `$1` clusters, over the last year.
const FILL_HISTORY: &str =
    "INSERT INTO clusters_checkins (cluster_id, created_at, data, message_id)
    SELECT md5((n % $1::bigint)::text)::uuid,
           (now() AT TIME ZONE 'UTC') - (abs(hashint8(n)) % 31536000) * interval '1 second',
           '{\"id\":\"x\",\"components\":[]}', 'h-' || n
      FROM generate_series(0, $1::bigint * $2::bigint - 1) AS n";
/// The clusters, with their summaries as the back-fill of `sql/0006` makes them.
const FILL_CLUSTERS: &str = "INSERT INTO clusters (cluster_id, data, last_checkin_at, first_checkin_at, checkin_count)
    SELECT cluster_id, '{\"id\":\"x\",\"components\":[]}', max(created_at), min(created_at), count(*)
      FROM clusters_checkins GROUP BY cluster_id";

const BY_AGE: [&str; 2] = [
    "SELECT clusters.* FROM clusters, clusters_checkins WHERE clusters_checkins.cluster_id = clusters.cluster_id GROUP BY clusters_checkins.cluster_id, clusters.cluster_id HAVING MIN(clusters_checkins.created_at) > $1 AND MIN(clusters_checkins.created_at) < $2 AND MIN(clusters_checkins.created_at) > $3 AND MAX(clusters_checkins.created_at) < $4",
    "SELECT clusters.* FROM clusters WHERE first_checkin_at > $1 AND first_checkin_at < $2 AND first_checkin_at > $3 AND last_checkin_at < $4",
];
const CHECKINS: [&str; 2] = [
    "SELECT cluster_id, MIN(created_at) AS first_seen, MAX(created_at) AS last_seen, AGE(MAX(created_at), MIN(created_at)) AS cluster_age, AGE(MAX(created_at), NOW()) AS last_checkin, COUNT(1) AS checkins FROM clusters_checkins GROUP BY cluster_id HAVING MIN(created_at) > $1 AND MIN(created_at) < $2 ORDER BY first_seen DESC",
    "SELECT cluster_id, first_checkin_at AS first_seen, last_checkin_at AS last_seen, AGE(last_checkin_at, first_checkin_at) AS cluster_age, AGE(last_checkin_at, NOW()) AS last_checkin, checkin_count AS checkins FROM clusters WHERE first_checkin_at > $1 AND first_checkin_at < $2 ORDER BY first_seen DESC",
];
const PERSISTENT: [&str; 2] = [
    "SELECT cluster_id, MIN(created_at) AS first_seen, MAX(created_at) AS last_seen, AGE(MAX(created_at), MIN(created_at)) AS cluster_age, COUNT(1) AS checkins FROM clusters_checkins GROUP BY cluster_id HAVING MIN(created_at) > $1 AND MIN(created_at) < $2 AND COUNT(1) > 1 AND MAX(created_at) > $3 ORDER BY first_seen ASC",
    "SELECT cluster_id, first_checkin_at AS first_seen, last_checkin_at AS last_seen, AGE(last_checkin_at, first_checkin_at) AS cluster_age, checkin_count AS checkins FROM clusters WHERE first_checkin_at > $1 AND first_checkin_at < $2 AND checkin_count > 1 AND last_checkin_at > $3 ORDER BY first_seen ASC",
];

/// The three reports over `clusters` clusters with `per_cluster` checkins each,
/// for a one-day window of first checkins; full history `runs_history` times,
/// summaries 50 times.
pub async fn reports(
    limits: &Limits<'_>,
    clusters: i64,
    per_cluster: i64,
    runs_history: usize,
) -> anyhow::Result<Vec<Report>> {
    let env = BenchEnv::new(limits.admin_url, limits.amqp_url).await?;
    app::bootstrap(&env.database(1)).await?;
    let client = env.client().await?;
    client
        .execute(FILL_HISTORY, &[&clusters, &per_cluster])
        .await?;
    client.execute(FILL_CLUSTERS, &[]).await?;
    client
        .batch_execute("ANALYZE clusters; ANALYZE clusters_checkins")
        .await?;
    let day = |d: i64| chrono::Utc::now().naive_utc() - chrono::Duration::days(d);
    let (from, to, epoch, end, since) = (day(101), day(100), day(400), day(-1), day(60));
    let mut figures = Vec::new();
    let cases: [(&'static str, [&str; 2], Vec<chrono::NaiveDateTime>); 3] = [
        ("clusters/age", BY_AGE, vec![from, to, epoch, end]),
        ("clusters/checkins", CHECKINS, vec![from, to]),
        ("clusters/persistent", PERSISTENT, vec![from, to, since]),
    ];
    for (name, [history, summary], params) in cases {
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let (history_p99_ms, from_history) = timed(&client, history, &params, runs_history).await?;
        let (summary_p99_ms, from_summary) = timed(&client, summary, &params, 50).await?;
        eprintln!(
            "  (11) {name}: history p99 {history_p99_ms:.0} ms, summaries p99 {summary_p99_ms:.1} ms, {} rows",
            from_summary.len()
        );
        figures.push(Report {
            name,
            history_p99_ms,
            summary_p99_ms,
            rows: from_summary.len(),
            identical: from_history == from_summary,
        });
    }
    env.drop_all().await;
    Ok(figures)
}

/// p99 (ms) of `runs` executions, and the rows (cluster id, checkins), sorted.
async fn timed(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    runs: usize,
) -> anyhow::Result<(f64, Vec<String>)> {
    let mut times = Vec::with_capacity(runs);
    let mut rows = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let result = client.query(sql, params).await?;
        times.push(started.elapsed());
        rows = result
            .iter()
            .map(|r| {
                let count = r
                    .try_get::<_, i64>("checkins")
                    .or_else(|_| r.try_get::<_, i64>("checkin_count"))
                    .unwrap_or(0);
                format!("{} {count}", r.get::<_, uuid::Uuid>("cluster_id"))
            })
            .collect();
    }
    times.sort();
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    rows.sort();
    Ok((p99.as_secs_f64() * 1000.0, rows))
}

/// (12): the batched write of `count` checkins as the worker runs it, and the
/// same statement with the cluster upsert of before the summaries: (with, without).
pub async fn summary_cost(
    limits: &Limits<'_>,
    count: usize,
    pairs: usize,
) -> anyhow::Result<crate::pairs::Pairs> {
    let upsert = store::INSERT_CHECKINS
        .find("), tally AS (")
        .expect("the statement has its tally");
    let without = format!(
        "{}), upserted AS (
    INSERT INTO clusters AS c (cluster_id, data, last_checkin_at)
    SELECT cluster_id, data, created_at FROM newest ORDER BY cluster_id
    ON CONFLICT (cluster_id) DO UPDATE
       SET data = EXCLUDED.data, last_checkin_at = EXCLUDED.last_checkin_at
     WHERE c.last_checkin_at IS NULL OR c.last_checkin_at <= EXCLUDED.last_checkin_at
)
SELECT (SELECT count(*) FROM kept), (SELECT count(*) FROM counted)",
        &store::INSERT_CHECKINS[..upsert]
    );
    let without = &without;
    crate::pairs::Pairs::measure(pairs, |summaries| async move {
        let statement = if summaries {
            store::INSERT_CHECKINS
        } else {
            without
        };
        let rate = write_rate(limits, statement, count).await?;
        let kind = if summaries { "with" } else { "without" };
        eprintln!("  (12) {kind:<7} summaries {rate:>9.0} msgs/s");
        Ok(rate)
    })
    .await
}

async fn write_rate(limits: &Limits<'_>, statement: &str, count: usize) -> anyhow::Result<f64> {
    let env = BenchEnv::new(limits.admin_url, limits.amqp_url).await?;
    app::bootstrap(&env.database(1)).await?;
    let mut client = env.client().await?;
    let bodies: Vec<String> = (0..count).map(payload::checkin).collect();
    let at = chrono::Utc::now().naive_utc();
    let started = Instant::now();
    for (batch, chunk) in bodies.chunks(limits.batch_size).enumerate() {
        let ids: Vec<uuid::Uuid> = (0..chunk.len())
            .map(|i| {
                payload::cluster_id(batch * limits.batch_size + i)
                    .parse()
                    .expect("uuid")
            })
            .collect();
        let times = vec![at; chunk.len()];
        let documents: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let keys: Vec<String> = (0..chunk.len())
            .map(|i| format!("m-{}", batch * limits.batch_size + i))
            .collect();
        let tx = client.transaction().await?;
        tx.execute(store::SHARE_KEYS, &[&store::KEYS_LOCK]).await?;
        tx.query_typed_one(
            statement,
            &[
                (&ids, Type::UUID_ARRAY),
                (&times, Type::TIMESTAMP_ARRAY),
                (&documents, Type::TEXT_ARRAY),
                (&keys, Type::TEXT_ARRAY),
            ],
        )
        .await?;
        tx.commit().await?;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let stored: i64 = client
        .query_one("SELECT count(*) FROM clusters_checkins", &[])
        .await?
        .get(0);
    anyhow::ensure!(stored == count as i64, "stored {stored} of {count}");
    drop(client);
    env.drop_all().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(rate)
}
