//! One batch, one transaction — and neither a poison row nor a sick database
//! is mistaken for the other.
//!
//! The happy path is a single transaction with no savepoints, sent in one
//! round trip. When the whole batch fails for a reason that is not transient,
//! one neutral row is written the same way in a transaction that is rolled
//! back (the probe):
//! - the probe fails too: the fault is the database's ([`StoreError::Systemic`]);
//!   no message is blamed, the pipeline hands the batch back and pauses;
//! - the probe succeeds: some rows are at fault. The batch runs again, bisected
//!   under savepoints until the offending rows are found; everything else
//!   commits in that same transaction. With k bad rows in n that costs
//!   O(k log n) statements.
//!
//! Two poison messages therefore never look systemic, and a revoked grant never
//! dead-letters a stream.

use std::{future::Future, ops::Range, sync::atomic::Ordering, time::Duration};

use tokio_postgres::{Client, Transaction};

use super::{
    ErrorClass, PgConnection, StoreError, classify,
    error::{data_rejection, describe},
};
use crate::message::Rejection;

/// What became of a batch that committed.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Rows newly stored (duplicates of earlier messages are not counted).
    pub stored: u64,
    /// New checkins older than the retention horizon: counted in their
    /// cluster's summary, not kept in history.
    pub beyond_retention: u64,
    /// Messages that could not be written, by batch index.
    pub failed: Vec<(usize, RowFailure)>,
    /// (loser, winner) batch indices: events replaced inside the batch by a
    /// newer one for the same key; each shares its winner's fate.
    pub superseded: Vec<(usize, usize)>,
}

/// Why one row could not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowFailure {
    /// PostgreSQL refused its data (SQLSTATE class 22, 23 or 54): never storable.
    Refused(Rejection),
    /// Failed alone for another reason (the error); may succeed later.
    Failed(String),
}

/// How many rows a write stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub stored: u64,
    pub beyond_retention: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.stored += other.stored;
        self.beyond_retention += other.beyond_retention;
    }
}

/// A batch of rows that can be written in parts, in write order.
pub(crate) trait Rows: Sync {
    fn len(&self) -> usize;

    /// Runs once at the start of each transaction that writes rows (a lock
    /// the writes need, say), on a connection inside that transaction. It
    /// must send its statement when first polled (a prepared statement, not
    /// SQL text that needs a round trip to prepare): it is pipelined ahead of
    /// the write, and must run first.
    fn begin<'a>(
        &'a self,
        _client: &'a Client,
    ) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a {
        std::future::ready(Ok(()))
    }

    /// Batch index of the row at write position `at`.
    fn index(&self, at: usize) -> usize;

    /// Stores the rows at write positions `range` with set-based statements
    /// (sent when first polled, as `begin`'s); returns how many were newly
    /// stored.
    fn write<'a>(
        &'a self,
        client: &'a Client,
        range: Range<usize>,
    ) -> impl Future<Output = Result<Tally, tokio_postgres::Error>> + Send + 'a;

    /// Writes one neutral row exactly as `write` would (rolled back afterwards).
    fn probe<'a>(
        &'a self,
        client: &'a Client,
    ) -> impl Future<Output = Result<Tally, tokio_postgres::Error>> + Send + 'a;
}

