//! The flags and `WFM_*` variables, each declared once (shared groups are
//! flattened into every subcommand that needs them), with the bounds that keep
//! a value from overflowing anything downstream.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::Args;
use lapin::uri::AMQPUri;

use super::{
    BrokerSettings, ConfigError, DatabaseSettings, HistorySettings, Period, PipelineSettings,
    RdsSettings, Settings, SslMode, Topology,
    database_url::{DatabaseUrl, reconcile},
    non_zero,
    redact::redact_secrets,
};
use crate::message::Limits;

/// PostgreSQL connection settings (`run` and `bootstrap`).
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL or key=value string; `sslmode` and
    /// `sslrootcert` in it are honoured.
    #[arg(
        long,
        env = "WFM_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/wfm",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Maximum number of pooled PostgreSQL connections (1 to 1000).
    #[arg(long, env = "WFM_POOL_SIZE", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_size: u32,

    /// TLS to PostgreSQL: disable, require (encrypted, unverified), verify-ca
    /// (chain checked), verify-full (chain and host name checked). Default: the
    /// URL's `sslmode`, else disable.
    #[arg(long, env = "WFM_DATABASE_SSLMODE", value_enum)]
    pub database_sslmode: Option<SslMode>,

    /// PEM bundle of the CA certificates to trust (e.g. the RDS global bundle);
    /// required by verify-ca and verify-full. Default: the URL's `sslrootcert`.
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
    /// connection instead of a password. Requires verified TLS.
    #[arg(long, env = "WFM_RDS_IAM_AUTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub rds_iam_auth: bool,
}

/// Broker connection and topology names (`run`, `publish`, `dlq`).
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// AMQP 0-9-1 URL of the RabbitMQ broker (vhost `/` is `%2f`); for a
    /// cluster, the URLs of its nodes, comma-separated (tried in a shuffled
    /// order at every connection).
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

/// The rules messages are held to (`run` applies them, `publish` checks
/// them before publishing).
#[derive(Debug, Clone, Args)]
pub struct LimitsArgs {
    /// Larger message bodies are dead-lettered unread (bytes, 1 to 128 MiB).
    #[arg(long, env = "WFM_MAX_MESSAGE_BYTES", default_value_t = 131_072,
          value_parser = clap::value_parser!(u64).range(1..=128 << 20))]
    pub max_message_bytes: u64,

    /// Deepest nesting of objects and arrays a document may have, anywhere in
    /// it (unknown fields too); deeper ones are dead-lettered (1 to 1000).
    #[arg(long, env = "WFM_MAX_JSON_DEPTH", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_json_depth: u16,

    /// How far ahead of its receipt a publisher's timestamp is believed (e.g.
    /// `5m`, `30s`; at most a day); later ones are replaced by the receipt time.
    #[arg(long, env = "WFM_MAX_CLOCK_SKEW", default_value = "5m", value_parser = clock_skew)]
    pub max_clock_skew: Duration,
}

fn clock_skew(text: &str) -> Result<Duration, String> {
    let skew = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if skew > Duration::from_secs(86_400) {
        return Err("at most a day (24h)".to_owned());
    }
    Ok(skew)
}

impl LimitsArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_message_bytes as usize,
            max_json_depth: usize::from(self.max_json_depth),
            max_clock_skew: self.max_clock_skew,
        }
    }
}

/// Where `/healthz`, `/readyz` and `/metrics` are served (`run`, `healthcheck`).
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address of the health, readiness and metrics endpoints; `healthcheck`
    /// probes an unspecified host (0.0.0.0) on 127.0.0.1.
    #[arg(long, env = "WFM_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: SocketAddr,
}

/// Consumption and batching settings (`run`).
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Unacknowledged deliveries the broker may hand each queue's consumer, at
    /// most (WFM_MEMORY_LIMIT may lower it).
    #[arg(long, env = "WFM_PREFETCH", default_value_t = 1000,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,

    /// Most messages written in one transaction (1 to 10000).
    #[arg(long, env = "WFM_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub batch_size: u16,

    /// A batch also ends once its message bodies reach this size (e.g.
    /// `256KiB`), before WFM_BATCH_SIZE messages: a transaction holds at most
    /// this plus one message.
    #[arg(long, env = "WFM_BATCH_BYTES", default_value = "256KiB")]
    pub batch_bytes: bytesize::ByteSize,

    /// After a full batch (a backlog), or when an eighth of a batch was
    /// waiting, longest wait in milliseconds for the batch to fill (0 to
    /// 60000). Otherwise a batch is written as soon as no more messages are
    /// ready.
    #[arg(long, env = "WFM_BATCH_LINGER_MS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub batch_linger_ms: u64,

    #[command(flatten)]
    pub limits: LimitsArgs,

    /// Memory the worker may use for messages in flight (e.g. `1GiB`): the
    /// prefetch of each queue is lowered so that prefetch × WFM_MAX_MESSAGE_BYTES
    /// × 4 (buffers while received and written) × 2 queues fits. Resident
    /// memory stays below this plus ~40 MiB.
    #[arg(long, env = "WFM_MEMORY_LIMIT", default_value = "1GiB")]
    pub memory_limit: bytesize::ByteSize,

    /// Deliveries of one message that fails alone, neither transiently nor for
    /// its data, before it is dead-lettered as `too-many-deliveries` (1 to 1000).
    #[arg(long, env = "WFM_MAX_DELIVERIES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_deliveries: u32,

    /// Seconds allowed after SIGTERM/SIGINT to finish in-flight work before
    /// exiting (1 to 3600).
    #[arg(long, env = "WFM_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_timeout_secs: u64,
}

