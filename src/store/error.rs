//! The one place that decides what a database error means.
//!
//! SQLSTATE codes: <https://www.postgresql.org/docs/current/errcodes-appendix.html>.
//! Every decision the store and the pipeline make about an error (retry the
//! batch, dead-letter the row, hand the message back, drop the connection)
//! starts from [`classify_code`] and [`breaks_connection`].

use super::ConnectError;
use crate::message::{Rejection, excerpt};

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
    #[error("cannot connect to the database: {}", match .0 {
        ConnectError::Postgres(e) => describe(e),
        e => e.to_string(),
    })]
    Connect(#[from] ConnectError),
    #[error("database batch took longer than {0:?}; its connection was dropped")]
    TimedOut(std::time::Duration),
    /// The batch failed, and so did a neutral row written the same way: the
    /// fault is the database's (a revoked grant, a missing table, a trigger
    /// refusing everything), not any message's.
    #[error("every write fails, a neutral probe row too: {message} (SQLSTATE {sqlstate})")]
    Systemic { sqlstate: String, message: String },
}

/// What an error says about retrying the work that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The database or the path to it is unwell; the same work will succeed later.
    Transient,
    /// This row's data can never be stored (SQLSTATE classes 22, 23 and 54).
    Data,
    /// Neither: a bug, a permission, a missing object, a raising trigger.
    Other,
}

/// Classifies a SQLSTATE (`None`: no server error — the socket closed, a
/// time-out, a protocol failure).
pub fn classify_code(code: Option<&str>) -> ErrorClass {
    let Some(code) = code else {
        return ErrorClass::Transient;
    };
    match code {
        // connection exception; insufficient resources (disk full, out of
        // memory, too many connections); serialization failure, deadlock;
        // admin/crash shutdown, cannot connect now, idle session time-out;
        // system and I/O errors; lock not available (lock_timeout); read-only
        // transaction after a failover (the connection points at a replica).
        _ if code.starts_with("08") || code.starts_with("53") => ErrorClass::Transient,
        "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "57P05" | "58000" | "58030" | "55P03"
        | "25006" => ErrorClass::Transient,
        // data exception; integrity constraint violation; program limit
        // exceeded (a value too deep or too large for the server: 54001, 54000).
        _ if code.starts_with("22") || code.starts_with("23") || code.starts_with("54") => {
            ErrorClass::Data
        }
        _ => ErrorClass::Other,
    }
}

/// Whether the connection that saw `code` must not be reused: it is gone, or
/// it points at a node that cannot take writes.
pub fn breaks_connection(code: Option<&str>) -> bool {
    match code {
        None => true,
        Some(code) => code.starts_with("08") || code.starts_with("57P") || code == "25006",
    }
}

/// Classifies a tokio-postgres error.
pub fn classify(error: &tokio_postgres::Error) -> ErrorClass {
    classify_code(error.code().map(|c| c.code()))
}

impl StoreError {
    pub fn class(&self) -> ErrorClass {
        match self {
            // bb8 reports every failed connect as a time-out.
            Self::Pool(bb8::RunError::TimedOut) | Self::TimedOut(_) => ErrorClass::Transient,
            Self::Pool(bb8::RunError::User(ConnectError::Postgres(e)))
            | Self::Connect(ConnectError::Postgres(e))
            | Self::Query(e) => classify(e),
            // Minting a token needs credentials that may be refreshing.
            Self::Pool(bb8::RunError::User(ConnectError::Token(_)))
            | Self::Connect(ConnectError::Token(_)) => ErrorClass::Transient,
            Self::Systemic { sqlstate, .. } => classify_code(Some(sqlstate)),
        }
    }

    /// Whether the connection that saw this error must not be reused.
    pub fn breaks_connection(&self) -> bool {
        match self {
            Self::Query(e) => breaks_connection(e.code().map(|c| c.code())),
            Self::Pool(_) | Self::Connect(_) | Self::TimedOut(_) | Self::Systemic { .. } => false,
        }
    }
}

/// An error as an operator needs to read it: tokio-postgres shows a server
/// error only as "db error", its message and SQLSTATE are inside. Bounded:
/// server messages can quote values.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            excerpt_message(db.message()),
            db.code().code()
        ),
        None => error.to_string(),
    }
}

/// The rejection of one message whose data PostgreSQL refused. The detail
/// (e.g. "Failing row contains (…)") quotes the row, so only an excerpt of it.
pub(crate) fn data_rejection(error: &tokio_postgres::Error) -> Rejection {
    let (reason, sqlstate) = match error.as_db_error() {
        Some(db) => (
            match db.detail() {
                Some(detail) => format!("{} ({})", excerpt_message(db.message()), excerpt(detail)),
                None => excerpt_message(db.message()),
            },
            db.code().code().to_owned(),
        ),
        None => (error.to_string(), String::new()),
    };
    Rejection::by_database(reason, sqlstate)
}

/// Server messages name things (constraints, columns) and rarely quote data;
/// a generous excerpt keeps the names.
fn excerpt_message(message: &str) -> String {
    crate::message::bounded(message.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_fall_in_the_documented_classes() {
        for code in [
            "08006", "53100", "53300", "40001", "40P01", "57P01", "25006", "55P03",
        ] {
            assert_eq!(classify_code(Some(code)), ErrorClass::Transient, "{code}");
        }
        for code in ["22021", "22P05", "23505", "23514", "54001", "54000"] {
            assert_eq!(classify_code(Some(code)), ErrorClass::Data, "{code}");
        }
        for code in ["42501", "42P01", "P0001", "57014", "XX000", "57P04"] {
            assert_eq!(classify_code(Some(code)), ErrorClass::Other, "{code}");
        }
        assert_eq!(classify_code(None), ErrorClass::Transient);
    }

    #[test]
    fn only_lost_or_read_only_connections_are_retired() {
        assert!(breaks_connection(None));
        assert!(breaks_connection(Some("08006")));
        assert!(breaks_connection(Some("57P01")));
        assert!(breaks_connection(Some("25006")));
        assert!(!breaks_connection(Some("40001")));
        assert!(!breaks_connection(Some("23505")));
    }
}
