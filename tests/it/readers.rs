//! The older API's readers get what they expect: on a database the worker
//! filled, its own read queries run and every document they return decodes
//! into the shape its reader unmarshals it into.

use std::time::Duration;

use chrono::NaiveDateTime;

use crate::support::{
    CLUSTER, Outgoing, TestEnv, checkin_body,
    legacy::{self, Cluster, Data},
    wait_until,
};

const OTHER: &str = "0f8e1c0d-9b7a-4f7e-9a3b-5e2a4d3c6c1f";

fn version(component: &str, train: &str, version: &str, released: &str, data: &str) -> String {
    format!(
        r#"{{"component":{{"name":"{component}","description":"d"}},"version":{{"train":"{train}","version":"{version}","released":"{released}"{data}}}}}"#
    )
}

fn at(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
}

#[tokio::test]
async fn the_older_apis_queries_read_back_what_the_worker_wrote() {
    let env = TestEnv::new().await;
    let worker = env.start();
    let minimal = format!(r#"{{"id":"{OTHER}","components":[]}}"#);
    env.broker
        .publish_checkins(&[
            Outgoing::new(checkin_body(CLUSTER, "first"))
                .id("c1")
                .at_secs(1_600_000_000),
            Outgoing::new(checkin_body(CLUSTER, "second"))
                .id("c2")
                .at_secs(1_600_086_400),
            Outgoing::new(minimal).id("c3").at_secs(1_600_000_000),
        ])
        .await;
    env.broker
        .publish_versions(&[
            Outgoing::new(version(
                "router",
                "stable",
                "v1",
                "2016-08-01T00:00:00Z",
                r#","data":{"description":"one","fixes":"f","image":"quay.io/x"}"#,
            )),
            Outgoing::new(version(
                "router",
                "stable",
                "v2",
                "2016-08-02T00:00:00Z",
                r#","data":{"description":"two"}"#,
            )),
            Outgoing::new(version(
                "router",
                "beta",
                "v3",
                "2016-08-03T00:00:00Z",
                r#","data":null"#,
            )),
            Outgoing::new(version(
                "builder",
                "stable",
                "v1",
                "2016-08-01T00:00:00Z",
                "",
            )),
        ])
        .await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 3)
        .await;
    env.wait_for_rows("SELECT count(*) FROM versions", 4).await;
    let client = env.db.client().await;

    assert_eq!(
        legacy::version_columns(&client).await,
        [
            "version_id",
            "component_name",
            "train",
            "version",
            "release_timestamp",
            "data"
        ],
        "GetLatestVersions scans exactly these six columns"
    );
    let latest = client
        .query_one(legacy::LATEST_VERSION, &[&"router", &"stable"])
        .await
        .unwrap();
    assert_eq!(latest.get::<_, String>("version"), "v2");
    assert_eq!(
        legacy::decode::<Data>(&latest, "data"),
        Some(Data {
            description: Some("two".into()),
            fixes: None
        })
    );
    let pairs = client
        .query(
            legacy::LATEST_VERSIONS,
            &[&vec!["router", "builder"], &vec!["stable", "beta"]],
        )
        .await
        .unwrap();
    assert_eq!(pairs.len(), 3, "router/stable, router/beta, builder/stable");
    for row in &pairs {
        assert_eq!(row.len(), 6);
        legacy::decode::<Data>(row, "data");
    }
    let beta = pairs
        .iter()
        .find(|r| r.get::<_, String>("train") == "beta")
        .unwrap();
    assert_eq!(
        legacy::decode::<Data>(beta, "data"),
        None,
        "data null stays null"
    );
    let builder = pairs
        .iter()
        .find(|r| r.get::<_, String>("component_name") == "builder")
        .unwrap();
    assert_eq!(
        legacy::decode::<Data>(builder, "data"),
        None,
        "absent data is null"
    );

    let uuid: uuid::Uuid = CLUSTER.parse().unwrap();
    let cluster = client.query_one(legacy::CLUSTER, &[&uuid]).await.unwrap();
    let decoded = legacy::decode::<Cluster>(&cluster, "data").unwrap();
    assert_eq!(decoded.id, CLUSTER);
    assert_eq!(
        client
            .query_one(legacy::CLUSTER_COUNT, &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );

    let (epoch, now) = (at("2000-01-01 00:00:00"), at("2100-01-01 00:00:00"));
    let by_age = client
        .query(legacy::CLUSTERS_BY_AGE, &[&epoch, &now, &epoch, &now])
        .await
        .unwrap();
    assert_eq!(by_age.len(), 2);
    for row in &by_age {
        legacy::decode::<Cluster>(row, "data").unwrap();
    }
    for row in client
        .query("SELECT data FROM clusters_checkins", &[])
        .await
        .unwrap()
    {
        legacy::decode::<Cluster>(&row, "data").unwrap();
    }
    let checkins = client
        .query(legacy::CLUSTER_CHECKINS, &[&epoch, &now])
        .await
        .unwrap();
    assert_eq!(checkins.len(), 2);
    let persistent = client
        .query(
            legacy::PERSISTENT_CLUSTERS,
            &[&epoch, &now, &at("2020-09-01 00:00:00")],
        )
        .await
        .unwrap();
    assert_eq!(
        persistent.len(),
        1,
        "only the cluster that checked in twice"
    );
    assert_eq!(persistent[0].get::<_, i64>("checkins"), 2);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn documents_a_reader_could_not_decode_are_dead_lettered() {
    let env = TestEnv::new().await;
    let worker = env.start();
    let bad_checkins = [
        format!(r#"{{"id":"{CLUSTER}","components":[],"firstSeen":"yesterday"}}"#),
        format!(r#"{{"id":"{CLUSTER}","components":[],"lastSeen":5}}"#),
        format!(r#"{{"id":"{CLUSTER}","components":[{{"component":{{"name":"r","type":7}}}}]}}"#),
        format!(
            r#"{{"id":"{CLUSTER}","components":[{{"component":{{"name":"r"}},"version":{{"train":["s"]}}}}]}}"#
        ),
        format!(
            r#"{{"id":"{CLUSTER}","components":[{{"component":{{"name":"r"}},"version":{{"data":{{"fixes":1}}}}}}]}}"#
        ),
        format!(
            r#"{{"id":"{CLUSTER}","components":[{{"component":{{"name":"r"}},"updateAvailable":true}}]}}"#
        ),
    ];
    let bad_versions = [
        version("r", "s", "v1", "2016-08-01T00:00:00Z", r#","data":"notes""#),
        version(
            "r",
            "s",
            "v2",
            "2016-08-01T00:00:00Z",
            r#","data":{"description":["x"]}"#,
        ),
        version("r", "s", "v3", "2016-08-01T00:00:00Z", r#","data":[1]"#),
    ];
    let checkins: Vec<Outgoing> = bad_checkins
        .iter()
        .map(|b| Outgoing::new(b.as_str()))
        .collect();
    let versions: Vec<Outgoing> = bad_versions
        .iter()
        .map(|b| Outgoing::new(b.as_str()))
        .collect();
    env.broker.publish_checkins(&checkins).await;
    env.broker.publish_versions(&versions).await;
    env.wait_for_dead_letters((checkins.len() + versions.len()) as u32)
        .await;
    let queue = env.broker.topology.version_queue.clone();
    wait_until("the queues to drain", Duration::from_secs(10), || async {
        env.broker.ready(&queue).await == 0
    })
    .await;
    assert_eq!(
        env.db.count("SELECT count(*) FROM clusters_checkins").await,
        0
    );
    assert_eq!(env.db.count("SELECT count(*) FROM versions").await, 0);
    worker.stop().await.unwrap();
}

#[test]
fn the_readme_documents_the_report_queries_the_tests_compare() {
    let readme = include_str!("../../README.md");
    let flat = |sql: &str| sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let readme = flat(readme);
    for query in [
        legacy::CLUSTERS_BY_AGE,
        legacy::CLUSTER_CHECKINS,
        legacy::PERSISTENT_CLUSTERS,
        legacy::SUMMARY_CLUSTERS_BY_AGE,
        legacy::SUMMARY_CLUSTER_CHECKINS,
        legacy::SUMMARY_PERSISTENT_CLUSTERS,
    ] {
        assert!(
            readme.contains(&flat(query)),
            "README lacks: {}",
            flat(query)
        );
    }
}