/// How checkin history is partitioned and kept (`run`, `maintain`, `migrate`).
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Period of one partition of a partitioned `clusters_checkins`: day, week
    /// or month (see `wfm-worker migrate partition-checkins`).
    #[arg(long, env = "WFM_CHECKIN_PARTITION", value_enum, default_value = "day")]
    pub checkin_partition: Period,

    /// Checkin history older than this (e.g. `90d`) is dropped, whole
    /// partitions at a time; unset: kept for ever. Needs a partitioned table.
    #[arg(long, env = "WFM_CHECKIN_RETENTION", value_parser = retention)]
    pub checkin_retention: Option<Duration>,

    /// Message ids (and derived keys) are remembered at least this long, at
    /// most twice as long: a redelivery within it is never stored twice
    /// (1h to 30d).
    #[arg(long, env = "WFM_DEDUP_WINDOW", default_value = "24h", value_parser = dedup_window)]
    pub dedup_window: Duration,
}

fn retention(text: &str) -> Result<Duration, String> {
    let retention = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if retention < Duration::from_secs(86_400) {
        return Err("at least a day (1d)".to_owned());
    }
    Ok(retention)
}

fn dedup_window(text: &str) -> Result<Duration, String> {
    let window = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(3600)..=Duration::from_secs(30 * 86_400)).contains(&window) {
        return Err("between 1h and 30d".to_owned());
    }
    Ok(window)
}

impl HistoryArgs {
    pub fn settings(&self) -> HistorySettings {
        HistorySettings {
            period: self.checkin_partition,
            retention: self.checkin_retention,
            dedup_window: self.dedup_window,
        }
    }
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
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Attempts to reconnect (broker) or to reach the database at start-up
    /// before giving up; 0 retries for as long as the worker runs.
    #[arg(long, env = "WFM_RECONNECT_MAX", default_value_t = 0)]
    pub reconnect_max: u32,
    #[command(flatten)]
    pub http: HttpArgs,
}

impl RunArgs {
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        Ok(Settings {
            database: self.database.validate()?,
            broker: self.broker.validate()?,
            pipeline: self.pipeline.validate()?,
            history: self.history.settings(),
            shutdown_timeout: Duration::from_secs(self.pipeline.shutdown_timeout_secs),
            http_addr: Some(self.http.http_addr),
            reconnect_max: self.reconnect_max,
        })
    }
}

impl DatabaseArgs {
    pub fn validate(&self) -> Result<DatabaseSettings, ConfigError> {
        let url = DatabaseUrl::parse(&self.database_url)?;
        let ssl_mode = reconcile(
            self.database_sslmode,
            url.ssl_mode,
            ("WFM_DATABASE_SSLMODE", "sslmode"),
        )?
        .unwrap_or(SslMode::Disable);
        let ca_file = reconcile(
            self.database_ca_file.clone(),
            url.ca_file,
            ("WFM_DATABASE_CA_FILE", "sslrootcert"),
        )?;
        if self.rds_iam_auth && !ssl_mode.verifies() {
            return Err(ConfigError::IamNeedsVerifiedTls);
        }
        let rds = (self.rds_instance_id.is_some() || self.rds_iam_auth).then(|| RdsSettings {
            instance_id: self.rds_instance_id.clone(),
            region: self.rds_region.clone(),
            iam_auth: self.rds_iam_auth,
        });
        if rds.is_some() && !cfg!(feature = "rds") {
            return Err(ConfigError::RdsNotBuilt);
        }
        Ok(DatabaseSettings {
            config: url.config,
            pool_size: self.pool_size,
            ssl_mode,
            ca_file,
            rds,
            pool_wait: super::DEFAULT_POOL_WAIT,
        })
    }
}

impl BrokerArgs {
    pub fn validate(&self) -> Result<BrokerSettings, ConfigError> {
        let nodes = self
            .amqp_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| {
                AMQPUri::from_str(url).map_err(|e| ConfigError::AmqpUrl(redact_secrets(&e, url)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(ConfigError::Invalid {
                variable: "WFM_AMQP_URL",
                problem: "empty",
            });
        }
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
            nodes,
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

/// Work queues, each with its own prefetch.
const QUEUES: u64 = 2;
/// A message may occupy up to four times its size while it is in flight: the
/// delivery's buffer (grown by doubling as frames arrive), the statement's
/// encoded parameters (grown the same way), and what the allocator keeps
/// between them. Measured: see the memory test.
const COPIES: u64 = 4;

impl PipelineArgs {
    pub fn validate(&self) -> Result<PipelineSettings, ConfigError> {
        let batch_size = usize::from(self.batch_size);
        if (self.prefetch as usize) < batch_size {
            return Err(ConfigError::PrefetchBelowBatch {
                prefetch: self.prefetch,
                batch_size,
            });
        }
        let batch_bytes = usize::try_from(self.batch_bytes.as_u64()).unwrap_or(usize::MAX);
        non_zero("WFM_BATCH_BYTES", batch_bytes)?;
        let limits = self.limits.limits();
        let affordable = self.memory_limit.as_u64() / (QUEUES * COPIES * limits.max_bytes as u64);
        if affordable == 0 {
            return Err(ConfigError::MemoryTooSmall {
                limit: self.memory_limit.as_u64(),
                max_message_bytes: limits.max_bytes,
            });
        }
        let prefetch = u16::try_from(affordable).map_or(self.prefetch, |a| a.min(self.prefetch));
        Ok(PipelineSettings {
            prefetch,
            batch_size: batch_size.min(usize::from(prefetch)),
            batch_bytes,
            batch_linger: Duration::from_millis(self.batch_linger_ms),
            limits,
            max_deliveries: self.max_deliveries,
            first_pause: super::DEFAULT_FIRST_PAUSE,
        })
    }
}
