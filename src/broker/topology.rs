//! The exchanges and queues, declared idempotently at every start.
//!
//! Work queues are quorum queues (replicated, and they count redeliveries in
//! `x-delivery-count`), and dead-letter to the dead-letter exchange. A queue that
//! already exists with other arguments makes the broker refuse the declaration
//! (406 PRECONDITION_FAILED, "inequivalent arg"): start-up stops with that reason.
//!
//! The topology is data first ([`Plan`]): the worker declares it, and
//! `config/rabbitmq-definitions.json` is the same plan in RabbitMQ's definitions
//! format (a test keeps the two equal).

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};

use super::BrokerError;
use crate::config::Topology;

pub const CHECKIN_ROUTING_KEY: &str = "cluster.checkin";
pub const VERSION_ROUTING_KEY: &str = "version.publish";
/// The dead-letter queue takes every routing key.
const DEAD_LETTER_BINDING: &str = "#";

/// Everything the worker declares, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Durable topic exchanges.
    pub exchanges: Vec<String>,
    /// Durable quorum queues, with the exchange they dead-letter to.
    pub queues: Vec<(String, Option<String>)>,
    /// (queue, exchange, routing key).
    pub bindings: Vec<(String, String, String)>,
}

impl Plan {
    pub fn of(t: &Topology) -> Plan {
        let dlx = Some(t.dead_letter_exchange.clone());
        Plan {
            exchanges: vec![t.exchange.clone(), t.dead_letter_exchange.clone()],
            queues: vec![
                (t.dead_letter_queue.clone(), None),
                (t.checkin_queue.clone(), dlx.clone()),
                (t.version_queue.clone(), dlx),
            ],
            bindings: vec![
                (
                    t.dead_letter_queue.clone(),
                    t.dead_letter_exchange.clone(),
                    DEAD_LETTER_BINDING.into(),
                ),
                (
                    t.checkin_queue.clone(),
                    t.exchange.clone(),
                    CHECKIN_ROUTING_KEY.into(),
                ),
                (
                    t.version_queue.clone(),
                    t.exchange.clone(),
                    VERSION_ROUTING_KEY.into(),
                ),
            ],
        }
    }

    /// The plan in RabbitMQ's definitions format (`rabbitmqctl import_definitions`).
    pub fn definitions(&self, vhost: &str) -> Value {
        let exchanges: Vec<Value> = self
            .exchanges
            .iter()
            .map(|name| {
                json!({
                    "name": name, "vhost": vhost, "type": "topic", "durable": true,
                    "auto_delete": false, "internal": false, "arguments": {}
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

/// Declares everything the worker and its publishers rely on.
pub async fn declare_topology(channel: &Channel, topology: &Topology) -> Result<(), BrokerError> {
    let plan = Plan::of(topology);
    for exchange in &plan.exchanges {
        declare_exchange(channel, exchange).await?;
    }
    for (queue, dead_letter_exchange) in &plan.queues {
        declare_queue(channel, queue, quorum(dead_letter_exchange.as_deref())).await?;
    }
    for (queue, exchange, key) in &plan.bindings {
        bind(channel, queue, exchange, key).await?;
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
