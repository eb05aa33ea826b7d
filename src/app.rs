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
pub mod maintenance;
mod probe;
mod retry;
mod supervise;

use retry::Retry;

use std::{sync::Arc, time::Duration};

use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{self, BrokerError, DeadLetters},
    config::{
        DatabaseSettings, HistorySettings, Settings, Topology, describe_nodes, describe_postgres,
    },
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
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Conversion(#[from] store::history::ConversionError),
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
            Self::DatabaseSetup(store::SetupError::Rds(e)) => e.is_transient(),
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

/// One maintenance run of checkin history, after the bootstrap (`maintain`).
pub async fn maintain(
    settings: &DatabaseSettings,
    history: &HistorySettings,
) -> Result<store::history::MaintenanceReport, RunError> {
    let pool = store::connect_pool(settings).await?;
    bootstrap_with(&pool, settings).await?;
    Ok(maintenance::run_once(&pool, history).await?)
}

/// Converts `clusters_checkins` to a partitioned table, after the bootstrap
/// (`migrate partition-checkins`).
pub async fn partition_checkins(
    settings: &DatabaseSettings,
    history: &HistorySettings,
) -> Result<store::history::ConversionReport, RunError> {
    let pool = store::connect_pool(settings).await?;
    bootstrap_with(&pool, settings).await?;
    let mut connection = pool
        .dedicated_connection()
        .await
        .map_err(store::StoreError::from)?;
    Ok(store::history::convert_to_partitioned(&mut connection, history.period).await?)
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
        broker = %describe_nodes(&settings.broker.nodes),
        "starting"
    );
    let readiness = Arc::new(Readiness::default());
    // The recorder first: handles registered before it exists record nothing.
    http::metrics_handle();
    let queues = Queues::register(&settings.broker.topology);
    gauges::register(&settings.broker.topology);
    maintenance::register_metrics();
    let serving = shutdown.child_token();
    let server = match settings.http_addr {
        Some(addr) => Some(
            http::serve(addr, readiness.clone(), serving.clone())
                .await
                .map_err(RunError::Http)?,
        ),
        None => None,
    };
    let worker = Worker {
        settings: &settings,
        readiness: &readiness,
        queues: &queues,
        shutdown: &shutdown,
    };
    let result = worker.start_and_consume(&serving).await;
    readiness.set_broker_connected(false);
    serving.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    tracing::info!(ok = result.is_ok(), "stopped");
    result
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

/// What the worker's life needs.
struct Worker<'a> {
    settings: &'a Settings,
    readiness: &'a Arc<Readiness>,
    queues: &'a Queues,
    shutdown: &'a CancellationToken,
}

