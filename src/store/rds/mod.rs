//! AWS RDS: finding the PostgreSQL instance (`WFM_RDS_INSTANCE_ID`) and IAM
//! database authentication (`WFM_RDS_IAM_AUTH`).
//!
//! The AWS SDK behind them is the cargo feature `rds`, on by default and in the
//! container image. Without it (`--no-default-features`, as
//! `scripts/run-local.sh` builds for a local database) the build takes a
//! third less CPU; the settings are then refused at start-up, saying so.

use tokio_postgres::Config;

use crate::config::DatabaseSettings;

#[cfg(feature = "rds")]
mod sdk;
#[cfg(feature = "rds")]
pub use sdk::{IamAuth, discover, https_client, sdk_config};

#[cfg(not(feature = "rds"))]
mod absent;
#[cfg(not(feature = "rds"))]
pub use absent::IamAuth;

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

/// What an instance status means for connecting now (the statuses of
/// <https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/accessing-monitoring.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Serves connections, maybe while the instance is being changed.
    Serving,
    /// Will serve again without anyone's help: wait.
    Transient,
    /// Cannot serve until an operator acts: refuse start-up, saying why.
    Unusable,
}

impl Status {
    pub fn of(status: &str) -> Status {
        match status {
            "available"
            | "backing-up"
            | "configuring-enhanced-monitoring"
            | "configuring-iam-database-auth"
            | "configuring-log-exports"
            | "converting-to-vpc"
            | "modifying"
            | "moving-to-vpc"
            | "resetting-master-credentials"
            | "storage-optimization" => Status::Serving,
            "stopped"
            | "stopping"
            | "deleting"
            | "failed"
            | "inaccessible-encryption-credentials"
            | "incompatible-credentials"
            | "incompatible-network"
            | "incompatible-option-group"
            | "incompatible-parameters"
            | "incompatible-restore"
            | "insufficient-capacity"
            | "restore-error" => Status::Unusable,
            // creating, starting, rebooting, renaming, upgrading, maintenance,
            // storage-full, storage-config-upgrade, …, and statuses AWS adds later.
            _ => Status::Transient,
        }
    }
}

/// Where the instance is, as RDS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The instance's initial database, when it was created with one.
    pub dbname: Option<String>,
}

/// Where and how to connect, after RDS: the URL's configuration at the
/// discovered endpoint (with `WFM_RDS_INSTANCE_ID`), and the token minter (with
/// `WFM_RDS_IAM_AUTH`). Describing the instance fails start-up with the reason.
#[cfg(feature = "rds")]
pub async fn resolve(settings: &DatabaseSettings) -> Result<(Config, Option<IamAuth>), RdsError> {
    let Some(rds) = &settings.rds else {
        return Ok((settings.config.clone(), None));
    };
    let sdk = sdk_config(rds.region.as_deref()).await;
    let mut config = settings.config.clone();
    if let Some(instance_id) = rds.instance_id.as_deref() {
        let endpoint = discover(&sdk, instance_id).await?;
        config = at_endpoint(&config, &endpoint);
        tracing::info!(instance = instance_id, host = %endpoint.host, port = endpoint.port, dbname = config.get_dbname().unwrap_or("?"), "discovered RDS instance");
    }
    Ok((config, rds.iam_auth.then(|| IamAuth::new(sdk))))
}

/// Without the SDK there is nothing to resolve. Settings that ask for RDS are
/// refused when they are read ([`crate::config::ConfigError::RdsNotBuilt`]);
/// this catches settings made in code.
#[cfg(not(feature = "rds"))]
pub async fn resolve(settings: &DatabaseSettings) -> Result<(Config, Option<IamAuth>), RdsError> {
    match settings.rds {
        Some(_) => Err(RdsError::NotBuilt),
        None => Ok((settings.config.clone(), None)),
    }
}

/// The URL's user, password, database and options, at the discovered host and
/// port; the instance's own database name wins when it has one.
pub fn at_endpoint(url: &Config, endpoint: &Endpoint) -> Config {
    let mut config = Config::new();
    config.host(&endpoint.host).port(endpoint.port);
    if let Some(user) = url.get_user() {
        config.user(user);
    }
    if let Some(password) = url.get_password() {
        config.password(password);
    }
    if let Some(dbname) = endpoint.dbname.as_deref().or(url.get_dbname()) {
        config.dbname(dbname);
    }
    if let Some(name) = url.get_application_name() {
        config.application_name(name);
    }
    config
}

/// Registers `wfm_database_auth_tokens_total` at zero.
pub fn register_metrics() {
    metrics::counter!("wfm_database_auth_tokens_total").increment(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::describe_postgres;

    #[test]
    fn instances_that_serve_traffic_are_usable_and_others_wait_or_refuse() {
        for serving in [
            "available",
            "backing-up",
            "modifying",
            "configuring-enhanced-monitoring",
            "storage-optimization",
        ] {
            assert_eq!(Status::of(serving), Status::Serving, "{serving}");
        }
        for waiting in [
            "creating",
            "starting",
            "rebooting",
            "upgrading",
            "maintenance",
            "some-new-status",
        ] {
            assert_eq!(Status::of(waiting), Status::Transient, "{waiting}");
        }
        for refused in ["stopped", "deleting", "failed", "incompatible-parameters"] {
            assert_eq!(Status::of(refused), Status::Unusable, "{refused}");
        }
    }

    #[test]
    fn discovered_endpoint_keeps_the_urls_credentials_and_prefers_the_instance_database() {
        let url: Config = "postgres://wfm:pw@localhost:5432/fallback".parse().unwrap();
        let endpoint = Endpoint {
            host: "db.rds.amazonaws.com".into(),
            port: 6543,
            dbname: Some("workflow".into()),
        };
        let config = at_endpoint(&url, &endpoint);
        assert_eq!(
            describe_postgres(&config),
            "wfm@db.rds.amazonaws.com:6543/workflow"
        );
        assert_eq!(config.get_password(), Some(&b"pw"[..]));
        let endpoint = Endpoint {
            dbname: None,
            ..endpoint
        };
        assert_eq!(at_endpoint(&url, &endpoint).get_dbname(), Some("fallback"));
    }

    #[cfg(not(feature = "rds"))]
    #[tokio::test]
    async fn without_the_sdk_rds_settings_made_in_code_are_refused_too() {
        let mut settings = DatabaseSettings::plain("postgres://u@h/db".parse().unwrap(), 1);
        assert!(resolve(&settings).await.is_ok());
        settings.rds = Some(crate::config::RdsSettings {
            instance_id: Some("db".into()),
            region: None,
            iam_auth: false,
        });
        assert!(matches!(resolve(&settings).await, Err(RdsError::NotBuilt)));
    }
}
