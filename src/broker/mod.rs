//! RabbitMQ: the connection, the topology the worker declares, consumers on
//! transactional channels, and dead-letter copies.
//!
//! This module never decides whether to ack: it hands deliveries up and
//! publishes what it is told to. Acknowledgement is the pipeline's alone.

mod connection;
mod dead_letter;
mod topology;

pub use connection::{confirm_channel, connect, open_consumer};
pub use dead_letter::{DeadLetter, commit, headers as dead_letter_headers, publish_dead_letter};
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

impl BrokerError {
    /// Whether a new connection can cure it. A declaration the broker refuses
    /// (PRECONDITION_FAILED: a queue with other arguments; ACCESS_REFUSED) and
    /// refused credentials fail the same way every time.
    pub fn is_transient(&self) -> bool {
        let source = match self {
            Self::Connect { source, .. }
            | Self::Declare { source, .. }
            | Self::Consume { source, .. }
            | Self::Channel { source, .. } => source,
            Self::ChannelClosed(_) | Self::NotConfirmed(_) => return true,
        };
        match source.kind() {
            lapin::ErrorKind::ProtocolError(e) => !matches!(
                e.kind(),
                lapin::protocol::AMQPErrorKind::Soft(
                    lapin::protocol::AMQPSoftError::PRECONDITIONFAILED
                        | lapin::protocol::AMQPSoftError::ACCESSREFUSED
                ) | lapin::protocol::AMQPErrorKind::Hard(
                    lapin::protocol::AMQPHardError::NOTALLOWED
                )
            ),
            lapin::ErrorKind::AuthProviderError(_) => false,
            _ => true,
        }
    }
}
