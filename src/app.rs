//! Start-up and supervision: bootstrap → topology → one task per queue, until
//! the shutdown token is cancelled or a task fails.
//!
//! The worker does not reconnect (yet): when the broker connection fails, a
//! queue task ends with the reason, the others are stopped, and `run` returns
//! the error so that the process exits non-zero and its supervisor restarts it.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{self, BrokerError, DeadLetterPublisher},
    config::{DatabaseSettings, Settings, describe_amqp, describe_postgres},
    pipeline::{PipelineError, QueueContext, QueueKind, run_queue},
    store::{self, BootstrapError, Pool},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot connect to the database at {target}: {source}")]
    Database {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("a queue task panicked: {0}")]
    Panicked(String),
    #[error("shutdown did not finish within {0:?}; unacknowledged messages will be redelivered")]
    ShutdownTimedOut(Duration),
}

/// Applies the schema files (the `bootstrap` subcommand, and the first step of `run`).
pub async fn bootstrap(settings: &DatabaseSettings) -> Result<usize, RunError> {
    bootstrap_with(&store::connect_pool(settings), settings).await
}

async fn bootstrap_with(pool: &Pool, settings: &DatabaseSettings) -> Result<usize, RunError> {
    // A connection of its own: the advisory lock is held by the session, and a
    // pooled connection could go back to the pool still holding it.
    let mut client = pool
        .dedicated_connection()
        .await
        .map_err(|source| RunError::Database {
            target: describe_postgres(&settings.config),
            source,
        })?;
    let applied = store::apply_migrations(&mut client).await?;
    tracing::info!(applied, "schema is up to date");
    Ok(applied)
}

/// Runs the worker until `shutdown` is cancelled (Ok) or something fails (Err).
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), RunError> {
    tracing::info!(
        database = %describe_postgres(&settings.database.config),
        broker = %describe_amqp(&settings.broker.uri),
        "starting"
    );
    let pool = store::connect_pool(&settings.database);
    bootstrap_with(&pool, &settings.database).await?;

    let topology = &settings.broker.topology;
    let connection =
        broker::connect(&settings.broker.uri, &settings.broker.connection_name).await?;
    let setup = connection
        .create_channel()
        .await
        .map_err(|source| BrokerError::Channel {
            doing: "opening the topology channel",
            source,
        })?;
    broker::declare_topology(&setup, topology).await?;
    let _ = setup.close(200, "topology declared".into()).await;
    let dead_letters =
        DeadLetterPublisher::open(&connection, &topology.dead_letter_exchange).await?;

    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    for (kind, queue) in [
        (QueueKind::Checkins, &topology.checkin_queue),
        (QueueKind::Versions, &topology.version_queue),
    ] {
        let (channel, consumer) =
            broker::open_consumer(&connection, queue, settings.pipeline.prefetch).await?;
        let context = QueueContext {
            kind,
            queue: queue.clone(),
            pool: pool.clone(),
            dead_letters: dead_letters.clone(),
            settings: settings.pipeline.clone(),
        };
        tasks.spawn(run_queue(context, channel, consumer, stop.clone()));
    }
    let result = supervise(tasks, &stop, settings.shutdown_timeout).await;
    let _ = connection.close(200, "worker stopped".into()).await;
    tracing::info!(ok = result.is_ok(), "stopped");
    result
}

/// Waits for shutdown or for the first task to end (a task only ends early on a
/// failure), then stops the rest and gives them `timeout` to finish.
async fn supervise(
    mut tasks: JoinSet<Result<(), PipelineError>>,
    stop: &CancellationToken,
    timeout: Duration,
) -> Result<(), RunError> {
    let mut first_error = None;
    tokio::select! {
        () = stop.cancelled() => {}
        Some(joined) = tasks.join_next() => {
            first_error = failure(joined);
            stop.cancel();
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
        tasks.abort_all();
        return Err(RunError::ShutdownTimedOut(timeout));
    }
    first_error.map_or(Ok(()), Err)
}

fn failure(joined: Result<Result<(), PipelineError>, tokio::task::JoinError>) -> Option<RunError> {
    match joined {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.into()),
        Err(error) => Some(RunError::Panicked(error.to_string())),
    }
}
