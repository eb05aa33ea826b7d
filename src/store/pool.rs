//! The bb8 pool of PostgreSQL connections, and the resolution of where and how
//! to connect: the URL, or an RDS instance found by discovery; TLS; IAM.

use std::time::Duration;

use tokio_postgres::{Config, config::SslMode as PgSslMode};

use super::{
    manager::{ConnectError, Manager},
    rds::{self, IamAuth, RdsError},
    tls::{self, TlsConfigError},
};
use crate::config::{DatabaseSettings, describe_postgres};

pub type Pool = bb8::Pool<Manager>;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    #[error(transparent)]
    Rds(#[from] RdsError),
}

/// Builds the pool without connecting: the first use reports an unreachable
/// database (with its real cause, through the error sink) instead of start-up
/// failing on a database that is merely restarting. With `WFM_RDS_INSTANCE_ID`
/// the instance is described first (that failing does fail start-up, with the
/// reason).
pub async fn connect_pool(settings: &DatabaseSettings) -> Result<Pool, SetupError> {
    let mut config = settings.config.clone();
    let sdk = match &settings.rds {
        Some(rds) if rds.instance_id.is_some() || rds.iam_auth => {
            Some(rds::sdk_config(rds.region.as_deref()).await)
        }
        _ => None,
    };
    if let (Some(sdk), Some(instance_id)) = (
        &sdk,
        settings.rds.as_ref().and_then(|r| r.instance_id.as_deref()),
    ) {
        let endpoint = rds::discover(sdk, instance_id).await?;
        config = at_endpoint(&config, &endpoint);
        tracing::info!(instance = instance_id, host = %endpoint.host, port = endpoint.port, dbname = config.get_dbname().unwrap_or("?"), "discovered RDS instance");
    }
    let connector = tls::connector(settings.ssl_mode, settings.ca_file.as_deref())?;
    config.ssl_mode(if connector.is_some() {
        PgSslMode::Require
    } else {
        PgSslMode::Disable
    });
    let iam = match (sdk, settings.rds.as_ref().is_some_and(|r| r.iam_auth)) {
        (Some(sdk), true) => Some(IamAuth::new(sdk)),
        _ => None,
    };
    tracing::info!(
        database = %describe_postgres(&config),
        sslmode = settings.ssl_mode.as_str(),
        iam_auth = iam.is_some(),
        "database connection settings"
    );
    Ok(pool_with(settings, config, connector, iam))
}

/// The pool for a resolved configuration (also the seam for tests that bring
/// their own `IamAuth`).
pub fn pool_with(
    settings: &DatabaseSettings,
    mut config: Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    iam: Option<IamAuth>,
) -> Pool {
    // A black-holed network is only noticed through TCP: without these the
    // kernel's default keepalive waits two hours.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    config
        .keepalives_idle(Duration::from_secs(30))
        .tcp_user_timeout(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("wfm-worker");
    }
    bb8::Pool::builder()
        .max_size(settings.pool_size)
        // Checking each connection out with a round trip doubles the cost of a
        // small batch; broken connections are noticed by `is_closed` and by the
        // error classifier instead.
        .test_on_check_out(false)
        .connection_timeout(Duration::from_secs(10))
        .error_sink(Box::new(LogSink))
        .build_unchecked(Manager::new(config, tls, iam))
}

/// The URL's user, password, database and options, at the discovered host and
/// port; the instance's own database name wins when it has one.
fn at_endpoint(url: &Config, endpoint: &rds::Endpoint) -> Config {
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

/// bb8 only says "timed out" to the caller; this logs why connecting failed.
#[derive(Debug, Clone, Copy)]
struct LogSink;

impl bb8::ErrorSink<ConnectError> for LogSink {
    fn sink(&self, error: ConnectError) {
        let error = match &error {
            ConnectError::Postgres(e) => super::error::describe(e),
            ConnectError::Token(e) => e.to_string(),
        };
        tracing::warn!(error = %error, "database connection failed");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<ConnectError>> {
        Box::new(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovered_endpoint_keeps_the_urls_credentials_and_prefers_the_instance_database() {
        let url: Config = "postgres://wfm:pw@localhost:5432/fallback".parse().unwrap();
        let endpoint = rds::Endpoint {
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
        let endpoint = rds::Endpoint {
            dbname: None,
            ..endpoint
        };
        assert_eq!(at_endpoint(&url, &endpoint).get_dbname(), Some("fallback"));
    }
}
