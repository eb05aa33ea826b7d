//! Batched checkin writes: every checkin row, and each cluster's newest document.

use std::{future::Future, ops::Range};

use chrono::{NaiveDateTime, Utc};
use tokio_postgres::{Client, Statement, types::Type};
use uuid::Uuid;

use super::{
    PgConnection, StoreError,
    write::{Rows, Tally, WriteOutcome, write_batch},
};
use crate::message::{Checkin, Item};

/// One statement per batch, the same for an ordinary and a partitioned
/// `clusters_checkins`:
/// - `fresh`: keys not seen before take their place in the current generation
///   of `checkin_keys` (see `sql/0006`); a redelivery or a publisher retry finds
///   its key in either generation and goes no further. Duplicates inside the
///   batch are one key. The older generation is named by equality (`1 -
///   current`: generations are 0 and 1), as a parameter the planner prunes and
///   looks up by index: `generation <> current` made it hash the whole key
///   table for every batch.
/// - `kept`: fresh checkins not older than the retention horizon go to history;
///   `ON CONFLICT DO NOTHING` also skips a key that history already holds from
///   before the key table (an ordinary table's unique `message_id` index, or the
///   legacy partition's).
/// - `counted`: what is new — the rows kept, and fresh checkins too old to keep,
///   which still count in their cluster's summary.
/// - `clusters`: per cluster, the newest document by event time (a late, older
///   checkin never replaces it), the first and newest checkin times and the count,
///   in one upsert. PostgreSQL refuses an upsert that touches the same row twice in
///   one statement (SQLSTATE 21000), hence one row per cluster. Rows go in sorted
///   by key so that replicas writing overlapping batches lock in the same order.
pub const INSERT_CHECKINS: &str = "
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::timestamp[], $3::text[], $4::text[])
        AS input(cluster_id, created_at, data, message_id)
), fresh AS (
    INSERT INTO checkin_keys (generation, message_id)
    SELECT (SELECT current FROM checkin_key_generation), i.message_id FROM input i
     WHERE NOT EXISTS (SELECT 1 FROM checkin_keys k
                        WHERE k.generation = 1 - (SELECT current FROM checkin_key_generation)
                          AND k.message_id = i.message_id)
     ORDER BY i.message_id
    ON CONFLICT DO NOTHING
    RETURNING message_id
), accepted AS (
    SELECT DISTINCT ON (message_id) i.* FROM input i JOIN fresh USING (message_id)
     ORDER BY message_id
), horizon AS (
    SELECT COALESCE(horizon, '-infinity') AS oldest FROM checkin_history
), kept AS (
    INSERT INTO clusters_checkins (cluster_id, created_at, data, message_id)
    SELECT a.cluster_id, a.created_at, a.data::json, a.message_id
      FROM accepted a CROSS JOIN horizon h
     WHERE a.created_at >= h.oldest
    ON CONFLICT DO NOTHING
    RETURNING checkins_id, cluster_id, created_at, data
), counted AS (
    SELECT checkins_id, cluster_id, created_at, data FROM kept
    UNION ALL
    SELECT NULL, a.cluster_id, a.created_at, a.data::json
      FROM accepted a CROSS JOIN horizon h
     WHERE a.created_at < h.oldest
), newest AS (
    SELECT DISTINCT ON (cluster_id) cluster_id, created_at, data
      FROM counted
     ORDER BY cluster_id, created_at DESC, checkins_id DESC NULLS LAST
), tally AS (
    SELECT cluster_id, min(created_at) AS first_at, count(*) AS checkins
      FROM counted GROUP BY cluster_id
), upserted AS (
    INSERT INTO clusters AS c (cluster_id, data, last_checkin_at, first_checkin_at, checkin_count)
    SELECT n.cluster_id, n.data, n.created_at, t.first_at, t.checkins
      FROM newest n JOIN tally t USING (cluster_id)
     ORDER BY n.cluster_id
    ON CONFLICT (cluster_id) DO UPDATE
       SET data = CASE WHEN c.last_checkin_at IS NULL OR c.last_checkin_at <= EXCLUDED.last_checkin_at
                       THEN EXCLUDED.data ELSE c.data END,
           last_checkin_at = GREATEST(c.last_checkin_at, EXCLUDED.last_checkin_at),
           first_checkin_at = LEAST(c.first_checkin_at, EXCLUDED.first_checkin_at),
           checkin_count = COALESCE(c.checkin_count, 0) + EXCLUDED.checkin_count
)
SELECT (SELECT count(*) FROM kept), (SELECT count(*) FROM counted)";

