//! Dead-letter copies: the original body and properties, plus the reason as
//! `x-wfm-*` headers, published on the consumer's own transactional channel
//! (see `pipeline::commit` for why) and made effective by [`commit`].

use chrono::{SecondsFormat, Utc};
use lapin::{
    BasicProperties, Channel,
    options::BasicPublishOptions,
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

/// Publishes the copy within the channel's open transaction. Mandatory: a copy
/// no queue takes comes back, and [`commit`] reports it.
pub async fn publish_dead_letter(
    channel: &Channel,
    exchange: &str,
    letter: DeadLetter<'_>,
) -> Result<(), BrokerError> {
    let properties = letter.properties.clone().with_headers(annotate(&letter));
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    channel
        .basic_publish(
            exchange.into(),
            letter.routing_key.into(),
            options,
            letter.body,
            properties,
        )
        .await
        .map(drop)
        .map_err(|source| BrokerError::Channel {
            doing: "publishing a dead-letter copy",
            source,
        })
}

/// Commits the channel's transaction (its publishes, acks and nacks).
///
/// The broker returns an unroutable mandatory copy before `commit-ok`, so one
/// returned here means the dead-letter exchange has no queue bound (someone
/// deleted it while the worker ran): the worker stops rather than go on
/// dropping copies.
pub async fn commit(channel: &Channel) -> Result<(), BrokerError> {
    let fail = |source| BrokerError::Channel {
        doing: "committing a batch",
        source,
    };
    // A connection that died without a word must not leave the commit pending
    // forever: the answer takes one round trip; a minute is far beyond it.
    tokio::time::timeout(COMMIT_TIMEOUT, channel.tx_commit())
        .await
        .map_err(|_| BrokerError::ChannelClosed("committing a batch (no answer)"))?
        .map_err(fail)?;
    let returned = channel.wait_for_confirms().await.map_err(fail)?;
    if !returned.is_empty() {
        tracing::error!(
            copies = returned.len(),
            "dead-letter copies were unroutable and dropped by the broker"
        );
        return Err(BrokerError::NotConfirmed(
            "the dead-letter exchange routed a copy to no queue",
        ));
    }
    Ok(())
}

const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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
