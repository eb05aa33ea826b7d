//! Private RabbitMQ nodes for `--cluster` (scripts/rabbitmq-cluster.sh): own
//! names, ports and data; the machine's broker is never touched. Stopped and
//! removed on drop.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub struct Nodes {
    script: PathBuf,
    dir: PathBuf,
    /// (node name, AMQP port), node 1 first.
    pub nodes: Vec<(String, u16)>,
}

impl Nodes {
    pub async fn start(script: &Path, count: u16) -> anyhow::Result<Nodes> {
        let dir = std::env::temp_dir().join(format!("wfm-bench-rmq-{}", std::process::id()));
        let base = free_ports(count)?;
        let (script, dir_arg) = (script.to_owned(), dir.display().to_string());
        let args = [
            "start".to_owned(),
            dir_arg,
            count.to_string(),
            base.to_string(),
        ];
        let run = script.clone();
        let output =
            tokio::task::spawn_blocking(move || Command::new(run).args(&args).output()).await??;
        anyhow::ensure!(
            output.status.success(),
            "private nodes did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let nodes = std::fs::read_to_string(dir.join("nodes"))?
            .lines()
            .filter_map(|line| {
                let (name, port) = line.split_once(' ')?;
                Some((name.to_owned(), port.parse().ok()?))
            })
            .collect();
        Ok(Nodes { script, dir, nodes })
    }

    /// The AMQP URL of node `i` (0-based).
    pub fn url(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[i].1)
    }

    /// The URLs of `indexes`, comma-separated (WFM_AMQP_URL).
    pub fn urls(&self, indexes: impl IntoIterator<Item = usize>) -> String {
        let urls: Vec<String> = indexes.into_iter().map(|i| self.url(i)).collect();
        urls.join(",")
    }

    /// `rabbitmqctl -n <node i> args…`.
    pub async fn ctl(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::process::Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.nodes[i].0)
            .args(args)
            .output()
            .await?;
        anyhow::ensure!(output.status.success(), "rabbitmqctl {args:?} failed");
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The node (0-based) holding the client connection named `name`.
    pub async fn node_of_connection(&self, from: usize, name: &str) -> anyhow::Result<usize> {
        let listed = self
            .ctl(
                from,
                &[
                    "list_connections",
                    "--quiet",
                    "--no-table-headers",
                    "port",
                    "client_properties",
                ],
            )
            .await?;
        let port: Option<u16> = listed
            .lines()
            .find(|l| l.contains(&format!("\"connection_name\",\"{name}\"")))
            .and_then(|l| l.split('\t').next()?.trim().parse().ok());
        port.and_then(|p| self.nodes.iter().position(|(_, q)| *q == p))
            .ok_or_else(|| anyhow::anyhow!("no connection named {name}"))
    }

    /// The node leading quorum queue `queue`.
    pub async fn leader_of(&self, from: usize, queue: &str) -> anyhow::Result<usize> {
        let listed = self
            .ctl(
                from,
                &[
                    "list_queues",
                    "--quiet",
                    "--no-table-headers",
                    "name",
                    "leader",
                ],
            )
            .await?;
        let leader = listed
            .lines()
            .find(|l| l.split('\t').next() == Some(queue))
            .and_then(|l| l.split('\t').nth(1))
            .and_then(|n| self.nodes.iter().position(|(name, _)| n.trim() == name));
        leader.ok_or_else(|| anyhow::anyhow!("no leader for {queue}"))
    }

    /// Stops node `i` (0-based), keeping its data; returns once it is down.
    pub async fn stop_node(&self, i: usize) -> anyhow::Result<()> {
        self.script(&["stop-node", &(i + 1).to_string()]).await
    }

    /// SIGKILLs node `i`'s Erlang VM, as a crash would; data kept.
    pub async fn kill_node(&self, i: usize) -> anyhow::Result<()> {
        self.script(&["kill-node", &(i + 1).to_string()]).await
    }

    pub async fn start_node(&self, i: usize) -> anyhow::Result<()> {
        self.script(&["start-node", &(i + 1).to_string()]).await
    }

    async fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        let status = tokio::process::Command::new(&self.script)
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "rabbitmq-cluster.sh {args:?}");
        Ok(())
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A base port with `count` free AMQP ports above it, and their distribution
/// ports (+10000) free too; all below Linux's ephemeral range (32768 and up),
/// where an outgoing connection could take one before the node binds it.
fn free_ports(count: u16) -> anyhow::Result<u16> {
    for base in (21_000..22_700).step_by(50) {
        let free = (0..count).all(|i| {
            [base + i, base + i + 10_000]
                .iter()
                .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        });
        if free {
            return Ok(base);
        }
    }
    anyhow::bail!("no free ports for private nodes")
}
