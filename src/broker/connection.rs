//! Connecting, opening one consumer per queue on a channel of its own (so a
//! queue's prefetch and acks never interfere with another's), and following a
//! connection's health.

use std::{pin::Pin, time::Duration};

use futures_util::{FutureExt, Stream, StreamExt};
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer, Event,
    options::{BasicConsumeOptions, BasicQosOptions},
    tcp::OwnedTLSConfig,
    types::FieldTable,
    uri::AMQPUri,
};

use async_rs::{Runtime, Tokio, util::RuntimeParts};

use super::{
    BrokerError,
    socket::{Pace, SocketReactor, Wait},
};
use crate::config::{BrokerSettings, describe_amqp};

/// Longest a connection attempt to one node may take (TCP, TLS, AMQP
/// handshake): a node that does not answer is skipped quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection named `name` (visible in `rabbitmqctl list_connections`
/// and the management UI) to one of the broker's nodes, trying them in a
/// shuffled order: replicas spread over a cluster's nodes, and a dead node
/// costs at most [`CONNECT_TIMEOUT`]. `amqps://` URLs use rustls, trusting the
/// CAs of `ca_file` (WFM_AMQP_CA_FILE) besides the system's. The frame size is
/// the broker's (or the URL's `frame_max`).
pub async fn connect(settings: &BrokerSettings, name: &str) -> Result<Connection, BrokerError> {
    connect_asking(settings, name, FrameAsk::Brokers, Wait::Reactor).await
}

/// RabbitMQ's default `frame_max`, the same in 3.x and 4.x (131072 bytes).
const DEFAULT_FRAME_MAX: u32 = 128 * 1024;

/// The frame size the worker's consuming connection asks for.
///
/// lapin keeps 32 frames of buffer each way per connection, sized from what
/// the connection *asked*: asking nothing, it allocates them at the smallest
/// frame and, once the broker names its size, grows them to it, writing zeros
/// through all 8 MiB (at 128 KiB frames); asking the size the broker then
/// grants, it allocates them once, and a page is resident only once used (the
/// send side, carrying acks, hardly ever): ~3 MiB less at peak in
/// `wfm-bench` (BENCHMARKS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumingFrames {
    /// [`DEFAULT_FRAME_MAX`], or the URL's `frame_max`.
    Default,
    /// The broker's own, whatever the URL says: a broker configured with
    /// larger frames sent a frame larger than the connection asked for
    /// (headers that large, from a publisher that negotiated the broker's
    /// size). lapin refuses a frame larger than its connection negotiated and
    /// closes it (501 FRAME_ERROR), and a content header cannot be split; the
    /// next connection takes it whole.
    Brokers,
}

/// [`connect`] for the worker's consuming connection (see [`ConsumingFrames`]),
/// whose I/O thread waits on its socket itself, at the `pace` its queues'
/// readers set (see `socket`).
pub async fn connect_consuming(
    settings: &BrokerSettings,
    name: &str,
    frames: ConsumingFrames,
    pace: Pace,
) -> Result<Connection, BrokerError> {
    let ask = match frames {
        ConsumingFrames::Default => FrameAsk::Default(DEFAULT_FRAME_MAX),
        ConsumingFrames::Brokers => FrameAsk::Largest,
    };
    connect_asking(settings, name, ask, Wait::Own(pace)).await
}

/// Follows a connection for the failure that ends it: whether lapin refused a
/// frame larger than the connection negotiated (see [`ConsumingFrames`]).
pub struct FrameRefusals(Pin<Box<dyn Stream<Item = Event> + Send>>);

impl FrameRefusals {
    /// Taken as the connection opens: lapin reports its failure once, to the
    /// listeners it has then.
    pub fn follow(connection: &Connection) -> Self {
        FrameRefusals(Box::pin(connection.events_listener()))
    }

    /// Whether the connection has failed on a frame too large (reads what
    /// lapin has reported so far, without waiting).
    pub fn refused(&mut self) -> bool {
        while let Some(Some(event)) = self.0.next().now_or_never() {
            if let Event::Error(error) = event
                && super::frame_error(&error)
            {
                return true;
            }
        }
        false
    }
}

