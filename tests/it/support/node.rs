//! Private RabbitMQ nodes (scripts/rabbitmq-cluster.sh) for tests that change
//! broker-wide settings (alarms, the consumer time-out) or stop nodes: the
//! machine's broker, which the other tests share, is never touched.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU16, Ordering},
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster.sh");

/// One or more private nodes (clustered when more than one), stopped and
/// removed when dropped.
pub struct PrivateBroker {
    dir: PathBuf,
    /// (node name, AMQP port), node 1 first.
    pub nodes: Vec<(String, u16)>,
}

impl PrivateBroker {
    /// Starts `count` nodes; `advanced` is an Erlang term config for each.
    /// A start that fails is cleaned up and tried once more on other ports:
    /// a node that dies while booting leaves nothing to read (seen once in CI,
    /// with an empty log directory), and one flaky boot must not fail a test
    /// about something else.
    pub async fn start(count: u16, advanced: Option<&str>) -> PrivateBroker {
        sweep_leftovers();
        let mut failures = Vec::new();
        for _ in 0..2 {
            match try_start(count, advanced).await {
                Ok(broker) => return broker,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("private broker did not start: {failures:?}");
    }

    /// The AMQP URL of node `i` (0-based).
    pub fn url(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[i].1)
    }

    /// `rabbitmqctl -n <node i> args…`; panics unless it succeeds.
    pub async fn ctl(&self, i: usize, args: &[&str]) -> String {
        let output = tokio::process::Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.nodes[i].0)
            .args(args)
            .output()
            .await
            .expect("rabbitmqctl runs");
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl PrivateBroker {
    /// Stops node `i` (0-based), keeping its data.
    pub async fn stop_node(&self, i: usize) {
        self.script(&["stop-node", &(i + 1).to_string()]).await;
    }

    /// Starts node `i` again and waits until it runs.
    pub async fn start_node(&self, i: usize) {
        self.script(&["start-node", &(i + 1).to_string()]).await;
    }

    async fn script(&self, args: &[&str]) {
        let status = tokio::process::Command::new(SCRIPT)
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "rabbitmq-cluster.sh {args:?}");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        stop(&self.dir);
    }
}

/// One attempt: the script's stderr when it fails (its directory removed).
async fn try_start(count: u16, advanced: Option<&str>) -> Result<PrivateBroker, String> {
    let dir = std::env::temp_dir().join(format!(
        "wfm-rmq-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let advanced_file = dir.with_extension("advanced.config");
    if let Some(config) = advanced {
        std::fs::write(&advanced_file, config).unwrap();
    }
    let base = free_ports(count);
    let mut args = vec![
        "start".to_owned(),
        dir.display().to_string(),
        count.to_string(),
        base.to_string(),
    ];
    if advanced.is_some() {
        args.push(advanced_file.display().to_string());
    }
    let output = tokio::task::spawn_blocking(move || Command::new(SCRIPT).args(&args).output())
        .await
        .unwrap()
        .expect("rabbitmq-cluster.sh runs");
    let _ = std::fs::remove_file(&advanced_file);
    if !output.status.success() {
        stop(&dir);
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let nodes = std::fs::read_to_string(dir.join("nodes"))
        .unwrap()
        .lines()
        .map(|line| {
            let (name, port) = line.split_once(' ').unwrap();
            (name.to_owned(), port.parse().unwrap())
        })
        .collect();
    Ok(PrivateBroker { dir, nodes })
}

fn stop(dir: &Path) {
    let _ = Command::new(SCRIPT).arg("stop").arg(dir).status();
}

/// Nodes left by dead test processes (a crash skips `Drop`).
fn sweep_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("wfm-rmq-") else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive && entry.path().is_dir() {
            stop(&entry.path());
        }
    }
}

/// A base port with `count` free AMQP ports and their distribution ports
/// (+10000), spread by process and call so parallel tests rarely collide.
/// All below Linux's ephemeral range (32768 and up): a port found free there
/// can be taken by any outgoing connection before the node binds it.
fn free_ports(count: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 21_000 + (std::process::id() % 16) as u16 * 100;
    loop {
        let base = start + NEXT.fetch_add(count, Ordering::Relaxed) % 100;
        let free = (0..count).all(|i| {
            [base + i, base + i + 10_000]
                .iter()
                .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        });
        if free {
            return base;
        }
    }
}
