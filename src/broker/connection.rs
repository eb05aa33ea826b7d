//! Connecting, and opening one consumer per queue on a channel of its own (so a
//! queue's prefetch and acks never interfere with another's).

use lapin::{
    Channel, Connection, ConnectionProperties, Consumer,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
    uri::AMQPUri,
};

use super::BrokerError;
use crate::config::describe_amqp;

/// Opens a connection named after the worker (visible in `rabbitmqctl
/// list_connections` and the management UI).
pub async fn connect(uri: &AMQPUri, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri(uri.clone(), properties)
        .await
        .map_err(|source| BrokerError::Connect {
            target: describe_amqp(uri),
            source,
        })
}

/// A channel with `prefetch` unacknowledged deliveries at most, consuming `queue`
/// with manual acks. The prefetch is also the memory bound: lapin buffers
/// whatever the broker sends. The channel is in transaction mode: its acks,
/// nacks and publishes take effect only when committed.
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
    channel.tx_select().await.map_err(fail)?;
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
