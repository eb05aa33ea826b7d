//! Connecting, opening one consumer per queue on a channel of its own (so a
//! queue's prefetch and acks never interfere with another's), and following a
//! connection's health.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer, Event,
    options::{BasicConsumeOptions, BasicQosOptions},
    tcp::OwnedTLSConfig,
    types::FieldTable,
    uri::AMQPUri,
};

use super::BrokerError;
use crate::config::{BrokerSettings, describe_amqp};

/// Longest a connection attempt to one node may take (TCP, TLS, AMQP
/// handshake): a node that does not answer is skipped quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection named `name` (visible in `rabbitmqctl list_connections`
/// and the management UI) to one of the broker's nodes, trying them in a
/// shuffled order: replicas spread over a cluster's nodes, and a dead node
/// costs at most [`CONNECT_TIMEOUT`]. `amqps://` URLs use rustls, trusting the
/// CAs of `ca_file` (WFM_AMQP_CA_FILE) besides the system's.
pub async fn connect(settings: &BrokerSettings, name: &str) -> Result<Connection, BrokerError> {
    connect_with_frame_max(settings, name, None).await
}

/// Frames of the dead-letter connection, at most. lapin keeps 32 frames of
/// send and 32 of receive buffer per connection, all touched at start: 8 MiB
/// at RabbitMQ's default `frame_max` (128 KiB), 2 MiB at this. That connection
/// only publishes copies, whose headers [`super::DeadLetters`] fits to the
/// frame size it negotiated (bodies span frames). The consuming connection
/// keeps the broker's frame size: it must take any message a publisher could
/// send, and a content header frame cannot be split.
const COPIES_FRAME_MAX: u32 = 32 * 1024;

/// [`connect`] for the dead-letter connection (see [`COPIES_FRAME_MAX`]).
pub async fn connect_for_copies(
    settings: &BrokerSettings,
    name: &str,
) -> Result<Connection, BrokerError> {
    connect_with_frame_max(settings, name, Some(COPIES_FRAME_MAX)).await
}

async fn connect_with_frame_max(
    settings: &BrokerSettings,
    name: &str,
    frame_max: Option<u32>,
) -> Result<Connection, BrokerError> {
    let mut nodes: Vec<AMQPUri> = settings.nodes.clone();
    fastrand::shuffle(&mut nodes);
    let mut failures = nodes.len();
    for mut uri in nodes {
        if let Some(cap) = frame_max {
            // 0 asks for no limit.
            let asked = uri.query.frame_max.filter(|n| *n > 0).unwrap_or(cap);
            uri.query.frame_max = Some(asked.min(cap));
        }
        let uri = &uri;
        match connect_to(uri, settings, name).await {
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
    let runtime = lapin::runtime::default_runtime().map_err(fail)?;
    let connecting = Connection::connect_uri_with_config(uri.clone(), properties, tls, runtime);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(connected) => connected.map_err(fail),
        Err(_) => Err(fail(lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {CONNECT_TIMEOUT:?}"),
        )))),
    }
}

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
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(fail)?;
    Ok((channel, consumer))
}

/// A channel with publisher confirms on, for what publishes.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let fail = |doing| move |source| BrokerError::Channel { doing, source };
    let channel = connection
        .create_channel()
        .await
        .map_err(fail("opening a channel"))?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .map_err(fail("enabling publisher confirms"))?;
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
