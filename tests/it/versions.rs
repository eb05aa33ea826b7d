//! Version events: insert, and replace on a later publish of the same triple.

use wfm_worker::{
    app,
    message::{Item, Limits, VersionEvent},
    store,
};

use crate::support::{
    Outgoing, TestEnv,
    db::{TestDb, assert_settled_on_one_plan, plans},
    received, version_body,
};

const VERSIONS: &str = "SELECT count(*) FROM versions";

#[tokio::test]
async fn version_event_is_stored_with_its_release_time_in_utc() {
    let env = TestEnv::new().await;
    let worker = env.start();
    let body = version_body(
        "deis-router",
        "stable",
        "v2.4.0",
        "2016-08-02T19:00:00+02:00",
        "first",
    );
    env.broker
        .publish_versions(&[Outgoing::new(body.clone())])
        .await;
    env.wait_for_rows(VERSIONS, 1).await;
    let row = env
        .db
        .client()
        .await
        .query_one("SELECT component_name, train, version, release_timestamp::text, data::text FROM versions", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "deis-router");
    assert_eq!(row.get::<_, String>(1), "stable");
    assert_eq!(row.get::<_, String>(2), "v2.4.0");
    assert_eq!(row.get::<_, String>(3), "2016-08-02 17:00:00");
    assert_eq!(
        row.get::<_, String>(4),
        r#"{"description":"first","fixes":"none"}"#,
        "version.data, verbatim"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn republishing_a_version_replaces_its_release_time_and_data() {
    let env = TestEnv::new().await;
    let worker = env.start();
    let first = version_body(
        "deis-router",
        "stable",
        "v2.4.0",
        "2016-08-02T17:00:00Z",
        "first",
    );
    env.broker.publish_versions(&[Outgoing::new(first)]).await;
    env.wait_for_rows(VERSIONS, 1).await;
    let second = version_body(
        "deis-router",
        "stable",
        "v2.4.0",
        "2016-08-03T17:00:00Z",
        "second",
    );
    env.broker.publish_versions(&[Outgoing::new(second)]).await;
    env.wait_for_rows(
        "SELECT count(*) FROM versions WHERE data->>'description' = 'second'",
        1,
    )
    .await;
    assert_eq!(env.db.count(VERSIONS).await, 1, "never a duplicate row");
    assert_eq!(
        env.db
            .count("SELECT extract(day FROM release_timestamp)::bigint FROM versions")
            .await,
        3
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_triple_twice_in_one_batch_keeps_the_later_one() {
    let env = TestEnv::new().await;
    let messages = [
        Outgoing::new(version_body(
            "router",
            "stable",
            "v1",
            "2016-08-02T17:00:00Z",
            "earlier",
        )),
        Outgoing::new(version_body(
            "router",
            "beta",
            "v1",
            "2016-08-02T17:00:00Z",
            "other",
        )),
        Outgoing::new(version_body(
            "router",
            "stable",
            "v1",
            "2016-08-04T17:00:00Z",
            "later",
        )),
    ];
    env.broker.publish_versions(&messages).await;
    let worker = env.start();
    env.wait_for_rows(VERSIONS, 2).await;
    env.wait_for_rows(
        "SELECT count(*) FROM versions WHERE train = 'stable' AND data->>'description' = 'later'",
        1,
    )
    .await;
    assert_eq!(
        env.broker.ready(&env.broker.topology.version_queue).await,
        0
    );
    worker.stop().await.unwrap();
}

const NOTES: &str = "SELECT data->>'description' FROM versions";

async fn notes(env: &TestEnv) -> String {
    env.db
        .client()
        .await
        .query_one(NOTES, &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn an_older_publish_arriving_later_never_overwrites_a_newer_one() {
    let env = TestEnv::new().await;
    let worker = env.start();
    let body = |notes| version_body("router", "stable", "v1", "2016-08-02T17:00:00Z", notes);
    env.broker
        .publish_versions(&[Outgoing::new(body("newer"))
            .id("newer")
            .at_secs(1_600_000_000)])
        .await;
    env.wait_for_rows(VERSIONS, 1).await;
    // A redelivery, a slower replica or a replay of an older publish.
    env.broker
        .publish_versions(&[Outgoing::new(body("older"))
            .id("older")
            .at_secs(1_500_000_000)])
        .await;
    let queue = env.broker.topology.version_queue.clone();
    crate::support::wait_until(
        "the older event to be consumed",
        std::time::Duration::from_secs(10),
        || async {
            env.broker.ready(&queue).await == 0
                && crate::support::broker::unacknowledged(&queue).await == Some(0)
        },
    )
    .await;
    assert_eq!(notes(&env).await, "newer");
    assert_eq!(env.db.count(VERSIONS).await, 1);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn in_one_batch_the_newest_publish_wins_whatever_the_arrival_order() {
    let env = TestEnv::new().await;
    let body = |notes| version_body("router", "stable", "v1", "2016-08-02T17:00:00Z", notes);
    env.broker
        .publish_versions(&[
            Outgoing::new(body("newest")).id("a").at_secs(1_600_000_002),
            Outgoing::new(body("oldest")).id("b").at_secs(1_600_000_000),
            Outgoing::new(body("middle")).id("c").at_secs(1_600_000_001),
        ])
        .await;
    let worker = env.start();
    env.wait_for_rows(VERSIONS, 1).await;
    let queue = env.broker.topology.version_queue.clone();
    crate::support::wait_until(
        "the batch to be acked",
        std::time::Duration::from_secs(10),
        || async {
            env.broker.ready(&queue).await == 0
                && crate::support::broker::unacknowledged(&queue).await == Some(0)
        },
    )
    .await;
    assert_eq!(notes(&env).await, "newest");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_superseded_by_one_the_database_refuses_is_stored_on_its_own() {
    let env = TestEnv::new().await;
    env.db
        .bootstrap_then(
            "ALTER TABLE versions ADD CONSTRAINT no_poison
             CHECK (data->>'description' <> 'poison')",
        )
        .await;
    let body = |notes| version_body("router", "stable", "v1", "2016-08-02T17:00:00Z", notes);
    env.broker
        .publish_versions(&[
            Outgoing::new(body("fine"))
                .id("older")
                .at_secs(1_600_000_000),
            Outgoing::new(body("poison"))
                .id("newer")
                .at_secs(1_600_000_001),
        ])
        .await;
    let worker = env.start();
    env.wait_for_dead_letters(1).await;
    env.wait_for_rows(VERSIONS, 1).await;
    assert_eq!(
        notes(&env).await,
        "fine",
        "the loser is not acked with a winner that failed"
    );
    let letters = env.broker.take_dead_letters().await;
    assert_eq!(crate::support::broker::message_id(&letters[0]), "newer");
    worker.stop().await.unwrap();
}

/// As the checkin statement: planned once per connection, not at every batch.
#[tokio::test]
async fn the_version_upsert_settles_on_one_plan_per_connection() {
    const BATCHES: usize = 12;
    let db = TestDb::create().await;
    let pool = db.bootstrapped_pool().await;
    let bodies: Vec<String> = (0..BATCHES)
        .map(|v| {
            version_body(
                "deis-router",
                "stable",
                &format!("v{v}"),
                "2016-08-02T19:00:00Z",
                "n",
            )
        })
        .collect();
    let ids: Vec<String> = (0..BATCHES).map(|v| format!("plan-{v}")).collect();
    let mut conn = pool.get().await.unwrap();
    for (index, (body, id)) in bodies.iter().zip(&ids).enumerate() {
        let event = VersionEvent::parse(&received(body, id), &Limits::default()).unwrap();
        let outcome = store::write_versions(
            &mut conn,
            &[Item {
                index,
                value: event,
            }],
        )
        .await
        .unwrap();
        assert_eq!(outcome.stored, 1);
    }
    let planned = plans(&conn, "INSERT INTO version_publishes").await;
    assert_settled_on_one_plan(planned, BATCHES as i64);
}

/// `sql/0008` moves `version_publishes`' key to bytewise comparison. A database
/// that already holds publish times (the schema as it stood before) keeps them,
/// and they still decide: an older publish is refused, a newer one replaces.
#[tokio::test]
async fn publish_times_recorded_before_the_keys_became_bytewise_still_decide() {
    let db = TestDb::create().await;
    let pool = db.bootstrapped_pool().await;
    let client = db.client().await;
    client
        .batch_execute(
            r#"ALTER TABLE version_publishes
                   ALTER COLUMN component_name TYPE varchar(32) COLLATE "default",
                   ALTER COLUMN train TYPE varchar(24) COLLATE "default",
                   ALTER COLUMN version TYPE varchar(32) COLLATE "default";
               DELETE FROM schema_migrations WHERE version = 8"#,
        )
        .await
        .unwrap();
    assert_eq!(key_collations(&client).await, "default,default,default");
    let write = |notes: &'static str, at: u64| {
        let pool = pool.clone();
        async move {
            let body = version_body("rôuter", "stable", "v1", "2016-08-02T17:00:00Z", notes);
            let mut envelope = received(&body, notes);
            envelope.timestamp_secs = Some(at);
            let event = VersionEvent::parse(&envelope, &Limits::default()).unwrap();
            let mut conn = pool.get().await.unwrap();
            let item = Item {
                index: 0,
                value: event,
            };
            store::write_versions(&mut conn, &[item]).await.unwrap();
        }
    };
    write("newer", 1_600_000_000).await;

    assert_eq!(app::bootstrap(&db.settings()).await.unwrap(), 1);
    assert_eq!(key_collations(&client).await, "C,C,C");

    write("older", 1_500_000_000).await;
    let stored = || async {
        let row = client.query_one(NOTES, &[]).await.unwrap();
        row.get::<_, String>(0)
    };
    assert_eq!(stored().await, "newer", "the older publish refused");
    write("newest", 1_700_000_000).await;
    assert_eq!(stored().await, "newest", "the newer publish replaces");
    assert_eq!(db.count(VERSIONS).await, 1);
    assert_eq!(db.count("SELECT count(*) FROM version_publishes").await, 1);
}

/// The collations of `version_publishes`' primary key, column by column.
async fn key_collations(client: &tokio_postgres::Client) -> String {
    const KEY_COLLATIONS: &str = "
        SELECT string_agg(c.collname, ',' ORDER BY k.n)
          FROM pg_index i,
               unnest(i.indcollation::oid[]) WITH ORDINALITY AS k(oid, n)
          JOIN pg_collation c ON c.oid = k.oid
         WHERE i.indrelid = 'version_publishes'::regclass AND i.indisprimary";
    client.query_one(KEY_COLLATIONS, &[]).await.unwrap().get(0)
}
