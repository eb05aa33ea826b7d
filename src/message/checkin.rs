//! A cluster checkin: the older API's `Cluster` document.
//!
//! Only the fields with rules are read; the document itself is stored verbatim,
//! so fields this worker does not know are kept, never dropped.

use std::borrow::Cow;

use chrono::NaiveDateTime;
use serde::Deserialize;

use super::{ClusterId, Envelope, Rejection, parse_object};

/// A checkin that is fit to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkin<'a> {
    pub cluster_id: ClusterId,
    /// Event time in UTC (see [`Envelope::event_time`]).
    pub checked_in_at: NaiveDateTime,
    /// Idempotency key: a checkin whose `message_id` is already stored is skipped.
    pub message_id: Option<&'a str>,
    /// The whole JSON document, exactly as published.
    pub document: &'a str,
}

#[derive(Deserialize)]
struct WireCheckin<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    components: Option<Vec<WireComponent<'a>>>,
}

#[derive(Deserialize)]
struct WireComponent<'a> {
    #[serde(borrow, default)]
    component: Option<WireComponentInfo<'a>>,
}

#[derive(Deserialize)]
struct WireComponentInfo<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

impl<'a> Checkin<'a> {
    pub fn parse(envelope: &Envelope<'a>, max_bytes: usize) -> Result<Self, Rejection> {
        let document = envelope.text(max_bytes)?;
        let wire: WireCheckin<'_> = parse_object(document, "a checkin")?;
        let id = wire
            .id
            .ok_or_else(|| Rejection::invalid("`id` is missing".to_owned()))?;
        let cluster_id = ClusterId::parse("id", &id)?;
        let components = wire.components.ok_or_else(|| {
            Rejection::invalid("`components` is missing (an array, possibly empty)".to_owned())
        })?;
        for (i, entry) in components.iter().enumerate() {
            let named = entry
                .component
                .as_ref()
                .and_then(|c| c.name.as_deref())
                .is_some_and(|name| !name.is_empty());
            if !named {
                return Err(Rejection::invalid(format!(
                    "`components[{i}].component.name` is missing or empty"
                )));
            }
        }
        Ok(Checkin {
            cluster_id,
            checked_in_at: envelope.event_time()?,
            message_id: envelope.message_id,
            document,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    const ID: &str = "5e2a4d3c-6c1f-4f7e-9a3b-2f8e1c0d9b7a";

    fn parse(body: &str) -> Result<Checkin<'_>, Rejection> {
        let envelope = Envelope {
            body: body.as_bytes(),
            message_id: Some("m-1"),
            timestamp_secs: Some(1_470_150_000),
            timestamp_ms: None,
            received_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        };
        Checkin::parse(&envelope, 1 << 20)
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
        assert_eq!(checkin.message_id, Some("m-1"));
        assert_eq!(checkin.checked_in_at.and_utc().timestamp(), 1_470_150_000);
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
}
