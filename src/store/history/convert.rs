//! Converting a live ordinary `clusters_checkins` (as the older service, or
//! this worker before, left it) into a time-partitioned table, online:
//!
//! 1. choose a boundary B, a period start at least a day ahead (every checkin
//!    written meanwhile, at most `WFM_MAX_CLOCK_SKEW` ahead, falls below it),
//!    and record it, so an interrupted conversion resumes with the same B;
//! 2. `CHECK (created_at IS NOT NULL AND created_at < B) NOT VALID`, then
//!    `VALIDATE` it: a scan that inserts do not wait for;
//! 3. `CREATE UNIQUE INDEX CONCURRENTLY` on (checkins_id, created_at), the
//!    partitioned table's primary key, so attaching builds nothing;
//! 4. the switch, one short transaction: rename the table, create the
//!    partitioned `clusters_checkins` with the same columns and sequence, attach
//!    the old table as the partition (MINVALUE, B) — the validated CHECK spares
//!    the attach its scan — and create the partitions from B on. Writers wait
//!    only for this (milliseconds); `lock_timeout` keeps a long reader from
//!    making them wait longer: the switch gives up and tries again;
//! 5. nothing is copied or rewritten: every row stays where it is.
//!
//! Each step checks whether it is already done, so running it again after an
//! interruption resumes it. Rows with no `created_at` cannot go in any range
//! partition: the conversion refuses to start, saying how many.

use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use tokio_postgres::{Client, GenericClient};

use super::{Period, StoreError, create_partitions, partitions};

#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{0} rows of clusters_checkins have no created_at, and a time partition cannot hold them: set or delete them first"
    )]
    NullTimes(i64),
    #[error(
        "the switch could not take its lock within 1 s in {0} attempts (a long query holds clusters_checkins): run it again"
    )]
    Busy(u32),
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionReport {
    /// The table was partitioned already: nothing was done.
    pub already: bool,
    /// Rows below it are in the old table, now the first partition.
    pub boundary: Option<NaiveDateTime>,
    /// How long the switch held writers back (its lock wait included).
    pub switch: Duration,
    pub attempts: u32,
}

impl std::fmt::Display for ConversionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.boundary {
            None => write!(f, "clusters_checkins is already partitioned; nothing done"),
            Some(boundary) => write!(
                f,
                "clusters_checkins is partitioned: existing rows below {boundary} are its first partition; the switch held writers {} ms (attempt {})",
                self.switch.as_millis(),
                self.attempts
            ),
        }
    }
}

const IS_PARTITIONED: &str =
    "SELECT relkind = 'p' FROM pg_class WHERE oid = 'clusters_checkins'::regclass";
const NULL_TIMES: &str = "SELECT count(*) FROM clusters_checkins WHERE created_at IS NULL";
const NEWEST: &str =
    "SELECT max(created_at), (now() AT TIME ZONE 'UTC')::timestamp FROM clusters_checkins";
const RECORDED: &str = "SELECT boundary FROM checkin_conversion";
const RECORD: &str = "INSERT INTO checkin_conversion (boundary, started_at)
    VALUES ($1, now() AT TIME ZONE 'UTC')
    ON CONFLICT (singleton) DO UPDATE SET boundary = EXCLUDED.boundary";
const CONSTRAINT: &str = "SELECT convalidated, pg_get_constraintdef(oid) FROM pg_constraint
    WHERE conrelid = 'clusters_checkins'::regclass AND conname = 'clusters_checkins_legacy_range'";
const INDEX_VALID: &str = "SELECT i.indisvalid FROM pg_index i
    WHERE i.indexrelid = to_regclass('clusters_checkins_legacy_id_time')";
/// DDL cannot take parameters: the server formats the literal (`%L`).
const FORMAT: &str = "SELECT format($1, $2::timestamp)";

