//! A component version event: the older API's `ComponentVersion` document.

use chrono::{DateTime, NaiveDateTime};
use serde::Deserialize;

use super::{
    ComponentName, Envelope, EventTime, Limits, Rejection, TrainName, VersionName,
    json::parse_object,
    shape::{Component, Object, Text, Version},
};

/// A version event that is fit to store. Its key is (component, train, version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEvent<'a> {
    pub component: ComponentName,
    pub train: TrainName,
    pub version: VersionName,
    /// `version.released`, converted to UTC.
    pub released_at: NaiveDateTime,
    /// When the event was published (the AMQP timestamp, else receipt): of two
    /// events for the same key, the later publish wins.
    pub published_at: EventTime,
    /// `version.data`, exactly as published, or `null` when absent: what the
    /// older service stored in `versions.data` (`json.Marshal(Version.Data)`)
    /// and what its readers decode.
    pub data: &'a str,
}

/// `models.ComponentVersion`, as far as its readers decode it.
#[derive(Deserialize)]
struct WireVersionEvent<'a> {
    #[serde(borrow, default)]
    component: Option<Object<Component<'a>>>,
    #[serde(borrow, default)]
    version: Option<Object<Version<'a>>>,
}

impl<'a> VersionEvent<'a> {
    pub fn parse(envelope: &Envelope<'a>, limits: &Limits) -> Result<Self, Rejection> {
        let document = envelope.text(limits.max_bytes)?;
        let wire: WireVersionEvent<'_> =
            parse_object(document, "a version event", limits.max_json_depth)?;
        let component =
            ComponentName::parse(wire.component.and_then(|c| c.0.name).map(Text::into_owned))?;
        let version = wire.version.map(|v| v.0).unwrap_or_default();
        version.check_data(|| "version.data".into())?;
        let data = version.data.map_or("null", |raw| raw.get());
        let train = TrainName::parse(version.train.map(Text::into_owned))?;
        let version_name = VersionName::parse(version.version.map(Text::into_owned))?;
        let released = version
            .released
            .ok_or_else(|| Rejection::invalid("`version.released` is missing"))?;
        let released_at = DateTime::parse_from_rfc3339(&released)
            .map_err(|e| {
                Rejection::invalid(format!(
                    "`version.released` is not an RFC 3339 timestamp: {e}"
                ))
            })?
            .naive_utc();
        Ok(VersionEvent {
            component,
            train,
            version: version_name,
            released_at,
            published_at: envelope.event_time(limits.max_clock_skew),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    fn parse(body: &str) -> Result<VersionEvent<'_>, Rejection> {
        let envelope = Envelope {
            body: body.as_bytes(),
            message_id: None,
            timestamp_secs: None,
            timestamp_ms: None,
            received_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        };
        VersionEvent::parse(&envelope, &Limits::default())
    }

    fn body(name: &str, train: &str, version: &str, released: &str) -> String {
        format!(
            r#"{{"component":{{"name":"{name}"}},"version":{{"train":"{train}","version":"{version}","released":"{released}","data":{{"fixes":"x"}}}}}}"#
        )
    }

    #[test]
    fn version_event_is_parsed_with_release_time_in_utc() {
        let text = body(
            "deis-router",
            "stable",
            "v2.4.0",
            "2016-08-02T19:00:00+02:00",
        );
        let event = parse(&text).unwrap();
        assert_eq!(event.component.as_str(), "deis-router");
        assert_eq!(event.train.as_str(), "stable");
        assert_eq!(event.version.as_str(), "v2.4.0");
        assert_eq!(event.released_at.to_string(), "2016-08-02 17:00:00");
        assert_eq!(event.data, r#"{"fixes":"x"}"#, "version.data, verbatim");
    }

    #[test]
    fn each_field_rule_names_its_field() {
        let cases = [
            (
                body("", "stable", "v1", "2016-08-02T17:00:00Z"),
                "`component.name` is missing or empty",
            ),
            (
                body(&"c".repeat(33), "s", "v1", "2016-08-02T17:00:00Z"),
                "`component.name` is 33 characters, over the limit of 32",
            ),
            (
                body("c", &"t".repeat(25), "v1", "2016-08-02T17:00:00Z"),
                "`version.train` is 25 characters, over the limit of 24",
            ),
            (
                body("c", "s", &"v".repeat(33), "2016-08-02T17:00:00Z"),
                "`version.version` is 33 characters, over the limit of 32",
            ),
            (
                body("c", "s", "", "2016-08-02T17:00:00Z"),
                "`version.version` is missing or empty",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(&text).unwrap_err().reason, expected);
        }
    }

    #[test]
    fn release_time_must_be_rfc3339() {
        let err = parse(&body("c", "s", "v1", "2016-08-02 17:00")).unwrap_err();
        assert!(
            err.reason
                .starts_with("`version.released` is not an RFC 3339"),
            "{}",
            err.reason
        );
        let err = parse(r#"{"component":{"name":"c"},"version":{"train":"s","version":"v"}}"#)
            .unwrap_err();
        assert_eq!(err.reason, "`version.released` is missing");
    }

    #[test]
    fn missing_version_object_names_the_train_first() {
        let err = parse(r#"{"component":{"name":"c"}}"#).unwrap_err();
        assert_eq!(err.reason, "`version.train` is missing or empty");
    }

    #[test]
    fn absent_or_null_data_is_stored_as_json_null() {
        let absent = r#"{"component":{"name":"c"},"version":{"train":"s","version":"v","released":"2016-08-02T17:00:00Z"}}"#;
        assert_eq!(parse(absent).unwrap().data, "null");
        let null = r#"{"component":{"name":"c"},"version":{"train":"s","version":"v","released":"2016-08-02T17:00:00Z","data":null}}"#;
        assert_eq!(parse(null).unwrap().data, "null");
    }

    #[test]
    fn data_is_kept_byte_for_byte() {
        let text = r#"{"component":{"name":"c"},"version":{"train":"s","version":"v","released":"2016-08-02T17:00:00Z","data":{ "description" : "a\u00e9",  "image":"i" }}}"#;
        assert_eq!(
            parse(text).unwrap().data,
            r#"{ "description" : "a\u00e9",  "image":"i" }"#
        );
    }

    #[test]
    fn data_a_reader_could_not_decode_is_refused() {
        let text = r#"{"component":{"name":"c"},"version":{"train":"s","version":"v","released":"2016-08-02T17:00:00Z","data":"notes"}}"#;
        assert!(
            parse(text)
                .unwrap_err()
                .reason
                .starts_with("`version.data`: invalid type")
        );
    }
}
