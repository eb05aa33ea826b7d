//! A cluster checkin: the older API's `Cluster` document.
//!
//! Only the fields with rules are read; the document itself is stored verbatim,
//! so fields this worker does not know are kept, never dropped.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{
    ClusterId, Envelope, EventTime, Limits, Rejection,
    json::parse_object,
    shape::{Components, Text, check_date_time},
};

mod walk;

/// A checkin that is fit to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkin<'a> {
    pub cluster_id: ClusterId,
    /// Event time in UTC (see [`Envelope::event_time`]).
    pub checked_in_at: EventTime,
    /// Idempotency key: a checkin whose key is already stored is skipped.
    pub key: MessageKey<'a>,
    /// The whole JSON document, exactly as published.
    pub document: &'a str,
}

/// What makes a redelivery recognisable: the publisher's `message_id`, or,
/// without one, a digest of what the publisher sent.
///
/// The digest covers the body and the publisher's timestamps (not the receipt
/// time, which differs at every delivery), so a redelivery of the same message
/// derives the same key. Two publishes with the same body and the same (or no)
/// timestamp are indistinguishable from a redelivery and stored once:
/// publishers should set `message_id`, as `wfm-worker publish` does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum MessageKey<'a> {
    Provided(&'a str),
    /// `sha256:` and 64 hex digits.
    Derived(String),
}

impl MessageKey<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Provided(id) => id,
            Self::Derived(key) => key,
        }
    }
}

impl<'a> MessageKey<'a> {
    pub fn of(envelope: &Envelope<'a>) -> Self {
        if let Some(id) = envelope.message_id() {
            return Self::Provided(id);
        }
        let mut digest = Sha256::new();
        digest.update(envelope.body);
        // Tagged so that "no timestamp" never equals some timestamp's bytes.
        for stamp in [
            envelope.timestamp_secs.map(|s| s as i64),
            envelope.timestamp_ms,
        ] {
            match stamp {
                Some(value) => digest.update([[1u8].as_slice(), &value.to_be_bytes()].concat()),
                None => digest.update([0u8]),
            }
        }
        let hex: String = digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self::Derived(format!("sha256:{hex}"))
    }
}

/// `models.Cluster`, as far as its readers decode it (see [`super::shape`]).
#[derive(Deserialize, Default)]
struct WireCheckin<'a> {
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
    #[serde(borrow, default, rename = "firstSeen")]
    first_seen: Option<Text<'a>>,
    #[serde(borrow, default, rename = "lastSeen")]
    last_seen: Option<Text<'a>>,
    #[serde(default)]
    components: Option<Components>,
}

impl<'a> Checkin<'a> {
    pub fn parse(envelope: &Envelope<'a>, limits: &Limits) -> Result<Self, Rejection> {
        let document = envelope.text(limits.max_bytes)?;
        // Most documents are read in one pass; serde decides the rest (escapes,
        // unusual shapes, every mistake) and names where a mistake is.
        let wire = match walk::checkin(document, limits.max_json_depth) {
            Some(wire) => wire,
            None => parse_object(document, "a checkin", limits.max_json_depth)?,
        };
        let id = wire
            .id
            .ok_or_else(|| Rejection::invalid("`id` is missing"))?;
        let cluster_id = ClusterId::parse("id", &id)?;
        check_date_time(wire.first_seen.as_deref(), "firstSeen")?;
        check_date_time(wire.last_seen.as_deref(), "lastSeen")?;
        let components = wire.components.ok_or_else(|| {
            Rejection::invalid("`components` is missing (an array, possibly empty)")
        })?;
        if let Some(i) = components.first_unnamed {
            return Err(Rejection::invalid(format!(
                "`components[{i}].component.name` is missing or empty"
            )));
        }
        Ok(Checkin {
            cluster_id,
            checked_in_at: envelope.event_time(limits.max_clock_skew),
            key: MessageKey::of(envelope),
            document,
        })
    }
}

/// What a reading of a checkin decides: `id`, `firstSeen`, `lastSeen` and
/// the index of the first unnamed component. The walk's tests and the fuzz
/// target compare the two readers on it.
#[cfg(any(test, fuzzing))]
pub type Read = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Option<usize>>,
);

#[cfg(any(test, fuzzing))]
fn project(wire: WireCheckin<'_>) -> Read {
    let owned = |t: Option<Text<'_>>| t.map(Text::into_owned);
    (
        owned(wire.id),
        owned(wire.first_seen),
        owned(wire.last_seen),
        wire.components.map(|c| c.first_unnamed),
    )
}

