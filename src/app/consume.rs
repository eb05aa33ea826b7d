//! One broker connection's life, and the next after it fails: connect (with
//! the dead-letter connection beside it), declare the topology, consume,
//! supervise; reconnect with backoff.

use std::time::Duration;

use futures_util::future::try_join_all;
use lapin::Connection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{RunError, Worker, gauges, retry::Retry, supervise};
use crate::{
    broker::{self, DeadLetters},
    pipeline::{QueueContext, run_queue},
    store::Pool,
};

/// A broker connection ready to consume: its dead-letter connection and
/// publisher beside it, the topology declared. No consumer is open yet.
pub(super) struct Connected {
    /// Apart from the rest, which the queues share: lapin's event stream is
    /// not `Sync`.
    refusals: broker::FrameRefusals,
    links: Links,
}

struct Links {
    connection: Connection,
    pace: broker::Pace,
    dead_letter_connection: Connection,
    dead_letters: DeadLetters,
}

impl Connected {
    pub(super) async fn close(self) {
        self.links.close().await;
    }
}

impl Links {
    async fn close(&self) {
        broker::close(&self.connection).await;
        broker::close(&self.dead_letter_connection).await;
    }
}

/// What [`Worker::connect`] gives: connected, stopped by shutdown (`None`), or failed.
pub(super) type Connecting = Result<Option<Connected>, RunError>;

