//! Batched checkin writes: every checkin row, and each cluster's newest document.

use std::{future::Future, ops::Range};

use tokio_postgres::{Transaction, types::Type};
use uuid::Uuid;

use super::{
    BatchOutcome, Pool, StoreError,
    batch::{Rows, write_isolated},
};
use crate::message::Checkin;

/// One statement per batch. `inserted` skips message ids already stored (a
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

/// Stores a batch of checkins in one transaction. Returned indices refer to
/// `checkins`.
pub async fn write_checkins(
    pool: &Pool,
    checkins: &[Checkin<'_>],
) -> Result<BatchOutcome, StoreError> {
    let mut order: Vec<usize> = (0..checkins.len()).collect();
    order.sort_unstable_by(|&a, &b| checkins[a].message_id.cmp(&checkins[b].message_id));
    let rows = CheckinRows { checkins, order };
    let outcome = write_isolated(pool, &rows).await?;
    Ok(outcome.reindexed(&rows.order))
}

struct CheckinRows<'c, 'd> {
    checkins: &'c [Checkin<'d>],
    /// Indices into `checkins`, in write order.
    order: Vec<usize>,
}

impl Rows for CheckinRows<'_, '_> {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn write<'a>(
        &'a self,
        tx: &'a Transaction<'_>,
        range: Range<usize>,
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a {
        insert(tx, self.checkins, &self.order[range])
    }
}

async fn insert(
    tx: &Transaction<'_>,
    checkins: &[Checkin<'_>],
    picks: &[usize],
) -> Result<u64, tokio_postgres::Error> {
    let mut ids = Vec::with_capacity(picks.len());
    let mut times = Vec::with_capacity(picks.len());
    let mut documents = Vec::with_capacity(picks.len());
    let mut message_ids = Vec::with_capacity(picks.len());
    for checkin in picks.iter().map(|&i| &checkins[i]) {
        ids.push(checkin.cluster_id.as_uuid());
        times.push(checkin.checked_in_at);
        documents.push(checkin.document);
        message_ids.push(checkin.message_id);
    }
    let row = tx
        .query_typed_one(
            INSERT_CHECKINS,
            &[
                (&ids as &Vec<Uuid>, Type::UUID_ARRAY),
                (&times, Type::TIMESTAMP_ARRAY),
                (&documents, Type::TEXT_ARRAY),
                (&message_ids, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}
