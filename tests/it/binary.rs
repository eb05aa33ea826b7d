//! The real binary, as an operator runs it.

use std::time::Duration;

use tokio::process::Command;

use crate::support::{
    CLUSTER, Outgoing, TestEnv, checkin_body,
    process::{signal, worker_command},
    version_body, wait_until,
};

fn worker(env: &TestEnv) -> Command {
    worker_command(env)
}

#[tokio::test]
async fn the_binary_stores_what_is_published_and_exits_0_on_sigterm() {
    let env = TestEnv::new().await;
    // Logs discarded: an unread pipe would fill and block the worker.
    let mut child = worker(&env)
        .arg("run")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    env.broker
        .publish_checkins(&[Outgoing::new(checkin_body(CLUSTER, "bin")).id("b-1")])
        .await;
    env.broker
        .publish_versions(&[Outgoing::new(version_body(
            "router",
            "stable",
            "v1",
            "2016-08-02T17:00:00Z",
            "",
        ))])
        .await;
    env.wait_for_rows("SELECT count(*) FROM clusters_checkins", 1)
        .await;
    env.wait_for_rows("SELECT count(*) FROM versions", 1).await;

    signal(&child, "-TERM").await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within the shutdown timeout")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_wrong_setting_stops_start_up_with_one_line_naming_the_variable() {
    let env = TestEnv::new().await;
    for (variable, value) in [
        ("WFM_POOL_SIZE", "0"),
        ("WFM_MAX_MESSAGE_BYTES", "lots"),
        ("WFM_BATCH_LINGER_MS", "99999999999999"),
        ("WFM_DATABASE_SSLMODE", "sometimes"),
        ("WFM_MAX_CLOCK_SKEW", "forever"),
        ("WFM_HTTP_ADDR", "nowhere"),
        ("WFM_PREFETCH", "10"),
        ("WFM_MEMORY_LIMIT", "1KiB"),
    ] {
        let output = worker(&env)
            .env(variable, value)
            .arg("run")
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{variable}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line for {variable}={value}: {stderr}");
        assert!(lines[0].contains(variable), "{variable}: {stderr}");
        assert!(
            !lines[0].contains("--"),
            "names a flag nobody typed: {stderr}"
        );
    }
}

#[tokio::test]
async fn malformed_urls_with_passwords_never_show_the_password() {
    let env = TestEnv::new().await;
    let databases = [
        "postgres://wfm:hunter2@127.0.0.1:notaport/wfm",
        "postgres://wfm:hunter2@127.0.0.1/wfm?nosuchoption=1",
        "host=127.0.0.1 password=hunter2 port=x",
        "postgres://wfm:hunter2@127.0.0.1:1/wfm?connect_timeout=1",
    ];
    let brokers = [
        "amqp://guest:hunter2@host:notaport/",
        "amqp:guest:hunter2@host/",
        "amqps://guest:hunter2@[::1/",
        "ftp://guest:hunter2@host/",
        "amqp://guest:hunter2@127.0.0.1:1/%2f",
    ];
    let mut runs: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for url in databases {
        runs.push(("WFM_DATABASE_URL", url, vec!["run"]));
        runs.push(("WFM_DATABASE_URL", url, vec!["bootstrap"]));
    }
    for url in brokers {
        runs.push(("WFM_AMQP_URL", url, vec!["run"]));
        runs.push(("WFM_AMQP_URL", url, vec!["dlq", "list"]));
        runs.push((
            "WFM_AMQP_URL",
            url,
            vec![
                "publish",
                "version",
                "--component",
                "c",
                "--train",
                "t",
                "--version",
                "v",
                "--released",
                "2016-08-02T17:00:00Z",
            ],
        ));
    }
    for (variable, url, args) in runs {
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            worker(&env)
                .env(variable, url)
                .env("WFM_RECONNECT_MAX", "1")
                .args(&args)
                .output(),
        )
        .await
        .expect("gives up")
        .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{variable}={url} {args:?}: {all}");
        assert!(
            !all.contains("hunter2"),
            "password shown for {variable}={url} {args:?}: {all}"
        );
    }
}

