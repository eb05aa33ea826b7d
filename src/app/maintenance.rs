//! Checkin history upkeep in the worker: at start (before consuming, so the
//! current partition exists, on the bootstrap's connection) and every ten
//! minutes, on a connection of its own. Every replica runs it; one at a time does the work (see
//! `store::history`). Its figures are the `wfm_checkin_*` gauges.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::{
    config::HistorySettings,
    store::{
        PgConnection, Pool, StoreError,
        history::{self, MaintenanceReport},
    },
};

const INTERVAL: Duration = Duration::from_secs(600);

/// Registers the maintenance series at zero.
pub(super) fn register_metrics() {
    metrics::gauge!("wfm_checkin_partitioned").set(0.0);
    metrics::gauge!("wfm_checkin_partitions_ahead").set(0.0);
    metrics::gauge!("wfm_checkin_oldest_partition_age_seconds").set(0.0);
    metrics::counter!("wfm_checkin_partitions_dropped_total").increment(0);
    metrics::counter!("wfm_checkin_rows_dropped_total").increment(0);
    metrics::counter!("wfm_checkin_key_rotations_total").increment(0);
    for outcome in ["done", "skipped", "failed"] {
        metrics::counter!("wfm_maintenance_runs_total", "outcome" => outcome).increment(0);
    }
}

/// One run on a connection of its own.
pub async fn run_once(
    pool: &Pool,
    settings: &HistorySettings,
) -> Result<MaintenanceReport, StoreError> {
    let mut connection = pool.dedicated_connection().await?;
    run_on(&mut connection, settings).await
}

/// One run on a connection the caller holds (the bootstrap's, at start-up).
pub async fn run_on(
    connection: &mut PgConnection,
    settings: &HistorySettings,
) -> Result<MaintenanceReport, StoreError> {
    let report = history::maintain(connection, settings).await?;
    record(&report);
    Ok(report)
}

/// Runs every [`INTERVAL`] until `stop`; failures are logged and counted,
/// never fatal (the next run tries again).
pub(super) async fn keep(pool: Pool, settings: HistorySettings, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
        if let Err(error) = run_once(&pool, &settings).await {
            metrics::counter!("wfm_maintenance_runs_total", "outcome" => "failed").increment(1);
            tracing::warn!(error = %error, "checkin history maintenance failed; trying again later");
        }
    }
}

fn record(report: &MaintenanceReport) {
    let outcome = if report.skipped { "skipped" } else { "done" };
    metrics::counter!("wfm_maintenance_runs_total", "outcome" => outcome).increment(1);
    if report.keys_rotated {
        metrics::counter!("wfm_checkin_key_rotations_total").increment(1);
    }
    if report.skipped {
        return;
    }
    metrics::gauge!("wfm_checkin_partitioned").set(if report.partitioned { 1.0 } else { 0.0 });
    if !report.partitioned {
        return;
    }
    metrics::gauge!("wfm_checkin_partitions_ahead").set(f64::from(report.partitions_ahead));
    if let Some(oldest) = report.oldest {
        let age = (Utc::now().naive_utc() - oldest).num_seconds().max(0);
        metrics::gauge!("wfm_checkin_oldest_partition_age_seconds").set(age as f64);
    }
    let rows: u64 = report.dropped.iter().map(|(_, rows)| rows).sum();
    metrics::counter!("wfm_checkin_partitions_dropped_total")
        .increment(report.dropped.len() as u64);
    metrics::counter!("wfm_checkin_rows_dropped_total").increment(rows);
}
