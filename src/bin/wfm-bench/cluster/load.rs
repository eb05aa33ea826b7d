//! What (14) runs beside the strikes: a steady publisher, and a watch on
//! when rows are stored.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use lapin::{Connection, ConnectionProperties, options::ConfirmSelectOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wfm_worker::broker::CHECKIN_ROUTING_KEY;

use crate::{
    env::{BenchEnv, poll_until},
    payload,
};

/// Checkins published at a steady rate with confirms, until stopped.
pub struct Publisher {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<usize>>,
}

impl Publisher {
    pub async fn start(
        env: &BenchEnv,
        url: &str,
        per_second: usize,
        first: usize,
    ) -> anyhow::Result<Publisher> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let stop = CancellationToken::new();
        let (exchange, halt) = (env.topology.exchange.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let per_tick = (per_second / 100).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut confirmed = first;
            while !halt.is_cancelled() {
                tick.tick().await;
                for _ in 0..per_tick {
                    let body = payload::checkin(confirmed);
                    let properties =
                        payload::properties(&format!("r-{confirmed}"), payload::now_ms());
                    channel
                        .basic_publish(
                            exchange.as_str().into(),
                            CHECKIN_ROUTING_KEY.into(),
                            Default::default(),
                            body.as_bytes(),
                            properties,
                        )
                        .await?;
                    confirmed += 1;
                }
                // Waits out a leader election; a nack would be a lost message.
                anyhow::ensure!(
                    channel.wait_for_confirms().await?.is_empty(),
                    "publish not confirmed"
                );
            }
            let _ = connection.close(200, "".into()).await;
            Ok(confirmed)
        });
        Ok(Publisher { stop, task })
    }

    /// Messages published and confirmed (`first` included).
    pub async fn stop(self) -> anyhow::Result<usize> {
        self.stop.cancel();
        self.task.await?
    }
}

/// When the stored row count moved, sampled every 10 ms.
pub struct Progress {
    moves: Arc<Mutex<Vec<Instant>>>,
    stop: CancellationToken,
}

impl Progress {
    pub fn watch(client: tokio_postgres::Client) -> Progress {
        let (moves, stop) = (Arc::new(Mutex::new(Vec::new())), CancellationToken::new());
        let (record, halt) = (moves.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = 0;
            while !halt.is_cancelled() {
                // The newest id is an index lookup; count(*) at 100 Hz would load the database.
                if let Ok(row) = client
                    .query_one(
                        "SELECT coalesce(max(checkins_id), 0) FROM clusters_checkins",
                        &[],
                    )
                    .await
                {
                    let newest: i64 = row.get(0);
                    if newest > last {
                        last = newest;
                        record.lock().unwrap().push(Instant::now());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Progress { moves, stop }
    }

    /// Waits until rows have been stored without a gap over 500 ms for `span`.
    pub async fn wait_steady(&self, span: Duration) -> anyhow::Result<()> {
        poll_until(
            "steady storage",
            Duration::from_millis(100),
            Duration::from_secs(180),
            || async {
                let moves = self.moves.lock().unwrap();
                let Some(last) = moves.last() else {
                    return Ok(false);
                };
                if last.elapsed() > Duration::from_millis(500) {
                    return Ok(false);
                }
                let recent: Vec<&Instant> = moves
                    .iter()
                    .rev()
                    .take_while(|m| m.elapsed() <= span)
                    .collect();
                let steady = recent
                    .windows(2)
                    .all(|w| w[0].duration_since(*w[1]) <= Duration::from_millis(500));
                Ok(steady
                    && recent
                        .last()
                        .is_some_and(|m| m.elapsed() >= span - Duration::from_millis(100)))
            },
        )
        .await
    }

    /// The longest interval without a stored row, from the last row before
    /// `since` on.
    pub fn longest_gap_since(&self, since: Instant) -> Duration {
        let moves = self.moves.lock().unwrap();
        let first = moves.iter().rposition(|m| *m <= since).unwrap_or(0);
        moves[first..]
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .unwrap_or_default()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}
