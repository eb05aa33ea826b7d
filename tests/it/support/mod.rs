//! Test harness: a fresh database and private broker names per test, the worker
//! run in-process through the same `app::run` as the binary, and waiting on
//! conditions with a deadline (never a bare sleep).

pub mod amqp_tap;
pub mod broker;
pub mod certs;
pub mod db;
pub mod gate;
pub mod history;
pub mod hostile;
pub mod legacy;
pub mod node;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod process;
pub mod proxy;
pub mod scenario;
pub mod tls_proxy;

use std::{future::Future, time::Duration};

use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use wfm_worker::{
    app::{self, RunError},
    config::{PipelineSettings, Settings},
};

pub use broker::{Outgoing, TestBroker, header};
pub use db::TestDb;

/// Runs async clean-up from a `Drop`: Drop cannot await, a short-lived runtime
/// on a thread of its own can.
pub fn clean_up<F: Future<Output = ()> + Send + 'static>(work: F) {
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(work);
    })
    .join();
}

/// Worker logs in the test's captured output, when RUST_LOG asks for them.
fn init_logs() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// Waits until the worker serving HTTP on `addr` answers `/readyz` with 200:
/// bootstrapped, connected, its database well, and every queue's reader
/// consuming (past the broker's consume-ok, which a consumer count shows).
pub async fn wait_for_ready(addr: std::net::SocketAddr) {
    wait_until(
        "the worker to be ready",
        Duration::from_secs(30),
        || async { matches!(wfm_worker::http::get(addr, "/readyz").await, Ok((200, _))) },
    )
    .await;
}

/// Polls `condition` with backoff until it holds; panics naming `what` at the deadline.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Everything a test's worker needs: its own database and broker names.
pub struct TestEnv {
    pub db: TestDb,
    pub broker: TestBroker,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        init_logs();
        let (db, broker) = tokio::join!(TestDb::create(), TestBroker::create());
        TestEnv { db, broker }
    }

    /// The same, on a broker of the test's own (a private node).
    pub async fn on(url: &str) -> TestEnv {
        Self::with(TestBroker::create_at(url)).await
    }

    /// A fresh database, and the broker names `broker` makes.
    pub async fn with(broker: impl Future<Output = TestBroker>) -> TestEnv {
        init_logs();
        let (db, broker) = tokio::join!(TestDb::create(), broker);
        TestEnv { db, broker }
    }

    pub fn settings(&self) -> Settings {
        Settings {
            database: self.db.settings(),
            broker: self.broker.settings(),
            pipeline: PipelineSettings::default(),
            history: Default::default(),
            shutdown_timeout: Duration::from_secs(30),
            http_addr: None,
            reconnect_max: 0,
        }
    }

    pub fn start(&self) -> RunningWorker {
        RunningWorker::start(self.settings())
    }

    /// Waits until both work queues are empty and nothing is unacked, as seen
    /// by the rows: `rows` must reach `expected`.
    pub async fn wait_for_rows(&self, sql: &str, expected: i64) {
        wait_until(
            &format!("{expected} rows from `{sql}`"),
            Duration::from_secs(30),
            || async { self.db.try_count(sql).await.is_some_and(|n| n >= expected) },
        )
        .await;
    }

    /// Waits until the dead-letter queue holds `expected` messages.
    pub async fn wait_for_dead_letters(&self, expected: u32) {
        let queue = self.broker.topology.dead_letter_queue.clone();
        wait_until(
            &format!("{expected} dead letters"),
            Duration::from_secs(30),
            || async { self.broker.ready(&queue).await >= expected },
        )
        .await;
    }
}

/// The worker running in this process.
pub struct RunningWorker {
    token: CancellationToken,
    handle: JoinHandle<Result<(), RunError>>,
}

impl RunningWorker {
    pub fn start(settings: Settings) -> RunningWorker {
        let token = CancellationToken::new();
        let handle = tokio::spawn(app::run(settings, token.clone()));
        RunningWorker { token, handle }
    }

    /// Waits for the worker to end by itself.
    pub async fn wait(self) -> Result<(), RunError> {
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("worker ends within a minute")
            .expect("worker task does not panic")
    }

    /// Requests a graceful shutdown without waiting for it.
    pub fn request_stop(&self) {
        self.token.cancel();
    }

    /// Requests a graceful shutdown and returns how the worker ended.
    pub async fn stop(self) -> Result<(), RunError> {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(40), self.handle)
            .await
            .expect("worker stops within its shutdown timeout")
            .expect("worker task does not panic")
    }
}

pub const CLUSTER: &str = "5e2a4d3c-6c1f-4f7e-9a3b-2f8e1c0d9b7a";

/// A delivery of `body` received now, with no AMQP timestamp: what the
/// store's own tests parse before writing directly.
pub fn received<'a>(body: &'a str, message_id: &'a str) -> wfm_worker::message::Envelope<'a> {
    wfm_worker::message::Envelope {
        body: body.as_bytes(),
        message_id: Some(message_id),
        timestamp_secs: None,
        timestamp_ms: None,
        received_at: chrono::Utc::now(),
    }
}

/// A checkin document in the older API's Cluster shape.
pub fn checkin_body(cluster_id: &str, marker: &str) -> String {
    format!(
        r#"{{"id":"{cluster_id}","components":[{{"component":{{"name":"deis-router","description":"Router","type":"Deployment"}},"version":{{"train":"stable","version":"v2.4.0","released":"2016-08-02T17:00:00Z","data":{{"description":"{marker}"}}}},"updateAvailable":"v2.4.1"}}],"firstSeen":"2016-08-01T10:00:00Z","lastSeen":"2016-08-02T10:00:00Z","marker":"{marker}"}}"#
    )
}

/// A version event in the older API's ComponentVersion shape.
pub fn version_body(
    component: &str,
    train: &str,
    version: &str,
    released: &str,
    notes: &str,
) -> String {
    format!(
        r#"{{"component":{{"name":"{component}"}},"version":{{"train":"{train}","version":"{version}","released":"{released}","data":{{"description":"{notes}","fixes":"none"}}}}}}"#
    )
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse().ok()).flatten()
        })
}
