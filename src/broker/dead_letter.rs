//! Dead-letter copies: the original body and properties, plus the reason as
//! `x-wfm-*` headers, published with publisher confirms on a connection of
//! their own.
//!
//! Why a connection of its own: during a memory or disk alarm RabbitMQ stops
//! reading from every connection that publishes ("Connections that are only
//! used to consume messages will not be blocked",
//! <https://www.rabbitmq.com/docs/alarms>), acks included. Publishing copies on
//! the consuming connection would let one invalid message stop all consumption
//! for the length of the alarm, when consuming is what relieves the broker.
//!
//! Why confirms: a copy is safe only once the broker says so. A copy that is
//! nacked (e.g. a `reject-publish` overflow policy) or returned unroutable
//! (nothing bound, and no alternate exchange) is a failure, and the original
//! then stays unacknowledged: it is handed back, never lost.

use chrono::{SecondsFormat, Utc};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, PublisherConfirm,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable},
};

use super::{BrokerError, confirm_channel};
use crate::message::Rejection;

/// Header names of a dead-letter copy.
pub mod headers {
    pub const ERROR: &str = "x-wfm-error";
    pub const ERROR_KIND: &str = "x-wfm-error-kind";
    pub const QUEUE: &str = "x-wfm-queue";
    pub const FAILED_AT: &str = "x-wfm-failed-at";
    pub const SQLSTATE: &str = "x-wfm-sqlstate";
    /// Set when the original headers were left off the copy: their encoded
    /// size in bytes (see [`super::DeadLetters`]).
    pub const HEADERS_DROPPED: &str = "x-wfm-headers-dropped";
    /// Times `wfm-worker dlq replay` has republished the message.
    pub const REPLAYS: &str = "x-wfm-replays";
}

/// What is dead-lettered: the original message and why.
pub struct DeadLetter<'a> {
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: &'a BasicProperties,
    pub queue: &'a str,
    pub rejection: &'a Rejection,
}

/// Why the broker did not take a copy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyRefused {
    #[error("the broker nacked the copy")]
    Nacked,
    #[error("the copy was unroutable: nothing is bound to the dead-letter exchange")]
    Returned,
    #[error("the dead-letter connection failed: {0}")]
    Lost(String),
}

/// The dead-letter publisher: a confirm channel on the dead-letter connection.
#[derive(Clone)]
pub struct DeadLetters {
    channel: Channel,
    exchange: String,
    /// Largest original header table a copy carries. A content header frame
    /// (properties and headers) larger than the negotiated `frame_max` makes the
    /// broker close the whole connection (501 FRAME_ERROR); the original fitted,
    /// but ours come on top. Leaves room for every other property.
    max_original_headers: usize,
}

/// Room kept in a content header frame for the other properties (shortstrs of
/// at most 255 bytes each) and the `x-wfm-*` headers (reason ≤ 1 KiB).
const FRAME_RESERVE: usize = 8 * 1024;

impl DeadLetters {
    pub async fn open(connection: &Connection, exchange: &str) -> Result<Self, BrokerError> {
        let frame_max = connection.configuration().frame_max() as usize;
        Ok(DeadLetters {
            channel: confirm_channel(connection).await?,
            exchange: exchange.to_owned(),
            max_original_headers: frame_max.saturating_sub(FRAME_RESERVE),
        })
    }

    /// The publishing channel, for closing it before its connection.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes the copy (persistent, mandatory); await the answer with [`confirmed`].
    pub async fn publish(&self, letter: DeadLetter<'_>) -> Result<PublisherConfirm, CopyRefused> {
        let properties = letter
            .properties
            .clone()
            .with_headers(self.annotate(&letter));
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                letter.routing_key.into(),
                options,
                letter.body,
                properties,
            )
            .await
            .map_err(|e| CopyRefused::Lost(e.to_string()))
    }

    fn annotate(&self, letter: &DeadLetter<'_>) -> FieldTable {
        let original = letter.properties.headers().clone().unwrap_or_default();
        let size = encoded_len(&original);
        let mut table = if size <= self.max_original_headers {
            original
        } else {
            let mut table = FieldTable::default();
            table.insert(
                headers::HEADERS_DROPPED.into(),
                AMQPValue::LongLongInt(size as i64),
            );
            table
        };
        let mut put = |key: &str, value: &str| {
            table.insert(key.into(), AMQPValue::LongString(value.into()));
        };
        let rejection = letter.rejection;
        put(headers::ERROR, &rejection.reason);
        put(headers::ERROR_KIND, rejection.kind.as_str());
        put(headers::QUEUE, letter.queue);
        put(
            headers::FAILED_AT,
            &Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        );
        if let Some(sqlstate) = &rejection.sqlstate {
            put(headers::SQLSTATE, sqlstate);
        }
        table
    }
}

/// The broker's answer to a copy: Ok only when it took responsibility for it.
pub async fn confirmed(confirm: PublisherConfirm) -> Result<(), CopyRefused> {
    match confirm.await {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_))) => Err(CopyRefused::Returned),
        Ok(Confirmation::Nack(None)) => Err(CopyRefused::Nacked),
        Ok(Confirmation::NotRequested) => {
            unreachable!("the dead-letter channel is in confirm mode")
        }
        Err(e) => Err(CopyRefused::Lost(e.to_string())),
    }
}

/// Encoded size of a field table in an AMQP 0-9-1 frame (4-byte length, then
/// per entry a shortstr name, a type octet and the value).
pub fn encoded_len(table: &FieldTable) -> usize {
    4 + table
        .inner()
        .iter()
        .map(|(name, value)| 1 + name.as_str().len() + 1 + value_len(value))
        .sum::<usize>()
}

fn value_len(value: &AMQPValue) -> usize {
    match value {
        AMQPValue::Void => 0,
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(a) => 4 + a.as_slice().len(),
        AMQPValue::FieldArray(a) => {
            4 + a.as_slice().iter().map(|v| 1 + value_len(v)).sum::<usize>()
        }
        AMQPValue::FieldTable(t) => encoded_len(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_length_counts_names_types_and_values() {
        let mut table = FieldTable::default();
        assert_eq!(encoded_len(&table), 4);
        table.insert("ab".into(), AMQPValue::LongString("xyz".into()));
        assert_eq!(encoded_len(&table), 4 + 1 + 2 + 1 + 4 + 3);
        let mut nested = FieldTable::default();
        nested.insert("n".into(), AMQPValue::LongLongInt(1));
        table.insert(
            "t".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(nested)].into()),
        );
        assert_eq!(
            encoded_len(&table),
            15 + (1 + 1 + 1) + 4 + 1 + (4 + 1 + 1 + 1 + 8)
        );
    }
}
