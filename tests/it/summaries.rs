//! The summaries (first checkin, count) answer the reports as full history does.

use std::time::Duration;

use chrono::NaiveDateTime;
use wfm_worker::app;

use crate::support::{
    TestEnv,
    history::{CHECKINS, at, convert, midnight},
    legacy, wait_until,
};

/// The reports from full history and from the summaries, as comparable rows.
async fn reports(env: &TestEnv, summary: bool) -> Vec<String> {
    let client = env.db.client().await;
    let (epoch, now) = (midnight(-3650), midnight(3650));
    let since = midnight(-2);
    let (by_age, checkins, persistent) = if summary {
        (
            legacy::SUMMARY_CLUSTERS_BY_AGE,
            legacy::SUMMARY_CLUSTER_CHECKINS,
            legacy::SUMMARY_PERSISTENT_CLUSTERS,
        )
    } else {
        (
            legacy::CLUSTERS_BY_AGE,
            legacy::CLUSTER_CHECKINS,
            legacy::PERSISTENT_CLUSTERS,
        )
    };
    let mut rows = Vec::new();
    for row in client
        .query(by_age, &[&epoch, &now, &epoch, &now])
        .await
        .unwrap()
    {
        rows.push(format!("age {}", row.get::<_, uuid::Uuid>("cluster_id")));
    }
    for row in client.query(checkins, &[&epoch, &now]).await.unwrap() {
        rows.push(format!(
            "checkins {} {:?} {:?} {}",
            row.get::<_, uuid::Uuid>("cluster_id"),
            row.get::<_, NaiveDateTime>("first_seen"),
            row.get::<_, NaiveDateTime>("last_seen"),
            row.get::<_, i64>("checkins")
        ));
    }
    for row in client
        .query(persistent, &[&epoch, &now, &since])
        .await
        .unwrap()
    {
        rows.push(format!(
            "persistent {} {}",
            row.get::<_, uuid::Uuid>("cluster_id"),
            row.get::<_, i64>("checkins")
        ));
    }
    rows.sort();
    rows
}

#[tokio::test]
async fn summaries_answer_the_reports_as_full_history_does_on_random_data() {
    for partitioned in [false, true] {
        let env = TestEnv::new().await;
        app::bootstrap(&env.db.settings()).await.unwrap();
        if partitioned {
            convert(&env).await;
        }
        // 40 clusters, 2 000 checkins at scrambled times over the last month,
        // every tenth published twice (a redelivery).
        let mut messages = Vec::new();
        for i in 0..2_000u64 {
            let cluster = format!("00000000-0000-4000-8000-{:012}", (i * 7) % 40);
            let minutes = ((i * 7919) % 43_200) as i64;
            let message = at(
                &format!("r-{i}"),
                &cluster,
                midnight(-30) + chrono::Duration::minutes(minutes),
            );
            if i % 10 == 0 {
                messages.push(message.clone());
            }
            messages.push(message);
        }
        env.broker.publish_checkins(&messages).await;
        let worker = env.start();
        env.wait_for_rows(CHECKINS, 2_000).await;
        let queue = env.broker.topology.checkin_queue.clone();
        wait_until("the queue to drain", Duration::from_secs(30), || async {
            env.broker.ready(&queue).await == 0
        })
        .await;
        env.assert_still_working().await;
        worker.stop().await.unwrap();
        assert_eq!(
            env.db.count(CHECKINS).await,
            2_001,
            "redeliveries stored once"
        );
        let (history, summaries) = (reports(&env, false).await, reports(&env, true).await);
        assert!(history.len() > 80, "{history:?}");
        assert_eq!(history, summaries, "partitioned: {partitioned}");
    }
}