/// Writers hold this shared for their transaction; a rotation of the key
/// generations takes it exclusively (see `history`).
pub const KEYS_LOCK: i64 = 0x0077_666d_6b65; // "wfmke"
pub const SHARE_KEYS: &str = "SELECT pg_advisory_xact_lock_shared($1)";

/// Stores a batch of checkins in one transaction; failures name batch indices.
pub async fn write_checkins(
    conn: &mut PgConnection,
    checkins: &[Item<Checkin<'_>>],
) -> Result<WriteOutcome, StoreError> {
    let mut order: Vec<&Item<Checkin<'_>>> = checkins.iter().collect();
    order.sort_unstable_by(|a, b| a.value.key.cmp(&b.value.key));
    let insert = conn.prepared(INSERT_CHECKINS, &PARAMETERS).await?;
    // Prepared, so that its execution goes out ahead of the insert's: as SQL
    // text it would wait for its own parse, and run after the insert.
    let share_keys = conn.prepared(SHARE_KEYS, &[Type::INT8]).await?;
    let rows = CheckinRows {
        order,
        insert,
        share_keys,
    };
    write_batch(conn, &rows).await
}

/// The types of [`INSERT_CHECKINS`]' parameters.
const PARAMETERS: [Type; 4] = [
    Type::UUID_ARRAY,
    Type::TIMESTAMP_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
];

struct CheckinRows<'c, 'd> {
    /// The batch in write order.
    order: Vec<&'c Item<Checkin<'d>>>,
    insert: Statement,
    share_keys: Statement,
}

impl Rows for CheckinRows<'_, '_> {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn index(&self, at: usize) -> usize {
        self.order[at].index
    }

    async fn begin(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        client
            .execute(&self.share_keys, &[&KEYS_LOCK])
            .await
            .map(drop)
    }

    fn write<'a>(
        &'a self,
        client: &'a Client,
        range: Range<usize>,
    ) -> impl Future<Output = Result<Tally, tokio_postgres::Error>> + Send + 'a {
        let picked = self.order[range].iter().map(|item| {
            let c = &item.value;
            (
                c.cluster_id.as_uuid(),
                c.checked_in_at.at,
                c.document,
                c.key.as_str(),
            )
        });
        insert(client, &self.insert, picked)
    }

    async fn probe(&self, client: &Client) -> Result<Tally, tokio_postgres::Error> {
        let cluster = Uuid::new_v4();
        let document = format!(r#"{{"id":"{cluster}","components":[]}}"#);
        let key = format!("wfm-probe-{cluster}");
        let row = (
            cluster,
            Utc::now().naive_utc(),
            document.as_str(),
            key.as_str(),
        );
        insert(client, &self.insert, std::iter::once(row)).await
    }
}

async fn insert<'r>(
    client: &Client,
    statement: &Statement,
    rows: impl ExactSizeIterator<Item = (Uuid, NaiveDateTime, &'r str, &'r str)>,
) -> Result<Tally, tokio_postgres::Error> {
    let mut ids = Vec::with_capacity(rows.len());
    let mut times = Vec::with_capacity(rows.len());
    let mut documents = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    for (id, at, document, key) in rows {
        ids.push(id);
        times.push(at);
        documents.push(document);
        keys.push(key);
    }
    let row = client
        .query_one(statement, &[&ids, &times, &documents, &keys])
        .await?;
    let (kept, counted) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
    Ok(Tally {
        stored: kept,
        beyond_retention: counted - kept,
    })
}