/// Converts `clusters_checkins` (see the module docs). `period` sizes the new
/// partitions.
pub async fn convert_to_partitioned(
    client: &mut Client,
    period: Period,
) -> Result<ConversionReport, ConversionError> {
    if client
        .query_one(IS_PARTITIONED, &[])
        .await
        .map_err(StoreError::from)?
        .get::<_, bool>(0)
    {
        return Ok(ConversionReport {
            already: true,
            boundary: None,
            switch: Duration::ZERO,
            attempts: 0,
        });
    }
    let nulls: i64 = client
        .query_one(NULL_TIMES, &[])
        .await
        .map_err(StoreError::from)?
        .get(0);
    if nulls > 0 {
        return Err(ConversionError::NullTimes(nulls));
    }
    let boundary = boundary(client, period).await?;
    tracing::info!(%boundary, "converting clusters_checkins: the existing rows become the partition below this boundary");
    constrain(client, boundary).await?;
    index(client).await?;
    let (switch, attempts) = switch(client, boundary).await?;
    let now = client
        .query_one(NEWEST, &[])
        .await
        .map_err(StoreError::from)?
        .get(1);
    let existing = partitions(&*client).await?;
    create_partitions(&*client, period, now, &existing).await?;
    tracing::info!(
        switch_ms = switch.as_millis() as u64,
        attempts,
        "clusters_checkins is partitioned"
    );
    Ok(ConversionReport {
        already: false,
        boundary: Some(boundary),
        switch,
        attempts,
    })
}

/// The recorded boundary while it is still safely ahead, else a new one at
/// least a day ahead and above every existing row.
async fn boundary(client: &Client, period: Period) -> Result<NaiveDateTime, StoreError> {
    let row = client.query_one(NEWEST, &[]).await?;
    let (newest, now): (Option<NaiveDateTime>, NaiveDateTime) = (row.get(0), row.get(1));
    let safe = now + chrono::Duration::days(1);
    if let Some(row) = client.query_opt(RECORDED, &[]).await? {
        let recorded: NaiveDateTime = row.get(0);
        if recorded >= safe {
            return Ok(recorded);
        }
    }
    let above = newest.map_or(safe, |newest| newest.max(safe));
    let boundary = period.next(period.start(above));
    client.execute(RECORD, &[&boundary]).await?;
    Ok(boundary)
}

/// Step 2: the CHECK constraint for `boundary`, added and validated.
async fn constrain(client: &Client, boundary: NaiveDateTime) -> Result<(), StoreError> {
    let expected = format!("created_at < '{}'", boundary.format("%Y-%m-%d %H:%M:%S"));
    let existing = client.query_opt(CONSTRAINT, &[]).await?;
    let (validated, current) = match existing {
        Some(row) if row.get::<_, String>(1).contains(&expected) => (row.get::<_, bool>(0), true),
        Some(_) => {
            // A boundary of an earlier attempt that has come too close: replace it.
            with_lock_timeout(
                client,
                "ALTER TABLE clusters_checkins DROP CONSTRAINT clusters_checkins_legacy_range",
            )
            .await?;
            (false, false)
        }
        None => (false, false),
    };
    if !current {
        let add = ddl(
            client,
            "ALTER TABLE clusters_checkins ADD CONSTRAINT clusters_checkins_legacy_range
             CHECK (created_at IS NOT NULL AND created_at < %L) NOT VALID",
            boundary,
        )
        .await?;
        with_lock_timeout(client, &add).await?;
    }
    if !validated {
        // SHARE UPDATE EXCLUSIVE: a scan that inserts go on beside.
        client
            .batch_execute(
                "ALTER TABLE clusters_checkins VALIDATE CONSTRAINT clusters_checkins_legacy_range",
            )
            .await?;
    }
    Ok(())
}

/// Step 3: the unique index the partitioned primary key will adopt.
async fn index(client: &Client) -> Result<(), StoreError> {
    match client
        .query_opt(INDEX_VALID, &[])
        .await?
        .map(|r| r.get::<_, bool>(0))
    {
        Some(true) => return Ok(()),
        // An interrupted CREATE INDEX CONCURRENTLY leaves an invalid index.
        Some(false) => {
            client
                .batch_execute("DROP INDEX CONCURRENTLY clusters_checkins_legacy_id_time")
                .await?
        }
        None => {}
    }
    client
        .batch_execute("CREATE UNIQUE INDEX CONCURRENTLY clusters_checkins_legacy_id_time ON clusters_checkins (checkins_id, created_at)")
        .await?;
    Ok(())
}

const SWITCH: &str = "
SET LOCAL lock_timeout = '1s';
LOCK TABLE clusters_checkins IN ACCESS EXCLUSIVE MODE;
ALTER TABLE clusters_checkins RENAME TO clusters_checkins_legacy;
-- Proven by the validated CHECK: no scan.
ALTER TABLE clusters_checkins_legacy ALTER COLUMN created_at SET NOT NULL;
-- Its primary key (checkins_id) gives way to one on (checkins_id, created_at)
-- over the index built beforehand: catalog work only. The attach adopts an
-- index for the partitioned table's primary key only if it backs a primary
-- key itself; a bare unique index would make it build a new one (a full
-- scan and sort, with writers waiting: 1.3 s at 5 million rows).
DO $$
DECLARE
    primary_key name;
