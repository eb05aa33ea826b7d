//! Settings: command-line flags and `WFM_*` environment variables (clap), validated
//! into typed values before anything connects.
//!
//! Invariant: a [`Settings`] value is always usable — URLs parsed, sizes non-zero,
//! prefetch at least the batch size. A bad setting fails start-up with one line
//! naming the variable, and never echoes a URL (it may carry a password).

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::Args;
use lapin::uri::AMQPUri;

use crate::message::Limits;

pub use crate::store::tls::SslMode;
pub use redact::{describe_amqp, describe_postgres};

mod redact;

/// Why a setting was refused. Each message names the environment variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("WFM_DATABASE_URL is not a valid PostgreSQL connection string: {0}")]
    DatabaseUrl(#[source] tokio_postgres::Error),
    #[error("WFM_AMQP_URL is not a valid AMQP URL: {0}")]
    AmqpUrl(String),
    #[error(
        "WFM_RDS_IAM_AUTH needs TLS: set WFM_DATABASE_SSLMODE to require, verify-ca or verify-full"
    )]
    IamNeedsTls,
    #[error("{variable} must not be {problem}")]
    Invalid {
        variable: &'static str,
        problem: &'static str,
    },
    #[error(
        "WFM_PREFETCH ({prefetch}) must be at least WFM_BATCH_SIZE ({batch_size}): a smaller prefetch stalls every batch until the linger runs out"
    )]
    PrefetchBelowBatch { prefetch: u16, batch_size: usize },
}

/// PostgreSQL connection settings (`run` and `bootstrap`).
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL or key=value string.
    #[arg(
        long,
        env = "WFM_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/wfm",
        hide_env_values = true,
        hide_default_value = false
    )]
    pub database_url: String,

    /// Maximum number of pooled PostgreSQL connections.
    #[arg(long, env = "WFM_POOL_SIZE", default_value_t = 4)]
    pub pool_size: u32,

    /// TLS to PostgreSQL: disable, require (encrypted, unverified), verify-ca
    /// (chain checked), verify-full (chain and host name checked).
    #[arg(
        long,
        env = "WFM_DATABASE_SSLMODE",
        value_enum,
        default_value = "disable"
    )]
    pub database_sslmode: SslMode,

    /// PEM bundle of the CA certificates to trust (e.g. the RDS global bundle);
    /// required by verify-ca and verify-full.
    #[arg(long, env = "WFM_DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,

    /// Identifier of an AWS RDS instance to connect to: its endpoint, port and
    /// database name are found with DescribeDBInstances (user and password, if
    /// any, still come from WFM_DATABASE_URL).
    #[arg(long, env = "WFM_RDS_INSTANCE_ID")]
    pub rds_instance_id: Option<String>,

    /// AWS region of the instance; defaults to the standard AWS region settings.
    #[arg(long, env = "WFM_RDS_REGION")]
    pub rds_region: Option<String>,

    /// Authenticate with IAM database authentication: a fresh token per new
    /// connection instead of a password. Requires TLS (WFM_DATABASE_SSLMODE).
    #[arg(long, env = "WFM_RDS_IAM_AUTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub rds_iam_auth: bool,
}

/// Broker connection and topology names (`run`, `publish`, `dlq`).
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// AMQP 0-9-1 URL of the RabbitMQ broker (vhost `/` is `%2f`).
    #[arg(
        long,
        env = "WFM_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: String,

    /// PEM bundle of CAs to trust for an `amqps://` URL (managed brokers);
    /// without it, the system's trust store.
    #[arg(long, env = "WFM_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,

    /// Name this worker's broker connection shows in `rabbitmqctl list_connections`.
    #[arg(long, env = "WFM_CONNECTION_NAME", default_value = "wfm-worker")]
    pub connection_name: String,

    /// Topic exchange the clusters and the release pipeline publish to.
    #[arg(long, env = "WFM_EXCHANGE", default_value = "wfm")]
    pub exchange: String,

    /// Queue of checkins, bound with routing key `cluster.checkin`.
    #[arg(long, env = "WFM_CHECKIN_QUEUE", default_value = "wfm.checkins")]
    pub checkin_queue: String,

    /// Queue of version events, bound with routing key `version.publish`.
    #[arg(long, env = "WFM_VERSION_QUEUE", default_value = "wfm.versions")]
    pub version_queue: String,

    /// Exchange that receives every rejected message.
    #[arg(long, env = "WFM_DEAD_LETTER_EXCHANGE", default_value = "wfm.dlx")]
    pub dead_letter_exchange: String,

    /// Queue bound to the dead-letter exchange; holds every rejected message.
    #[arg(long, env = "WFM_DEAD_LETTER_QUEUE", default_value = "wfm.dead")]
    pub dead_letter_queue: String,
}

