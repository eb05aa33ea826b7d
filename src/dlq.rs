//! `wfm-worker dlq`: look into the dead-letter queue and replay messages.
//!
//! Messages are taken with `basic.get` and left unacknowledged; those not
//! replayed go back to the queue when the channel closes. A replayed message is
//! republished to the queue it came from (through the default exchange) with
//! publisher confirms, and only after the broker confirms it is it removed from
//! the dead-letter queue. A replayed message that is still invalid is
//! dead-lettered again by the worker, once, with its reason — no loop.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties, Channel, Confirmation,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions},
    types::{AMQPValue, FieldTable},
};

use crate::broker::{self, BrokerError, dead_letter_headers as h};
use crate::config::BrokerSettings;

/// One message of the dead-letter queue, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub message_id: String,
    pub queue: String,
    pub reason: String,
    pub failed_at: Option<DateTime<Utc>>,
}

impl Entry {
    fn of(message: &BasicGetMessage) -> Entry {
        let properties = &message.delivery.properties;
        let headers = properties.headers().clone().unwrap_or_default();
        let text = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
            _ => None,
        };
        // Copies made by the worker carry x-wfm-*; the broker's own dead-lettering
        // (e.g. a delivery limit) only x-death, whose first entry is the latest.
        let death = first_death(&headers);
        let queue = text(h::QUEUE)
            .or_else(|| death_text(death, "queue"))
            .unwrap_or_default();
        let reason = match (text(h::ERROR_KIND), text(h::ERROR)) {
            (Some(kind), Some(error)) => format!("{kind}: {error}"),
            _ => death_text(death, "reason")
                .map_or_else(|| "unknown".to_owned(), |r| format!("broker: {r}")),
        };
        let failed_at = text(h::FAILED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| {
                death.and_then(|d| match d.inner().get("time") {
                    Some(AMQPValue::Timestamp(secs)) => DateTime::from_timestamp(*secs as i64, 0),
                    _ => None,
                })
            });
        Entry {
            message_id: properties
                .message_id()
                .as_ref()
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            queue,
            reason,
            failed_at,
        }
    }

    /// Age in whole seconds, for the listing.
    pub fn age(&self, now: DateTime<Utc>) -> String {
        self.failed_at.map_or_else(
            || "?".to_owned(),
            |at| humanize((now - at).num_seconds().max(0)),
        )
    }
}

fn first_death(headers: &FieldTable) -> Option<&FieldTable> {
    match headers.inner().get("x-death")? {
        AMQPValue::FieldArray(deaths) => match deaths.as_slice().first()? {
            AMQPValue::FieldTable(death) => Some(death),
            _ => None,
        },
        _ => None,
    }
}

