//! Checkin history at scale: partitions of `clusters_checkins` kept ahead,
//! retention by whole partitions, and the rotation of the deduplication keys.
//!
//! Maintenance is safe to run from every replica at once (and from `wfm-worker
//! maintain`): one of them, holding a transaction-scoped advisory lock (which
//! also works behind a transaction-mode pooler), does the work; the others find
//! the lock taken and skip. Partition DDL is idempotent, so a run cut off
//! mid-way is finished by the next.

mod convert;
mod period;

pub use convert::{ConversionError, ConversionReport, convert_to_partitioned};
pub use period::Period;

use chrono::NaiveDateTime;
use tokio_postgres::{Client, GenericClient};

use super::{StoreError, checkins::KEYS_LOCK};
pub use crate::config::HistorySettings;

/// Partitions kept created ahead of the current one.
pub const AHEAD: u32 = 3;

/// What one maintenance run did and saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Another replica held the maintenance lock: nothing was done.
    pub skipped: bool,
    pub partitioned: bool,
    pub created: Vec<String>,
    /// (partition, estimated rows) dropped by retention.
    pub dropped: Vec<(String, u64)>,
    pub keys_rotated: bool,
    /// Partitions starting after the current period's start.
    pub partitions_ahead: u32,
    /// The lower bound of the oldest partition (`None`: unbounded, or none).
    pub oldest: Option<NaiveDateTime>,
}

impl std::fmt::Display for MaintenanceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.skipped {
            return write!(
                f,
                "another replica is maintaining checkin history; nothing done"
            );
        }
        let rotated = if self.keys_rotated { "rotated" } else { "kept" };
        if !self.partitioned {
            return write!(
                f,
                "clusters_checkins is not partitioned; deduplication keys {rotated}"
            );
        }
        let rows: u64 = self.dropped.iter().map(|(_, rows)| rows).sum();
        write!(
            f,
            "created {} partition(s) {:?}; dropped {} (~{rows} rows) {:?}; {} period(s) ahead; deduplication keys {rotated}",
            self.created.len(),
            self.created,
            self.dropped.len(),
            self.dropped
                .iter()
                .map(|(name, _)| name)
                .collect::<Vec<_>>(),
            self.partitions_ahead,
        )
    }
}

const MAINTENANCE_LOCK: i64 = 0x0077_666d_6d61; // "wfmma"
const TRY_LOCK: &str = "SELECT pg_try_advisory_xact_lock($1)";
const NOW: &str = "SELECT (now() AT TIME ZONE 'UTC')::timestamp";
const IS_PARTITIONED: &str =
    "SELECT relkind = 'p' FROM pg_class WHERE oid = 'clusters_checkins'::regclass";
const CREATE_PARTITION: &str = "SELECT wfm_create_checkin_partition($1, $2, $3)";
const RAISE_HORIZON: &str = "UPDATE checkin_history SET horizon = GREATEST(horizon, $1::timestamp)";
/// Each partition with its bounds as PostgreSQL prints them
/// (`FOR VALUES FROM (MINVALUE) TO ('2026-12-01 00:00:00')`).
const PARTITIONS: &str = "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
   WHERE i.inhparent = 'clusters_checkins'::regclass";

/// One maintenance run (see the module docs).
pub async fn maintain(
    client: &mut Client,
    settings: &HistorySettings,
) -> Result<MaintenanceReport, StoreError> {
    let mut report = MaintenanceReport {
        keys_rotated: rotate_keys(client, settings.dedup_window).await?,
        ..MaintenanceReport::default()
    };
    let tx = client.transaction().await?;
    if !tx
        .query_one(TRY_LOCK, &[&MAINTENANCE_LOCK])
        .await?
        .get::<_, bool>(0)
    {
        report.skipped = true;
        return Ok(report);
    }
    report.partitioned = tx.query_one(IS_PARTITIONED, &[]).await?.get(0);
    if !report.partitioned {
        return Ok(report);
    }
    let now: NaiveDateTime = tx.query_one(NOW, &[]).await?.get(0);
    let existing = partitions(&tx).await?;
    report.created = create_partitions(&tx, settings.period, now, &existing).await?;
    let expired = match settings.retention {
        Some(retention) => {
            let horizon = settings.period.start(now - retention);
            tx.execute(RAISE_HORIZON, &[&horizon]).await?;
            expired(&tx, horizon).await?
        }
        None => Vec::new(),
    };
    tx.commit().await?;
    for (name, rows) in expired {
        drop_partition(client, &name).await?;
        report.dropped.push((name, rows));
    }
    let partitions = partitions(client).await?;
    report.partitions_ahead = periods_ahead(&partitions, settings.period, now);
    report.oldest = partitions.iter().filter_map(|p| p.lower).min();
    Ok(report)
}

/// Creates the current partition and [`AHEAD`] after it where missing. A
/// period already covered by a partition (the converted table's, up to its
/// boundary) is left to it.
pub(crate) async fn create_partitions(
    client: &impl GenericClient,
    period: Period,
    now: NaiveDateTime,
    existing: &[Partition],
) -> Result<Vec<String>, StoreError> {
    let covered = |lower: NaiveDateTime, upper: NaiveDateTime| {
        existing
            .iter()
            .any(|p| p.lower.is_none_or(|l| l < upper) && p.upper.is_none_or(|u| u > lower))
    };
    let mut created = Vec::new();
    let mut lower = period.start(now);
    for _ in 0..=AHEAD {
        let upper = period.next(lower);
        if !covered(lower, upper) {
            let name = period.partition_name(lower);
            let made: bool = client
                .query_one(CREATE_PARTITION, &[&name, &lower, &upper])
                .await?
                .get(0);
            if made {
                tracing::info!(partition = %name, "created checkin partition");
                created.push(name);
            }
        }
        lower = upper;
    }
    Ok(created)
}

