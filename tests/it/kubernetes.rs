//! What deploy/kubernetes ships holds against the real worker: the ConfigMap's
//! settings start it, and every metric and label the alerts and the dashboard
//! query is one it exports. (The manifests' schemas are checked by
//! scripts/validate-manifests.sh.)

use std::{collections::BTreeSet, net::SocketAddr, process::Stdio};

use wfm_worker::http;

use crate::support::{TestEnv, process, wait_for_ready};

const RULES: &str = include_str!("../../deploy/kubernetes/prometheusrule.yaml");
const DASHBOARD: &str = include_str!("../../deploy/kubernetes/grafana-dashboard.json");
const CONFIG: &str = include_str!("../../deploy/kubernetes/wfm-worker.env");

/// Labels Prometheus adds to every scraped series (not the worker's).
const TARGET_LABELS: [&str; 4] = ["pod", "namespace", "instance", "job"];

/// The PromQL of the alerts (`expr:` lines) and of the dashboard's targets.
fn queries() -> Vec<String> {
    let rules = RULES
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned());
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let targets = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap().to_owned());
    rules.chain(targets).collect()
}

/// Identifiers in `query` that start with `wfm_`.
fn metric_names(query: &str) -> BTreeSet<&str> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    query
        .split(|c: char| !ident(c))
        .filter(|w| w.starts_with("wfm_"))
        .collect()
}

/// Label names `query` groups by or matches on.
fn label_names(query: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for part in query.split("by (").skip(1) {
        let list = part.split(')').next().unwrap();
        labels.extend(list.split(',').map(|l| l.trim().to_owned()));
    }
    for part in query.split('{').skip(1) {
        let selector = part.split('}').next().unwrap();
        for matcher in selector.split(',') {
            let name = matcher.split(['=', '!']).next().unwrap().trim();
            labels.insert(name.to_owned());
        }
    }
    labels.retain(|l| !l.is_empty() && !TARGET_LABELS.contains(&l.as_str()));
    labels
}

#[test]
fn the_query_parsers_find_names_and_labels() {
    let q = r#"sum by (queue, le) (rate(wfm_x_bucket{namespace="$namespace", outcome!~"a"}[5m])) / wfm_y"#;
    assert_eq!(
        metric_names(q).into_iter().collect::<Vec<_>>(),
        ["wfm_x_bucket", "wfm_y"]
    );
    assert_eq!(
        label_names(q).into_iter().collect::<Vec<_>>(),
        ["le", "outcome", "queue"]
    );
    assert!(queries().len() >= 20, "alerts and panels were read");
}

#[tokio::test]
async fn alerts_and_dashboard_query_only_what_a_worker_started_with_the_shipped_config_exports() {
    let env = TestEnv::new().await;
    let addr: SocketAddr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut command = process::worker_command(&env);
    // The ConfigMap as shipped, but for what points at the cluster's files
    // and ports (the RDS CA bundle, the pod's address).
    for line in CONFIG.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !key.starts_with("WFM_DATABASE_") && key != "WFM_HTTP_ADDR" {
            command.env(key, value);
        }
    }
    let mut child = command
        .env("WFM_HTTP_ADDR", addr.to_string())
        .stderr(Stdio::null())
        .arg("run")
        .spawn()
        .unwrap();
    wait_for_ready(addr).await;
    let (_, text) = http::get(addr, "/metrics").await.unwrap();
    let series: Vec<&str> = text.lines().filter(|l| l.starts_with("wfm_")).collect();
    let of = |name: &str| -> Vec<&str> {
        series
            .iter()
            .copied()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(['{', ' ']))
            })
            .collect()
    };

    for query in queries() {
        let names = metric_names(&query);
        assert!(!names.is_empty(), "queries no wfm_ metric: {query}");
        let mut found = Vec::new();
        for name in &names {
            let lines = of(name);
            assert!(!lines.is_empty(), "{name} is not exported; used in {query}");
            found.extend(lines);
        }
        for label in label_names(&query) {
            assert!(
                found.iter().any(|l| l.contains(&format!("{label}=\""))),
                "no series of {names:?} carries the label {label:?}; used in {query}"
            );
        }
    }
    process::signal(&child, "-TERM").await;
    assert!(child.wait().await.unwrap().success());
}
