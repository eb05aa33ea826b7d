//! Helpers of the checkin-history tests: time points, messages at a time,
//! conversion and maintenance as an operator runs them.

use chrono::{NaiveDateTime, Utc};
use wfm_worker::{app, config::HistorySettings, store::history::MaintenanceReport};

use super::{Outgoing, TestEnv, checkin_body};

pub const CHECKINS: &str = "SELECT count(*) FROM clusters_checkins";

pub fn day() -> HistorySettings {
    HistorySettings::default()
}

pub async fn convert(env: &TestEnv) {
    let report = app::partition_checkins(&env.db.settings(), &day())
        .await
        .unwrap();
    assert!(!report.already);
}

pub async fn maintain(env: &TestEnv, settings: &HistorySettings) -> MaintenanceReport {
    app::maintain(&env.db.settings(), settings).await.unwrap()
}

pub fn midnight(days_from_today: i64) -> NaiveDateTime {
    let today = Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap();
    today + chrono::Duration::days(days_from_today)
}

/// A checkin with this id and cluster whose publisher timestamp is `time`.
pub fn at(id: &str, cluster: &str, time: NaiveDateTime) -> Outgoing {
    let mut message = Outgoing::new(checkin_body(cluster, id)).id(id);
    message.timestamp_ms = Some(time.and_utc().timestamp_millis());
    message
}