/// Frames of the dead-letter connection, at most: 2 MiB of lapin's buffers
/// (see [`ConsumingFrames`]) instead of 8. That connection only publishes
/// copies, whose headers [`super::DeadLetters`] fits to the frame size it
/// negotiated (bodies span frames).
const COPIES_FRAME_MAX: u32 = 32 * 1024;

/// [`connect`] for the dead-letter connection (see [`COPIES_FRAME_MAX`]).
pub async fn connect_for_copies(
    settings: &BrokerSettings,
    name: &str,
) -> Result<Connection, BrokerError> {
    connect_asking(
        settings,
        name,
        FrameAsk::AtMost(COPIES_FRAME_MAX),
        Wait::Reactor,
    )
    .await
}

/// The `frame_max` a connection asks for; the broker grants the smaller of
/// that and its own (0 asks for the broker's).
#[derive(Clone, Copy)]
enum FrameAsk {
    /// The URL's, else the broker's.
    Brokers,
    /// The URL's, else this.
    Default(u32),
    /// The URL's or this, whichever is smaller.
    AtMost(u32),
    /// The broker's, whatever the URL says.
    Largest,
}

impl FrameAsk {
    fn apply(self, uri: &mut AMQPUri) {
        let named = uri.query.frame_max;
        uri.query.frame_max = match self {
            FrameAsk::Brokers => named,
            FrameAsk::Default(size) => named.or(Some(size)),
            FrameAsk::AtMost(cap) => Some(named.filter(|n| *n > 0).unwrap_or(cap).min(cap)),
            FrameAsk::Largest => None,
        };
    }
}

async fn connect_asking(
    settings: &BrokerSettings,
    name: &str,
    ask: FrameAsk,
    wait: Wait,
) -> Result<Connection, BrokerError> {
    let mut nodes: Vec<AMQPUri> = settings.nodes.clone();
    fastrand::shuffle(&mut nodes);
    let mut failures = nodes.len();
    for mut uri in nodes {
        ask.apply(&mut uri);
        let uri = &uri;
        match connect_to(uri, settings, name, wait.clone()).await {
            Ok(connection) => {
                tracing::info!(node = %describe_amqp(uri), connection = name, "connected to the broker");
                return Ok(connection);
            }
            Err(error) if failures > 1 => {
                tracing::warn!(node = %describe_amqp(uri), error = %error, "broker node unreachable; trying the next");
                failures -= 1;
            }
            Err(error) => return Err(error),
        }
    }
    unreachable!("settings always name a node")
}

async fn connect_to(
    uri: &AMQPUri,
    settings: &BrokerSettings,
    name: &str,
    wait: Wait,
) -> Result<Connection, BrokerError> {
    let fail = |source| BrokerError::Connect {
        target: describe_amqp(uri),
        source,
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let cert_chain = match &settings.ca_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            fail(lapin::Error::from(std::io::Error::new(
                e.kind(),
                format!("WFM_AMQP_CA_FILE {}: {e}", path.display()),
            )))
        })?),
        None => None,
    };
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain,
    };
    // tokio's executor and timers; the socket is ours (see `socket`).
    let reactor = SocketReactor::current(wait);
    let runtime = Runtime::new(RuntimeParts::new(Tokio::current(), reactor));
    let connecting = Connection::connect_uri_with_config(uri.clone(), properties, tls, runtime);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(connected) => connected.map_err(fail),
        Err(_) => Err(fail(lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {CONNECT_TIMEOUT:?}"),
        )))),
    }
}

/// The tag of every consumer the worker opens. A tag need only be unique on
/// its channel, and each consumer has a channel of its own (replicas are told
/// apart by the connection's name). Every delivery carries the tag, and lapin
/// collects it byte by byte, checks it as UTF-8, copies it twice and hashes it
/// for each frame to find the consumer: with the broker's own tag (`amq.ctag-`
/// and 22 more characters) that was 530 instructions more per delivery
/// (BENCHMARKS.md, "a consumer tag of our own").
const CONSUMER_TAG: &str = "wfm";

/// A channel with `prefetch` unacknowledged deliveries at most, consuming `queue`
/// with manual acks. The prefetch is also the memory bound: lapin buffers
/// whatever the broker sends.
pub async fn open_consumer(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer), BrokerError> {
    let fail = |source| BrokerError::Consume {
        queue: queue.to_owned(),
        source,
    };
    let channel = connection.create_channel().await.map_err(fail)?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(fail)?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            CONSUMER_TAG.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(fail)?;
    Ok((channel, consumer))
}

