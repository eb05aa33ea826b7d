//! The real binary as a child process, configured for a test's database and
//! broker names.

use std::process::Stdio;

use tokio::process::{Child, Command};

use super::TestEnv;

pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `wfm-worker` with this test's settings and nothing inherited.
pub fn worker_command(env: &TestEnv) -> Command {
    let t = &env.broker.topology;
    let mut command = Command::new(env!("CARGO_BIN_EXE_wfm-worker"));
    command
        .env_clear()
        .env("WFM_DATABASE_URL", env.db.url())
        .env("WFM_AMQP_URL", &env.broker.url)
        .env("WFM_EXCHANGE", &t.exchange)
        .env("WFM_CHECKIN_QUEUE", &t.checkin_queue)
        .env("WFM_VERSION_QUEUE", &t.version_queue)
        .env("WFM_DEAD_LETTER_EXCHANGE", &t.dead_letter_exchange)
        .env("WFM_DEAD_LETTER_QUEUE", &t.dead_letter_queue)
        .env("WFM_CONNECTION_NAME", format!("{}-worker", t.exchange))
        .env("WFM_HTTP_ADDR", free_port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Sends `signal` (e.g. "-KILL", "-TERM") to the child.
pub async fn signal(child: &Child, signal: &str) {
    let pid = child.id().expect("child still running").to_string();
    let status = Command::new("kill")
        .args([signal, &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}
