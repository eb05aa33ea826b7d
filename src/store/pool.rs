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
    let (mut config, iam) = rds::resolve(settings).await?;
    let connector = tls::connector(settings.ssl_mode, settings.ca_file.as_deref())?;
    config.ssl_mode(if connector.is_some() {
        PgSslMode::Require
    } else {
        PgSslMode::Disable
    });
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
        .connection_timeout(settings.pool_wait)
        .error_sink(Box::new(LogSink))
        .build_unchecked(Manager::new(config, tls, iam))
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
