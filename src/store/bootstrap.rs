//! Schema bootstrap: the SQL files of `sql/`, embedded at build time, applied in
//! order before any message is consumed.
//!
//! Each file runs in its own transaction together with the row that records it,
//! so a file is either wholly applied and recorded or not at all. Replicas that
//! start together queue on one advisory lock: without it, concurrent
//! `CREATE TABLE IF NOT EXISTS` can still fail with 23505 or 42P07.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// One schema file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../sql/", $name, ".sql")),
        }
    };
}

/// Every schema file, in order. A file named here but missing fails the build.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_legacy_schema"),
    migration!(2, "0002_checkin_dedup_and_event_time"),
    migration!(3, "0003_lz4_documents"),
    migration!(4, "0004_version_publish_time"),
    migration!(5, "0005_versions_data_repair"),
    migration!(6, "0006_checkin_history"),
    migration!(7, "0007_clusters_fillfactor"),
    migration!(8, "0008_version_publishes_bytewise_keys"),
];

/// The session advisory lock a bootstrap holds. Arbitrary but fixed: every
/// replica must take the same lock ("wfm" in ASCII).
pub const BOOTSTRAP_LOCK_KEY: i64 = 0x0077_666d;

const LOCK: &str = "SELECT pg_advisory_lock($1)";
const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";
const CREATE_LEDGER: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version bigint PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())";
const SELECT_APPLIED: &str =
    "SELECT version, name, checksum FROM schema_migrations ORDER BY version";
const RECORD_APPLIED: &str =
    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("schema bootstrap failed: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error(
        "schema file sql/{name}.sql was applied with checksum {applied} but is now {current}: applied files must never change; add a new file instead"
    )]
    ChecksumMismatch {
        name: String,
        applied: String,
        current: String,
    },
    #[error("applying schema file sql/{name}.sql failed: {source}")]
    Apply {
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl Migration {
    pub fn checksum(&self) -> String {
        let digest = Sha256::digest(self.sql.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Applies every file not yet applied, holding the bootstrap lock throughout.
/// Returns how many files were applied (0 on a database already up to date).
pub async fn apply_migrations(client: &mut Client) -> Result<usize, BootstrapError> {
    client.execute(LOCK, &[&BOOTSTRAP_LOCK_KEY]).await?;
    let result = apply_locked(client).await;
    // A session lock outlives a failed statement; release it whatever happened
    // (closing the connection would release it too).
    let unlocked = client.execute(UNLOCK, &[&BOOTSTRAP_LOCK_KEY]).await;
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn apply_locked(client: &mut Client) -> Result<usize, BootstrapError> {
    client.batch_execute(CREATE_LEDGER).await?;
    let recorded = client.query(SELECT_APPLIED, &[]).await?;
    let mut applied = 0;
    for migration in MIGRATIONS {
        let row = recorded
            .iter()
            .find(|r| r.get::<_, i64>(0) == migration.version);
        match row {
            Some(row) => verify_unchanged(migration, row.get(1), row.get(2))?,
            None => {
                apply_one(client, migration).await?;
                applied += 1;
            }
        }
    }
    for row in &recorded {
        let version: i64 = row.get(0);
        if !MIGRATIONS.iter().any(|m| m.version == version) {
            // A newer worker applied it; files are additive, so older code still works.
            tracing::warn!(
                version,
                name = row.get::<_, &str>(1),
                "database has a schema file this worker does not know"
            );
        }
    }
    Ok(applied)
}

fn verify_unchanged(
    migration: &Migration,
    name: &str,
    applied: &str,
) -> Result<(), BootstrapError> {
    let current = migration.checksum();
    if applied != current {
        return Err(BootstrapError::ChecksumMismatch {
            name: name.to_owned(),
            applied: applied.to_owned(),
            current,
        });
    }
    Ok(())
}

async fn apply_one(client: &mut Client, migration: &Migration) -> Result<(), BootstrapError> {
    let apply_error = |source| BootstrapError::Apply {
        name: migration.name,
        source,
    };
    let tx = client.transaction().await?;
    tx.batch_execute(migration.sql).await.map_err(apply_error)?;
    tx.execute(
        RECORD_APPLIED,
        &[&migration.version, &migration.name, &migration.checksum()],
    )
    .await?;
    tx.commit().await.map_err(apply_error)?;
    tracing::info!(
        version = migration.version,
        name = migration.name,
        "applied schema file"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_sql_is_listed_in_order_with_its_number() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .map(|n| n.trim_end_matches(".sql").to_owned())
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1);
            assert_eq!(m.name[..4].parse::<i64>().unwrap(), m.version);
            assert_eq!(&m.name[4..5], "_");
        }
    }

    #[test]
    fn checksum_is_hex_sha256() {
        let sum = MIGRATIONS[0].checksum();
        assert_eq!(sum.len(), 64);
        assert!(sum.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
