//! Supervision of one connection's tasks: a task per queue, and the
//! dead-letter connection's watch.

use std::{sync::Arc, time::Duration};

use lapin::Connection;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::RunError;
use crate::{broker, pipeline::PipelineError, readiness::Readiness};

/// Waits for shutdown or for the first task to end (a task only ends early on a
/// failure), then stops the rest and gives them `timeout` to finish their
/// batches. When a task failed, or time runs out, batches still retrying are
/// abandoned: their deliveries cannot be acked any more and will be redelivered.
/// After a failure the rest get [`AFTER_FAILURE`] only: nothing they finish can
/// be acked on a failed connection, and waiting would only delay the reconnect.
pub(super) async fn supervise(
    mut tasks: JoinSet<Result<(), PipelineError>>,
    stop: &CancellationToken,
    abandon: &CancellationToken,
    timeout: Duration,
) -> Result<(), RunError> {
    let mut first_error = None;
    let mut timeout = timeout;
    tokio::select! {
        // Shutdown first: the dead-letter watch ends as soon as `stop` is
        // cancelled, and taking that for a failure would abandon the copies
        // still in flight (their channel closed under them, each logged as an
        // error, at one clean shutdown in many).
        biased;
        () = stop.cancelled() => {}
        Some(joined) = tasks.join_next() => {
            first_error = failure(joined);
            stop.cancel();
            abandon.cancel();
            timeout = timeout.min(AFTER_FAILURE);
        }
    }
    let drained = tokio::time::timeout(timeout, async {
        while let Some(joined) = tasks.join_next().await {
            let error = failure(joined);
            first_error = first_error.take().or(error);
        }
    })
    .await;
    if drained.is_err() {
        abandon.cancel();
        tasks.abort_all();
        return Err(first_error.unwrap_or(RunError::ShutdownTimedOut(timeout)));
    }
    first_error.map_or(Ok(()), Err)
}

/// How long the other tasks of a failed connection get to wind up.
const AFTER_FAILURE: Duration = Duration::from_secs(3);

fn failure(joined: Result<Result<(), PipelineError>, JoinError>) -> Option<RunError> {
    match joined {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.into()),
        Err(error) => Some(RunError::Panicked(error.to_string())),
    }
}

/// Follows the dead-letter connection: alarms (blocked / unblocked) into
/// readiness and `wfm_broker_blocked`; its failure ends this connection's life
/// (every copy would fail), so the worker reconnects both.
pub(super) fn watch_dead_letters(
    connection: &Connection,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> impl Future<Output = Result<(), PipelineError>> + Send + 'static {
    // This connection's share of the gauge (1 while blocked), added and taken
    // away rather than set: a process may hold several workers' connections
    // (the tests do), and one ending must not clear another's block.
    let blocked = Arc::new(Block::default());
    let watch = blocked.clone();
    let watching = broker::watch_blocking(connection, move |reason| {
        if let Some(reason) = reason {
            tracing::warn!(
                reason,
                "the broker blocks publishing (resource alarm); dead-letter copies wait, consumption goes on"
            );
        } else {
            tracing::info!("the broker publishes again");
        }
        watch.set(reason.is_some());
        readiness.set_blocked(reason);
    });
    async move {
        let result = tokio::select! {
            () = stop.cancelled() => Ok(()),
            error = watching => Err(PipelineError::Broker(error)),
        };
        blocked.set(false);
        result
    }
}

/// One connection's contribution to `wfm_broker_blocked`.
#[derive(Default)]
struct Block(std::sync::atomic::AtomicBool);

impl Block {
    fn set(&self, blocked: bool) {
        let was = self.0.swap(blocked, std::sync::atomic::Ordering::Relaxed);
        let gauge = metrics::gauge!("wfm_broker_blocked");
        match (was, blocked) {
            (false, true) => gauge.increment(1.0),
            (true, false) => gauge.decrement(1.0),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that ends because of the shutdown is no failure: the copies in
    /// flight are waited for, not abandoned. (Without `biased`, `select!`
    /// picked the ended task half of the time.)
    #[tokio::test]
    async fn a_task_ending_on_shutdown_abandons_nothing() {
        for _ in 0..32 {
            let (stop, abandon) = (CancellationToken::new(), CancellationToken::new());
            let mut tasks = JoinSet::new();
            let (ended, has_ended) = tokio::sync::oneshot::channel();
            let watching = stop.clone();
            tasks.spawn(async move {
                watching.cancelled().await;
                let _ = ended.send(());
                Ok(())
            });
            stop.cancel();
            // On this current-thread runtime the task has finished once its
            // signal arrives: both branches are ready.
            has_ended.await.unwrap();
            supervise(tasks, &stop, &abandon, Duration::from_secs(1))
                .await
                .unwrap();
            assert!(
                !abandon.is_cancelled(),
                "a clean shutdown abandoned its copies"
            );
        }
    }
}
