//! Batched checkin writes: every checkin row, and each cluster's newest document.

use std::{future::Future, ops::Range};

use chrono::{NaiveDateTime, Utc};
use tokio_postgres::{Transaction, types::Type};
use uuid::Uuid;

use super::{
    PgConnection, StoreError,
    write::{Rows, WriteOutcome, write_batch},
};
use crate::message::{Checkin, Item};

/// One statement per batch. `inserted` skips keys already stored (a
/// redelivery or a publisher retry); only rows really inserted go on to
/// `clusters`, newest first per cluster — PostgreSQL refuses an upsert that
/// touches the same row twice in one statement (SQLSTATE 21000), hence
/// `DISTINCT ON`. A cluster's document is replaced only by a checkin at least as
/// new as the one it holds (event time, not arrival order). Rows go in sorted by
/// key so that replicas writing overlapping batches lock in the same order and
/// cannot deadlock.
const INSERT_CHECKINS: &str = "
WITH inserted AS (
    INSERT INTO clusters_checkins (cluster_id, created_at, data, message_id)
    SELECT cluster_id, created_at, data::json, message_id
      FROM unnest($1::uuid[], $2::timestamp[], $3::text[], $4::text[])
           AS input(cluster_id, created_at, data, message_id)
    ON CONFLICT (message_id) DO NOTHING
    RETURNING checkins_id, cluster_id, created_at, data
), newest AS (
    SELECT DISTINCT ON (cluster_id) cluster_id, created_at, data
      FROM inserted
     ORDER BY cluster_id, created_at DESC, checkins_id DESC
), upserted AS (
    INSERT INTO clusters AS c (cluster_id, data, last_checkin_at)
    SELECT cluster_id, data, created_at FROM newest ORDER BY cluster_id
    ON CONFLICT (cluster_id) DO UPDATE
       SET data = EXCLUDED.data, last_checkin_at = EXCLUDED.last_checkin_at
     WHERE c.last_checkin_at IS NULL OR c.last_checkin_at <= EXCLUDED.last_checkin_at
)
SELECT count(*) FROM inserted";

/// Stores a batch of checkins in one transaction; failures name batch indices.
pub async fn write_checkins(
    conn: &mut PgConnection,
    checkins: &[Item<Checkin<'_>>],
) -> Result<WriteOutcome, StoreError> {
    let mut order: Vec<&Item<Checkin<'_>>> = checkins.iter().collect();
    order.sort_unstable_by(|a, b| a.value.key.cmp(&b.value.key));
    write_batch(conn, &CheckinRows { order }).await
}

struct CheckinRows<'c, 'd> {
    /// The batch in write order.
    order: Vec<&'c Item<Checkin<'d>>>,
}

impl Rows for CheckinRows<'_, '_> {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn index(&self, at: usize) -> usize {
        self.order[at].index
    }

    fn write<'a>(
        &'a self,
        tx: &'a Transaction<'_>,
        range: Range<usize>,
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a {
        let picked = self.order[range].iter().map(|item| {
            let c = &item.value;
            (
                c.cluster_id.as_uuid(),
                c.checked_in_at.at,
                c.document,
                c.key.as_str(),
            )
        });
        insert(tx, picked)
    }

    async fn probe(&self, tx: &Transaction<'_>) -> Result<u64, tokio_postgres::Error> {
        let cluster = Uuid::new_v4();
        let document = format!(r#"{{"id":"{cluster}","components":[]}}"#);
        let key = format!("wfm-probe-{cluster}");
        let row = (
            cluster,
            Utc::now().naive_utc(),
            document.as_str(),
            key.as_str(),
        );
        insert(tx, std::iter::once(row)).await
    }
}

async fn insert<'r>(
    tx: &Transaction<'_>,
    rows: impl ExactSizeIterator<Item = (Uuid, NaiveDateTime, &'r str, &'r str)>,
) -> Result<u64, tokio_postgres::Error> {
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
    let row = tx
        .query_typed_one(
            INSERT_CHECKINS,
            &[
                (&ids, Type::UUID_ARRAY),
                (&times, Type::TIMESTAMP_ARRAY),
                (&documents, Type::TEXT_ARRAY),
                (&keys, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}
