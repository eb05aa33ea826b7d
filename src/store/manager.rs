//! The pool's connection manager: bb8-postgres's, plus TLS, IAM tokens, and a
//! way to retire a connection that still looks open but must not be reused.
//!
//! `Client::is_closed` only notices a socket the server closed. A connection
//! left on a read-only node after a failover (SQLSTATE 25006), or one whose
//! statement timed out on a black-holed network, is open but useless: the store
//! marks it broken and bb8 drops it instead of handing it out again.

use std::{
    collections::HashMap,
    ops::{Deref, DerefMut},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::{Client, Config, NoTls, Statement, config::Host, types::Type};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::rds::{IamAuth, RdsError};

/// Why a new connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Token(#[from] RdsError),
}

/// A pooled PostgreSQL client that can be marked broken, with the batch
/// statements it has prepared.
pub struct PgConnection {
    client: Client,
    broken: Arc<AtomicBool>,
    statements: HashMap<&'static str, Statement>,
}

impl PgConnection {
    /// `sql` prepared on this connection, once: PostgreSQL then parses the
    /// batch statements (CTEs over several tables) once per connection
    /// instead of at every batch, where planning alone took ~1 ms. It plans
    /// the first five executions with their values (`plan_cache_mode =
    /// auto`), then keeps the generic plan for the connection's life, which
    /// it finds no dearer for these statements (BENCHMARKS.md, "A batch's
    /// plan"). PostgreSQL re-plans a prepared statement by itself when a table
    /// it uses changes (a conversion to partitions, say).
    pub async fn prepared(
        &mut self,
        sql: &'static str,
        types: &[Type],
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare_typed(sql, types).await?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Makes bb8 drop this connection when it is returned.
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// A handle that marks this connection broken from elsewhere (a time-out).
    pub fn breaker(&self) -> Arc<AtomicBool> {
        self.broken.clone()
    }
}

impl Deref for PgConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgConnection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Connects with the resolved configuration: plaintext or rustls, and with a
/// fresh IAM token as the password of every new connection when IAM is on.
pub struct Manager {
    config: Config,
    tls: Option<MakeRustlsConnect>,
    iam: Option<IamAuth>,
}

impl Manager {
    pub fn new(config: Config, tls: Option<MakeRustlsConnect>, iam: Option<IamAuth>) -> Self {
        Manager { config, tls, iam }
    }

    async fn config_for_next_connection(&self) -> Result<Config, ConnectError> {
        let mut config = self.config.clone();
        if let Some(iam) = &self.iam {
            let host = match config.get_hosts().first() {
                Some(Host::Tcp(host)) => host.clone(),
                _ => "localhost".to_owned(),
            };
            let port = config.get_ports().first().copied().unwrap_or(5432);
            let user = config.get_user().unwrap_or("postgres").to_owned();
            config.password(iam.token(&host, port, &user).await?);
        }
        Ok(config)
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = PgConnection;
    type Error = ConnectError;

    async fn connect(&self) -> Result<PgConnection, ConnectError> {
        let config = self.config_for_next_connection().await?;
        let client = match &self.tls {
            None => {
                PostgresConnectionManager::new(config, NoTls)
                    .connect()
                    .await?
            }
            Some(tls) => {
                PostgresConnectionManager::new(config, tls.clone())
                    .connect()
                    .await?
            }
        };
        Ok(PgConnection {
            client,
            broken: Arc::default(),
            statements: HashMap::new(),
        })
    }

    async fn is_valid(&self, conn: &mut PgConnection) -> Result<(), ConnectError> {
        Ok(conn.client.simple_query("").await.map(drop)?)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.broken.load(Ordering::Relaxed) || conn.client.is_closed()
    }
}
