//! A fresh PostgreSQL database per test, dropped (WITH (FORCE)) when the guard is.

use tokio_postgres::{Client, Config, NoTls};
use wfm_worker::{
    config::DatabaseSettings,
    store::{self, BOOTSTRAP_LOCK_KEY},
};

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// Creates `wfm_test_<pid>_<uuid>`. Databases left by dead test processes
    /// (a crash skips `Drop`) are swept first; the pid tells which are dead.
    pub async fn create() -> TestDb {
        let admin = connect(ADMIN_URL).await;
        sweep_leftovers(&admin).await;
        let name = format!(
            "wfm_test_{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        TestDb { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// The same database through another address (a proxy).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        format!("postgres://postgres@{addr}/{}", self.name)
    }

    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings::plain(self.url().parse::<Config>().unwrap(), 4)
    }

    /// Bootstraps the schema as the worker would, then runs `sql` on it (a
    /// constraint or trigger this test needs).
    pub async fn bootstrap_then(&self, sql: &str) {
        wfm_worker::app::bootstrap(&self.settings()).await.unwrap();
        self.client().await.batch_execute(sql).await.unwrap();
    }

    /// Bootstraps the schema as the worker would, then opens a pool of one
    /// connection on it, to drive the store directly.
    pub async fn bootstrapped_pool(&self) -> store::Pool {
        wfm_worker::app::bootstrap(&self.settings()).await.unwrap();
        let settings = DatabaseSettings::plain(self.url().parse::<Config>().unwrap(), 1);
        store::connect_pool(&settings).await.unwrap()
    }

    pub async fn client(&self) -> Client {
        connect(&self.url()).await
    }

    /// `None` while the query cannot run yet (the worker has not bootstrapped).
    pub async fn try_count(&self, sql: &str) -> Option<i64> {
        let row = self.client().await.query_one(sql, &[]).await.ok()?;
        Some(row.get(0))
    }

    /// A login role of this database's own (`<database>_worker`, password
    /// `worker`), with what the worker needs after bootstrap (which runs as
    /// `postgres`): reading and writing the tables, using their sequences.
    /// Dropped with the database.
    pub async fn worker_role(&self) -> String {
        let role = format!("{}_worker", self.name);
        wfm_worker::app::bootstrap(&self.settings()).await.unwrap();
        self.client()
            .await
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD 'worker';
                 GRANT CREATE, USAGE ON SCHEMA public TO {role};
                 GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role};
                 GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};"
            ))
            .await
            .unwrap();
        role
    }

    /// Settings that connect as `role` (see [`TestDb::worker_role`]).
    pub fn settings_as(&self, role: &str) -> DatabaseSettings {
        let url = format!("postgres://{role}:worker@127.0.0.1:5432/{}", self.name);
        DatabaseSettings::plain(url.parse::<Config>().unwrap(), 4)
    }

    /// The first column of every row `sql` returns, as text.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        self.client()
            .await
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Holds the worker's bootstrap lock, as another replica bootstrapping
    /// would: a worker started meanwhile waits before it applies the schema.
    pub async fn hold_bootstrap(&self) -> BootstrapHold {
        let client = self.client().await;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&BOOTSTRAP_LOCK_KEY])
            .await
            .unwrap();
        BootstrapHold(client)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }
}

/// The session holding the bootstrap lock ([`TestDb::hold_bootstrap`]); a
/// client of the test's database meanwhile.
pub struct BootstrapHold(Client);

impl BootstrapHold {
    pub async fn release(&self) {
        self.0
            .execute("SELECT pg_advisory_unlock($1)", &[&BOOTSTRAP_LOCK_KEY])
            .await
            .unwrap();
    }
}

impl std::ops::Deref for BootstrapHold {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.0
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to local PostgreSQL");
    tokio::spawn(connection);
    client
}

async fn sweep_leftovers(admin: &Client) {
    let rows = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'wfm_test_%'",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            drop_database(admin, &name).await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        super::clean_up(async move {
            drop_database(&connect(ADMIN_URL).await, &name).await;
        });
    }
}

/// Drops a test database and the role made for it, if any.
async fn drop_database(admin: &Client, name: &str) {
    // Two statements: DROP DATABASE may not share an (implicit) transaction.
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    let _ = admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {name}_worker"))
        .await;
}

/// How often each of this session's prepared statements whose text contains
/// `fragment` was planned: (generic plans, custom plans). PostgreSQL 14+.
pub async fn plans(client: &Client, fragment: &str) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements \
              WHERE strpos(statement, $1) > 0",
            &[&fragment],
        )
        .await
        .expect("one prepared statement matches");
    (row.get(0), row.get(1))
}

/// PostgreSQL plans a prepared statement's first executions with their
/// values ("custom plans", five of them) and keeps its generic plan from
/// then on if that plan costs no more. A batch statement must settle so:
/// re-planned at every batch it costs ~0.35 ms more each time (BENCHMARKS.md,
/// "A batch's plan").
pub fn assert_settled_on_one_plan((generic, custom): (i64, i64), batches: i64) {
    assert!(
        custom <= 5 && generic == batches - custom,
        "of {batches} batches, {custom} planned with their values and {generic} with the generic plan"
    );
}
