//! Checkin history at scale: a partitioned `clusters_checkins` (converted
//! online), partitions kept ahead by one replica at a time, retention by whole
//! partitions, exact deduplication, and summaries that answer the reports.

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicBool, AtomicI64, Ordering},
    time::Duration,
};

use chrono::NaiveDateTime;
use wfm_worker::{
    app,
    config::{HistorySettings, Period},
    store::history::{self, MaintenanceReport},
};

use crate::support::{
    Outgoing, RunningWorker, TestEnv, checkin_body,
    history::{CHECKINS, at, convert, day, maintain, midnight},
    scenario::{Copies, scenario},
    wait_until,
};

async fn partition_names(env: &TestEnv) -> Vec<String> {
    let client = env.db.client().await;
    history::partitions(&client)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect()
}

/// The partition that holds the checkin with this message id.
async fn partition_of(env: &TestEnv, message_id: &str) -> String {
    env.db
        .client()
        .await
        .query_one(
            "SELECT tableoid::regclass::text FROM clusters_checkins WHERE message_id = $1",
            &[&message_id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn converting_a_live_table_mid_stream_loses_and_duplicates_nothing() {
    let env = TestEnv::new().await;
    let scenario = scenario(6_000);
    env.broker.publish_checkins(&scenario.messages).await;
    let mut settings = env.settings();
    settings.pipeline.batch_size = 50;
    settings.pipeline.prefetch = 100;
    let worker = RunningWorker::start(settings);
    env.wait_for_progress(1_000).await;
    convert(&env).await;
    let stored = env.stored().await;
    assert!(
        stored < scenario.valid.len() as i64,
        "converted mid-stream: {stored} stored"
    );
    env.assert_scenario_outcome(&scenario, Copies::ExactlyOnce)
        .await;
    let client = env.db.client().await;
    let kind: String = client
        .query_one(
            "SELECT relkind::text FROM pg_class WHERE oid = 'clusters_checkins'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "p", "clusters_checkins is partitioned");
    assert!(
        partition_names(&env)
            .await
            .contains(&"clusters_checkins_legacy".to_owned())
    );
    // The switch built no index (writers would have waited for it): the
    // partition's primary key is the index built beforehand, concurrently.
    let indexes = env
        .db
        .texts(
            "SELECT indexrelid::regclass::text FROM pg_index
              WHERE indrelid = 'clusters_checkins_legacy'::regclass
                AND indkey::text = (SELECT string_agg(attnum::text, ' ' ORDER BY k.i)
                      FROM unnest(ARRAY['checkins_id', 'created_at']) WITH ORDINALITY AS k(name, i)
                      JOIN pg_attribute a ON a.attrelid = 'clusters_checkins_legacy'::regclass
                                         AND a.attname = k.name)",
        )
        .await;
    assert_eq!(
        indexes,
        ["clusters_checkins_legacy_pkey"],
        "one index on (checkins_id, created_at)"
    );
    // A redelivery of a message stored before the switch is still recognised.
    env.broker.publish_checkins(&scenario.messages[..50]).await;
    env.assert_still_working().await;
    assert_eq!(
        env.db.count(CHECKINS).await,
        scenario.valid.len() as i64 + 1,
        "nothing stored twice"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn an_interrupted_conversion_resumes() {
    let env = TestEnv::new().await;
    env.db.bootstrap_then(
        "INSERT INTO clusters_checkins (cluster_id, created_at, data, message_id)
         SELECT '5e2a4d3c-6c1f-4f7e-9a3b-2f8e1c0d9b7a', now() - n * interval '1 hour', '{}', 'old-' || n
           FROM generate_series(1, 100) n;
         -- What a run cut off after its first steps leaves: a constraint for a
         -- boundary that has come too close, and an index never finished.
         ALTER TABLE clusters_checkins ADD CONSTRAINT clusters_checkins_legacy_range
             CHECK (created_at IS NOT NULL AND created_at < now() + interval '1 minute') NOT VALID;
         CREATE UNIQUE INDEX clusters_checkins_legacy_id_time ON clusters_checkins (checkins_id, created_at);
         UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'clusters_checkins_legacy_id_time'::regclass;",
    ).await;
    convert(&env).await;
    assert_eq!(env.db.count(CHECKINS).await, 100, "nothing lost");
    let again = app::partition_checkins(&env.db.settings(), &day())
        .await
        .unwrap();
    assert!(again.already, "a second run finds it done");
}

#[tokio::test]
async fn partitions_are_created_ahead_by_one_of_several_replicas_at_once() {
    let env = TestEnv::new().await;
    app::bootstrap(&env.db.settings()).await.unwrap();
    convert(&env).await;
    let settings = env.db.settings();
    let runs = (0..4).map(|_| {
        let settings = settings.clone();
        tokio::spawn(async move { app::maintain(&settings, &day()).await })
    });
    let reports: Vec<MaintenanceReport> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("every replica's run succeeds"))
        .collect();
    let created: Vec<&String> = reports.iter().flat_map(|r| &r.created).collect();
    let unique: BTreeSet<&String> = created.iter().copied().collect();
    assert_eq!(created.len(), unique.len(), "each partition created once");
    let report = maintain(&env, &day()).await;
    assert!(report.partitions_ahead >= history::AHEAD, "{report:?}");
    let names = partition_names(&env).await;
    for days in 0..=i64::from(history::AHEAD) {
        let start = midnight(days);
        let covered = names.contains(&Period::Day.partition_name(start))
            || names.contains(&"clusters_checkins_legacy".to_owned());
        assert!(covered, "day {days} ahead has a partition: {names:?}");
    }
}

/// A partitioned table with a day partition for each of the last ten days and
/// the next three (the converted table's partition removed).
async fn daily_history(env: &TestEnv) {
    app::bootstrap(&env.db.settings()).await.unwrap();
    convert(env).await;
    let client = env.db.client().await;
    client
        .batch_execute("ALTER TABLE clusters_checkins DETACH PARTITION clusters_checkins_legacy; DROP TABLE clusters_checkins_legacy")
        .await
        .unwrap();
    for days in -10..=3 {
        let (lower, upper) = (midnight(days), midnight(days + 1));
        client
            .query_one(
                "SELECT wfm_create_checkin_partition($1, $2, $3)",
                &[&Period::Day.partition_name(lower), &lower, &upper],
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_checkin_at_each_edge_of_the_partition_range_lands_where_it_belongs() {
    let env = TestEnv::new().await;
    daily_history(&env).await;
    let cluster = "00000000-0000-4000-8000-000000000001";
    let yesterday = midnight(-1);
    let messages = [
        at("at-lower", cluster, yesterday),
        at(
            "below-upper",
            cluster,
            yesterday + chrono::Duration::days(1) - chrono::Duration::milliseconds(1),
        ),
        at("oldest-day", cluster, midnight(-10)),
    ];
    env.broker.publish_checkins(&messages).await;
    let worker = env.start();
    env.wait_for_rows(CHECKINS, 3).await;
    let name = |d: NaiveDateTime| Period::Day.partition_name(d);
    assert_eq!(partition_of(&env, "at-lower").await, name(yesterday));
    assert_eq!(partition_of(&env, "below-upper").await, name(yesterday));
    assert_eq!(partition_of(&env, "oldest-day").await, name(midnight(-10)));

    // Far late: older than the oldest partition — beyond retention. Not kept in
    // history, but counted in its cluster's summary.
    let retention = HistorySettings {
        retention: Some(Duration::from_secs(5 * 86_400)),
        ..day()
    };
    let report = maintain(&env, &retention).await;
    assert!(!report.dropped.is_empty(), "{report:?}");
    env.broker
        .publish_checkins(&[at("far-late", cluster, midnight(-30))])
        .await;
    wait_until(
        "the far-late checkin to count",
        Duration::from_secs(10),
        || async { env.db.try_count("SELECT checkin_count FROM clusters").await == Some(4) },
    )
    .await;
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM clusters_checkins WHERE message_id = 'far-late'")
            .await,
        0
    );
    let first: NaiveDateTime = env
        .db
        .client()
        .await
        .query_one("SELECT first_checkin_at FROM clusters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        first,
        midnight(-30),
        "first seen keeps the far-late checkin"
    );

    // Far early: after the last partition (only when maintenance has not run
    // for three periods; the worker's own run at start-up would recreate it,
    // so the partition goes once it is consuming). Dead-lettered with
    // PostgreSQL's reason, to be replayed after `wfm-worker maintain`.
    let mut settings = env.settings();
    settings.pipeline.limits.max_clock_skew = Duration::from_secs(86_400);
    worker.stop().await.unwrap();
    let worker = RunningWorker::start(settings);
    env.broker.wait_for_consumers().await;
    env.db
        .client()
        .await
        .batch_execute(&format!("DROP TABLE {}", name(midnight(1))))
        .await
        .unwrap();
    // Dated into the day whose partition is gone, within a day's clock skew.
    let mut early = Outgoing::new(checkin_body(cluster, "far-early")).id("far-early");
    early.timestamp_ms = Some(midnight(1).and_utc().timestamp_millis() + 1_000);
    env.broker.publish_checkins(&[early]).await;
    env.wait_for_dead_letters(1).await;
    let letters = env.broker.take_dead_letters().await;
    let reason = crate::support::header(&letters[0], "x-wfm-error").unwrap();
    assert!(reason.contains("no partition"), "{reason}");
    worker.stop().await.unwrap();
}

const LIVE: &str = "SELECT count(*) FROM clusters_checkins WHERE message_id LIKE 'live-%'";

/// Publishes live checkins, a chunk at a time and never more than a few
/// hundred ahead of what is stored, until `until` is set: the stream lasts as
/// long as whatever runs beside it, however slow the machine. `published`
/// counts what has gone, or is going, to the broker: never less than what is
/// stored.
async fn keep_ingesting(env: &TestEnv, published: &AtomicI64, until: &AtomicBool) {
    const CHUNK: i64 = 100;
    while !until.load(Ordering::Acquire) {
        let next = published.load(Ordering::Acquire);
        if next - env.db.count(LIVE).await < 4 * CHUNK {
            let chunk: Vec<Outgoing> = (next..next + CHUNK)
                .map(|i| {
                    let cluster = format!("00000000-0000-4000-8000-{:012}", i % 10);
                    Outgoing::new(checkin_body(&cluster, "live")).id(format!("live-{i}"))
                })
                .collect();
            published.store(next + CHUNK, Ordering::Release);
            env.broker.publish_checkins(&chunk).await;
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::test]
async fn retention_drops_exactly_the_old_partitions_while_ingesting() {
    let env = TestEnv::new().await;
    daily_history(&env).await;
    let historic: Vec<Outgoing> = (-10..=0)
        .flat_map(|d| (0..10).map(move |i| (d, i)))
        .map(|(d, i)| {
            at(
                &format!("h{d}-{i}"),
                &format!("00000000-0000-4000-8000-{:012}", i),
                midnight(d) + chrono::Duration::hours(1),
            )
        })
        .collect();
    env.broker.publish_checkins(&historic).await;
    let mut settings = env.settings();
    settings.pipeline.batch_size = 20;
    settings.pipeline.prefetch = 40;
    let worker = RunningWorker::start(settings);
    env.wait_for_rows(CHECKINS, 110).await;
    // New checkins flow before, while and after retention runs.
    let retention = HistorySettings {
        retention: Some(Duration::from_secs(5 * 86_400)),
        ..day()
    };
    let (published, done) = (AtomicI64::new(0), AtomicBool::new(false));
    let ((), (struck, report)) = tokio::join!(keep_ingesting(&env, &published, &done), async {
        env.wait_for_rows(LIVE, 1).await;
        let stored = env.db.count(LIVE).await;
        let sent = published.load(Ordering::Acquire);
        let report = maintain(&env, &retention).await;
        done.store(true, Ordering::Release);
        ((stored, sent), report)
    });
    assert!(
        struck.0 < struck.1,
        "retention struck mid-stream: {} of {} stored",
        struck.0,
        struck.1
    );
    let dropped: Vec<String> = report.dropped.iter().map(|(n, _)| n.clone()).collect();
    let expected: Vec<String> = (-10..-5)
        .map(|d| Period::Day.partition_name(midnight(d)))
        .collect();
    assert_eq!(
        dropped, expected,
        "exactly the partitions wholly older than 5 days"
    );
    let published = published.into_inner();
    env.wait_for_rows(LIVE, published).await;
    assert_eq!(env.db.count(LIVE).await, published, "each stored once");
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM clusters_checkins WHERE message_id LIKE 'h%'")
            .await,
        60
    );
    assert_eq!(
        env.db
            .count("SELECT sum(checkin_count)::bigint FROM clusters")
            .await,
        110 + published,
        "summaries keep counting what retention dropped"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn migrate_and_maintain_run_from_the_command_line() {
    let env = TestEnv::new().await;
    let run = |args: &'static [&'static str]| {
        let mut command = crate::support::process::worker_command(&env);
        command.args(args).stderr(std::process::Stdio::piped());
        async move {
            let output = command.output().await.unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let said = run(&["migrate", "partition-checkins"]).await;
    assert!(said.contains("clusters_checkins is partitioned"), "{said}");
    let said = run(&["migrate", "partition-checkins"]).await;
    assert!(said.contains("already partitioned"), "{said}");
    let said = run(&["maintain"]).await;
    assert!(said.contains("period(s) ahead"), "{said}");
}
