//! What operators rely on: readiness, metrics, JSON logs, the Dockerfile.

use std::{net::SocketAddr, sync::Mutex, time::Duration};

use wfm_worker::http;

use crate::support::{
    CLUSTER, Outgoing, RunningWorker, TestEnv, checkin_body, proxy::Proxy, sample, wait_until,
};

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn wait_for_status(addr: SocketAddr, path: &str, expected: u16) -> String {
    let last = Mutex::new(String::new());
    wait_until(
        &format!("GET {path} to answer {expected}"),
        Duration::from_secs(30),
        || async {
            match http::get(addr, path).await {
                Ok((status, body)) if status == expected => {
                    *last.lock().unwrap() = body;
                    true
                }
                _ => false,
            }
        },
    )
    .await;
    last.into_inner().unwrap()
}

#[tokio::test]
async fn readiness_turns_503_naming_the_database_while_it_is_cut_and_200_after() {
    let env = TestEnv::new().await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let mut settings = env.settings();
    settings.database.config = env.db.url_via(proxy.addr).parse().unwrap();
    let addr = free_port();
    settings.http_addr = Some(addr);
    let worker = RunningWorker::start(settings);

    let body = wait_for_status(addr, "/readyz", 200).await;
    assert!(body.contains(r#""ready":true"#), "{body}");
    proxy.cut();
    let body = wait_for_status(addr, "/readyz", 503).await;
    assert!(body.contains("unreachable"), "names the database: {body}");
    assert!(body.contains(r#""broker":"ok""#), "{body}");
    for detail in [
        "127.0.0.1",
        &proxy.addr.port().to_string(),
        "refused",
        "PostgreSQL",
    ] {
        assert!(
            !body.contains(detail),
            "readiness tells no server details: {body}"
        );
    }
    let (status, _) = http::get(addr, "/healthz").await.unwrap();
    assert_eq!(status, 200, "alive while not ready");
    proxy.restore();
    wait_for_status(addr, "/readyz", 200).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_stored_and_dead_lettered_messages() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    let addr = free_port();
    settings.http_addr = Some(addr);
    let queue = env.broker.topology.checkin_queue.clone();
    let messages = vec![
        Outgoing::new(checkin_body(CLUSTER, "a")).id("a"),
        Outgoing::new(checkin_body(CLUSTER, "b")).id("b"),
        Outgoing::new("not json").id("bad"),
        Outgoing::new(checkin_body(CLUSTER, "a")).id("a"),
    ];
    env.broker.publish_checkins(&messages).await;
    let worker = RunningWorker::start(settings);
    env.wait_for_dead_letters(1).await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 2)
        .await;

    let scraped = Mutex::new(String::new());
    wait_until(
        "the counters to be scraped",
        Duration::from_secs(10),
        || async {
            let text = http::get(addr, "/metrics")
                .await
                .map(|(_, b)| b)
                .unwrap_or_default();
            let acked = sample(&text, "wfm_messages_acked_total", &[("queue", &queue)]);
            *scraped.lock().unwrap() = text;
            acked == Some(4.0)
        },
    )
    .await;
    let text = scraped.into_inner().unwrap();
    let q = [("queue", queue.as_str())];
    assert_eq!(sample(&text, "wfm_messages_received_total", &q), Some(4.0));
    assert_eq!(sample(&text, "wfm_messages_stored_total", &q), Some(2.0));
    assert_eq!(
        sample(&text, "wfm_messages_deduplicated_total", &q),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "wfm_messages_dead_lettered_total",
            &[("queue", &queue), ("reason", "invalid")]
        ),
        Some(1.0)
    );
    assert!(sample(&text, "wfm_batch_write_duration_seconds_count", &q).unwrap() >= 1.0);
    assert!(
        sample(
            &text,
            "wfm_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )
        .is_some()
    );
    worker.stop().await.unwrap();
}

const DOCKERFILE: &str = include_str!("../../Dockerfile");

#[test]
fn the_dockerfile_builds_in_stages_and_runs_the_binary_as_non_root_with_a_healthcheck() {
    let lines: Vec<&str> = DOCKERFILE
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(
        lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    assert!(
        has("COPY Cargo.toml Cargo.lock"),
        "dependency layer before the sources"
    );
    assert!(
        has("COPY --from=build /usr/local/bin/wfm-worker"),
        "the binary only"
    );
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(
        !user.contains("root") && !user.starts_with("USER 0"),
        "{user}"
    );
    assert!(has("EXPOSE 9090"));
    assert!(has("HEALTHCHECK") && DOCKERFILE.contains(r#"CMD ["wfm-worker", "healthcheck"]"#));
    assert!(has(r#"ENTRYPOINT ["wfm-worker"]"#));
    assert!(has(r#"CMD ["run"]"#));
}

/// The image names its features (so that a placeholder build of the
/// dependencies builds the same ones): each default feature must be among
/// them, and the compiled-in allocator options must reach the build.
#[test]
fn the_dockerfile_builds_every_default_feature_with_the_repository_cargo_config() {
    let manifest = include_str!("../../Cargo.toml");
    let defaults = manifest
        .lines()
        .find_map(|l| l.strip_prefix("default = ["))
        .and_then(|l| l.strip_suffix(']'))
        .expect("a default feature list");
    let builds: Vec<&str> = DOCKERFILE
        .lines()
        .filter(|l| l.contains("cargo build"))
        .collect();
    assert_eq!(builds.len(), 2, "dependencies, then the sources");
    for build in builds {
        let named = build
            .split("--features ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no --features in {build}"));
        for feature in defaults.split(',').map(|f| f.trim().trim_matches('"')) {
            assert!(
                named.split(',').any(|n| n == feature),
                "{feature} missing from {build}"
            );
        }
    }
    let config = DOCKERFILE
        .find("COPY .cargo ./.cargo")
        .expect("COPY .cargo");
    assert!(config < DOCKERFILE.find("cargo build").unwrap());
}

#[tokio::test]
async fn readiness_answers_at_once_while_every_pooled_connection_is_busy() {
    let env = TestEnv::new().await;
    // Each insert of a "slow" checkin holds its connection for 3 seconds.
    env.db
        .bootstrap_then(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.data->>'marker' = 'slow' THEN PERFORM pg_sleep(3); END IF; RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON clusters_checkins FOR EACH ROW EXECUTE FUNCTION slow();",
        )
        .await;
    let mut settings = env.settings();
    settings.database.pool_size = 1;
    let addr = free_port();
    settings.http_addr = Some(addr);
    let worker = RunningWorker::start(settings);
    wait_for_status(addr, "/readyz", 200).await;
    env.broker
        .publish_checkins(&[Outgoing::new(checkin_body(CLUSTER, "slow")).id("slow")])
        .await;
    wait_until(
        "the write to hold the only connection",
        Duration::from_secs(10),
        || async {
            env.db
                .try_count(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                 AND pid <> pg_backend_pid() AND wait_event = 'PgSleep'",
                )
                .await
                .is_some_and(|n| n > 0)
        },
    )
    .await;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let (status, _) = http::get(addr, "/readyz").await.unwrap();
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "took {:?}",
            started.elapsed()
        );
    }
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 1)
        .await;
    worker.stop().await.unwrap();
}

/// The metric names of the README's table, with their types.
fn documented_metrics() -> Vec<(String, String)> {
    let readme = include_str!("../../README.md");
    let mut metrics = Vec::new();
    for line in readme.lines().filter(|l| l.starts_with("| `wfm_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let kind = cells[2].to_owned();
        for name in cells[1].split('/') {
            metrics.push((name.trim().trim_matches('`').to_owned(), kind.clone()));
        }
    }
    metrics
}

#[tokio::test]
async fn every_documented_metric_is_exported_from_the_first_scrape_of_a_quiet_worker() {
    let env = TestEnv::new().await;
    let addr = free_port();
    let mut child = crate::support::process::worker_command(&env)
        .env("WFM_HTTP_ADDR", addr.to_string())
        .stderr(std::process::Stdio::null())
        .arg("run")
        .spawn()
        .unwrap();
    wait_for_status(addr, "/readyz", 200).await;
    let (_, text) = http::get(addr, "/metrics").await.unwrap();
    let documented = documented_metrics();
    assert!(documented.len() >= 15, "the README's table was found");
    for (name, kind) in &documented {
        let series = if kind == "histogram" {
            format!("{name}_count")
        } else {
            name.clone()
        };
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{series}{{"))
                    || l.starts_with(&format!("{series} "))),
            "{name} ({kind}) is not exported before its first event:\n{text}"
        );
    }
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("wfm_"))
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum")
        })
        .collect();
    for name in exported {
        assert!(
            documented.iter().any(|(d, _)| d == name),
            "{name} is exported but not documented"
        );
    }
    crate::support::process::signal(&child, "-TERM").await;
    assert!(child.wait().await.unwrap().success());
}
