//! `WFM_DATABASE_URL`: a libpq URL (`postgres://…?sslmode=…`) or key=value
//! string. tokio-postgres parses the rest, but knows neither `verify-ca` /
//! `verify-full` nor `sslrootcert`, so those two are taken out here and
//! reconciled with `WFM_DATABASE_SSLMODE` and `WFM_DATABASE_CA_FILE`: a setting
//! given in one place is honoured; given in both, the two must agree. TLS is
//! never downgraded silently.

use std::{path::PathBuf, str::FromStr};

use super::{ConfigError, SslMode, redact::redact_secrets};

/// The URL's own TLS settings, and the rest of it for tokio-postgres.
#[derive(Debug)]
pub struct DatabaseUrl {
    pub config: tokio_postgres::Config,
    pub ssl_mode: Option<SslMode>,
    pub ca_file: Option<PathBuf>,
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<DatabaseUrl, ConfigError> {
        let (rest, taken) = take_tls_options(raw);
        let mut ssl_mode = None;
        let mut ca_file = None;
        for (key, value) in taken {
            match key.as_str() {
                "sslmode" => ssl_mode = Some(ssl_mode_of(&value)?),
                _ => ca_file = Some(PathBuf::from(value)),
            }
        }
        let config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| ConfigError::DatabaseUrl(redact_secrets(&e.to_string(), raw)))?;
        Ok(DatabaseUrl {
            config,
            ssl_mode,
            ca_file,
        })
    }
}

fn ssl_mode_of(value: &str) -> Result<SslMode, ConfigError> {
    match value {
        "disable" => Ok(SslMode::Disable),
        "require" => Ok(SslMode::Require),
        "verify-ca" => Ok(SslMode::VerifyCa),
        "verify-full" => Ok(SslMode::VerifyFull),
        "allow" | "prefer" => Err(ConfigError::UnsafeSslMode(value.to_owned())),
        _ => Err(ConfigError::DatabaseUrl(
            "sslmode must be disable, require, verify-ca or verify-full".to_owned(),
        )),
    }
}

/// One setting from two places (the variable, the URL): either, or both agreeing.
pub fn reconcile<T: PartialEq + std::fmt::Debug>(
    variable: Option<T>,
    url: Option<T>,
    names: (&'static str, &'static str),
) -> Result<Option<T>, ConfigError> {
    match (variable, url) {
        (Some(a), Some(b)) if a != b => Err(ConfigError::Conflict {
            variable: names.0,
            url_option: names.1,
        }),
        (a, b) => Ok(a.or(b)),
    }
}

const TLS_OPTIONS: [&str; 2] = ["sslmode", "sslrootcert"];

/// Splits `sslmode` and `sslrootcert` off a URL's query or a key=value string.
fn take_tls_options(raw: &str) -> (String, Vec<(String, String)>) {
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        take_from_query(raw)
    } else {
        take_from_pairs(raw)
    }
}

fn take_from_query(raw: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = raw.split_once('?') else {
        return (raw.to_owned(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if TLS_OPTIONS.contains(&key) {
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            taken.push((key.to_owned(), value.into_owned()));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, taken)
}

/// `key = value` pairs, values optionally single-quoted with `\` escapes
/// (libpq's conninfo syntax).
fn take_from_pairs(raw: &str) -> (String, Vec<(String, String)>) {
    let mut kept = String::new();
    let mut taken = Vec::new();
    let mut rest = raw.trim_start();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else {
            kept.push_str(rest);
            break;
        };
        let key = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let (value, len) = conninfo_value(after);
        let pair = &rest[..rest.len() - after.len() + len];
        if TLS_OPTIONS.contains(&key) {
            taken.push((key.to_owned(), value));
        } else {
            kept.push_str(pair);
            kept.push(' ');
        }
        rest = after[len..].trim_start();
    }
    (kept.trim_end().to_owned(), taken)
}

/// A conninfo value at the start of `text`: its unquoted form and its length.
fn conninfo_value(text: &str) -> (String, usize) {
    let mut value = String::new();
    let mut chars = text.char_indices();
    if !text.starts_with('\'') {
        let end = text.find(char::is_whitespace).unwrap_or(text.len());
        return (text[..end].to_owned(), end);
    }
    chars.next();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    value.push(escaped);
                }
            }
            '\'' => return (value, i + 1),
            c => value.push(c),
        }
    }
    (value, text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urls_sslmode_and_root_certificate_are_taken_out_for_tokio_postgres() {
        let url = DatabaseUrl::parse(
            "postgres://u:pw@db:5432/wfm?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Frds.pem",
        )
        .unwrap();
        assert_eq!(url.ssl_mode, Some(SslMode::VerifyFull));
        assert_eq!(url.ca_file, Some(PathBuf::from("/etc/rds.pem")));
        assert_eq!(url.config.get_application_name(), Some("x"));
        assert_eq!(url.config.get_dbname(), Some("wfm"));
    }

    #[test]
    fn key_value_strings_work_the_same_way() {
        let url =
            DatabaseUrl::parse("host=db user=u password='p w\\'x' sslmode=require dbname=wfm")
                .unwrap();
        assert_eq!(url.ssl_mode, Some(SslMode::Require));
        assert_eq!(url.config.get_password(), Some(&b"p w'x"[..]));
        assert_eq!(url.config.get_dbname(), Some("wfm"));
    }

    #[test]
    fn a_url_without_tls_options_has_none() {
        let url = DatabaseUrl::parse("postgres://postgres@127.0.0.1/wfm").unwrap();
        assert_eq!((url.ssl_mode, url.ca_file), (None, None));
    }

    #[test]
    fn modes_that_fall_back_to_plaintext_are_refused() {
        for mode in ["prefer", "allow"] {
            let err = DatabaseUrl::parse(&format!("postgres://db/wfm?sslmode={mode}")).unwrap_err();
            assert!(matches!(err, ConfigError::UnsafeSslMode(_)), "{err}");
        }
    }

    #[test]
    fn the_same_setting_in_two_places_must_agree() {
        let names = ("WFM_DATABASE_SSLMODE", "sslmode");
        assert_eq!(reconcile(Some(1), None, names).unwrap(), Some(1));
        assert_eq!(reconcile(None, Some(2), names).unwrap(), Some(2));
        assert_eq!(reconcile(Some(3), Some(3), names).unwrap(), Some(3));
        let err = reconcile(Some(1), Some(2), names).unwrap_err().to_string();
        assert!(
            err.contains("WFM_DATABASE_SSLMODE") && err.contains("sslmode"),
            "{err}"
        );
    }
}
