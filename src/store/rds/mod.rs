//! AWS RDS: finding the PostgreSQL instance (`WFM_RDS_INSTANCE_ID`) and IAM
//! database authentication (`WFM_RDS_IAM_AUTH`).
//!
//! The AWS SDK behind them is the cargo feature `rds`, on by default and in the
//! container image. Without it (`--no-default-features`, as
//! `scripts/run-local.sh` builds for a local database) the build takes a
//! third less CPU; the settings are then refused at start-up, saying so.
//!
//! Both builds offer the same [`resolve`] and [`IamAuth`]: `sdk.rs` with the
//! SDK, `absent.rs` without it.

#[cfg(feature = "rds")]
mod sdk;
#[cfg(feature = "rds")]
pub use sdk::{Endpoint, IamAuth, discover, https_client, resolve, sdk_config};

#[cfg(not(feature = "rds"))]
mod absent;
#[cfg(not(feature = "rds"))]
pub use absent::{IamAuth, resolve};

#[derive(Debug, thiserror::Error)]
pub enum RdsError {
    #[error(
        "no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or a role): {0}"
    )]
    Credentials(String),
    #[error("RDS instance {0} (WFM_RDS_INSTANCE_ID) was not found")]
    NotFound(String),
    #[error("RDS instance {id} is {status}, which cannot serve connections")]
    Unusable { id: String, status: String },
    #[error("RDS instance {id} is {status}; waiting for it to serve connections")]
    NotYetServing { id: String, status: String },
    #[error("RDS instance {id} runs {engine}, not PostgreSQL")]
    NotPostgres { id: String, engine: String },
    #[error("RDS instance {0} has no endpoint yet")]
    NoEndpoint(String),
    #[error("DescribeDBInstances for {id} failed: {reason}")]
    Api { id: String, reason: String },
    #[error("cannot make an IAM auth token: {0}")]
    Token(String),
    #[error(
        "RDS discovery and IAM auth are not in this build of wfm-worker (cargo feature `rds`, on by default)"
    )]
    NotBuilt,
}

impl RdsError {
    /// Whether trying again later can succeed: an instance that is starting,
    /// rebooting or being maintained, or an API call that failed on the way.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::NotYetServing { .. } | Self::Api { .. })
    }
}

/// Registers `wfm_database_auth_tokens_total` at zero.
pub fn register_metrics() {
    metrics::counter!("wfm_database_auth_tokens_total").increment(0);
}
