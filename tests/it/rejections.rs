//! Bad input: never written, dead-lettered with its reason, body and properties
//! intact — and the valid messages around it are stored.

use std::collections::HashMap;

use crate::support::{
    CLUSTER, Outgoing, RunningWorker, TestEnv, broker::message_id, checkin_body, header,
    version_body,
};

const OTHER: &str = "0f8e1c0d-9b7a-4f7e-9a3b-5e2a4d3c6c1f";

#[tokio::test]
async fn each_kind_of_bad_checkin_is_dead_lettered_with_its_reason_and_the_rest_is_stored() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.pipeline.limits.max_bytes = 4096;
    let oversized = format!(
        r#"{{"id":"{CLUSTER}","components":[],"pad":"{}"}}"#,
        "x".repeat(5000)
    );
    let bad: [(&str, Vec<u8>, &str); 9] = [
        (
            "not-utf8",
            b"{\"id\": \"\xff\"}".to_vec(),
            "body is not UTF-8",
        ),
        ("not-json", b"hello".to_vec(), "must be a JSON object"),
        ("truncated", b"{\"id\": ".to_vec(), "body is not valid JSON"),
        ("no-id", br#"{"components":[]}"#.to_vec(), "`id` is missing"),
        (
            "bad-uuid",
            br#"{"id":"cluster-7","components":[]}"#.to_vec(),
            "`id` is not a UUID",
        ),
        (
            "no-components",
            format!(r#"{{"id":"{CLUSTER}"}}"#).into_bytes(),
            "`components` is missing",
        ),
        (
            "nameless",
            format!(r#"{{"id":"{CLUSTER}","components":[{{"component":{{"name":""}}}}]}}"#)
                .into_bytes(),
            "`components[0].component.name` is missing or empty",
        ),
        (
            "oversized",
            oversized.into_bytes(),
            "over the limit of 4096 bytes",
        ),
        (
            "array",
            format!(r#"["{CLUSTER}",[]]"#).into_bytes(),
            "must be a JSON object",
        ),
    ];
    let mut messages = vec![
        Outgoing::new(checkin_body(CLUSTER, "before"))
            .id("good-1")
            .at_secs(1),
    ];
    messages.extend(
        bad.iter()
            .map(|(id, body, _)| Outgoing::new(body.clone()).id(*id).at_secs(2)),
    );
    messages.push(
        Outgoing::new(checkin_body(OTHER, "after"))
            .id("good-2")
            .at_secs(3),
    );
    env.broker.publish_checkins(&messages).await;

    let worker = RunningWorker::start(settings);
    env.wait_for_dead_letters(bad.len() as u32).await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 2)
        .await;

    let letters = env.broker.take_dead_letters().await;
    let by_id: HashMap<String, _> = letters.iter().map(|m| (message_id(m), m)).collect();
    assert_eq!(
        by_id.len(),
        bad.len(),
        "each bad message dead-lettered exactly once"
    );
    for (id, body, reason) in &bad {
        let letter = by_id[*id];
        let error = header(letter, "x-wfm-error").unwrap();
        assert!(
            error.contains(reason),
            "{id}: {error:?} should mention {reason:?}"
        );
        assert_eq!(
            header(letter, "x-wfm-error-kind").as_deref(),
            Some("invalid")
        );
        assert_eq!(
            header(letter, "x-wfm-queue").as_ref(),
            Some(&env.broker.topology.checkin_queue)
        );
        let failed_at = header(letter, "x-wfm-failed-at").unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(&failed_at).is_ok(),
            "{failed_at}"
        );
        assert_eq!(&letter.delivery.data, body, "{id}: body intact");
        assert_eq!(
            *letter.delivery.properties.timestamp(),
            Some(2),
            "{id}: properties intact"
        );
    }
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM clusters_checkins WHERE message_id LIKE 'good-%'")
            .await,
        2
    );
    assert_eq!(
        env.broker.ready(&env.broker.topology.checkin_queue).await,
        0
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn each_kind_of_bad_version_event_is_dead_lettered_with_its_reason() {
    let env = TestEnv::new().await;
    let at = "2016-08-02T17:00:00Z";
    let bad = [
        (
            "long-name",
            version_body(&"n".repeat(33), "stable", "v1", at, ""),
            "`component.name` is 33 characters",
        ),
        (
            "long-train",
            version_body("c", &"t".repeat(25), "v1", at, ""),
            "`version.train` is 25 characters",
        ),
        (
            "long-version",
            version_body("c", "stable", &"v".repeat(33), at, ""),
            "`version.version` is 33 characters",
        ),
        (
            "no-name",
            version_body("", "stable", "v1", at, ""),
            "`component.name` is missing",
        ),
        (
            "bad-time",
            version_body("c", "stable", "v1", "yesterday", ""),
            "`version.released` is not an RFC 3339",
        ),
    ];
    let mut messages: Vec<Outgoing> = bad
        .iter()
        .map(|(id, body, _)| Outgoing::new(body.clone()).id(*id))
        .collect();
    // Exactly at the limits, in multi-byte characters: valid.
    messages.push(
        Outgoing::new(version_body(
            &"é".repeat(32),
            &"é".repeat(24),
            &"é".repeat(32),
            at,
            "ok",
        ))
        .id("ok"),
    );
    env.broker.publish_versions(&messages).await;
    let worker = env.start();
    env.wait_for_dead_letters(bad.len() as u32).await;
    env.wait_for_rows("SELECT count(*) FROM versions", 1).await;
    let letters = env.broker.take_dead_letters().await;
    assert_eq!(letters.len(), bad.len());
    for letter in &letters {
        let id = letter
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .to_string();
        let (_, _, reason) = bad.iter().find(|(b, _, _)| *b == id).unwrap();
        let error = header(letter, "x-wfm-error").unwrap();
        assert!(error.contains(reason), "{id}: {error:?}");
        assert_eq!(
            header(letter, "x-wfm-queue").as_ref(),
            Some(&env.broker.topology.version_queue)
        );
    }
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_row_postgres_refuses_mid_batch_is_dead_lettered_and_the_other_499_are_stored() {
    let env = TestEnv::new().await;
    // A constraint of this test's own database makes PostgreSQL itself refuse one row.
    env.db
        .bootstrap_then("ALTER TABLE clusters_checkins ADD CONSTRAINT no_poison CHECK (data->>'marker' <> 'poison')")
        .await;
    let messages: Vec<Outgoing> = (0..500)
        .map(|i| {
            let marker = if i == 250 {
                "poison".to_owned()
            } else {
                format!("ok-{i}")
            };
            let cluster = format!("00000000-0000-4000-8000-{i:012}");
            Outgoing::new(checkin_body(&cluster, &marker))
                .id(format!("m-{i}"))
                .at_secs(1_600_000_000 + i)
        })
        .collect();
    env.broker.publish_checkins(&messages).await;
    let worker = env.start();
    env.wait_for_dead_letters(1).await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 499)
        .await;
    let letters = env.broker.take_dead_letters().await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        letter
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "m-250"
    );
    assert_eq!(
        header(letter, "x-wfm-error-kind").as_deref(),
        Some("rejected-by-database")
    );
    assert_eq!(header(letter, "x-wfm-sqlstate").as_deref(), Some("23514"));
    assert!(header(letter, "x-wfm-error").unwrap().contains("no_poison"));
    assert_eq!(env.db.count("SELECT count(*) FROM clusters").await, 499);
    assert_eq!(
        env.broker.ready(&env.broker.topology.checkin_queue).await,
        0,
        "all acked"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_nul_escape_is_dead_lettered_as_invalid_before_postgres_sees_it() {
    let env = TestEnv::new().await;
    // PostgreSQL's json type would take it, but jsonb and ->> refuse it later.
    let nul = checkin_body(CLUSTER, "bad\\u0000marker");
    let good = checkin_body(OTHER, "good");
    env.broker
        .publish_checkins(&[Outgoing::new(nul).id("nul"), Outgoing::new(good).id("good")])
        .await;
    let worker = env.start();
    env.wait_for_dead_letters(1).await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 1)
        .await;
    let letters = env.broker.take_dead_letters().await;
    assert_eq!(message_id(&letters[0]), "nul");
    assert_eq!(
        header(&letters[0], "x-wfm-error-kind").as_deref(),
        Some("invalid")
    );
    let reason = header(&letters[0], "x-wfm-error").unwrap();
    assert!(
        reason.contains("\\u0000") && reason.contains("jsonb"),
        "{reason}"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn rows_postgres_refuses_with_data_or_limit_errors_are_dead_lettered_with_their_sqlstate() {
    let env = TestEnv::new().await;
    // Classes 22 (data exception) and 54 (program limit exceeded, as a very
    // deep JSON document gets) belong to one row: isolate and dead-letter it.
    env.db
        .bootstrap_then(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.data->>'marker' = 'data' THEN RAISE EXCEPTION 'bad value' USING ERRCODE = '22023'; END IF;
               IF NEW.data->>'marker' = 'limit' THEN RAISE EXCEPTION 'too deep' USING ERRCODE = '54001'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON clusters_checkins FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await;
    let messages: Vec<Outgoing> = (0..20)
        .map(|i| {
            let marker = match i {
                5 => "data".to_owned(),
                12 => "limit".to_owned(),
                _ => format!("ok-{i}"),
            };
            let cluster = format!("00000000-0000-4000-8000-{i:012}");
            Outgoing::new(checkin_body(&cluster, &marker)).id(format!("m-{i}"))
        })
        .collect();
    env.broker.publish_checkins(&messages).await;
    let worker = env.start();
    env.wait_for_dead_letters(2).await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 18)
        .await;
    let letters = env.broker.take_dead_letters().await;
    let by_id: HashMap<String, _> = letters.iter().map(|m| (message_id(m), m)).collect();
    for (id, sqlstate) in [("m-5", "22023"), ("m-12", "54001")] {
        let letter = by_id[id];
        assert_eq!(
            header(letter, "x-wfm-error-kind").as_deref(),
            Some("rejected-by-database"),
            "{id}"
        );
        assert_eq!(header(letter, "x-wfm-sqlstate").as_deref(), Some(sqlstate));
    }
    worker.stop().await.unwrap();
}