/// Whole periods after the current one that partitions cover, without a gap.
fn periods_ahead(partitions: &[Partition], period: Period, now: NaiveDateTime) -> u32 {
    let covers = |t: NaiveDateTime| {
        partitions
            .iter()
            .any(|p| p.lower.is_none_or(|l| l <= t) && p.upper.is_none_or(|u| u > t))
    };
    let mut ahead = 0;
    let mut start = period.next(period.start(now));
    while covers(start) && ahead < 1000 {
        ahead += 1;
        start = period.next(start);
    }
    ahead
}

/// A partition of `clusters_checkins` and its range (`None`: unbounded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub lower: Option<NaiveDateTime>,
    pub upper: Option<NaiveDateTime>,
    /// The planner's estimate of its rows.
    pub rows: u64,
}

/// The partitions of `clusters_checkins`, oldest first.
pub async fn partitions(client: &impl GenericClient) -> Result<Vec<Partition>, StoreError> {
    let mut partitions: Vec<Partition> = client
        .query(PARTITIONS, &[])
        .await?
        .iter()
        .map(|row| {
            let (lower, upper) = period::parse_bound(row.get::<_, &str>(1));
            Partition {
                name: row.get(0),
                lower,
                upper,
                rows: row.get::<_, i64>(2).max(0) as u64,
            }
        })
        .collect();
    partitions.sort_by_key(|p| p.lower);
    Ok(partitions)
}

/// Partitions wholly older than `horizon`, with their estimated rows.
async fn expired(
    client: &impl GenericClient,
    horizon: NaiveDateTime,
) -> Result<Vec<(String, u64)>, StoreError> {
    Ok(partitions(client)
        .await?
        .into_iter()
        .filter(|p| p.upper.is_some_and(|upper| upper <= horizon))
        .map(|p| (p.name, p.rows))
        .collect())
}

/// Detaches (concurrently from PostgreSQL 14: inserts never wait) and drops a
/// partition: metadata only, whatever its size. Outside any transaction, as
/// `DETACH … CONCURRENTLY` must be; a detach an earlier run left pending is
/// finalized.
async fn drop_partition(client: &Client, name: &str) -> Result<(), StoreError> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let concurrently = if version >= 140_000 {
        " CONCURRENTLY"
    } else {
        ""
    };
    // Identifiers cannot be parameters: the name is quoted by the server.
    let quoted: String = client
        .query_one("SELECT quote_ident($1)", &[&name])
        .await?
        .get(0);
    let detach = format!("ALTER TABLE clusters_checkins DETACH PARTITION {quoted}{concurrently}");
    if let Err(error) = client.batch_execute(&detach).await {
        // 55000: already pending detach (an interrupted run): finish it.
        if error.code().map(|c| c.code()) != Some("55000") {
            return Err(error.into());
        }
        let finalize = format!("ALTER TABLE clusters_checkins DETACH PARTITION {quoted} FINALIZE");
        client.batch_execute(&finalize).await?;
    }
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {quoted}"))
        .await?;
    tracing::info!(partition = %name, "dropped checkin partition (retention)");
    Ok(())
}

const ROTATION_DUE: &str = "SELECT current,
    rotated_at <= (now() AT TIME ZONE 'UTC') - make_interval(secs => $1::float8)
    FROM checkin_key_generation";
const ROTATE: &str = "UPDATE checkin_key_generation
    SET current = 1 - current, rotated_at = now() AT TIME ZONE 'UTC'";
const TAKE_KEYS: &str = "SELECT pg_advisory_xact_lock($1)";

/// Empties the older key generation and makes it current, when the current
/// one is a window old. The exclusive lock waits for the writers in flight
/// (each holds it shared) and holds new ones back for the few milliseconds of
/// a TRUNCATE; a writer stuck longer than `lock_timeout` makes the rotation
/// wait for the next run instead of stalling every writer behind it.
async fn rotate_keys(client: &mut Client, window: std::time::Duration) -> Result<bool, StoreError> {
    let window = window.as_secs_f64();
    let due = |row: tokio_postgres::Row| (row.get::<_, i16>(0), row.get::<_, bool>(1));
    if !due(client.query_one(ROTATION_DUE, &[&window]).await?).1 {
        return Ok(false);
    }
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '2s'").await?;
    if let Err(error) = tx.execute(TAKE_KEYS, &[&KEYS_LOCK]).await {
        // 55P03: lock_timeout. Another run will rotate.
        if error.code().map(|c| c.code()) == Some("55P03") {
            return Ok(false);
        }
        return Err(error.into());
    }
    // Again under the lock: another replica may have rotated meanwhile.
    let (current, still_due) = due(tx.query_one(ROTATION_DUE, &[&window]).await?);
    if !still_due {
        return Ok(false);
    }
    let older = if current == 0 {
        "checkin_keys_1"
    } else {
        "checkin_keys_0"
    };
    tx.batch_execute(&format!("TRUNCATE {older}")).await?;
    tx.execute(ROTATE, &[]).await?;
    tx.commit().await?;
    tracing::info!("rotated the checkin deduplication keys");
    Ok(true)
}
