//! PostgreSQL: the connection pool, the schema bootstrap, and the batched,
//! set-based writes of checkins and versions.
//!
//! Every write here is idempotent (checkins dedup on `message_id`, clusters and
//! versions are upserts), which is what makes "retry, then ack" safe when a
//! COMMIT's outcome is unknown.

mod batch;
mod bootstrap;
mod checkins;
mod error;
mod manager;
mod pool;
pub mod rds;
pub mod tls;
mod versions;

pub use batch::BatchOutcome;
pub use bootstrap::{BootstrapError, MIGRATIONS, Migration, apply_migrations};
pub use checkins::write_checkins;
pub use error::{ErrorClass, StoreError, classify};
pub use manager::{ConnectError, Manager, PgConnection};
pub use pool::{Pool, SetupError, connect_pool, pool_with};
pub use versions::write_versions;
