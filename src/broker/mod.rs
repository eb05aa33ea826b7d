//! RabbitMQ: the connection, the topology the worker declares, consumers, and
//! the confirmed publishing of dead-letter copies.
//!
//! This module never decides whether to ack: it hands deliveries up and
//! publishes what it is told to. Acknowledgement is the pipeline's alone.

mod connection;
mod dead_letter;
mod topology;

pub use connection::{connect, open_consumer};
pub use dead_letter::{DeadLetter, DeadLetterPublisher, headers as dead_letter_headers};
pub use topology::{CHECKIN_ROUTING_KEY, Plan, VERSION_ROUTING_KEY, declare_topology};

/// A broker failure, naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to the broker at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: lapin::Error,
    },
    #[error("cannot declare {what}: {source}")]
    Declare {
        what: String,
        #[source]
        source: lapin::Error,
    },
    #[error("cannot consume from queue {queue}: {source}")]
    Consume {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error("broker channel failed while {doing}: {source}")]
    Channel {
        doing: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("broker channel is closed; could not finish {0}")]
    ChannelClosed(&'static str),
    #[error("broker did not confirm the dead-letter copy: {0}")]
    NotConfirmed(&'static str),
}
