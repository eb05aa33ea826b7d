//! The AWS SDK's part (cargo feature `rds`): finding the instance
//! (DescribeDBInstances), and IAM database authentication tokens.
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

use super::{Endpoint, RdsError, Status};

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
