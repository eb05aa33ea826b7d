//! Batched version writes: an upsert on (component, train, version).

use std::{future::Future, ops::Range};

use tokio_postgres::{Transaction, types::Type};

use super::{
    BatchOutcome, Pool, StoreError,
    batch::{Rows, write_isolated},
};
use crate::message::VersionEvent;

/// A republish of the same triple replaces its release time and document.
const UPSERT_VERSIONS: &str = "
INSERT INTO versions AS v (component_name, train, version, release_timestamp, data)
SELECT component_name, train, version, release_timestamp, data::json
  FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamp[], $5::text[])
       AS input(component_name, train, version, release_timestamp, data)
ON CONFLICT (component_name, train, version) DO UPDATE
   SET release_timestamp = EXCLUDED.release_timestamp, data = EXCLUDED.data";

/// Stores a batch of version events in one transaction. Of several events for
/// the same triple in one batch the last one wins (one upsert may not touch a
/// row twice); the earlier ones count as stored, superseded. Returned indices
/// refer to `events`.
pub async fn write_versions(
    pool: &Pool,
    events: &[VersionEvent<'_>],
) -> Result<BatchOutcome, StoreError> {
    let rows = VersionRows {
        events,
        order: latest_per_key(events),
    };
    let outcome = write_isolated(pool, &rows).await?;
    Ok(outcome.reindexed(&rows.order))
}

struct VersionRows<'e, 'd> {
    events: &'e [VersionEvent<'d>],
    /// Indices into `events`, in write order.
    order: Vec<usize>,
}

impl Rows for VersionRows<'_, '_> {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn write<'a>(
        &'a self,
        tx: &'a Transaction<'_>,
        range: Range<usize>,
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a {
        upsert(tx, self.events, &self.order[range])
    }
}

/// Indices of the last event per key, sorted by key (the lock order).
fn latest_per_key(events: &[VersionEvent<'_>]) -> Vec<usize> {
    let key = |i: usize| {
        let e = &events[i];
        (e.component.as_str(), e.train.as_str(), e.version.as_str())
    };
    let mut order: Vec<usize> = (0..events.len()).collect();
    // Stable: equal keys keep arrival order, so the last of a run is the newest.
    order.sort_by(|&a, &b| key(a).cmp(&key(b)));
    let mut latest: Vec<usize> = Vec::with_capacity(order.len());
    for i in order {
        match latest.last_mut() {
            Some(last) if key(*last) == key(i) => *last = i,
            _ => latest.push(i),
        }
    }
    latest
}

async fn upsert(
    tx: &Transaction<'_>,
    events: &[VersionEvent<'_>],
    picks: &[usize],
) -> Result<u64, tokio_postgres::Error> {
    let picked = || picks.iter().map(|&i| &events[i]);
    let components: Vec<&str> = picked().map(|e| e.component.as_str()).collect();
    let trains: Vec<&str> = picked().map(|e| e.train.as_str()).collect();
    let versions: Vec<&str> = picked().map(|e| e.version.as_str()).collect();
    let released: Vec<_> = picked().map(|e| e.released_at).collect();
    let documents: Vec<&str> = picked().map(|e| e.document).collect();
    tx.execute_typed(
        UPSERT_VERSIONS,
        &[
            (&components, Type::TEXT_ARRAY),
            (&trains, Type::TEXT_ARRAY),
            (&versions, Type::TEXT_ARRAY),
            (&released, Type::TIMESTAMP_ARRAY),
            (&documents, Type::TEXT_ARRAY),
        ],
    )
    .await
}
