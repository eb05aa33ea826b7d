//! Log-safe descriptions of connection targets: enough to recognise a broker
//! or a database in a log line, never a password.

use lapin::uri::AMQPUri;
use percent_encoding::percent_decode_str;

use super::BrokerSettings;

/// `user@host:port/vhost`: enough to recognise a broker in a log line, never the password.
pub fn describe_amqp(uri: &AMQPUri) -> String {
    format!(
        "{}://{}@{}:{}/{}",
        if matches!(uri.scheme, lapin::uri::AMQPScheme::AMQPS) {
            "amqps"
        } else {
            "amqp"
        },
        uri.authority.userinfo.username,
        uri.authority.host,
        uri.authority.port,
        uri.vhost
    )
}

/// Every node, described as [`describe_amqp`] does, comma-separated.
pub fn describe_nodes(nodes: &[AMQPUri]) -> String {
    nodes
        .iter()
        .map(describe_amqp)
        .collect::<Vec<_>>()
        .join(",")
}

/// `user@host:port/dbname`: the PostgreSQL target without its password.
pub fn describe_postgres(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{}:{}/{}",
        config.get_user().unwrap_or("?"),
        host,
        port,
        config.get_dbname().unwrap_or("?")
    )
}

/// `message` with every secret of the connection string `raw` replaced by
/// `***`: its user-info (`user:password` before the host, percent-encoded or
/// not) and any `password=` value. Parsers quote what they could not parse —
/// sometimes the whole URL — so their messages pass through here before they
/// are shown.
pub fn redact_secrets(message: &str, raw: &str) -> String {
    let mut secrets: Vec<String> = Vec::new();
    let after_scheme = raw.split_once(':').map_or(raw, |(_, rest)| rest);
    let authority = after_scheme.trim_start_matches('/');
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        secrets.push(userinfo.to_owned());
        if let Some((_, password)) = userinfo.split_once(':') {
            secrets.push(password.to_owned());
        }
    }
    for pair in raw.split([' ', '&', '?']) {
        if let Some(value) = pair.trim().strip_prefix("password=") {
            secrets.push(value.trim_matches('\'').to_owned());
        }
    }
    let decoded: Vec<String> = secrets
        .iter()
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    secrets.extend(decoded);
    // Longest first, so a password inside the user-info is not half-replaced.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut redacted = message.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        redacted = redacted.replace(secret.as_str(), "***");
    }
    redacted
}

// AMQPUri's own Debug prints the password; this one must not.
impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("nodes", &describe_nodes(&self.nodes))
            .field("connection_name", &self.connection_name)
            .field("topology", &self.topology)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::redact_secrets;

    #[test]
    fn user_info_and_passwords_are_replaced_wherever_they_appear() {
        let raw = "amqp:guest:s3cr%40t@host:notaport/";
        let message = format!("Invalid URL: '{raw}' (password s3cr@t)");
        let shown = redact_secrets(&message, raw);
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("host:notaport"), "{shown}");
        let kv = "host=db password='hunter2' port=x";
        assert!(!redact_secrets(&format!("bad: {kv}"), kv).contains("hunter2"));
    }
}
