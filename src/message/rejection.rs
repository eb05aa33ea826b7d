//! Why a message will never be stored. Travels with its dead-letter copy as the
//! `x-wfm-error*` headers, so an operator can read the reason off the queue.

/// Class of rejection, sent as header `x-wfm-error-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// Not UTF-8, not JSON, failed validation, or too large.
    Invalid,
    /// PostgreSQL refused the message's data (SQLSTATE class 22 or 23).
    RejectedByDatabase,
    /// Failed too many times for a reason that is neither transient nor data.
    TooManyDeliveries,
}

impl RejectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::RejectedByDatabase => "rejected-by-database",
            Self::TooManyDeliveries => "too-many-deliveries",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectionKind,
    /// Human-readable, names the offending field; never contains the payload.
    pub reason: String,
    /// SQLSTATE of a database refusal.
    pub sqlstate: Option<String>,
}

impl Rejection {
    pub fn invalid(reason: String) -> Self {
        Self {
            kind: RejectionKind::Invalid,
            reason,
            sqlstate: None,
        }
    }

    pub fn by_database(reason: String, sqlstate: String) -> Self {
        Self {
            kind: RejectionKind::RejectedByDatabase,
            reason,
            sqlstate: Some(sqlstate),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.reason)
    }
}
