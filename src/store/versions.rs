//! Batched version writes: an upsert on (component, train, version), by
//! publish time.

use std::{future::Future, ops::Range};

use chrono::{NaiveDateTime, Utc};
use tokio_postgres::{Client, Statement, types::Type};

use super::{
    PgConnection, StoreError,
    write::{Rows, Tally, WriteOutcome, write_batch},
};
use crate::message::{Item, VersionEvent};

/// A later publish of the same triple replaces its release time and data; an
/// earlier one (a redelivery, a second replica's slower batch, a `dlq replay`
/// of an old event) changes nothing. The publish times live in
/// `version_publishes` (see `sql/0004`): its upsert takes the row lock and
/// keeps only the newer publish, and only the triples it took go on to
/// `versions`. Triples the older service wrote have no publish time yet, and
/// any publish replaces them.
const UPSERT_VERSIONS: &str = "
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamp[], $5::text[], $6::timestamp[])
        AS input(component_name, train, version, release_timestamp, data, published_at)
), newer AS (
    INSERT INTO version_publishes AS p (component_name, train, version, published_at)
    SELECT component_name, train, version, published_at FROM input
    ON CONFLICT (component_name, train, version) DO UPDATE
       SET published_at = EXCLUDED.published_at
     WHERE p.published_at <= EXCLUDED.published_at
    RETURNING component_name, train, version
)
INSERT INTO versions AS v (component_name, train, version, release_timestamp, data)
SELECT i.component_name, i.train, i.version, i.release_timestamp, i.data::json
  FROM input i JOIN newer USING (component_name, train, version)
 ORDER BY i.component_name, i.train, i.version
ON CONFLICT (component_name, train, version) DO UPDATE
   SET release_timestamp = EXCLUDED.release_timestamp, data = EXCLUDED.data";

/// Stores a batch of version events in one transaction. Of several events for
/// the same triple in one batch only the newest publish is written (one upsert
/// may not touch a row twice); the others are reported as superseded by it.
pub async fn write_versions(
    conn: &mut PgConnection,
    events: &[Item<VersionEvent<'_>>],
) -> Result<WriteOutcome, StoreError> {
    let (order, superseded) = newest_per_key(events);
    let upsert = conn.prepared(UPSERT_VERSIONS, &PARAMETERS).await?;
    let mut outcome = write_batch(conn, &VersionRows { order, upsert }).await?;
    outcome.superseded = superseded;
    Ok(outcome)
}

/// The types of [`UPSERT_VERSIONS`]' parameters.
const PARAMETERS: [Type; 6] = [
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TIMESTAMP_ARRAY,
    Type::TEXT_ARRAY,
    Type::TIMESTAMP_ARRAY,
];

struct VersionRows<'e, 'd> {
    /// The newest event per key, sorted by key (the lock order).
    order: Vec<&'e Item<VersionEvent<'d>>>,
    upsert: Statement,
}

type Key<'e> = (&'e str, &'e str, &'e str);

fn key<'e>(event: &'e VersionEvent<'_>) -> Key<'e> {
    (
        event.component.as_str(),
        event.train.as_str(),
        event.version.as_str(),
    )
}

/// The newest event per key (later arrival on equal publish times), and the
/// (loser, winner) pairs of the rest.
fn newest_per_key<'e, 'd>(
    events: &'e [Item<VersionEvent<'d>>],
) -> (Vec<&'e Item<VersionEvent<'d>>>, Vec<(usize, usize)>) {
    let mut order: Vec<&Item<VersionEvent<'_>>> = events.iter().collect();
    // Stable: equal keys and times keep arrival order, so the last of a run wins.
    order.sort_by(|a, b| {
        key(&a.value)
            .cmp(&key(&b.value))
            .then(a.value.published_at.at.cmp(&b.value.published_at.at))
    });
    let mut newest = Vec::with_capacity(order.len());
    let mut superseded = Vec::new();
    for run in order.chunk_by(|a, b| key(&a.value) == key(&b.value)) {
        let (winner, losers) = run.split_last().expect("chunks are never empty");
        superseded.extend(losers.iter().map(|loser| (loser.index, winner.index)));
        newest.push(*winner);
    }
    (newest, superseded)
}

impl Rows for VersionRows<'_, '_> {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn index(&self, at: usize) -> usize {
        self.order[at].index
    }

    fn write<'a>(
        &'a self,
        client: &'a Client,
        range: Range<usize>,
    ) -> impl Future<Output = Result<Tally, tokio_postgres::Error>> + Send + 'a {
        let picked = self.order[range].iter().map(|item| {
            let e = &item.value;
            let (component, train, version) = key(e);
            Row {
                component,
                train,
                version,
                released: e.released_at,
                document: e.data,
                published: e.published_at.at,
            }
        });
        upsert(client, &self.upsert, picked)
    }

    async fn probe(&self, client: &Client) -> Result<Tally, tokio_postgres::Error> {
        let version = uuid::Uuid::new_v4().simple().to_string();
        let now = Utc::now().naive_utc();
        let row = Row {
            component: "wfm-probe",
            train: "probe",
            version: &version,
            released: now,
            document: "null",
            published: now,
        };
        upsert(client, &self.upsert, std::iter::once(row)).await
    }
}

struct Row<'r> {
    component: &'r str,
    train: &'r str,
    version: &'r str,
    released: NaiveDateTime,
    document: &'r str,
    published: NaiveDateTime,
}

async fn upsert<'r>(
    client: &Client,
    statement: &Statement,
    rows: impl ExactSizeIterator<Item = Row<'r>>,
) -> Result<Tally, tokio_postgres::Error> {
    let n = rows.len();
    let (mut components, mut trains, mut versions) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut released, mut documents, mut published) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for row in rows {
        components.push(row.component);
        trains.push(row.train);
        versions.push(row.version);
        released.push(row.released);
        documents.push(row.document);
        published.push(row.published);
    }
    client
        .execute(
            statement,
            &[
                &components,
                &trains,
                &versions,
                &released,
                &documents,
                &published,
            ],
        )
        .await
        .map(|stored| Tally {
            stored,
            beyond_retention: 0,
        })
}