/// Consumption and batching settings (`run`).
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Unacknowledged deliveries the broker may hand each consumer; bounds memory.
    #[arg(long, env = "WFM_PREFETCH", default_value_t = 1000)]
    pub prefetch: u16,

    /// Most messages written in one transaction.
    #[arg(long, env = "WFM_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,

    /// Longest wait, in milliseconds, for a batch to fill before it is written anyway.
    #[arg(long, env = "WFM_BATCH_LINGER_MS", default_value_t = 5)]
    pub batch_linger_ms: u64,

    /// Larger message bodies are dead-lettered unread.
    #[arg(long, env = "WFM_MAX_MESSAGE_BYTES", default_value_t = 1_048_576)]
    pub max_message_bytes: usize,

    /// Deepest nesting of objects and arrays a document may have, anywhere in
    /// it (unknown fields too); deeper ones are dead-lettered (1 to 1000).
    #[arg(long, env = "WFM_MAX_JSON_DEPTH", default_value_t = 64)]
    pub max_json_depth: usize,

    /// How far ahead of its receipt a publisher's timestamp is believed (e.g.
    /// `5m`, `30s`); later ones are replaced by the receipt time.
    #[arg(long, env = "WFM_MAX_CLOCK_SKEW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_clock_skew: Duration,

    /// Deliveries of one message that fails alone, neither transiently nor for
    /// its data, before it is dead-lettered as `too-many-deliveries`.
    #[arg(long, env = "WFM_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u32,

    /// Seconds allowed after SIGTERM/SIGINT to finish in-flight work before exiting.
    #[arg(long, env = "WFM_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
}

/// The flags and variables of `wfm-worker run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Attempts to reconnect (broker) or to reach the database at start-up
    /// before giving up; 0 retries for as long as the worker runs.
    #[arg(long, env = "WFM_RECONNECT_MAX", default_value_t = 0)]
    pub reconnect_max: u32,
    /// Address of the health, readiness and metrics endpoints.
    #[arg(long, env = "WFM_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: SocketAddr,
}

impl RunArgs {
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        Ok(Settings {
            database: self.database.validate()?,
            broker: self.broker.validate()?,
            pipeline: self.pipeline.validate()?,
            shutdown_timeout: Duration::from_secs(self.pipeline.shutdown_timeout_secs),
            http_addr: Some(self.http_addr),
            reconnect_max: self.reconnect_max,
        })
    }
}

/// Everything `run` needs, parsed and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub broker: BrokerSettings,
    pub pipeline: PipelineSettings,
    pub shutdown_timeout: Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; `None`: nowhere.
    pub http_addr: Option<SocketAddr>,
    /// Consecutive failed attempts tolerated; 0: unbounded.
    pub reconnect_max: u32,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub config: tokio_postgres::Config,
    pub pool_size: u32,
    pub ssl_mode: SslMode,
    pub ca_file: Option<PathBuf>,
    /// RDS discovery and IAM authentication, when configured.
    pub rds: Option<RdsSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdsSettings {
    pub instance_id: Option<String>,
    pub region: Option<String>,
    pub iam_auth: bool,
}

impl DatabaseSettings {
    /// Plain settings for a URL: no TLS, no RDS (tests, tools).
    pub fn plain(config: tokio_postgres::Config, pool_size: u32) -> Self {
        DatabaseSettings {
            config,
            pool_size,
            ssl_mode: SslMode::Disable,
            ca_file: None,
            rds: None,
        }
    }
}

#[derive(Clone)]
pub struct BrokerSettings {
    pub uri: AMQPUri,
    pub ca_file: Option<PathBuf>,
    pub connection_name: String,
    pub topology: Topology,
}

/// Names of the exchanges and queues the worker declares and uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub checkin_queue: String,
    pub version_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
}

impl Topology {
    /// The dead-letter exchange's alternate exchange: takes copies no binding does.
    pub fn unrouted_exchange(&self) -> String {
        format!("{}.unrouted", self.dead_letter_exchange)
    }

