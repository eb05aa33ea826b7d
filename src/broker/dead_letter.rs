//! Dead-letter copies, published with publisher confirms.
//!
//! The copy keeps the original body and properties and adds the reason as
//! `x-wfm-*` headers. The original may be acked only once this returns `Ok`:
//! the broker has confirmed the copy and it was routed to a queue (mandatory
//! publish; a returned or nacked copy is an error, never a success).

use chrono::{SecondsFormat, Utc};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};

use super::BrokerError;
use crate::message::Rejection;

/// Header names of a dead-letter copy.
pub mod headers {
    pub const ERROR: &str = "x-wfm-error";
    pub const ERROR_KIND: &str = "x-wfm-error-kind";
    pub const QUEUE: &str = "x-wfm-queue";
    pub const FAILED_AT: &str = "x-wfm-failed-at";
    pub const SQLSTATE: &str = "x-wfm-sqlstate";
}

/// Publishes dead-letter copies on a confirm-mode channel of its own.
#[derive(Clone)]
pub struct DeadLetterPublisher {
    channel: Channel,
    exchange: String,
}

/// What is dead-lettered: the original message and why.
pub struct DeadLetter<'a> {
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: &'a BasicProperties,
    pub queue: &'a str,
    pub rejection: &'a Rejection,
}

impl DeadLetterPublisher {
    pub async fn open(connection: &Connection, exchange: &str) -> Result<Self, BrokerError> {
        let fail = |source| BrokerError::Channel {
            doing: "opening the dead-letter channel",
            source,
        };
        let channel = connection.create_channel().await.map_err(fail)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(fail)?;
        Ok(Self {
            channel,
            exchange: exchange.to_owned(),
        })
    }

    /// Publishes the copy and waits for the broker's confirm.
    pub async fn publish(&self, letter: DeadLetter<'_>) -> Result<(), BrokerError> {
        let fail = |source| BrokerError::Channel {
            doing: "publishing a dead-letter copy",
            source,
        };
        let properties = letter.properties.clone().with_headers(annotate(&letter));
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmation = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                letter.routing_key.into(),
                options,
                letter.body,
                properties,
            )
            .await
            .map_err(fail)?
            .await
            .map_err(fail)?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::NotConfirmed(
                "the dead-letter exchange routed it to no queue",
            )),
            Confirmation::Nack(_) => Err(BrokerError::NotConfirmed("the broker nacked it")),
            Confirmation::NotRequested => Err(BrokerError::NotConfirmed("confirms are off")),
        }
    }
}

fn annotate(letter: &DeadLetter<'_>) -> FieldTable {
    let mut table = letter.properties.headers().clone().unwrap_or_default();
    let mut put = |key: &str, value: &str| {
        table.insert(key.into(), AMQPValue::LongString(value.into()));
    };
    put(headers::ERROR, &letter.rejection.reason);
    put(headers::ERROR_KIND, letter.rejection.kind.as_str());
    put(headers::QUEUE, letter.queue);
    put(
        headers::FAILED_AT,
        &Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    if let Some(sqlstate) = &letter.rejection.sqlstate {
        put(headers::SQLSTATE, sqlstate);
    }
    table
}
