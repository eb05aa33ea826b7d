//! Start-up and recovery: bootstrap (and, meanwhile, the broker connection and
//! its topology) → one task per queue, until the shutdown token is cancelled.
//!
//! A lost broker connection (a restart, an operator closing it, a cut network)
//! ends the connection's queue tasks; `run` then reconnects with capped
//! exponential backoff and jitter, declares the topology again and resumes.
//! Deliveries in flight when the connection died are redelivered by the broker
//! and deduplicated by `message_id`. Only a configuration error (a topology
//! conflict, refused credentials) or an exhausted `WFM_RECONNECT_MAX` ends `run`
//! with an error.

mod consume;
mod gauges;
pub mod maintenance;
mod probe;
mod retry;
mod supervise;

use retry::Retry;

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{self, BrokerError},
    config::{
        DatabaseSettings, HistorySettings, Settings, Topology, describe_nodes, describe_postgres,
    },
    http,
    pipeline::{PipelineError, QueueKind, QueueMetrics},
    readiness::Readiness,
    store::{self, BootstrapError, ErrorClass, PgConnection, Pool},
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
    let pool = store::connect_pool(settings).await?;
    Ok(bootstrap_with(&pool, settings).await?.1)
}

/// One maintenance run of checkin history, after the bootstrap (`maintain`).
pub async fn maintain(
    settings: &DatabaseSettings,
    history: &HistorySettings,
) -> Result<store::history::MaintenanceReport, RunError> {
    let pool = store::connect_pool(settings).await?;
    let (mut connection, _) = bootstrap_with(&pool, settings).await?;
    Ok(maintenance::run_on(&mut connection, history).await?)
}

/// Converts `clusters_checkins` to a partitioned table, after the bootstrap
/// (`migrate partition-checkins`).
pub async fn partition_checkins(
    settings: &DatabaseSettings,
    history: &HistorySettings,
) -> Result<store::history::ConversionReport, RunError> {
    let pool = store::connect_pool(settings).await?;
    let (mut connection, _) = bootstrap_with(&pool, settings).await?;
    Ok(store::history::convert_to_partitioned(&mut connection, history.period).await?)
}

/// Applies the schema on a connection of its own, and hands that connection
/// on (its bootstrap lock released) with the number of files applied: what
/// follows a bootstrap needs no second connection to be set up.
async fn bootstrap_with(
    pool: &Pool,
    settings: &DatabaseSettings,
) -> Result<(PgConnection, usize), RunError> {
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
    Ok((client, applied))
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
    /// serving yet) and bootstraps it, then consumes, reconnecting, until
    /// shutdown. Every step is retried while its failure is transient.
    ///
    /// The broker is connected to, and the topology declared, while the
    /// database is prepared: neither needs the other, so a start waits for
    /// the slower of the two instead of both (BENCHMARKS.md, "A start that
    /// waits for one side"). Nothing is consumed before the schema is in place.
    async fn start_and_consume(&self, serving: &CancellationToken) -> Result<(), RunError> {
        let mut probing = None;
        let (database, first) = tokio::join!(
            self.prepare_database(serving, &mut probing),
            self.connect(broker::ConsumingFrames::Default),
        );
        let result = match database {
            Ok(Some(pool)) => {
                let upkeep = tokio::spawn(maintenance::keep(
                    pool.clone(),
                    self.settings.history,
                    self.shutdown.child_token(),
                ));
                let result = self.consume_retrying(&pool, first).await;
                upkeep.abort();
                result
            }
            stopped_or_failed => {
                if let Ok(Some(connected)) = first {
                    connected.close().await;
                }
                stopped_or_failed.map(|_| ())
            }
        };
        serving.cancel();
        if let Some(probing) = probing {
            let _ = probing.await;
        }
        result
    }

    /// Connects the pool (then watches the database for readiness, in
    /// `probing`), applies the schema and runs the first maintenance. `None`
    /// on shutdown.
    async fn prepare_database(
        &self,
        serving: &CancellationToken,
        probing: &mut Option<JoinHandle<()>>,
    ) -> Result<Option<Pool>, RunError> {
        let mut retry = Retry::new(self.settings, self.shutdown, "bootstrap");
        let pool = loop {
            match store::connect_pool(&self.settings.database).await {
                Ok(pool) => break pool,
                Err(error) => {
                    if !retry.after(error.into()).await? {
                        return Ok(None);
                    }
                }
            }
        };
        *probing = Some(tokio::spawn(probe::watch_database(
            pool.clone(),
            self.readiness.clone(),
            serving.clone(),
        )));
        let mut connection = loop {
            match bootstrap_with(&pool, &self.settings.database).await {
                Ok((connection, _)) => break connection,
                Err(error) => {
                    if !retry.after(error).await? {
                        return Ok(None);
                    }
                }
            }
        };
        self.readiness.set_bootstrapped();
        self.readiness.database_ok();
        // The current partition must exist before anything is consumed.
        if let Err(error) = maintenance::run_on(&mut connection, &self.settings.history).await {
            tracing::warn!(error = %error, "checkin history maintenance failed; trying again later");
        }
        // On to the pool, for the first batch: one connection fewer to set
        // up before the first write. Both left nothing behind in the session
        // (the bootstrap's lock is released; maintenance's locks and settings
        // are its transactions'); a broken connection is refused and dropped.
        let _ = pool.add(connection);
        Ok(Some(pool))
    }
}
