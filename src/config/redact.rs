//! Log-safe descriptions of connection targets: enough to recognise a broker
//! or a database in a log line, never a password.

use lapin::uri::AMQPUri;

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

// AMQPUri's own Debug prints the password; this one must not.
impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("uri", &describe_amqp(&self.uri))
            .field("connection_name", &self.connection_name)
            .field("topology", &self.topology)
            .finish()
    }
}
