//! Start-up and supervision: bootstrap → topology → one task per queue, until
//! the shutdown token is cancelled or a task fails.
//!
//! The worker does not reconnect (yet): when the broker connection fails, a
//! queue task ends with the reason, the others are stopped, and `run` returns
//! the error so that the process exits non-zero and its supervisor restarts it.

use std::{sync::Arc, time::Duration};

use lapin::{Channel, options::QueueDeclareOptions, types::FieldTable};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{self, BrokerError, DeadLetterPublisher},
    config::{DatabaseSettings, Settings, Topology, describe_amqp, describe_postgres},
    http::{self, Readiness},
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
    #[error("{0}")]
    Http(std::io::Error),
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
    let readiness = Arc::new(Readiness::default());
    let serving = shutdown.child_token();
    let server = match settings.http_addr {
        Some(addr) => Some(
            http::serve(addr, readiness.clone(), pool.clone(), serving.clone())
                .await
                .map_err(RunError::Http)?,
        ),
        None => None,
    };
    let result = async {
        bootstrap_with(&pool, &settings.database).await?;
        readiness.set_bootstrapped();
        consume(&settings, &pool, &readiness, &shutdown).await
    }
    .await;
    readiness.set_broker_connected(false);
    serving.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    tracing::info!(ok = result.is_ok(), "stopped");
    result
}

/// One broker connection's life: topology, consumers, supervision.
async fn consume(
    settings: &Settings,
    pool: &Pool,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    let topology = &settings.broker.topology;
    let connection =
        broker::connect(&settings.broker.uri, &settings.broker.connection_name).await?;
    readiness.set_broker_connected(true);
    let setup = connection
        .create_channel()
        .await
        .map_err(|source| BrokerError::Channel {
            doing: "opening the topology channel",
            source,
        })?;
    broker::declare_topology(&setup, topology).await?;
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
        readiness.consuming_started();
    }
    let sampler = tokio::spawn(sample_gauges(
        setup,
        pool.clone(),
        topology.clone(),
        stop.clone(),
    ));
    let result = supervise(tasks, &stop, settings.shutdown_timeout).await;
    stop.cancel();
    let _ = sampler.await;
    readiness.set_broker_connected(false);
    let _ = connection.close(200, "worker stopped".into()).await;
    result
}

/// Gauges no event updates: pool connections, and each queue's depth and
/// consumers (a passive declare, which changes nothing on the broker).
async fn sample_gauges(channel: Channel, pool: Pool, topology: Topology, stop: CancellationToken) {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queues = [
        topology.checkin_queue,
        topology.version_queue,
        topology.dead_letter_queue,
    ];
    loop {
        let state = pool.state();
        metrics::gauge!("wfm_pool_connections", "state" => "idle").set(state.idle_connections);
        metrics::gauge!("wfm_pool_connections", "state" => "in_use")
            .set(state.connections - state.idle_connections);
        for queue in &queues {
            if let Ok(declared) = channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                metrics::gauge!("wfm_queue_messages", "queue" => queue.clone())
                    .set(declared.message_count());
                metrics::gauge!("wfm_queue_consumers", "queue" => queue.clone())
                    .set(declared.consumer_count());
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    let _ = channel.close(200, "sampler stopped".into()).await;
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
