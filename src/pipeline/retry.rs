//! A batch's write to the store, retried as a whole while the failure is
//! transient (capped exponential backoff), until it passes, the database
//! turns out to refuse every write, shutdown comes, or the channel is lost.

use std::time::Duration;

use super::{PipelineError, QueueContext};
use crate::{
    message::{Checkin, Item, VersionEvent},
    readiness::DatabaseProblem,
    store::{self, ErrorClass, PgConnection, StoreError, WriteOutcome},
};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

pub(super) enum Written {
    Outcome(WriteOutcome),
    /// The database fails as a whole (the reason, for readiness and logs).
    Systemic(String),
    /// Shutdown came while the batch waited to retry.
    Interrupted,
}

/// The store's batched write for each kind of message.
pub(super) trait Storable: Sized {
    fn write<'a>(
        conn: &'a mut PgConnection,
        items: &'a [Item<Self>],
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send + 'a;
}

impl Storable for Checkin<'_> {
    fn write<'a>(
        conn: &'a mut PgConnection,
        items: &'a [Item<Self>],
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send + 'a {
        store::write_checkins(conn, items)
    }
}

impl Storable for VersionEvent<'_> {
    fn write<'a>(
        conn: &'a mut PgConnection,
        items: &'a [Item<Self>],
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send + 'a {
        store::write_versions(conn, items)
    }
}

/// Why an attempt ended without writing.
enum Halt {
    /// Shutdown came: the batch is handed back.
    Shutdown,
    /// The channel is lost: the batch can no longer be acked.
    Abandoned,
}

impl Halt {
    fn into_written(self, context: &QueueContext) -> Result<Written, PipelineError> {
        match self {
            Halt::Shutdown => Ok(Written::Interrupted),
            Halt::Abandoned => Err(PipelineError::Abandoned(context.queue.clone())),
        }
    }
}

/// Waits for `work` unless the channel is lost or shutdown comes first. Every
/// wait of a batch outside the write itself goes through here: in a database
/// outage those waits are long (the pool's whole `pool_wait`, the backoff), and
/// a batch that can no longer be acked would hold up the reconnect that long.
async fn unless_halted<O>(
    context: &QueueContext,
    work: impl Future<Output = O>,
) -> Result<O, Halt> {
    tokio::select! {
        biased;
        () = context.abandon.cancelled() => Err(Halt::Abandoned),
        () = context.shutdown.cancelled() => Err(Halt::Shutdown),
        out = work => Ok(out),
    }
}

/// One attempt: a connection (waiting for it gives way, see [`unless_halted`]),
/// then the write. A batch already writing is never cut.
async fn attempt<T: Storable>(
    context: &QueueContext,
    items: &[Item<T>],
) -> Result<Result<WriteOutcome, StoreError>, Halt> {
    Ok(match unless_halted(context, context.pool.get()).await? {
        Ok(mut conn) => T::write(&mut conn, items).await,
        Err(error) => Err(error.into()),
    })
}

/// Writes the items, retrying the whole batch while the failure is transient.
pub(super) async fn write<T: Storable>(
    context: &QueueContext,
    items: &[Item<T>],
) -> Result<Written, PipelineError> {
    if items.is_empty() {
        return Ok(Written::Outcome(WriteOutcome::default()));
    }
    let mut delay = BACKOFF_START;
    for attempt_number in 1u32.. {
        let error = match attempt(context, items).await {
            Err(halt) => return halt.into_written(context),
            Ok(Ok(outcome)) => {
                context.readiness.database_ok();
                return Ok(Written::Outcome(outcome));
            }
            Ok(Err(error)) => error,
        };
        if error.class() != ErrorClass::Transient || matches!(error, StoreError::Systemic { .. }) {
            tracing::error!(queue = %context.queue, error = %error, "the database refuses every write; pausing the queue");
            return Ok(Written::Systemic(systemic_reason(&error)));
        }
        tracing::warn!(queue = %context.queue, attempt = attempt_number, error = %error, "database write failed; retrying the batch");
        context
            .readiness
            .database_failed(DatabaseProblem::WritesFail);
        if let Err(halt) = unless_halted(context, tokio::time::sleep(delay)).await {
            return halt.into_written(context);
        }
        delay = (delay * 2).min(BACKOFF_CAP);
    }
    unreachable!("the retry loop only ends by returning")
}

/// For readiness: the SQLSTATE, not the server's text (which names hosts and objects).
fn systemic_reason(error: &StoreError) -> String {
    match error {
        StoreError::Systemic { sqlstate, .. } => format!("every write fails (SQLSTATE {sqlstate})"),
        StoreError::Pool(_) | StoreError::Connect(_) => "cannot connect to the database".to_owned(),
        StoreError::Query(e) => format!(
            "every write fails (SQLSTATE {})",
            e.code().map_or("unknown", |c| c.code())
        ),
        StoreError::TimedOut(_) => "database writes time out".to_owned(),
    }
}