/// A checkin read by the one-pass walk (`None`: left to serde) and by serde
/// behind the guard, as the worker's serde path reads it.
#[cfg(any(test, fuzzing))]
pub(super) fn read_both_ways(
    text: &str,
    max_depth: usize,
) -> (Option<Read>, Result<Read, Rejection>) {
    (
        walk::checkin(text, max_depth).map(project),
        parse_object::<WireCheckin<'_>>(text, "a checkin", max_depth).map(project),
    )
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    const ID: &str = "5e2a4d3c-6c1f-4f7e-9a3b-2f8e1c0d9b7a";

    fn envelope(body: &str) -> Envelope<'_> {
        Envelope {
            body: body.as_bytes(),
            message_id: Some("m-1"),
            timestamp_secs: Some(1_470_150_000),
            timestamp_ms: None,
            received_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    fn parse(body: &str) -> Result<Checkin<'_>, Rejection> {
        Checkin::parse(&envelope(body), &Limits::default())
    }

    fn reason(body: &str) -> String {
        parse(body).unwrap_err().reason
    }

    #[test]
    fn full_checkin_keeps_the_document_verbatim() {
        let body = format!(
            r#"{{"id":"{ID}","components":[{{"component":{{"name":"deis-router","type":"Deployment"}},
              "version":{{"train":"stable","version":"v2.4.0"}},"updateAvailable":"v2.4.1"}}],
              "firstSeen":"2016-08-01T10:00:00Z","somethingNew":{{"kept":true}}}}"#
        );
        let checkin = parse(&body).unwrap();
        assert_eq!(checkin.cluster_id.as_uuid().to_string(), ID);
        assert_eq!(checkin.document, body);
        assert_eq!(checkin.key, MessageKey::Provided("m-1"));
        assert_eq!(
            checkin.checked_in_at.at.and_utc().timestamp(),
            1_470_150_000
        );
    }

    #[test]
    fn empty_components_array_is_accepted() {
        assert!(parse(&format!(r#"{{"id":"{ID}","components":[]}}"#)).is_ok());
    }

    #[test]
    fn missing_id_is_refused() {
        assert_eq!(reason(r#"{"components":[]}"#), "`id` is missing");
    }

    #[test]
    fn non_uuid_id_is_refused() {
        assert!(reason(r#"{"id":"abc","components":[]}"#).starts_with("`id` is not a UUID"));
    }

    #[test]
    fn id_of_the_wrong_type_names_the_field() {
        assert!(reason(r#"{"id":5,"components":[]}"#).starts_with("`id`: invalid type"));
    }

    #[test]
    fn missing_components_is_refused() {
        assert!(reason(&format!(r#"{{"id":"{ID}"}}"#)).starts_with("`components` is missing"));
    }

    #[test]
    fn components_that_is_not_an_array_names_the_field() {
        let r = reason(&format!(r#"{{"id":"{ID}","components":{{}}}}"#));
        assert!(r.starts_with("`components`: invalid type"), "{r}");
    }

    #[test]
    fn version_data_that_readers_cannot_decode_is_refused_with_its_path() {
        let body = format!(
            r#"{{"id":"{ID}","components":[{{"component":{{"name":"a"}},"version":{{"data":null}}}},
              {{"component":{{"name":"b"}},"version":{{"data":"notes"}}}}]}}"#
        );
        let r = reason(&body);
        assert!(
            r.starts_with("`components[1].version.data`: invalid type"),
            "{r}"
        );
        let fine = body.replace(r#""notes""#, r#"{"description":"d","extra":[1]}"#);
        assert!(parse(&fine).is_ok());
    }

    #[test]
    fn component_without_a_name_is_refused_with_its_index() {
        let body = format!(
            r#"{{"id":"{ID}","components":[{{"component":{{"name":"a"}}}},{{"component":{{"name":""}}}}]}}"#
        );
        assert_eq!(
            reason(&body),
            "`components[1].component.name` is missing or empty"
        );
        let body = format!(r#"{{"id":"{ID}","components":[{{"version":{{}}}}]}}"#);
        assert_eq!(
            reason(&body),
            "`components[0].component.name` is missing or empty"
        );
    }

    #[test]
    fn non_json_and_non_objects_are_refused() {
        assert!(reason("not json").contains("JSON object"));
        assert!(reason("{\"id\": ").starts_with("body is not valid JSON"));
        assert!(reason(&format!(r#"["{ID}", []]"#)).contains("JSON object"));
        assert!(
            reason(&format!(r#"{{"id":"{ID}","components":[]}} trailing"#))
                .starts_with("body is not valid JSON")
        );
    }

    #[test]
    fn an_empty_message_id_counts_as_absent_and_a_key_is_derived() {
        let body = format!(r#"{{"id":"{ID}","components":[]}}"#);
        let mut e = envelope(&body);
        e.message_id = Some("");
        let key = MessageKey::of(&e);
        assert!(key.as_str().starts_with("sha256:") && key.as_str().len() == 71);
        e.message_id = None;
        assert_eq!(MessageKey::of(&e), key, "a redelivery derives the same key");
    }

    #[test]
    fn derived_keys_differ_by_body_and_by_timestamp() {
        let body = format!(r#"{{"id":"{ID}","components":[]}}"#);
        let mut e = envelope(&body);
        e.message_id = None;
        let key = MessageKey::of(&e);
        e.timestamp_secs = Some(1_470_150_001);
        assert_ne!(MessageKey::of(&e), key);
        e.timestamp_secs = None;
        let unstamped = MessageKey::of(&e);
        assert_ne!(unstamped, key);
        e.timestamp_ms = Some(0);
        assert_ne!(MessageKey::of(&e), unstamped, "zero is not absence");
        let other = format!(r#"{{"id":"{ID}","components":[] }}"#);
        let mut o = envelope(&other);
        o.message_id = None;
        assert_ne!(MessageKey::of(&o), key);
    }

    #[test]
    fn a_huge_string_where_an_array_belongs_is_refused_with_an_excerpt() {
        let body = format!(r#"{{"id":"{ID}","components":"{}"}}"#, "x".repeat(100_000));
        let r = reason(&body);
        assert!(r.starts_with("`components`: invalid type: string"), "{r}");
        assert!(r.len() < 200, "{r}");
    }

    #[test]
    fn deep_nesting_in_an_unknown_field_is_refused() {
        let body = format!(
            r#"{{"id":"{ID}","components":[],"x":{}}}"#,
            "[".repeat(100_000)
        );
        assert!(reason(&body).contains("nested deeper than 64"));
    }
}
