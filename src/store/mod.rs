//! PostgreSQL: the connection pool, the schema bootstrap, and the batched,
//! set-based writes of checkins and versions.
//!
//! Every write here is idempotent (checkins dedup on their key, clusters and
//! versions are upserts by event time), which is what makes "retry, then ack"
//! safe when a COMMIT's outcome is unknown.

mod bootstrap;
mod checkins;
mod error;
pub mod history;
mod manager;
mod pool;
pub mod rds;
pub mod tls;
mod versions;
mod write;

pub use bootstrap::{BOOTSTRAP_LOCK_KEY, BootstrapError, MIGRATIONS, Migration, apply_migrations};
pub use checkins::{INSERT_CHECKINS, KEYS_LOCK, SHARE_KEYS, write_checkins};
pub use error::{ErrorClass, StoreError, breaks_connection, classify, classify_code};
pub use manager::{ConnectError, Manager, PgConnection};
pub use pool::{Pool, SetupError, connect_pool, pool_with};
pub use versions::write_versions;
pub use write::{RowFailure, WriteOutcome};
