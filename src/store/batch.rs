//! One batch, one transaction — and a poison row never fails the batch.
//!
//! The happy path is a single transaction with no savepoints. Only when it fails
//! for a reason other than a transient one does the batch run again, bisected
//! under savepoints: a half that fails is split until the single offending
//! messages are found, and everything else commits in that same transaction.
//! With k bad rows in n that costs O(k log n) statements.

use std::{future::Future, ops::Range, sync::atomic::Ordering, time::Duration};

use tokio_postgres::Transaction;

use super::{
    ErrorClass, PgConnection, Pool, StoreError, classify,
    error::{data_rejection, describe},
};
use crate::message::Rejection;

/// What became of a batch that committed.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Rows newly stored (duplicates of earlier messages are not counted).
    pub stored: u64,
    /// Messages PostgreSQL refused for their data, by index into the batch.
    pub refused: Vec<(usize, Rejection)>,
    /// Messages that failed alone for a reason that is neither transient nor
    /// data (by index), with the error; retried until their delivery limit.
    pub failed: Vec<(usize, String)>,
}

/// A batch of rows that can be written in parts: `write` stores the rows in
/// `range` with set-based statements and returns how many were newly stored.
pub(crate) trait Rows: Sync {
    fn len(&self) -> usize;

    fn write<'a>(
        &'a self,
        tx: &'a Transaction<'_>,
        range: Range<usize>,
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a;
}

impl BatchOutcome {
    /// Maps indices in write order back to indices in the caller's batch.
    pub(crate) fn reindexed(mut self, order: &[usize]) -> Self {
        for (index, _) in &mut self.refused {
            *index = order[*index];
        }
        for (index, _) in &mut self.failed {
            *index = order[*index];
        }
        self
    }
}

/// Writes `rows`, isolating the ones that cannot be written. Transient errors
/// abort the whole batch (nothing committed) for a retry.
pub(crate) async fn write_isolated(
    pool: &Pool,
    rows: &impl Rows,
) -> Result<BatchOutcome, StoreError> {
    let mut conn = pool.get().await?;
    let breaker = conn.breaker();
    match tokio::time::timeout(BATCH_TIMEOUT, write_in_transactions(&mut conn, rows)).await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(error)) => {
            if error.breaks_connection() {
                conn.mark_broken();
            }
            Err(error)
        }
        Err(_) => {
            // The connection may still be mid-statement: never reuse it.
            breaker.store(true, Ordering::Relaxed);
            Err(StoreError::TimedOut(BATCH_TIMEOUT))
        }
    }
}

/// Longest a batch may take before its connection is given up as hung (a
/// black-holed network sends no reset). Far above any healthy batch (~15 ms
/// for 500 checkins), and below the broker's 30-minute delivery timeout.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

async fn write_in_transactions(
    conn: &mut PgConnection,
    rows: &impl Rows,
) -> Result<BatchOutcome, StoreError> {
    let tx = conn.transaction().await?;
    match rows.write(&tx, 0..rows.len()).await {
        Ok(stored) => {
            tx.commit().await?;
            return Ok(BatchOutcome {
                stored,
                ..BatchOutcome::default()
            });
        }
        Err(e) if classify(&e) == ErrorClass::Transient => return Err(e.into()),
        Err(e) => {
            tracing::info!(error = %describe(&e), batch = rows.len(), "batch refused by the database; isolating the offending messages");
            tx.rollback().await?;
        }
    }
    let mut tx = conn.transaction().await?;
    let outcome = bisect(&mut tx, rows).await?;
    tx.commit().await?;
    Ok(outcome)
}

async fn bisect(tx: &mut Transaction<'_>, rows: &impl Rows) -> Result<BatchOutcome, StoreError> {
    let mut outcome = BatchOutcome::default();
    // Halves of a failed range are pushed second-first, so ranges run in order.
    let mut pending: Vec<Range<usize>> = Vec::new();
    pending.push(0..rows.len());
    while let Some(range) = pending.pop() {
        let savepoint = tx.savepoint("wfm_isolate").await?;
        let result = rows.write(&savepoint, range.clone()).await;
        match result {
            Ok(stored) => {
                savepoint.commit().await?;
                outcome.stored += stored;
            }
            Err(e) => {
                let class = classify(&e);
                savepoint.rollback().await?;
                match class {
                    ErrorClass::Transient => return Err(e.into()),
                    _ if range.len() > 1 => {
                        let mid = range.start + range.len() / 2;
                        pending.push(mid..range.end);
                        pending.push(range.start..mid);
                    }
                    ErrorClass::Data => outcome.refused.push((range.start, data_rejection(&e))),
                    ErrorClass::Other => outcome.failed.push((range.start, describe(&e))),
                }
            }
        }
    }
    Ok(outcome)
}