/// A new channel on `connection`; a failure says what it was `for_what`.
pub async fn open_channel(
    connection: &Connection,
    for_what: &'static str,
) -> Result<Channel, BrokerError> {
    connection
        .create_channel()
        .await
        .map_err(|source| BrokerError::Channel {
            doing: for_what,
            source,
        })
}

/// A channel with publisher confirms on, for what publishes.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = open_channel(connection, "opening a channel").await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .map_err(|source| BrokerError::Channel {
            doing: "enabling publisher confirms",
            source,
        })?;
    Ok(channel)
}

/// Follows `connection`'s `connection.blocked` / `connection.unblocked`
/// notifications (a resource alarm on the broker) into `on_change` (`Some`
/// reason while blocked), until the connection fails: then ends with its error.
pub fn watch_blocking(
    connection: &Connection,
    on_change: impl Fn(Option<&str>) + Send + 'static,
) -> impl Future<Output = BrokerError> + Send + 'static {
    let mut events = connection.events_listener();
    let blocked = connection.status().blocked();
    async move {
        if blocked {
            on_change(Some("blocked"));
        }
        while let Some(event) = events.next().await {
            match event {
                Event::ConnectionBlocked(reason) => on_change(Some(&reason)),
                Event::ConnectionUnblocked => on_change(None),
                Event::Error(source) => {
                    return BrokerError::Channel {
                        doing: "keeping the dead-letter connection",
                        source,
                    };
                }
                _ => {}
            }
        }
        BrokerError::ChannelClosed("keeping the dead-letter connection")
    }
}

/// How long a close waits for the broker's answer.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Closes channels that would otherwise be dropped open. lapin closes a
/// dropped open channel in the background; when that races the close of its
/// connection, the channel's close fails and lapin logs a connection ERROR at
/// a clean shutdown (a third of them, before this). Channels of a failed
/// connection are already closed: nothing to wait for before reconnecting.
pub async fn close_channels(channels: &[&Channel]) {
    let closing = channels
        .iter()
        .filter(|channel| channel.status().connected())
        .map(|channel| channel.close(200, "worker stopped".into()));
    let _ = tokio::time::timeout(CLOSE_WAIT, futures_util::future::join_all(closing)).await;
}

/// Closes `connection`, waiting a little for the broker's close-ok: a node
/// that is going away may never send it (lapin's heartbeat check closes the
/// socket of a peer that stays silent).
pub async fn close(connection: &Connection) {
    let _ = tokio::time::timeout(CLOSE_WAIT, connection.close(200, "worker stopped".into())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(ask: FrameAsk, query: &str) -> Option<u32> {
        let mut uri: AMQPUri = format!("amqp://guest:guest@127.0.0.1:5672/%2f{query}")
            .parse()
            .unwrap();
        ask.apply(&mut uri);
        uri.query.frame_max
    }

    #[test]
    fn the_consuming_connection_asks_for_the_default_unless_the_url_names_a_size() {
        let ask = FrameAsk::Default(DEFAULT_FRAME_MAX);
        assert_eq!(asked(ask, ""), Some(131_072));
        assert_eq!(asked(ask, "?frame_max=65536"), Some(65_536));
        assert_eq!(asked(ask, "?frame_max=0"), Some(0), "0: the broker's");
    }

    #[test]
    fn after_a_refused_frame_the_brokers_size_is_asked_whatever_the_url_says() {
        assert_eq!(asked(FrameAsk::Largest, "?frame_max=65536"), None);
        assert_eq!(asked(FrameAsk::Brokers, "?frame_max=65536"), Some(65_536));
        assert_eq!(asked(FrameAsk::Brokers, ""), None);
    }

    #[test]
    fn the_dead_letter_connection_asks_for_at_most_its_cap() {
        let ask = FrameAsk::AtMost(COPIES_FRAME_MAX);
        assert_eq!(asked(ask, ""), Some(32_768));
        assert_eq!(asked(ask, "?frame_max=0"), Some(32_768));
        assert_eq!(asked(ask, "?frame_max=131072"), Some(32_768));
        assert_eq!(asked(ask, "?frame_max=16384"), Some(16_384));
    }
}
