//! The one place that decides what a database error means for a message.
//!
//! SQLSTATE classes: <https://www.postgresql.org/docs/current/errcodes-appendix.html>.

use super::ConnectError;
use crate::message::Rejection;

/// A failure of the store, with enough context to log and classify.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no database connection available: {}", match .0 {
        bb8::RunError::User(ConnectError::Postgres(e)) => describe(e),
        bb8::RunError::User(e) => e.to_string(),
        bb8::RunError::TimedOut => "timed out".to_owned(),
    })]
    Pool(#[from] bb8::RunError<ConnectError>),
    #[error("database statement failed: {}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("database batch took longer than {0:?}; its connection was dropped")]
    TimedOut(std::time::Duration),
}

/// What an error says about retrying the work that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The database or the path to it is unwell; the same work will succeed later.
    Transient,
    /// This data can never be stored (SQLSTATE classes 22 and 23).
    Data,
    /// Neither: a bug, a permission, a missing object. Retried a bounded number
    /// of times, then dead-lettered, so one message cannot wedge a queue.
    Other,
}

impl StoreError {
    pub fn class(&self) -> ErrorClass {
        match self {
            // bb8 reports every failed connect as a time-out.
            Self::Pool(bb8::RunError::TimedOut) => ErrorClass::Transient,
            Self::Pool(bb8::RunError::User(ConnectError::Postgres(e))) | Self::Query(e) => {
                classify(e)
            }
            // Minting a token needs credentials that may be refreshing.
            Self::Pool(bb8::RunError::User(ConnectError::Token(_))) => ErrorClass::Transient,
            Self::TimedOut(_) => ErrorClass::Transient,
        }
    }

    /// Whether the connection that saw this error must not be reused: it is
    /// gone, or it points at a node that cannot take writes.
    pub fn breaks_connection(&self) -> bool {
        match self {
            Self::Query(e) => match e.code() {
                None => true,
                Some(code) => {
                    let code = code.code();
                    code.starts_with("08") || code.starts_with("57P") || code == "25006"
                }
            },
            Self::Pool(_) | Self::TimedOut(_) => false,
        }
    }
}

/// Classifies a tokio-postgres error.
pub fn classify(error: &tokio_postgres::Error) -> ErrorClass {
    let Some(code) = error.code() else {
        // No SQLSTATE: the socket closed, a time-out, a protocol failure.
        return ErrorClass::Transient;
    };
    let code = code.code();
    match code.get(..2) {
        // connection exception; insufficient resources; operator intervention
        // (admin shutdown, crash shutdown, cannot connect now); system error.
        Some("08" | "53" | "57" | "58") => ErrorClass::Transient,
        Some("22" | "23") => ErrorClass::Data,
        // serialization failure, deadlock detected.
        Some("40") => ErrorClass::Transient,
        // read-only transaction after a failover: the connection points at a replica.
        _ if code == "25006" => ErrorClass::Transient,
        _ => ErrorClass::Other,
    }
}

/// An error as an operator needs to read it: tokio-postgres shows a server
/// error only as "db error", its message and SQLSTATE are inside.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => error.to_string(),
    }
}

/// The rejection of one message whose data PostgreSQL refused.
pub(crate) fn data_rejection(error: &tokio_postgres::Error) -> Rejection {
    let (reason, sqlstate) = match error.as_db_error() {
        Some(db) => (
            match db.detail() {
                Some(detail) => format!("{} ({detail})", db.message()),
                None => db.message().to_owned(),
            },
            db.code().code().to_owned(),
        ),
        None => (error.to_string(), String::new()),
    };
    Rejection::by_database(reason, sqlstate)
}
