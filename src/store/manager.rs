//! The pool's connection manager: bb8-postgres's, plus a way to retire a
//! connection that still looks open but must not be reused.
//!
//! `Client::is_closed` only notices a socket the server closed. A connection
//! left on a read-only node after a failover (SQLSTATE 25006), or one whose
//! statement timed out on a black-holed network, is open but useless: the store
//! marks it broken and bb8 drops it instead of handing it out again.

use std::{
    ops::{Deref, DerefMut},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::{Client, Config, NoTls};

/// A pooled PostgreSQL client that can be marked broken.
pub struct PgConnection {
    client: Client,
    broken: Arc<AtomicBool>,
}

impl PgConnection {
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

pub struct Manager {
    inner: PostgresConnectionManager<NoTls>,
}

impl Manager {
    pub fn new(config: Config) -> Self {
        Manager {
            inner: PostgresConnectionManager::new(config, NoTls),
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = PgConnection;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PgConnection, tokio_postgres::Error> {
        let client = self.inner.connect().await?;
        Ok(PgConnection {
            client,
            broken: Arc::default(),
        })
    }

    async fn is_valid(&self, conn: &mut PgConnection) -> Result<(), tokio_postgres::Error> {
        conn.client.simple_query("").await.map(drop)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.broken.load(Ordering::Relaxed) || conn.client.is_closed()
    }
}