    /// The queue of the alternate exchange.
    pub fn unrouted_queue(&self) -> String {
        format!("{}.unrouted", self.dead_letter_queue)
    }
}

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub prefetch: u16,
    pub batch_size: usize,
    pub batch_linger: Duration,
    /// Size, depth and clock rules every message is held to.
    pub limits: Limits,
    pub max_deliveries: u32,
}

impl Default for PipelineSettings {
    /// The defaults of `wfm-worker run`.
    fn default() -> Self {
        PipelineSettings {
            prefetch: 1000,
            batch_size: 500,
            batch_linger: Duration::from_millis(5),
            limits: Limits::default(),
            max_deliveries: 5,
        }
    }
}

impl DatabaseArgs {
    pub fn validate(&self) -> Result<DatabaseSettings, ConfigError> {
        let config = tokio_postgres::Config::from_str(&self.database_url)
            .map_err(ConfigError::DatabaseUrl)?;
        non_zero("WFM_POOL_SIZE", self.pool_size as usize)?;
        if self.rds_iam_auth && self.database_sslmode == SslMode::Disable {
            return Err(ConfigError::IamNeedsTls);
        }
        let rds = (self.rds_instance_id.is_some() || self.rds_iam_auth).then(|| RdsSettings {
            instance_id: self.rds_instance_id.clone(),
            region: self.rds_region.clone(),
            iam_auth: self.rds_iam_auth,
        });
        Ok(DatabaseSettings {
            config,
            pool_size: self.pool_size,
            ssl_mode: self.database_sslmode,
            ca_file: self.database_ca_file.clone(),
            rds,
        })
    }
}

impl BrokerArgs {
    pub fn validate(&self) -> Result<BrokerSettings, ConfigError> {
        // The parser's message never contains the URL itself, so it is safe to show.
        let uri = AMQPUri::from_str(&self.amqp_url).map_err(ConfigError::AmqpUrl)?;
        let names = [
            ("WFM_EXCHANGE", &self.exchange),
            ("WFM_CHECKIN_QUEUE", &self.checkin_queue),
            ("WFM_VERSION_QUEUE", &self.version_queue),
            ("WFM_DEAD_LETTER_EXCHANGE", &self.dead_letter_exchange),
            ("WFM_DEAD_LETTER_QUEUE", &self.dead_letter_queue),
        ];
        for (variable, name) in names {
            non_zero(variable, name.len())?;
        }
        Ok(BrokerSettings {
            uri,
            ca_file: self.amqp_ca_file.clone(),
            connection_name: self.connection_name.clone(),
            topology: Topology {
                exchange: self.exchange.clone(),
                checkin_queue: self.checkin_queue.clone(),
                version_queue: self.version_queue.clone(),
                dead_letter_exchange: self.dead_letter_exchange.clone(),
                dead_letter_queue: self.dead_letter_queue.clone(),
            },
        })
    }
}

impl PipelineArgs {
    pub fn validate(&self) -> Result<PipelineSettings, ConfigError> {
        non_zero("WFM_PREFETCH", self.prefetch as usize)?;
        non_zero("WFM_BATCH_SIZE", self.batch_size)?;
        non_zero("WFM_MAX_MESSAGE_BYTES", self.max_message_bytes)?;
        non_zero("WFM_MAX_DELIVERIES", self.max_deliveries as usize)?;
        if !(1..=1000).contains(&self.max_json_depth) {
            return Err(ConfigError::Invalid {
                variable: "WFM_MAX_JSON_DEPTH",
                problem: "outside 1 to 1000",
            });
        }
        if (self.prefetch as usize) < self.batch_size {
            return Err(ConfigError::PrefetchBelowBatch {
                prefetch: self.prefetch,
                batch_size: self.batch_size,
            });
        }
        Ok(PipelineSettings {
            prefetch: self.prefetch,
            batch_size: self.batch_size,
            batch_linger: Duration::from_millis(self.batch_linger_ms),
            limits: Limits {
                max_bytes: self.max_message_bytes,
                max_json_depth: self.max_json_depth,
                max_clock_skew: self.max_clock_skew,
            },
            max_deliveries: self.max_deliveries,
        })
    }
}

fn non_zero(variable: &'static str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid {
            variable,
            problem: "zero or empty",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