/// Writes `rows` on `conn`, isolating the ones that cannot be written.
/// Transient errors and systemic failures abort the whole batch (nothing
/// committed). A connection that fails in a way that makes it unusable, or
/// whose batch is cut off (a time-out, or the caller dropping this future), is
/// marked broken: the pool never hands it out again mid-transaction.
pub(crate) async fn write_batch(
    conn: &mut PgConnection,
    rows: &impl Rows,
) -> Result<WriteOutcome, StoreError> {
    let breaker = conn.breaker();
    let cut_off = BreakOnDrop(breaker.clone());
    let written = tokio::time::timeout(BATCH_TIMEOUT, write_in_transactions(conn, rows)).await;
    std::mem::forget(cut_off);
    match written {
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

/// Marks a connection broken unless forgotten: dropped only when the write
/// future is dropped mid-batch.
struct BreakOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for BreakOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Longest a batch may take before its connection is given up as hung (a
/// black-holed network sends no reset). Far above any healthy batch (~15 ms
/// for 500 checkins), and below the broker's 30-minute delivery timeout.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

async fn write_in_transactions(
    conn: &mut PgConnection,
    rows: &impl Rows,
) -> Result<WriteOutcome, StoreError> {
    match write_pipelined(conn, rows).await {
        Ok(tally) => {
            return Ok(WriteOutcome {
                stored: tally.stored,
                beyond_retention: tally.beyond_retention,
                ..WriteOutcome::default()
            });
        }
        Err(Failed::Commit(e)) => return Err(e.into()),
        Err(Failed::Statement(e)) if classify(&e) == ErrorClass::Transient => {
            return Err(e.into());
        }
        Err(Failed::Statement(e)) => {
            tracing::info!(error = %describe(&e), batch = rows.len(), "batch refused by the database; probing whether the database or the batch is at fault");
        }
    }
    probe(conn, rows).await?;
    let mut tx = conn.transaction().await?;
    rows.begin(tx.client()).await?;
    let outcome = bisect(&mut tx, rows).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Why the one-round-trip transaction did not commit.
enum Failed {
    /// A statement before COMMIT failed: nothing was committed, and the
    /// connection is out of the transaction.
    Statement(tokio_postgres::Error),
    /// Every statement succeeded and COMMIT did not (or its answer was lost
    /// with the connection).
    Commit(tokio_postgres::Error),
}

/// The happy path in one round trip: BEGIN, the rows' first statement, the
/// write and COMMIT go out together (a transaction opened and committed one
/// statement at a time waits for the database three times). A COMMIT after a
/// failed statement ends the transaction as a ROLLBACK, so nothing commits
/// unless every statement before it succeeded; the first failure in sending
/// order is the cause (the later ones only say the transaction was aborted).
async fn write_pipelined(conn: &PgConnection, rows: &impl Rows) -> Result<Tally, Failed> {
    let client: &Client = conn;
    // `biased`: polled first in this order, so sent in this order.
    let (began, locked, written, committed) = tokio::join!(
        biased;
        client.batch_execute("BEGIN"),
        rows.begin(client),
        rows.write(client, 0..rows.len()),
        client.batch_execute("COMMIT"),
    );
    let tally = began.and(locked).and(written).map_err(Failed::Statement)?;
    committed.map_err(Failed::Commit)?;
    Ok(tally)
}

/// Ok when a neutral row can be written: the batch, not the database, is at fault.
async fn probe(conn: &mut PgConnection, rows: &impl Rows) -> Result<(), StoreError> {
    let tx = conn.transaction().await?;
    let probed = async {
        rows.begin(tx.client()).await?;
        rows.probe(tx.client()).await
    }
    .await;
    tx.rollback().await?;
    match probed {
        Ok(_) => Ok(()),
        Err(e) if classify(&e) == ErrorClass::Transient => Err(e.into()),
        Err(e) => Err(StoreError::Systemic {
            sqlstate: e.code().map_or_else(String::new, |c| c.code().to_owned()),
            message: describe(&e),
        }),
    }
}

async fn bisect(tx: &mut Transaction<'_>, rows: &impl Rows) -> Result<WriteOutcome, StoreError> {
    let mut outcome = WriteOutcome::default();
    // Halves of a failed range are pushed second-first, so ranges run in order.
    let mut pending: Vec<Range<usize>> = Vec::with_capacity(16);
    pending.push(0..rows.len());
    while let Some(range) = pending.pop() {
        let savepoint = tx.savepoint("wfm_isolate").await?;
        let result = rows.write(savepoint.client(), range.clone()).await;
        let error = match result {
            Ok(tally) => {
                savepoint.commit().await?;
                outcome.stored += tally.stored;
                outcome.beyond_retention += tally.beyond_retention;
                continue;
            }
            Err(error) => error,
        };
        savepoint.rollback().await?;
        let failure = match classify(&error) {
            ErrorClass::Transient => return Err(error.into()),
            _ if range.len() > 1 => {
                let mid = range.start + range.len() / 2;
                pending.push(mid..range.end);
                pending.push(range.start..mid);
                continue;
            }
            ErrorClass::Data => RowFailure::Refused(data_rejection(&error)),
            ErrorClass::Other => RowFailure::Failed(describe(&error)),
        };
        outcome.failed.push((rows.index(range.start), failure));
    }
    Ok(outcome)
}