BEGIN
    SELECT conname INTO primary_key FROM pg_constraint
     WHERE conrelid = 'clusters_checkins_legacy'::regclass AND contype = 'p';
    IF primary_key IS NOT NULL THEN
        EXECUTE format('ALTER TABLE clusters_checkins_legacy DROP CONSTRAINT %I', primary_key);
    END IF;
    ALTER TABLE clusters_checkins_legacy ADD CONSTRAINT clusters_checkins_legacy_pkey
        PRIMARY KEY USING INDEX clusters_checkins_legacy_id_time;
END
$$;
ALTER INDEX IF EXISTS clusters_checkins_message_id_key RENAME TO clusters_checkins_legacy_message_id_key;
ALTER TABLE clusters_checkins_legacy RENAME CONSTRAINT clusters_checkins_legacy_range TO clusters_checkins_legacy_range_check;
CREATE TABLE clusters_checkins (
    checkins_id bigint NOT NULL DEFAULT nextval('clusters_checkins_checkins_id_seq'::regclass),
    cluster_id uuid,
    created_at timestamp NOT NULL,
    data json,
    message_id text,
    CONSTRAINT clusters_checkins_pkey PRIMARY KEY (checkins_id, created_at)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE clusters_checkins_checkins_id_seq OWNED BY clusters_checkins.checkins_id;
DO $$
DECLARE
    grant_row record;
BEGIN
    -- lz4 for new partitions too, where the old table had it.
    IF (SELECT attcompression FROM pg_attribute
         WHERE attrelid = 'clusters_checkins_legacy'::regclass AND attname = 'data') = 'l' THEN
        ALTER TABLE clusters_checkins ALTER COLUMN data SET COMPRESSION lz4;
    END IF;
    -- Whoever could read or write the old table can read or write the new one.
    FOR grant_row IN
        SELECT grantee, privilege_type FROM information_schema.role_table_grants
         WHERE table_schema = current_schema() AND table_name = 'clusters_checkins_legacy'
           AND grantee <> current_user
    LOOP
        IF grant_row.grantee = 'PUBLIC' THEN
            EXECUTE format('GRANT %s ON clusters_checkins TO PUBLIC', grant_row.privilege_type);
        ELSE
            EXECUTE format('GRANT %s ON clusters_checkins TO %I', grant_row.privilege_type, grant_row.grantee);
        END IF;
    END LOOP;
END
$$;
";

/// Step 4: the switch, tried until it gets its lock within `lock_timeout`.
async fn switch(
    client: &mut Client,
    boundary: NaiveDateTime,
) -> Result<(Duration, u32), ConversionError> {
    let attach = ddl(
        client,
        "ALTER TABLE clusters_checkins ATTACH PARTITION clusters_checkins_legacy FOR VALUES FROM (MINVALUE) TO (%L)",
        boundary,
    )
    .await?;
    for attempt in 1..=SWITCH_ATTEMPTS {
        let started = Instant::now();
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let switched = async {
            tx.batch_execute(SWITCH).await?;
            tx.batch_execute(&attach).await
        }
        .await;
        match switched {
            Ok(()) => {
                tx.commit().await.map_err(StoreError::from)?;
                return Ok((started.elapsed(), attempt));
            }
            Err(error) if error.code().map(|c| c.code()) == Some("55P03") => {
                drop(tx);
                tracing::warn!(
                    attempt,
                    "clusters_checkins is busy; trying the switch again"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(StoreError::from(error).into()),
        }
    }
    Err(ConversionError::Busy(SWITCH_ATTEMPTS))
}

const SWITCH_ATTEMPTS: u32 = 30;

/// A DDL statement with `boundary` as its literal, formatted by the server.
async fn ddl(
    client: &impl GenericClient,
    template: &str,
    boundary: NaiveDateTime,
) -> Result<String, StoreError> {
    Ok(client
        .query_one(FORMAT, &[&template, &boundary])
        .await?
        .get(0))
}

/// Runs `statement` (one that takes ACCESS EXCLUSIVE for a moment) without
/// queueing writers behind a long reader for more than a second.
async fn with_lock_timeout(client: &Client, statement: &str) -> Result<(), StoreError> {
    let statements = format!("BEGIN; SET LOCAL lock_timeout = '1s'; {statement}; COMMIT");
    if let Err(error) = client.batch_execute(&statements).await {
        // An error leaves the transaction open: close it before reporting.
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(error.into());
    }
    Ok(())
}