fn death_text(death: Option<&FieldTable>, key: &str) -> Option<String> {
    match death?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn humanize(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Which messages to replay.
pub enum Selection {
    All,
    Ids(HashSet<String>),
}

impl Selection {
    fn includes(&self, entry: &Entry) -> bool {
        match self {
            Self::All => true,
            Self::Ids(ids) => ids.contains(&entry.message_id),
        }
    }
}

/// A listing: the first entries, and how many messages the queue held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub total: u32,
}

/// Lists up to `limit` messages, leaving the queue as it was.
pub async fn list(settings: &BrokerSettings, limit: usize) -> Result<Listing, BrokerError> {
    let connection = broker::connect(settings, "wfm-worker dlq").await?;
    let channel = open(&connection, "opening a channel").await?;
    let total = ready(&channel, &settings.topology.dead_letter_queue).await?;
    let mut entries = Vec::new();
    while entries.len() < limit.min(total as usize) {
        let Some(message) = get(&channel, &settings.topology.dead_letter_queue).await? else {
            break;
        };
        entries.push(Entry::of(&message));
    }
    // Closing hands every message taken back, unacknowledged.
    let _ = connection.close(200, "listed".into()).await;
    Ok(Listing { entries, total })
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Replayed (or, with a dry run, would be).
    pub replayed: Vec<Entry>,
    /// Messages in the queue when the replay started: the most it looks at.
    pub examined: u32,
    /// Looked at and left in place: not selected, or with no source queue.
    pub skipped: usize,
}

/// Replays the selected messages to the queues they came from.
///
/// Only the messages in the dead-letter queue when it starts are examined
/// (their count, from a passive declare, bounds the loop): a replayed message
/// that is still invalid comes back to the queue's tail, and must not be
/// taken again by the same replay (it would loop for ever). Messages not
/// replayed are held unacknowledged until the end, so each `basic.get` returns
/// a message not yet seen.
pub async fn replay(
    settings: &BrokerSettings,
    selection: &Selection,
    dry_run: bool,
) -> Result<Replay, BrokerError> {
    let connection = broker::connect(settings, "wfm-worker dlq").await?;
    let taking = open(&connection, "opening a channel").await?;
    let publishing = broker::confirm_channel(&connection).await?;
    let examined = ready(&taking, &settings.topology.dead_letter_queue).await?;
    let mut replayed = Vec::new();
    let mut skipped = 0;
    for _ in 0..examined {
        let Some(message) = get(&taking, &settings.topology.dead_letter_queue).await? else {
            break;
        };
        let entry = Entry::of(&message);
        if !selection.includes(&entry) || entry.queue.is_empty() {
            skipped += 1;
            continue;
        }
        if !dry_run {
            republish(&publishing, &message, &entry.queue).await?;
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(|source| BrokerError::Channel {
                    doing: "removing a replayed message",
                    source,
                })?;
        }
        replayed.push(entry);
    }
    let _ = connection.close(200, "replayed".into()).await;
    Ok(Replay {
        replayed,
        examined,
        skipped,
    })
}

/// Messages ready in `queue`, exactly (a passive declare).
async fn ready(channel: &Channel, queue: &str) -> Result<u32, BrokerError> {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .map(|q| q.message_count())
        .map_err(|source| BrokerError::Channel {
            doing: "counting the dead-letter queue",
            source,
        })
}

async fn open(connection: &lapin::Connection, doing: &'static str) -> Result<Channel, BrokerError> {
    connection
        .create_channel()
        .await
        .map_err(|source| BrokerError::Channel { doing, source })
}

async fn get(channel: &Channel, queue: &str) -> Result<Option<BasicGetMessage>, BrokerError> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .map_err(|source| BrokerError::Channel {
            doing: "reading the dead-letter queue",
            source,
        })
}

/// Publishes the original body and properties to `queue`, without the
/// rejection's headers, counting the replay; waits for the broker's confirm.
async fn republish(
    channel: &Channel,
    message: &BasicGetMessage,
    queue: &str,
) -> Result<(), BrokerError> {
    let properties = cleaned(&message.delivery.properties);
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let fail = |source| BrokerError::Channel {
        doing: "republishing a dead letter",
        source,
    };
    let confirmation = channel
        .basic_publish(
            "".into(),
            queue.into(),
            options,
            &message.delivery.data,
            properties,
        )
        .await
        .map_err(fail)?
        .await
        .map_err(fail)?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BrokerError::NotConfirmed(
            "the source queue no longer exists",
        )),
        Confirmation::Nack(_) => Err(BrokerError::NotConfirmed("the broker nacked the replay")),
        Confirmation::NotRequested => Err(BrokerError::NotConfirmed("confirms are off")),
    }
}

fn cleaned(properties: &BasicProperties) -> BasicProperties {
    let old = properties.headers().clone().unwrap_or_default();
    let replays = match old.inner().get(h::REPLAYS) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        _ => 0,
    };
    let mut headers = FieldTable::default();
    for (key, value) in old.inner() {
        let name = key.as_str();
        if !(name.starts_with("x-wfm-")
            || name.starts_with("x-death")
            || name.starts_with("x-first-death")
            || name.starts_with("x-last-death"))
        {
            headers.insert(key.clone(), value.clone());
        }
    }
    headers.insert(h::REPLAYS.into(), AMQPValue::LongLongInt(replays + 1));
    properties.clone().with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(humanize(5), "5s");
        assert_eq!(humanize(600), "10m");
        assert_eq!(humanize(36_000), "10h");
        assert_eq!(humanize(864_000), "10d");
    }

    #[test]
    fn a_replayed_copy_loses_the_rejection_and_counts_the_replay() {
        let mut headers = FieldTable::default();
        headers.insert(h::ERROR.into(), AMQPValue::LongString("bad".into()));
        headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        headers.insert("timestamp_in_ms".into(), AMQPValue::LongLongInt(5));
        let cleaned = cleaned(&BasicProperties::default().with_headers(headers));
        let kept = cleaned.headers().clone().unwrap();
        assert!(kept.inner().get(h::ERROR).is_none());
        assert!(kept.inner().get("x-death").is_none());
        assert_eq!(
            kept.inner().get("timestamp_in_ms"),
            Some(&AMQPValue::LongLongInt(5))
        );
        assert_eq!(
            kept.inner().get(h::REPLAYS),
            Some(&AMQPValue::LongLongInt(1))
        );
    }
}
