//! Memory is bounded by one setting: a backlog of the largest messages the
//! worker accepts keeps its resident memory under WFM_MEMORY_LIMIT plus the
//! documented base.

use std::time::Duration;

use crate::support::{
    Outgoing, TestEnv,
    process::{signal, worker_command},
    wait_until,
};

const MIB: usize = 1 << 20;
/// What the worker needs besides messages in flight (runtime, pools, TLS,
/// buffers), as the README documents it.
const BASE_MIB: usize = 40;

/// The peak resident memory of process `pid` (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test]
async fn a_backlog_of_the_largest_messages_stays_within_the_memory_limit() {
    let env = TestEnv::new().await;
    // Slow writes (20 ms a row): deliveries pile up in the worker to the
    // prefetch, as in any backlog the database cannot keep up with.
    env.db
        .bootstrap_then(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON clusters_checkins FOR EACH ROW EXECUTE FUNCTION slow();",
        )
        .await;
    // 200 MiB of 1 MiB checkins: an unbounded prefetch would hold them all.
    let messages: Vec<Outgoing> = (0..200)
        .map(|i| {
            let prefix =
                format!(r#"{{"id":"00000000-0000-4000-8000-{i:012}","components":[],"pad":""#);
            let pad = "p".repeat(MIB - prefix.len() - 2);
            Outgoing::new(format!("{prefix}{pad}\"}}")).id(format!("big-{i}"))
        })
        .collect();
    env.broker.publish_checkins(&messages).await;
    let limit_mib = 64;
    let mut child = worker_command(&env)
        .env("WFM_MEMORY_LIMIT", format!("{limit_mib}MiB"))
        .env("WFM_MAX_MESSAGE_BYTES", MIB.to_string())
        .stderr(std::process::Stdio::null())
        .arg("run")
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    wait_until("the backlog to drain", Duration::from_secs(120), || async {
        env.db
            .try_count("SELECT count(*) FROM clusters_checkins")
            .await
            == Some(200)
    })
    .await;
    let peak = peak_rss_mib(pid);
    signal(&child, "-TERM").await;
    assert!(child.wait().await.unwrap().success());
    assert!(
        peak <= limit_mib + BASE_MIB,
        "peak RSS {peak} MiB over WFM_MEMORY_LIMIT {limit_mib} MiB + {BASE_MIB} MiB"
    );
    // The bound is not trivially met: the backlog alone is three times the limit.
    assert!(200 > 3 * limit_mib);
}
