//! Start-up and recovery: bootstrap → topology → one task per queue, until the
//! shutdown token is cancelled.
//!
//! A lost broker connection (a restart, an operator closing it, a cut network)
//! ends the connection's queue tasks; `run` then reconnects with capped
//! exponential backoff and jitter, declares the topology again and resumes.
//! Deliveries in flight when the connection died are redelivered by the broker
//! and deduplicated by `message_id`. Only a configuration error (a topology
//! conflict, refused credentials) or an exhausted `WFM_RECONNECT_MAX` ends `run`
//! with an error.

mod gauges;
mod probe;
mod supervise;

use std::{sync::Arc, time::Duration};

use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{self, BrokerError, DeadLetters},
    config::{DatabaseSettings, Settings, Topology, describe_amqp, describe_postgres},
    http,
    pipeline::{PipelineError, QueueContext, QueueKind, QueueMetrics, run_queue},
    readiness::Readiness,
    store::{self, BootstrapError, ErrorClass, Pool},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot connect to the database at {target}: {source}")]
    Database {
        target: String,
        #[source]
        source: store::ConnectError,
    },
    #[error(transparent)]
    DatabaseSetup(#[from] store::SetupError),
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
    #[error("gave up after {attempts} attempts (WFM_RECONNECT_MAX): {last}")]
    RetriesExhausted { attempts: u32, last: Box<RunError> },
}

impl RunError {
    /// Whether trying again later can succeed (an outage), as opposed to a
    /// configuration error that will fail the same way every time.
    fn is_transient(&self) -> bool {
        match self {
            Self::Database {
                source: store::ConnectError::Postgres(e),
                ..
            } => store::classify(e) == ErrorClass::Transient,
            Self::Database {
                source: store::ConnectError::Token(_),
                ..
            } => true,
            Self::Bootstrap(BootstrapError::Database(e)) => {
                store::classify(e) == ErrorClass::Transient
            }
            Self::Broker(e) | Self::Pipeline(PipelineError::Broker(e)) => e.is_transient(),
            Self::Pipeline(PipelineError::ConsumerCancelled(_) | PipelineError::Abandoned(_)) => {
                true
            }
            Self::ShutdownTimedOut(_) => true,
            _ => false,
        }
    }
}

/// Applies the schema files (the `bootstrap` subcommand, and the first step of `run`).
pub async fn bootstrap(settings: &DatabaseSettings) -> Result<usize, RunError> {
    bootstrap_with(&store::connect_pool(settings).await?, settings).await
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

/// Runs the worker until `shutdown` is cancelled (Ok) or something fails for
/// good (Err).
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), RunError> {
    tracing::info!(
        database = %describe_postgres(&settings.database.config),
        broker = %describe_amqp(&settings.broker.uri),
        "starting"
    );
    let pool = store::connect_pool(&settings.database).await?;
    let readiness = Arc::new(Readiness::default());
    // The recorder first: handles registered before it exists record nothing.
    http::metrics_handle();
    let queues = Queues::register(&settings.broker.topology);
    gauges::register(&settings.broker.topology);
    let serving = shutdown.child_token();
    let server = match settings.http_addr {
        Some(addr) => Some(
            http::serve(addr, readiness.clone(), serving.clone())
                .await
                .map_err(RunError::Http)?,
        ),
        None => None,
    };
    let probing = tokio::spawn(probe::watch_database(
        pool.clone(),
        readiness.clone(),
        serving.clone(),
    ));
    let result = async {
        let mut retry = Retry::new(&settings, &shutdown, "bootstrap");
        while let Err(error) = bootstrap_with(&pool, &settings.database).await {
            if !retry.after(error).await? {
                return Ok(());
            }
        }
        readiness.set_bootstrapped();
        readiness.database_ok();
        let mut retry = Retry::new(&settings, &shutdown, "consume");
        loop {
            let worker = Worker {
                settings: &settings,
                pool: &pool,
                readiness: &readiness,
                queues: &queues,
                shutdown: &shutdown,
            };
            let Err(error) = worker.consume(&mut retry).await else {
                return Ok(());
            };
            if !retry.after(error).await? {
                return Ok(());
            }
        }
    }
    .await;
    readiness.set_broker_connected(false);
    serving.cancel();
    let _ = probing.await;
    if let Some(server) = server {
        let _ = server.await;
    }
    tracing::info!(ok = result.is_ok(), "stopped");
    result
}

/// Attempts at one step (bootstrap, or a broker connection's life), with capped
/// exponential backoff and full jitter between them.
struct Retry<'a> {
    settings: &'a Settings,
    shutdown: &'a CancellationToken,
    step: &'static str,
    attempts: u32,
}

impl<'a> Retry<'a> {
    fn new(settings: &'a Settings, shutdown: &'a CancellationToken, step: &'static str) -> Self {
        Retry {
            settings,
            shutdown,
            step,
            attempts: 0,
        }
    }

    /// The step made progress (connected and consuming): the budget starts over.
    fn reset(&mut self) {
        self.attempts = 0;
    }

    /// After a failure: the error back when it is final (not transient, the
    /// budget is spent, or shutdown was requested while failing), else waits
    /// and answers whether to try again (false: shutdown came during the wait).
    async fn after(&mut self, error: RunError) -> Result<bool, RunError> {
        if self.shutdown.is_cancelled() || !error.is_transient() {
            return Err(error);
        }
        self.attempts += 1;
        let max = self.settings.reconnect_max;
        if max != 0 && self.attempts > max {
            return Err(RunError::RetriesExhausted {
                attempts: self.attempts,
                last: Box::new(error),
            });
        }
        let delay = backoff(self.attempts);
        metrics::counter!("wfm_reconnects_total", "step" => self.step).increment(1);
        tracing::warn!(step = self.step, attempt = self.attempts, delay_ms = delay.as_millis() as u64, error = %error, "failed; trying again");
        tokio::select! {
            () = self.shutdown.cancelled() => Ok(false),
            () = tokio::time::sleep(delay) => Ok(true),
        }
    }
}

