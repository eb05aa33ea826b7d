//! RabbitMQ: the connections, the topology the worker declares, consumers, and
//! dead-letter copies.
//!
//! This module never decides whether to ack: it hands deliveries up and
//! publishes what it is told to. Acknowledgement is the pipeline's alone.

mod connection;
mod dead_letter;
mod socket;
mod topology;

pub use connection::{
    ConsumingFrames, FrameRefusals, close, close_channels, confirm_channel, connect,
    connect_consuming, connect_for_copies, open_channel, open_consumer, watch_blocking,
};
pub use dead_letter::{
    CopyRefused, DeadLetter, DeadLetters, confirmed, encoded_len, headers as dead_letter_headers,
};
pub use socket::{InBulk, Pace};
pub use topology::{CHECKIN_ROUTING_KEY, Exchange, Plan, VERSION_ROUTING_KEY, declare_topology};

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

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
    #[error("the broker did not confirm {0}")]
    NotConfirmed(&'static str),
}

impl BrokerError {
    /// Whether a new connection can cure it — the one list of what is final.
    ///
    /// Final: refused credentials or vhost (connecting), and what the broker
    /// refuses to declare or consume (406 PRECONDITION_FAILED: a queue with other
    /// arguments; 403 ACCESS_REFUSED; 530 NOT_ALLOWED): they fail the same way
    /// every time. Everything that happens to a channel *while working* is
    /// recoverable, 406 included: the broker closes a channel whose delivery
    /// stayed unacknowledged past `consumer_timeout` ("delivery acknowledgement
    /// on channel N timed out") or whose transaction failed ("partial tx
    /// completion"); a new connection gets the deliveries redelivered.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { source, .. } => !refused(source),
            Self::Declare { source, .. } | Self::Consume { source, .. } => {
                !refused(source) && !precondition_failed(source)
            }
            Self::Channel { .. } | Self::ChannelClosed(_) | Self::NotConfirmed(_) => true,
        }
    }
}

fn protocol_error(error: &lapin::Error) -> Option<AMQPErrorKind> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.kind().clone()),
        _ => None,
    }
}

/// 501 FRAME_ERROR: lapin's own when a frame exceeds what its connection
/// negotiated (or the broker's, for one of ours).
fn frame_error(error: &lapin::Error) -> bool {
    protocol_error(error) == Some(AMQPErrorKind::Hard(AMQPHardError::FRAMEERROR))
}

fn refused(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::AuthProviderError(_))
        || matches!(
            protocol_error(error),
            Some(
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            )
        )
}

/// 406: an inequivalent declaration (or, while working, a consumer time-out).
pub fn precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        protocol_error(error),
        Some(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}
