//! The bb8 pool of PostgreSQL connections.

use std::time::Duration;

use super::manager::Manager;
use crate::config::DatabaseSettings;

pub type Pool = bb8::Pool<Manager>;

/// Builds the pool without connecting: the first use reports an unreachable
/// database (with its real cause, through the error sink) instead of start-up
/// failing on a database that is merely restarting.
pub fn connect_pool(settings: &DatabaseSettings) -> Pool {
    let mut config = settings.config.clone();
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
        .build_unchecked(Manager::new(config))
}

/// bb8 only says "timed out" to the caller; this logs why connecting failed.
#[derive(Debug, Clone, Copy)]
struct LogSink;

impl bb8::ErrorSink<tokio_postgres::Error> for LogSink {
    fn sink(&self, error: tokio_postgres::Error) {
        tracing::warn!(error = %error, "database connection failed");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<tokio_postgres::Error>> {
        Box::new(*self)
    }
}