/// 0.5 s doubling to 30 s, each delay drawn between half and all of it so that
/// replicas that lost the broker together do not reconnect together.
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(500).saturating_mul(1 << attempt.saturating_sub(1).min(6));
    let ceiling = ceiling.min(Duration::from_secs(30));
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// The two work queues, with their metrics (registered once, at zero).
struct Queues([(QueueKind, String, Arc<QueueMetrics>); 2]);

impl Queues {
    fn register(topology: &Topology) -> Queues {
        let queue =
            |kind, name: &String| (kind, name.clone(), Arc::new(QueueMetrics::register(name)));
        Queues([
            queue(QueueKind::Checkins, &topology.checkin_queue),
            queue(QueueKind::Versions, &topology.version_queue),
        ])
    }
}

/// What one broker connection's life needs.
struct Worker<'a> {
    settings: &'a Settings,
    pool: &'a Pool,
    readiness: &'a Arc<Readiness>,
    queues: &'a Queues,
    shutdown: &'a CancellationToken,
}

impl Worker<'_> {
    /// One broker connection's life (and its dead-letter connection's):
    /// topology, consumers, supervision. Returns Ok only on shutdown.
    async fn consume(&self, retry: &mut Retry<'_>) -> Result<(), RunError> {
        let broker = &self.settings.broker;
        let connection = broker::connect(broker, &broker.connection_name).await?;
        let dead_letter_name = format!("{} dead letters", broker.connection_name);
        let dead_letter_connection = match broker::connect(broker, &dead_letter_name).await {
            Ok(connection) => connection,
            Err(error) => {
                let _ = connection.close(200, "worker stopped".into()).await;
                return Err(error.into());
            }
        };
        self.readiness.set_broker_connected(true);
        let result = self
            .consume_on(&connection, &dead_letter_connection, retry)
            .await;
        self.readiness.set_broker_connected(false);
        let _ = connection.close(200, "worker stopped".into()).await;
        let _ = dead_letter_connection
            .close(200, "worker stopped".into())
            .await;
        result
    }

    async fn consume_on(
        &self,
        connection: &Connection,
        dead_letter_connection: &Connection,
        retry: &mut Retry<'_>,
    ) -> Result<(), RunError> {
        let topology = &self.settings.broker.topology;
        broker::declare_topology(connection, topology).await?;
        let dead_letters =
            DeadLetters::open(dead_letter_connection, &topology.dead_letter_exchange).await?;
        let stop = self.shutdown.child_token();
        let abandon = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for (kind, queue, metrics) in &self.queues.0 {
            let (channel, consumer) =
                broker::open_consumer(connection, queue, self.settings.pipeline.prefetch).await?;
            let context = QueueContext {
                kind: *kind,
                queue: queue.clone(),
                pool: self.pool.clone(),
                dead_letters: dead_letters.clone(),
                settings: self.settings.pipeline.clone(),
                readiness: self.readiness.clone(),
                metrics: metrics.clone(),
                abandon: abandon.clone(),
                shutdown: stop.clone(),
            };
            tasks.spawn(run_queue(context, channel, consumer));
        }
        tasks.spawn(watch_dead_letters(
            dead_letter_connection,
            self.readiness.clone(),
            stop.clone(),
        ));
        retry.reset();
        tracing::info!(broker = %describe_amqp(&self.settings.broker.uri), "connected and consuming");
        let setup = connection
            .create_channel()
            .await
            .map_err(|source| BrokerError::Channel {
                doing: "opening the sampling channel",
                source,
            })?;
        let sampler = tokio::spawn(gauges::sample(
            setup,
            self.pool.clone(),
            topology.clone(),
            stop.clone(),
        ));
        let result =
            supervise::supervise(tasks, &stop, &abandon, self.settings.shutdown_timeout).await;
        stop.cancel();
        let _ = sampler.await;
        result
    }
}

/// Follows the dead-letter connection: alarms (blocked / unblocked) into
/// readiness and `wfm_broker_blocked`; its failure ends this connection's life
/// (every copy would fail), so the worker reconnects both.
fn watch_dead_letters(
    connection: &Connection,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> impl Future<Output = Result<(), PipelineError>> + Send + 'static {
    let blocked = metrics::gauge!("wfm_broker_blocked");
    let gauge = blocked.clone();
    let watching = broker::watch_blocking(connection, move |reason| {
        if let Some(reason) = reason {
            tracing::warn!(
                reason,
                "the broker blocks publishing (resource alarm); dead-letter copies wait, consumption goes on"
            );
        } else {
            tracing::info!("the broker publishes again");
        }
        gauge.set(if reason.is_some() { 1.0 } else { 0.0 });
        readiness.set_blocked(reason);
    });
    async move {
        let result = tokio::select! {
            () = stop.cancelled() => Ok(()),
            error = watching => Err(PipelineError::Broker(error)),
        };
        blocked.set(0.0);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_a_30_second_cap_with_jitter() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
            let later = backoff(4);
            assert!(later >= Duration::from_secs(2) && later <= Duration::from_secs(4));
            assert!(
                backoff(30) <= Duration::from_secs(30) && backoff(30) >= Duration::from_secs(15)
            );
        }
    }
}