impl Worker<'_> {
    /// Finds the database (RDS discovery waits out an instance that is not
    /// serving yet), bootstraps it, then consumes, reconnecting, until
    /// shutdown. Every step is retried while its failure is transient.
    async fn start_and_consume(&self, serving: &CancellationToken) -> Result<(), RunError> {
        let mut retry = Retry::new(self.settings, self.shutdown, "bootstrap");
        let pool = loop {
            match store::connect_pool(&self.settings.database).await {
                Ok(pool) => break pool,
                Err(error) => {
                    if !retry.after(error.into()).await? {
                        return Ok(());
                    }
                }
            }
        };
        let probing = tokio::spawn(probe::watch_database(
            pool.clone(),
            self.readiness.clone(),
            serving.clone(),
        ));
        let result = self.bootstrap_and_consume(&pool, retry).await;
        serving.cancel();
        let _ = probing.await;
        result
    }

    async fn bootstrap_and_consume(
        &self,
        pool: &Pool,
        mut retry: Retry<'_>,
    ) -> Result<(), RunError> {
        while let Err(error) = bootstrap_with(pool, &self.settings.database).await {
            if !retry.after(error).await? {
                return Ok(());
            }
        }
        self.readiness.set_bootstrapped();
        self.readiness.database_ok();
        // The current partition must exist before anything is consumed.
        if let Err(error) = maintenance::run_once(pool, &self.settings.history).await {
            tracing::warn!(error = %error, "checkin history maintenance failed; trying again later");
        }
        let upkeep = tokio::spawn(maintenance::keep(
            pool.clone(),
            self.settings.history,
            self.shutdown.child_token(),
        ));
        let result = self.consume_retrying(pool).await;
        upkeep.abort();
        result
    }

    async fn consume_retrying(&self, pool: &Pool) -> Result<(), RunError> {
        let mut retry = Retry::new(self.settings, self.shutdown, "consume");
        let mut frames = broker::ConsumingFrames::Default;
        loop {
            let Err(error) = self.consume(pool, &mut retry, &mut frames).await else {
                return Ok(());
            };
            if !retry.after(error).await? {
                return Ok(());
            }
        }
    }

    /// One broker connection's life (and its dead-letter connection's):
    /// topology, consumers, supervision. Returns Ok only on shutdown. A
    /// connection that failed on a frame larger than it asked for is followed
    /// by one that asks for the broker's size.
    async fn consume(
        &self,
        pool: &Pool,
        retry: &mut Retry<'_>,
        frames: &mut broker::ConsumingFrames,
    ) -> Result<(), RunError> {
        let broker = &self.settings.broker;
        let pace = broker::Pace::default();
        let Some(connection) = self
            .unless_shutdown(broker::connect_consuming(
                broker,
                &broker.connection_name,
                *frames,
                pace.clone(),
            ))
            .await?
        else {
            return Ok(());
        };
        let mut refusals = broker::FrameRefusals::follow(&connection);
        let dead_letter_name = format!("{} dead letters", broker.connection_name);
        let dead_letter_connection = match self
            .unless_shutdown(broker::connect_for_copies(broker, &dead_letter_name))
            .await
        {
            Ok(Some(connection)) => connection,
            stopped_or_failed => {
                broker::close(&connection).await;
                return stopped_or_failed.map(|_| ());
            }
        };
        self.readiness.set_broker_connected(true);
        let result = self
            .consume_on(pool, &connection, &dead_letter_connection, &pace, retry)
            .await;
        self.readiness.set_broker_connected(false);
        if result.is_err() && refusals.refused() && *frames != broker::ConsumingFrames::Brokers {
            tracing::warn!(
                asked = connection.configuration().frame_max(),
                "a frame larger than the connection asked for arrived (the broker allows larger ones); reconnecting with the broker's frame size"
            );
            *frames = broker::ConsumingFrames::Brokers;
        }
        broker::close(&connection).await;
        broker::close(&dead_letter_connection).await;
        result
    }

    /// A step before any delivery is taken (connecting, declaring, opening
    /// consumers): shutdown does not wait for it. Each is a broker round trip
    /// with no time-out of its own, and a node that is starting or stopping
    /// can leave one unanswered for long; with nothing consumed yet, there is
    /// nothing to finish or hand back.
    async fn unless_shutdown<T, E: Into<RunError>>(
        &self,
        step: impl Future<Output = Result<T, E>>,
    ) -> Result<Option<T>, RunError> {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Ok(None),
            done = step => done.map(Some).map_err(Into::into),
        }
    }

    async fn consume_on(
        &self,
        pool: &Pool,
        connection: &Connection,
        dead_letter_connection: &Connection,
        pace: &broker::Pace,
        retry: &mut Retry<'_>,
    ) -> Result<(), RunError> {
        let topology = &self.settings.broker.topology;
        let prefetch = self.settings.pipeline.prefetch;
        let opened = self
            .unless_shutdown(async {
                broker::declare_topology(connection, topology).await?;
                let dead_letters =
                    DeadLetters::open(dead_letter_connection, &topology.dead_letter_exchange)
                        .await?;
                let mut consumers = Vec::with_capacity(self.queues.0.len());
                for (_, queue, _) in &self.queues.0 {
                    consumers.push(broker::open_consumer(connection, queue, prefetch).await?);
                }
                let sampling =
                    connection
                        .create_channel()
                        .await
                        .map_err(|source| BrokerError::Channel {
                            doing: "opening the sampling channel",
                            source,
                        })?;
                Ok::<_, RunError>((dead_letters, consumers, sampling))
            })
            .await?;
        let Some((dead_letters, consumers, sampling)) = opened else {
            return Ok(());
        };
        let stop = self.shutdown.child_token();
        let abandon = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for ((kind, queue, metrics), (channel, consumer)) in self.queues.0.iter().zip(consumers) {
            let context = QueueContext {
                kind: *kind,
                queue: queue.clone(),
                pool: pool.clone(),
                dead_letters: dead_letters.clone(),
                settings: self.settings.pipeline.clone(),
                readiness: self.readiness.clone(),
                metrics: metrics.clone(),
                pace: pace.clone(),
                abandon: abandon.clone(),
                shutdown: stop.clone(),
            };
            tasks.spawn(run_queue(context, channel, consumer));
        }
        tasks.spawn(supervise::watch_dead_letters(
            dead_letter_connection,
            self.readiness.clone(),
            stop.clone(),
        ));
        retry.reset();
        tracing::info!("connected and consuming");
        let sampler = tokio::spawn(gauges::sample(
            sampling.clone(),
            pool.clone(),
            topology.clone(),
            stop.clone(),
        ));
        let result =
            supervise::supervise(tasks, &stop, &abandon, self.settings.shutdown_timeout).await;
        stop.cancel();
        // Only gauges: not worth waiting for a broker that does not answer.
        sampler.abort();
        let _ = sampler.await;
        broker::close_channels(&[&sampling, dead_letters.channel()]).await;
        result
    }
}
