//! The exchanges and queues, declared idempotently at every start.
//!
//! Work queues are quorum queues (replicated, and they count redeliveries in
//! `x-delivery-count`), and dead-letter to the dead-letter exchange. The
//! dead-letter exchange has an alternate exchange (fanout) with a queue of its
//! own: a copy no binding takes (someone unbound or deleted the dead-letter
//! queue) lands there instead of being returned. A queue that already exists
//! with other arguments makes the broker refuse the declaration (406
//! PRECONDITION_FAILED, "inequivalent arg"): start-up stops with that reason.
//!
//! A dead-letter exchange declared by an earlier version has no alternate
//! exchange, and redeclaring it with one is refused the same way. That one
//! refusal is tolerated with a warning: copies stay safe without it (an
//! unroutable copy is returned, and its original handed back, never acked).
//!
//! The topology is data first ([`Plan`]): the worker declares it, and
//! `config/rabbitmq-definitions.json` is the same plan in RabbitMQ's definitions
//! format (a test keeps the two equal).

use lapin::{
    Channel, Connection, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};

use super::{BrokerError, precondition_failed};
use crate::config::Topology;

pub const CHECKIN_ROUTING_KEY: &str = "cluster.checkin";
pub const VERSION_ROUTING_KEY: &str = "version.publish";
/// The dead-letter queue takes every routing key.
const DEAD_LETTER_BINDING: &str = "#";

/// A durable exchange: topic, or fanout for the alternate exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub name: String,
    pub fanout: bool,
    /// `alternate-exchange`: where messages no binding takes go.
    pub alternate: Option<String>,
}

/// Everything the worker declares, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub exchanges: Vec<Exchange>,
    /// Durable quorum queues, with the exchange they dead-letter to.
    pub queues: Vec<(String, Option<String>)>,
    /// (queue, exchange, routing key).
    pub bindings: Vec<(String, String, String)>,
}

impl Plan {
    pub fn of(t: &Topology) -> Plan {
        let topic = |name: &str, alternate: Option<String>| Exchange {
            name: name.to_owned(),
            fanout: false,
            alternate,
        };
        let dlx = Some(t.dead_letter_exchange.clone());
        let binding = |q: &str, x: &str, key: &str| (q.to_owned(), x.to_owned(), key.to_owned());
        Plan {
            exchanges: vec![
                Exchange {
                    name: t.unrouted_exchange(),
                    fanout: true,
                    alternate: None,
                },
                topic(&t.dead_letter_exchange, Some(t.unrouted_exchange())),
                topic(&t.exchange, None),
            ],
            queues: vec![
                (t.unrouted_queue(), None),
                (t.dead_letter_queue.clone(), None),
                (t.checkin_queue.clone(), dlx.clone()),
                (t.version_queue.clone(), dlx),
            ],
            bindings: vec![
                binding(&t.unrouted_queue(), &t.unrouted_exchange(), ""),
                binding(
                    &t.dead_letter_queue,
                    &t.dead_letter_exchange,
                    DEAD_LETTER_BINDING,
                ),
                binding(&t.checkin_queue, &t.exchange, CHECKIN_ROUTING_KEY),
                binding(&t.version_queue, &t.exchange, VERSION_ROUTING_KEY),
            ],
        }
    }

    /// The plan in RabbitMQ's definitions format (`rabbitmqctl import_definitions`).
    pub fn definitions(&self, vhost: &str) -> Value {
        let exchanges: Vec<Value> = self
            .exchanges
            .iter()
            .map(|x| {
                let arguments = match &x.alternate {
                    Some(alternate) => json!({"alternate-exchange": alternate}),
                    None => json!({}),
                };
                json!({
                    "name": x.name, "vhost": vhost, "type": if x.fanout { "fanout" } else { "topic" },
                    "durable": true, "auto_delete": false, "internal": false, "arguments": arguments
                })
            })
            .collect();
        let queues: Vec<Value> = self.queues.iter().map(|(name, dlx)| {
            let mut arguments = json!({"x-queue-type": "quorum"});
            if let Some(dlx) = dlx {
                arguments["x-dead-letter-exchange"] = json!(dlx);
            }
            json!({"name": name, "vhost": vhost, "durable": true, "auto_delete": false, "arguments": arguments})
        }).collect();
        let bindings: Vec<Value> = self
            .bindings
            .iter()
            .map(|(queue, exchange, key)| {
                json!({
                    "source": exchange, "vhost": vhost, "destination": queue,
                    "destination_type": "queue", "routing_key": key, "arguments": {}
                })
            })
            .collect();
        json!({"exchanges": exchanges, "queues": queues, "bindings": bindings})
    }
}

/// Declares everything the worker and its publishers rely on, on a channel of
/// its own (closed afterwards).
pub async fn declare_topology(
    connection: &Connection,
    topology: &Topology,
) -> Result<(), BrokerError> {
    let plan = Plan::of(topology);
    let mut channel = open(connection).await?;
    for exchange in &plan.exchanges {
        match declare_exchange(&channel, exchange).await {
            Err(BrokerError::Declare { source, .. })
                if exchange.alternate.is_some() && precondition_failed(&source) =>
            {
                tracing::warn!(exchange = %exchange.name, alternate = ?exchange.alternate, "the dead-letter exchange exists without an alternate exchange; unroutable copies are handed back instead (set the alternate-exchange with a policy to keep them)");
                // The refusal closed the channel.
                channel = open(connection).await?;
            }
            other => other?,
        }
    }
    for (queue, dead_letter_exchange) in &plan.queues {
        declare_queue(&channel, queue, quorum(dead_letter_exchange.as_deref())).await?;
    }
    for (queue, exchange, key) in &plan.bindings {
        bind(&channel, queue, exchange, key).await?;
    }
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(())
}

async fn open(connection: &Connection) -> Result<Channel, BrokerError> {
    super::open_channel(connection, "opening the topology channel").await
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

async fn declare_exchange(channel: &Channel, exchange: &Exchange) -> Result<(), BrokerError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let mut arguments = FieldTable::default();
    if let Some(alternate) = &exchange.alternate {
        arguments.insert(
            "alternate-exchange".into(),
            AMQPValue::LongString(alternate.as_str().into()),
        );
    }
    let kind = if exchange.fanout {
        ExchangeKind::Fanout
    } else {
        ExchangeKind::Topic
    };
    channel
        .exchange_declare(exchange.name.as_str().into(), kind, options, arguments)
        .await
        .map_err(|source| BrokerError::Declare {
            what: format!("exchange {}", exchange.name),
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn definitions_file_is_the_topology_the_worker_declares_by_default() {
        let Command::Run(args) = Cli::try_parse_from(["wfm-worker", "run"]).unwrap().command else {
            unreachable!("parsed `run`");
        };
        let topology = args.broker.validate().unwrap().topology;
        let declared = Plan::of(&topology).definitions("/");
        let file: Value =
            serde_json::from_str(include_str!("../../config/rabbitmq-definitions.json")).unwrap();
        assert_eq!(
            declared, file,
            "config/rabbitmq-definitions.json is out of date"
        );
    }
}