#[tokio::test]
async fn bootstrap_subcommand_applies_the_schema_and_exits_0() {
    let env = TestEnv::new().await;
    let output = worker(&env).arg("bootstrap").output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        env.db.count("SELECT count(*) FROM schema_migrations").await,
        wfm_worker::store::MIGRATIONS.len() as i64
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_name_each_dead_letter() {
    let env = TestEnv::new().await;
    let child = worker(&env)
        .env("WFM_LOG_FORMAT", "json")
        .arg("run")
        .spawn()
        .unwrap();
    env.broker
        .publish_checkins(&[Outgoing::new("not json").id("bad-1")])
        .await;
    env.wait_for_dead_letters(1).await;
    signal(&child, "-TERM").await;
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let dead: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "dead-lettering message")
        .collect();
    assert_eq!(dead.len(), 1, "logged once");
    assert_eq!(dead[0]["message_id"], "bad-1");
    assert_eq!(dead[0]["queue"], env.broker.topology.checkin_queue.as_str());
    assert!(dead[0]["reason"].as_str().unwrap().contains("JSON object"));
}

/// lapin closes a channel that is dropped open in the background; racing the
/// close of its connection, that logged a connection ERROR at about a third of
/// clean shutdowns. Rounds of several workers stopping at once, each while
/// dead-letter copies are in flight, so that luck cannot hide it.
#[tokio::test]
async fn a_clean_shutdown_logs_no_error() {
    let env = TestEnv::new().await;
    for round in 0..3 {
        stop_workers_mid_work(&env, round).await;
    }
}

async fn stop_workers_mid_work(env: &TestEnv, round: u32) {
    const WORKERS: u32 = 6;
    let children: Vec<_> = (0..WORKERS)
        .map(|_| worker(env).arg("run").spawn().unwrap())
        .collect();
    let queue = &env.broker.topology.checkin_queue;
    wait_until(
        "every worker consuming",
        Duration::from_secs(60),
        || async { env.broker.consumers(queue).await == WORKERS },
    )
    .await;
    let bad: Vec<_> = (0..200)
        .map(|i| Outgoing::new("not json").id(format!("bad-{round}-{i}")))
        .collect();
    env.broker.publish_checkins(&bad).await;
    env.wait_for_dead_letters(200 * round + 20).await;

    for child in &children {
        signal(child, "-TERM").await;
    }
    for child in children {
        let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("exits within the shutdown timeout")
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(!stderr.contains("ERROR"), "an error logged:\n{stderr}");
    }
}

/// `build.rs` packs relative relocations where glibc can apply them: 1.8 MB of
/// plain entries the loader would read, and keep resident, at every start.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_binary_packs_its_relocations_where_glibc_applies_them() {
    if glibc() < Some((2, 36)) || std::env::var_os("WFM_PORTABLE_LINK").is_some() {
        return; // linked for older C libraries on purpose
    }
    let elf = std::fs::read(env!("CARGO_BIN_EXE_wfm-worker")).unwrap();
    let tags = dynamic_entries(&elf);
    const DT_RELASZ: u64 = 8;
    const DT_RELR: u64 = 36;
    assert!(tags.iter().any(|&(tag, _)| tag == DT_RELR), "no DT_RELR");
    let plain = tags.iter().find(|&&(tag, _)| tag == DT_RELASZ);
    assert!(
        plain.is_none_or(|&(_, bytes)| bytes < 64 * 1024),
        "plain relocations left: {plain:?}"
    );
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
/// The (tag, value) pairs of an ELF64 little-endian file's dynamic section.
fn dynamic_entries(elf: &[u8]) -> Vec<(u64, u64)> {
    let word = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let half = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    assert_eq!(&elf[..5], b"\x7fELF\x02", "an ELF64 file");
    let (headers, size, count) = (word(0x20) as usize, half(0x36), half(0x38));
    const PT_DYNAMIC: u8 = 2;
    let dynamic = (0..count)
        .map(|i| headers + i * size)
        .find(|&header| elf[header] == PT_DYNAMIC && elf[header + 1..header + 4] == [0; 3])
        .expect("a dynamic section");
    let (offset, bytes) = (word(dynamic + 8) as usize, word(dynamic + 32) as usize);
    (offset..offset + bytes)
        .step_by(16)
        .map(|entry| (word(entry), word(entry + 8)))
        .collect()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
/// This machine's glibc version, which the binary was linked against.
fn glibc() -> Option<(u32, u32)> {
    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const std::ffi::c_char;
    }
    // SAFETY: glibc returns a static, NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) };
    let mut parts = version.to_str().ok()?.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
