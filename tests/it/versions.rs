//! Version events: insert, and replace on republish of the same triple.

use crate::support::{Outgoing, TestEnv, version_body};

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
    assert_eq!(row.get::<_, String>(4), body);
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
        "SELECT count(*) FROM versions WHERE data->'version'->'data'->>'description' = 'second'",
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
        "SELECT count(*) FROM versions WHERE train = 'stable' AND data->'version'->'data'->>'description' = 'later'",
        1,
    )
    .await;
    assert_eq!(
        env.broker.ready(&env.broker.topology.version_queue).await,
        0
    );
    worker.stop().await.unwrap();
}
