//! The AWS SDK's part (cargo feature `rds`): where to connect, after finding
//! the instance (DescribeDBInstances); and IAM database authentication tokens.
//!
//! Credentials and region come from the standard AWS chain (environment,
//! profile, web identity, container or instance role); `AWS_ENDPOINT_URL` and
//! `AWS_ENDPOINT_URL_RDS` are honoured. Tokens are signed locally (SigV4
//! presign, no network) and live 15 minutes, so one is minted per new
//! connection rather than once at start-up.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_rds::config::SharedHttpClient;
use aws_sdk_rds::{
    auth_token::{AuthTokenGenerator, Config as TokenConfig},
    config::ProvideCredentials,
    error::DisplayErrorContext,
    operation::describe_db_instances::DescribeDBInstancesError,
};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use tokio_postgres::Config;

use super::RdsError;
use crate::config::DatabaseSettings;

/// Where and how to connect, after RDS: the URL's configuration at the
/// discovered endpoint (with `WFM_RDS_INSTANCE_ID`), and the token minter (with
/// `WFM_RDS_IAM_AUTH`). Describing the instance fails start-up with the reason.
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

/// The URL's user, password, database and options, at the discovered host and
/// port; the instance's own database name wins when it has one.
fn at_endpoint(url: &Config, endpoint: &Endpoint) -> Config {
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

/// The standard AWS configuration, with `region` (WFM_RDS_REGION) over the
/// standard region settings when given.
pub async fn sdk_config(region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https_client());
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    loader.load().await
}

/// The SDK's HTTPS client: hyper 1 and rustls with the ring provider the rest
/// of the worker uses (the SDK's default client would bring aws-lc as well).
pub fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Describes `instance_id` and checks it can be used.
pub async fn discover(sdk: &SdkConfig, instance_id: &str) -> Result<Endpoint, RdsError> {
    // Fail on missing credentials with that reason, not as a signing error.
    let provider = sdk
        .credentials_provider()
        .ok_or_else(|| RdsError::Credentials("no credential provider configured".to_owned()))?;
    provider
        .provide_credentials()
        .await
        .map_err(|e| RdsError::Credentials(DisplayErrorContext(&e).to_string()))?;
    let output = aws_sdk_rds::Client::new(sdk)
        .describe_db_instances()
        .db_instance_identifier(instance_id)
        .send()
        .await
        .map_err(|e| match e.into_service_error() {
            DescribeDBInstancesError::DbInstanceNotFoundFault(_) => {
                RdsError::NotFound(instance_id.to_owned())
            }
            other => RdsError::Api {
                id: instance_id.to_owned(),
                reason: DisplayErrorContext(&other).to_string(),
            },
        })?;
    let instance = output
        .db_instances()
        .first()
        .ok_or_else(|| RdsError::NotFound(instance_id.to_owned()))?;
    let engine = instance.engine().unwrap_or("unknown");
    if !(engine.starts_with("postgres") || engine == "aurora-postgresql") {
        return Err(RdsError::NotPostgres {
            id: instance_id.to_owned(),
            engine: engine.to_owned(),
        });
    }
    let status = instance.db_instance_status().unwrap_or("unknown");
    let (id, status_text) = (instance_id.to_owned(), status.to_owned());
    match Status::of(status) {
        Status::Serving => {}
        Status::Transient => {
            return Err(RdsError::NotYetServing {
                id,
                status: status_text,
            });
        }
        Status::Unusable => {
            return Err(RdsError::Unusable {
                id,
                status: status_text,
            });
        }
    }
    let endpoint = instance
        .endpoint()
        .ok_or_else(|| RdsError::NoEndpoint(instance_id.to_owned()))?;
    let host = endpoint
        .address()
        .ok_or_else(|| RdsError::NoEndpoint(instance_id.to_owned()))?;
    Ok(Endpoint {
        host: host.to_owned(),
        port: endpoint
            .port()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(5432),
        dbname: instance.db_name().map(str::to_owned),
    })
}

/// Mints IAM database authentication tokens, counting them.
#[derive(Clone, Debug)]
pub struct IamAuth {
    sdk: SdkConfig,
    minted: Arc<AtomicU64>,
}

impl IamAuth {
    pub fn new(sdk: SdkConfig) -> Self {
        IamAuth {
            sdk,
            minted: Arc::default(),
        }
    }

    /// A fresh token for `user` at `host:port` (valid 15 minutes).
    pub async fn token(&self, host: &str, port: u16, user: &str) -> Result<String, RdsError> {
        let config = TokenConfig::builder()
            .hostname(host)
            .port(u64::from(port))
            .username(user)
            .build()
            .map_err(|e| RdsError::Token(e.to_string()))?;
        let token = AuthTokenGenerator::new(config)
            .auth_token(&self.sdk)
            .await
            .map_err(|e| RdsError::Token(e.to_string()))?;
        self.minted.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("wfm_database_auth_tokens_total").increment(1);
        Ok(token.as_str().to_owned())
    }

    /// Tokens minted so far.
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use aws_sdk_rds::config::{Credentials, SharedCredentialsProvider};
    use aws_smithy_async::time::StaticTimeSource;

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

    fn fixed() -> IamAuth {
        let sdk = SdkConfig::builder()
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            )))
            .region(Region::new("eu-west-1"))
            .time_source(StaticTimeSource::new(
                UNIX_EPOCH + Duration::from_secs(1_764_000_000),
            ))
            .build();
        IamAuth::new(sdk)
    }

    #[tokio::test]
    async fn token_is_a_presigned_connect_url_for_host_port_and_user_valid_900_s() {
        let iam = fixed();
        let token = iam
            .token("db.example.eu-west-1.rds.amazonaws.com", 5432, "wfm")
            .await
            .unwrap();
        let (authority, query) = token.split_once("/?").unwrap();
        assert_eq!(authority, "db.example.eu-west-1.rds.amazonaws.com:5432");
        let params: Vec<(&str, &str)> =
            query.split('&').filter_map(|p| p.split_once('=')).collect();
        let get = |k: &str| params.iter().find(|(name, _)| *name == k).map(|(_, v)| *v);
        assert_eq!(get("Action"), Some("connect"));
        assert_eq!(get("DBUser"), Some("wfm"));
        assert_eq!(get("X-Amz-Expires"), Some("900"));
        assert_eq!(get("X-Amz-Algorithm"), Some("AWS4-HMAC-SHA256"));
        assert_eq!(get("X-Amz-Date"), Some("20251124T160000Z"));
        assert_eq!(
            get("X-Amz-Credential"),
            Some("AKIDEXAMPLE%2F20251124%2Feu-west-1%2Frds-db%2Faws4_request")
        );
        let signature = get("X-Amz-Signature").unwrap();
        assert_eq!(signature.len(), 64);
        assert!(signature.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(iam.minted(), 1);
    }

    #[tokio::test]
    async fn same_inputs_and_clock_give_the_same_token_and_another_user_another() {
        let iam = fixed();
        let a = iam.token("h", 5432, "wfm").await.unwrap();
        assert_eq!(a, iam.token("h", 5432, "wfm").await.unwrap());
        assert_ne!(a, iam.token("h", 5432, "other").await.unwrap());
    }
}