impl Worker<'_> {
    /// Consumes, reconnecting, until shutdown. The first connection is
    /// `first`, made while the database was prepared.
    pub(super) async fn consume_retrying(
        &self,
        pool: &Pool,
        first: Connecting,
    ) -> Result<(), RunError> {
        let mut retry = Retry::new(self.settings, self.shutdown, "consume");
        let mut frames = broker::ConsumingFrames::Default;
        let mut connecting = first;
        loop {
            let consumed = match connecting {
                Ok(Some(connected)) => self.consume(pool, connected, &mut retry, &mut frames).await,
                Ok(None) => return Ok(()),
                Err(error) => Err(error),
            };
            let Err(error) = consumed else {
                return Ok(());
            };
            if !retry.after(error).await? {
                return Ok(());
            }
            connecting = self.connect(frames).await;
        }
    }

    /// Connects (the consuming connection, then the dead-letter one) and
    /// declares the topology. Needs nothing of the database.
    pub(super) async fn connect(&self, frames: broker::ConsumingFrames) -> Connecting {
        let broker = &self.settings.broker;
        let pace = broker::Pace::default();
        let name = &broker.connection_name;
        let connecting = broker::connect_consuming(broker, name, frames, pace.clone());
        let Some(connection) = self.unless_shutdown(connecting).await? else {
            return Ok(None);
        };
        let refusals = broker::FrameRefusals::follow(&connection);
        let dead_letter_name = format!("{name} dead letters");
        let dead_letter_connection = match self
            .unless_shutdown(broker::connect_for_copies(broker, &dead_letter_name))
            .await
        {
            Ok(Some(connection)) => connection,
            stopped_or_failed => {
                broker::close(&connection).await;
                return stopped_or_failed.map(|_| None);
            }
        };
        let declared = self
            .unless_shutdown(async {
                broker::declare_topology(&connection, &broker.topology).await?;
                let exchange = &broker.topology.dead_letter_exchange;
                DeadLetters::open(&dead_letter_connection, exchange).await
            })
            .await;
        match declared {
            Ok(Some(dead_letters)) => Ok(Some(Connected {
                refusals,
                links: Links {
                    connection,
                    pace,
                    dead_letter_connection,
                    dead_letters,
                },
            })),
            stopped_or_failed => {
                broker::close(&connection).await;
                broker::close(&dead_letter_connection).await;
                stopped_or_failed.map(|_| None)
            }
        }
    }

    /// Consumes on `connected` until shutdown (Ok) or until it fails. A
    /// connection that failed on a frame larger than it asked for is followed
    /// by one that asks for the broker's size.
    async fn consume(
        &self,
        pool: &Pool,
        connected: Connected,
        retry: &mut Retry<'_>,
        frames: &mut broker::ConsumingFrames,
    ) -> Result<(), RunError> {
        let Connected {
            mut refusals,
            links,
        } = connected;
        self.readiness.set_broker_connected(true);
        let result = self.consume_on(pool, &links, retry).await;
        self.readiness.set_broker_connected(false);
        if result.is_err() && refusals.refused() && *frames != broker::ConsumingFrames::Brokers {
            tracing::warn!(
                asked = links.connection.configuration().frame_max(),
                "a frame larger than the connection asked for arrived (the broker allows larger ones); reconnecting with the broker's frame size"
            );
            *frames = broker::ConsumingFrames::Brokers;
        }
        links.close().await;
        result
    }

    /// A step before any delivery can arrive (connecting, declaring):
    /// shutdown does not wait for it. Each is a broker round trip
    /// with no time-out of its own, and a node that is starting or stopping
    /// can leave one unanswered for long; with nothing consumed yet, there is
    /// nothing to finish or hand back.
    async fn unless_shutdown<T, E: Into<RunError>>(
        &self,
        step: impl Future<Output = Result<T, E>>,
    ) -> Result<Option<T>, RunError> {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Ok(None),
            done = step => done.map(Some).map_err(Into::into),
        }
    }

    /// Opening the consumers: the one start-up step a stop lets finish. Once
    /// the broker has sent one consume-ok it delivers, and what it delivered
    /// must go back with `basic.nack` (the readers do that when they start
    /// stopped), not with the connection's close: on RabbitMQ 4.3+ a close
    /// counts a delivery attempt against each message, a nack does not; 3.x
    /// counts both. A broker that does not answer is waited for no longer
    /// than the shutdown timeout; then the close hands back what it sent.
    ///
    /// Gives the opened step's value and the time left for the rest of the
    /// shutdown: all of it unless a stop came while opening.
    async fn opening_through_a_stop<T, E: Into<RunError>>(
        &self,
        step: impl Future<Output = Result<T, E>>,
    ) -> Result<Option<(T, Duration)>, RunError> {
        let timeout = self.settings.shutdown_timeout;
        if self.shutdown.is_cancelled() {
            return Ok(None);
        }
        let mut step = std::pin::pin!(step);
        tokio::select! {
            done = &mut step => return done.map(|opened| Some((opened, timeout))).map_err(Into::into),
            () = self.shutdown.cancelled() => {}
        }
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, step).await {
            Ok(done) => done
                .map(|opened| Some((opened, deadline.saturating_duration_since(Instant::now()))))
                .map_err(Into::into),
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "the broker did not finish opening the consumers before the shutdown timeout; closing"
                );
                Ok(None)
            }
        }
    }

    async fn consume_on(
        &self,
        pool: &Pool,
        links: &Links,
        retry: &mut Retry<'_>,
    ) -> Result<(), RunError> {
        let Links {
            connection,
            pace,
            dead_letter_connection,
            dead_letters,
        } = links;
        let topology = &self.settings.broker.topology;
        let prefetch = self.settings.pipeline.prefetch;
        // At once, not one after the other: each is a few broker round trips,
        // and the database is ready and waiting.
        let consumers = try_join_all(
            (self.queues.0.iter())
                .map(|(_, queue, _)| broker::open_consumer(connection, queue, prefetch)),
        );
        let sampling = broker::open_channel(connection, "opening the sampling channel");
        let opened = self
            .opening_through_a_stop(async { tokio::try_join!(consumers, sampling) })
            .await?;
        let Some(((consumers, sampling), shutdown_timeout)) = opened else {
            return Ok(());
        };
        let stop = self.shutdown.child_token();
        let abandon = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for ((kind, queue, metrics), (channel, consumer)) in self.queues.0.iter().zip(consumers) {
            let context = QueueContext {
                kind: *kind,
                queue: queue.clone(),
                pool: pool.clone(),
                dead_letters: dead_letters.clone(),
                settings: self.settings.pipeline.clone(),
                readiness: self.readiness.clone(),
                metrics: metrics.clone(),
                pace: pace.clone(),
                abandon: abandon.clone(),
                shutdown: stop.clone(),
            };
            tasks.spawn(run_queue(context, channel, consumer));
        }
        tasks.spawn(supervise::watch_dead_letters(
            dead_letter_connection,
            self.readiness.clone(),
            stop.clone(),
        ));
        retry.reset();
        if stop.is_cancelled() {
            tracing::info!("stopping as consumption starts: handing back what was delivered");
        } else {
            tracing::info!("connected and consuming");
        }
        let sampler = tokio::spawn(gauges::sample(
            sampling.clone(),
            pool.clone(),
            topology.clone(),
            stop.clone(),
        ));
        let result = supervise::supervise(tasks, &stop, &abandon, shutdown_timeout).await;
        stop.cancel();
        // Only gauges: not worth waiting for a broker that does not answer.
        sampler.abort();
        let _ = sampler.await;
        broker::close_channels(&[&sampling, dead_letters.channel()]).await;
        result
    }
}
