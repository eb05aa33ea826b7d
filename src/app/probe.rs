//! The database as readiness sees it when nothing is being written: a check on
//! a connection of its own (never one of the writers' pooled connections),
//! with a budget of its own, every few seconds that no write has succeeded.
//! The same loop publishes readiness as the `wfm_ready` gauge, for alerts.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    readiness::{DatabaseProblem, Readiness},
    store::{PgConnection, Pool},
};

/// How often the database is checked while no write succeeds.
const INTERVAL: Duration = Duration::from_secs(5);
/// Longest a check may take.
const BUDGET: Duration = Duration::from_secs(2);

/// Runs until `stop` is cancelled.
pub(super) async fn watch_database(pool: Pool, readiness: Arc<Readiness>, stop: CancellationToken) {
    let mut connection: Option<PgConnection> = None;
    let ready = metrics::gauge!("wfm_ready");
    loop {
        if !readiness.database_ok_within(INTERVAL) {
            match tokio::time::timeout(BUDGET, check(&pool, &mut connection)).await {
                Ok(Ok(())) => readiness.database_ok(),
                Ok(Err(problem)) => {
                    connection = None;
                    readiness.database_failed(problem);
                }
                Err(_) => {
                    // A black-holed network: the connection may never answer again.
                    connection = None;
                    readiness.database_failed(DatabaseProblem::NoAnswer);
                }
            }
        }
        ready.set(if readiness.snapshot().ready() {
            1.0
        } else {
            0.0
        });
        tokio::select! {
            () = stop.cancelled() => {
                ready.set(0.0);
                return;
            }
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

async fn check(pool: &Pool, connection: &mut Option<PgConnection>) -> Result<(), DatabaseProblem> {
    if connection.is_none() {
        let made = pool.dedicated_connection().await;
        *connection = Some(made.map_err(|_| DatabaseProblem::CannotConnect)?);
    }
    let client = connection.as_ref().expect("connected just above");
    client
        .simple_query("SELECT 1")
        .await
        .map(drop)
        .map_err(|_| DatabaseProblem::QueryFails)
}
