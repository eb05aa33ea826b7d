//! `wfm-worker publish`: what the clusters and the release pipeline run to
//! publish. Messages are validated locally with the worker's own parsers (so a
//! refusal here reads exactly as the worker's would), then published
//! persistent, with a `message_id` and a timestamp, under publisher confirms.
//! Any message the broker does not confirm makes the command fail.

use std::path::PathBuf;

use chrono::Utc;
use lapin::{
    BasicProperties, Channel, Confirmation, PublisherConfirm,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable},
};
use serde_json::json;

use crate::{
    broker::{self, BrokerError, CHECKIN_ROUTING_KEY, VERSION_ROUTING_KEY},
    config::BrokerSettings,
    message::{Checkin, Envelope, Limits, Rejection, VersionEvent},
    telemetry::traces,
};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("message {number} is invalid, nothing was published: {rejection}")]
    Invalid { number: usize, rejection: Rejection },
    #[error("{0} contains no message")]
    Empty(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker did not confirm message {number}: {reason}")]
    NotConfirmed { number: usize, reason: String },
}

/// A version event from its parts, in the older API's ComponentVersion shape.
pub struct VersionSpec {
    pub component: String,
    pub train: String,
    pub version: String,
    pub released: String,
    pub data: Option<serde_json::Value>,
}

impl VersionSpec {
    pub fn to_document(&self) -> String {
        let mut version =
            json!({"train": self.train, "version": self.version, "released": self.released});
        if let Some(data) = &self.data {
            version["data"] = data.clone();
        }
        json!({"component": {"name": self.component}, "version": version}).to_string()
    }
}

/// Reads `path` (`-` for stdin): one JSON document, or JSON lines (one per line).
pub fn read_documents(path: &PathBuf) -> Result<Vec<String>, PublishError> {
    let shown = path.display().to_string();
    let read_error = |source| PublishError::Read {
        path: shown.clone(),
        source,
    };
    let text = if shown == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(read_error)?
    } else {
        std::fs::read_to_string(path).map_err(read_error)?
    };
    let whole = text.trim();
    let documents: Vec<String> = if serde_json::from_str::<serde::de::IgnoredAny>(whole).is_ok() {
        vec![whole.to_owned()]
    } else {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    if documents.is_empty() {
        return Err(PublishError::Empty(shown));
    }
    Ok(documents)
}

/// Which worker rules a document must pass.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Checkin,
    Version,
}

impl Kind {
    fn routing_key(self) -> &'static str {
        match self {
            Self::Checkin => CHECKIN_ROUTING_KEY,
            Self::Version => VERSION_ROUTING_KEY,
        }
    }
}

/// Checks every document with the worker's rules; nothing is published unless all pass.
pub fn validate(kind: Kind, documents: &[String], limits: &Limits) -> Result<(), PublishError> {
    let received_at = Utc::now();
    for (i, document) in documents.iter().enumerate() {
        let envelope = Envelope {
            body: document.as_bytes(),
            message_id: None,
            timestamp_secs: None,
            timestamp_ms: None,
            received_at,
        };
        let parsed = match kind {
            Kind::Checkin => Checkin::parse(&envelope, limits).map(drop),
            Kind::Version => VersionEvent::parse(&envelope, limits).map(drop),
        };
        parsed.map_err(|rejection| PublishError::Invalid {
            number: i + 1,
            rejection,
        })?;
    }
    Ok(())
}

/// Publishes every document and waits for every confirm (1,000 in flight at most).
/// Returns the message ids, in order.
pub async fn publish(
    settings: &BrokerSettings,
    kind: Kind,
    documents: &[String],
) -> Result<Vec<String>, PublishError> {
    let connection = broker::connect(settings, "wfm-worker publish").await?;
    let channel = broker::confirm_channel(&connection).await?;
    let progress = indicatif::ProgressBar::new(documents.len() as u64);
    let mut ids = Vec::with_capacity(documents.len());
    let mut window = Vec::with_capacity(1000);
    for (i, document) in documents.iter().enumerate() {
        let id = uuid::Uuid::new_v4().to_string();
        window.push((i + 1, send(&channel, settings, kind, &id, document).await?));
        ids.push(id);
        if window.len() == 1000 || i + 1 == documents.len() {
            for (number, confirm) in window.drain(..) {
                confirmed(number, confirm).await?;
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    let _ = connection.close(200, "published".into()).await;
    Ok(ids)
}

async fn send(
    channel: &Channel,
    settings: &BrokerSettings,
    kind: Kind,
    id: &str,
    document: &str,
) -> Result<PublisherConfirm, PublishError> {
    let now = Utc::now();
    let mut headers = FieldTable::default();
    headers.insert(
        "timestamp_in_ms".into(),
        AMQPValue::LongLongInt(now.timestamp_millis()),
    );
    let exchange = settings.topology.exchange.as_str();
    // Ends once the message is handed to the broker (the confirm is awaited later).
    let _span = traces::publish_span(exchange, kind.routing_key(), &mut headers);
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(id.into())
        .with_timestamp(now.timestamp().max(0) as u64)
        .with_app_id("wfm-worker publish".into())
        .with_headers(headers);
    // Mandatory: a message no queue takes is returned, and reported, not lost.
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    channel
        .basic_publish(
            exchange.into(),
            kind.routing_key().into(),
            options,
            document.as_bytes(),
            properties,
        )
        .await
        .map_err(|source| {
            BrokerError::Channel {
                doing: "publishing",
                source,
            }
            .into()
        })
}

async fn confirmed(number: usize, confirm: PublisherConfirm) -> Result<(), PublishError> {
    let not_confirmed = |reason: String| PublishError::NotConfirmed { number, reason };
    match confirm.await.map_err(|e| not_confirmed(e.to_string()))? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(not_confirmed(
            "no queue is bound for it (is the worker's topology declared?)".into(),
        )),
        Confirmation::Nack(_) => Err(not_confirmed("the broker nacked it".into())),
        Confirmation::NotRequested => Err(not_confirmed("confirms are off".into())),
    }
}
