//! Why a message will never be stored. Travels with its dead-letter copy as the
//! `x-wfm-error*` headers, so an operator can read the reason off the queue.
//!
//! Invariant: a reason is at most [`MAX_REASON_BYTES`] and quotes at most
//! [`EXCERPT_CHARS`] characters of any one value it repeats. Reasons come from
//! serde, uuid, chrono and PostgreSQL, all of which quote the offending value
//! whole (a 200 KB string comes back in `invalid type: string "…"`); unbounded,
//! one such reason in a header makes the broker close the whole connection
//! (`501 FRAME_ERROR`), and in a log line it leaks the payload.

/// Longest reason, in bytes (cut on a UTF-8 boundary).
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest excerpt of a value quoted in a reason, in characters.
pub const EXCERPT_CHARS: usize = 40;

/// Class of rejection, sent as header `x-wfm-error-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// Not UTF-8, not JSON, failed validation, or too large.
    Invalid,
    /// PostgreSQL refused the message's data (SQLSTATE class 22, 23 or 54).
    RejectedByDatabase,
    /// Failed alone too many times for a reason that is neither transient nor data.
    TooManyDeliveries,
}

impl RejectionKind {
    pub const ALL: [RejectionKind; 3] = [
        Self::Invalid,
        Self::RejectedByDatabase,
        Self::TooManyDeliveries,
    ];

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
    /// Human-readable, names the offending field; bounded (see the module docs).
    pub reason: String,
    /// SQLSTATE of a database refusal.
    pub sqlstate: Option<String>,
}

impl Rejection {
    pub fn invalid(reason: impl Into<String>) -> Self {
        Self::new(RejectionKind::Invalid, reason.into(), None)
    }

    pub fn by_database(reason: String, sqlstate: String) -> Self {
        Self::new(RejectionKind::RejectedByDatabase, reason, Some(sqlstate))
    }

    pub fn too_many_deliveries(reason: String) -> Self {
        Self::new(RejectionKind::TooManyDeliveries, reason, None)
    }

    fn new(kind: RejectionKind, reason: String, sqlstate: Option<String>) -> Self {
        Self {
            kind,
            reason: bounded(shorten_quoted(&reason)),
            sqlstate: sqlstate.map(|s| bounded(s.chars().take(5).collect())),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.reason)
    }
}

/// `text` cut to at most [`MAX_REASON_BYTES`] on a character boundary, with
/// `…` marking the cut.
pub fn bounded(mut text: String) -> String {
    if text.len() > MAX_REASON_BYTES {
        let cut = text.floor_char_boundary(MAX_REASON_BYTES - '…'.len_utf8());
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The first [`EXCERPT_CHARS`] characters of `text`, `…` marking a cut.
pub fn excerpt(text: &str) -> String {
    let mut chars = text.char_indices();
    match chars.nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Every double-quoted run in `text` (as serde and PostgreSQL quote values)
/// cut to an excerpt; backslash escapes inside a run are respected.
fn shorten_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REASON_BYTES + 8));
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        let (mut kept, mut escaped) = (0, false);
        for c in chars.by_ref() {
            let closing = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            if closing {
                if kept > EXCERPT_CHARS {
                    out.push('…');
                }
                out.push('"');
                break;
            }
            kept += 1;
            if kept <= EXCERPT_CHARS {
                out.push(c);
            }
        }
        if out.len() > 2 * MAX_REASON_BYTES {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let reason = bounded("é".repeat(2000));
        assert!(reason.len() <= MAX_REASON_BYTES, "{}", reason.len());
        assert!(reason.ends_with('…'));
    }

    #[test]
    fn quoted_values_are_cut_to_an_excerpt() {
        let serde = format!(
            "invalid type: string \"{}\", expected a sequence",
            "x".repeat(200_000)
        );
        let r = Rejection::invalid(format!("`components`: {serde}"));
        assert_eq!(
            r.reason,
            format!(
                "`components`: invalid type: string \"{}…\", expected a sequence",
                "x".repeat(EXCERPT_CHARS)
            )
        );
    }

    #[test]
    fn escaped_quotes_do_not_end_a_quoted_run() {
        let r = Rejection::invalid(format!("value \"a\\\"{}\" here", "y".repeat(100)));
        assert!(r.reason.ends_with("…\" here"), "{}", r.reason);
    }

    #[test]
    fn an_unclosed_quote_still_stays_bounded() {
        let r = Rejection::invalid(format!("oops \"{}", "z".repeat(100_000)));
        assert!(r.reason.len() < 100, "{}", r.reason);
    }

    #[test]
    fn excerpts_keep_short_text_whole() {
        assert_eq!(excerpt("short"), "short");
        assert_eq!(excerpt(&"a".repeat(50)).chars().count(), EXCERPT_CHARS + 1);
    }
}
