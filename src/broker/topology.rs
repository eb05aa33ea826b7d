//! The exchanges and queues, declared idempotently at every start.
//!
//! Work queues are quorum queues (replicated, and they count redeliveries in
//! `x-delivery-count`), and dead-letter to the dead-letter exchange. A queue that
//! already exists with other arguments makes the broker refuse the declaration
//! (406 PRECONDITION_FAILED, "inequivalent arg"): start-up stops with that reason.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

use super::BrokerError;
use crate::config::Topology;

pub const CHECKIN_ROUTING_KEY: &str = "cluster.checkin";
pub const VERSION_ROUTING_KEY: &str = "version.publish";
/// The dead-letter queue takes every routing key.
const DEAD_LETTER_BINDING: &str = "#";

/// Declares everything the worker and its publishers rely on.
pub async fn declare_topology(channel: &Channel, topology: &Topology) -> Result<(), BrokerError> {
    declare_exchange(channel, &topology.exchange).await?;
    declare_exchange(channel, &topology.dead_letter_exchange).await?;
    declare_queue(channel, &topology.dead_letter_queue, quorum(None)).await?;
    bind(
        channel,
        &topology.dead_letter_queue,
        &topology.dead_letter_exchange,
        DEAD_LETTER_BINDING,
    )
    .await?;
    for (queue, key) in [
        (&topology.checkin_queue, CHECKIN_ROUTING_KEY),
        (&topology.version_queue, VERSION_ROUTING_KEY),
    ] {
        declare_queue(channel, queue, quorum(Some(&topology.dead_letter_exchange))).await?;
        bind(channel, queue, &topology.exchange, key).await?;
    }
    Ok(())
}

fn quorum(dead_letter_exchange: Option<&str>) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(exchange) = dead_letter_exchange {
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(exchange.into()),
        );
    }
    arguments
}

async fn declare_exchange(channel: &Channel, name: &str) -> Result<(), BrokerError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|source| BrokerError::Declare {
            what: format!("exchange {name}"),
            source,
        })
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    channel
        .queue_declare(name.into(), QueueDeclareOptions::durable(), arguments)
        .await
        .map(drop)
        .map_err(|source| BrokerError::Declare {
            what: format!("queue {name} (does it exist with other arguments?)"),
            source,
        })
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| BrokerError::Declare {
            what: format!("binding of queue {queue} to exchange {exchange} with key {key}"),
            source,
        })
}
