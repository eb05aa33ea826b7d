//! Settings: command-line flags and `WFM_*` environment variables (clap, in
//! [`args`]), validated into the typed values here before anything connects.
//!
//! Invariant: a [`Settings`] value is always usable — URLs parsed, sizes within
//! bounds, TLS settings reconciled, prefetch derived from the memory budget. A
//! bad setting fails start-up with one line naming the variable, and never
//! echoes a secret (URLs may carry passwords).

mod args;
mod database_url;
mod redact;

pub use args::{
    BrokerArgs, DatabaseArgs, HistoryArgs, HttpArgs, LimitsArgs, PipelineArgs, RunArgs,
};
pub use redact::{describe_amqp, describe_nodes, describe_postgres, redact_secrets};

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use lapin::uri::AMQPUri;

use crate::message::Limits;

/// Why a setting was refused. Each message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("WFM_DATABASE_URL is not a valid PostgreSQL connection string: {0}")]
    DatabaseUrl(String),
    #[error("WFM_AMQP_URL is not a valid AMQP URL: {0}")]
    AmqpUrl(String),
    #[error(
        "sslmode={0} in WFM_DATABASE_URL falls back to plaintext without a word; use disable, require, verify-ca or verify-full"
    )]
    UnsafeSslMode(String),
    #[error("{variable} and {url_option} in WFM_DATABASE_URL disagree; set one, or both the same")]
    Conflict {
        variable: &'static str,
        url_option: &'static str,
    },
    #[error(
        "WFM_RDS_IAM_AUTH sends a 15-minute password: it needs verified TLS (WFM_DATABASE_SSLMODE=verify-full, or verify-ca, with WFM_DATABASE_CA_FILE)"
    )]
    IamNeedsVerifiedTls,
    #[error(
        "WFM_RDS_INSTANCE_ID and WFM_RDS_IAM_AUTH need the AWS SDK, which this build of wfm-worker leaves out: build it with the cargo feature `rds` (on by default, and in the container image)"
    )]
    RdsNotBuilt,
    #[error("{variable} must not be {problem}")]
    Invalid {
        variable: &'static str,
        problem: &'static str,
    },
    #[error(
        "WFM_PREFETCH ({prefetch}) must be at least WFM_BATCH_SIZE ({batch_size}): a smaller prefetch could never fill a batch"
    )]
    PrefetchBelowBatch { prefetch: u16, batch_size: usize },
    #[error(
        "WFM_MEMORY_LIMIT ({limit} bytes) cannot hold one message of WFM_MAX_MESSAGE_BYTES ({max_message_bytes}) per queue; raise it or lower WFM_MAX_MESSAGE_BYTES"
    )]
    MemoryTooSmall {
        limit: u64,
        max_message_bytes: usize,
    },
}

/// TLS to PostgreSQL, in libpq's terms (`WFM_DATABASE_SSLMODE`, or `sslmode`
/// in the URL). libpq's `allow` and `prefer` are not offered: they fall back to
/// plaintext silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SslMode {
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate chain is checked.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

/// How long one partition of `clusters_checkins` covers (`WFM_CHECKIN_PARTITION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Period {
    Day,
    /// Monday to Monday.
    Week,
    Month,
}

/// How checkin history is kept (`WFM_CHECKIN_PARTITION`, `WFM_CHECKIN_RETENTION`,
/// `WFM_DEDUP_WINDOW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    pub period: Period,
    /// Whole partitions older than this are dropped; `None`: kept for ever.
    pub retention: Option<Duration>,
    /// Keys are remembered at least this long (at most twice as long).
    pub dedup_window: Duration,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings {
            period: Period::Day,
            retention: None,
            dedup_window: Duration::from_secs(86_400),
        }
    }
}

/// Everything `run` needs, parsed and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub broker: BrokerSettings,
    pub pipeline: PipelineSettings,
    pub history: HistorySettings,
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
    /// How long a batch waits for a pool connection before the attempt counts
    /// as failed (and is retried after a backoff).
    pub pool_wait: Duration,
}

/// Long enough for a connection to a healthy database that is merely slow to
/// accept, short enough that an outage shows in readiness and logs soon.
pub const DEFAULT_POOL_WAIT: Duration = Duration::from_secs(10);

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
            pool_wait: DEFAULT_POOL_WAIT,
        }
    }
}

#[derive(Clone)]
pub struct BrokerSettings {
    /// The nodes of the broker (a cluster's, or one), tried in a shuffled order
    /// at every connection. Never empty.
    pub nodes: Vec<AMQPUri>,
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
    /// Per queue; derived from `WFM_PREFETCH` and `WFM_MEMORY_LIMIT`.
    pub prefetch: u16,
    pub batch_size: usize,
    /// Bytes of bodies that end a batch before `batch_size` messages.
    pub batch_bytes: usize,
    pub batch_linger: Duration,
    /// Size, depth and clock rules every message is held to.
    pub limits: Limits,
    pub max_deliveries: u32,
    /// A queue's first pause when the database refuses every write; each
    /// pause in a row doubles it, up to a minute (or this, when longer).
    pub first_pause: Duration,
}

/// Short enough that a passing fault (a grant restored) costs little.
pub const DEFAULT_FIRST_PAUSE: Duration = Duration::from_secs(1);

impl PipelineSettings {
    /// Whether a batch of `messages` whose bodies add up to `bytes` is full:
    /// at `batch_size` messages, or once the bodies reach `batch_bytes` (the
    /// message that crosses it is in the batch).
    pub fn batch_is_full(&self, messages: usize, bytes: usize) -> bool {
        messages >= self.batch_size || bytes >= self.batch_bytes
    }
}

impl Default for PipelineSettings {
    /// The defaults of `wfm-worker run`.
    fn default() -> Self {
        PipelineSettings {
            prefetch: 1000,
            batch_size: 500,
            batch_bytes: 256 * 1024,
            batch_linger: Duration::from_millis(5),
            limits: Limits::default(),
            max_deliveries: 5,
            first_pause: DEFAULT_FIRST_PAUSE,
        }
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
