//! The shapes the older API's readers decode the stored documents into
//! (`models.Cluster`, `ComponentVersion`, `Component`, `Version`, `Data` of
//! deis/workflow-manager-api). Go's `json.Unmarshal` ignores unknown fields
//! and takes `null` anywhere, but a value of the wrong type — a number where a
//! string belongs, an array where an object does — fails the whole document,
//! and with it every API call that reads it. So each field a reader decodes is
//! checked here, with its type; everything else passes through untouched.
//!
//! `checkin/walk.rs` reads the checkin shapes in one pass for the common case
//! and leaves the rest to these: a field or type changed here must change
//! there too (its differential test compares the two on the seeds it edits).

use std::{borrow::Cow, fmt, marker::PhantomData, ops::Deref};

use serde::{
    Deserialize, Deserializer,
    de::{Error, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer},
};
use serde_json::value::RawValue;

use super::Rejection;

/// A JSON object decoded into `T`. serde accepts an array for a struct (field
/// by position); Go does not, so neither does this.
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Fields(PhantomData))
            .map(Object)
    }
}

/// A JSON string, borrowed from the document unless it holds escapes.
///
/// Not `Option<Cow<str>>`: serde borrows a `Cow` only as a field of its own;
/// inside an `Option` it always allocates, and a checkin has ~75 strings
/// (a heaptrack profile counted 75 allocations per message from them).
#[derive(Debug)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    /// For a domain type that keeps the value.
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Chars;
        impl<'de> Visitor<'de> for Chars {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(text))
            }
            fn visit_str<E: Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(text.to_owned()))
            }
            fn visit_string<E: Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(text))
            }
        }
        deserializer.deserialize_str(Chars).map(Text)
    }
}

/// A JSON string whose value nobody here reads: its type is checked, its
/// characters are never copied (escapes are decoded into serde_json's scratch
/// buffer, reused).
#[derive(Debug)]
pub struct AnyText;

impl<'de> Deserialize<'de> for AnyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Chars;
        impl Visitor<'_> for Chars {
            type Value = AnyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: Error>(self, _: &str) -> Result<AnyText, E> {
                Ok(AnyText)
            }
        }
        deserializer.deserialize_str(Chars)
    }
}

/// `models.Component`.
#[derive(Debug, Deserialize)]
pub struct Component<'a> {
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
    #[serde(default, rename = "description")]
    _description: Option<AnyText>,
    #[serde(default, rename = "type")]
    _kind: Option<AnyText>,
}

/// `models.Version`. `data` is kept raw: version events store it verbatim.
#[derive(Deserialize, Default)]
pub struct Version<'a> {
    #[serde(borrow, default)]
    pub train: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub version: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub released: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// `models.Data`.
#[derive(Deserialize)]
struct Data {
    #[serde(default, rename = "description")]
    _description: Option<AnyText>,
    #[serde(default, rename = "fixes")]
    _fixes: Option<AnyText>,
}

impl Version<'_> {
    /// Checks `data` decodes as `models.Data` (an object of strings, or null);
    /// `path` names it in the rejection (made only then: this runs for every
    /// component of every checkin).
    pub fn check_data(&self, path: impl FnOnce() -> String) -> Result<(), Rejection> {
        let Some(raw) = self.data else { return Ok(()) };
        serde_json::from_str::<Object<Data>>(raw.get())
            .map(drop)
            .map_err(|e| Rejection::invalid(format!("`{}`: {e}", path())))
    }
}

/// `models.ComponentVersion`.
#[derive(Deserialize)]
pub struct ComponentVersion<'a> {
    #[serde(borrow, default)]
    pub component: Option<Object<Component<'a>>>,
    #[serde(default, rename = "version")]
    _version: Option<Object<ComponentRelease>>,
    #[serde(default, rename = "updateAvailable")]
    _update_available: Option<AnyText>,
}

/// `models.Version` inside a checkin: nothing of it is kept, so `data` is
/// checked as `models.Data` while it is read, not captured and read again.
#[derive(Deserialize)]
pub struct ComponentRelease {
    #[serde(default, rename = "train")]
    _train: Option<AnyText>,
    #[serde(default, rename = "version")]
    _version: Option<AnyText>,
    #[serde(default, rename = "released")]
    _released: Option<AnyText>,
    #[serde(default, rename = "data")]
    _data: Option<Object<Data>>,
}

/// A checkin's `components`, each checked as it is read and none kept: the
/// index of the first without a component name, if any.
pub struct Components {
    pub first_unnamed: Option<usize>,
}

impl<'de> Deserialize<'de> for Components {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Components;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut entries: A) -> Result<Components, A::Error> {
                let mut first_unnamed = None;
                let mut index = 0;
                while let Some(entry) =
                    entries.next_element::<Option<Object<ComponentVersion<'de>>>>()?
                {
                    let named = entry
                        .as_ref()
                        .and_then(|e| e.0.component.as_ref())
                        .and_then(|c| c.0.name.as_deref())
                        .is_some_and(|name| !name.is_empty());
                    if !named && first_unnamed.is_none() {
                        first_unnamed = Some(index);
                    }
                    index += 1;
                }
                Ok(Components { first_unnamed })
            }
        }
        deserializer.deserialize_seq(Entries)
    }
}

/// go-swagger's `strfmt.DateTime`: RFC 3339, or empty.
pub fn check_date_time(value: Option<&str>, field: &str) -> Result<(), Rejection> {
    match value {
        Some(text) if !text.is_empty() => chrono::DateTime::parse_from_rfc3339(text)
            .map(drop)
            .map_err(|e| {
                Rejection::invalid(format!("`{field}` is not an RFC 3339 date-time: {e}"))
            }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_borrows_from_the_document_unless_it_holds_escapes() {
        let plain: Text<'_> = serde_json::from_str(r#""deis-router""#).unwrap();
        assert!(matches!(plain.0, Cow::Borrowed("deis-router")));
        let escaped: Text<'_> = serde_json::from_str(r#""deis\u002drouter""#).unwrap();
        assert!(matches!(escaped.0, Cow::Owned(ref s) if s == "deis-router"));
    }

    #[test]
    fn strings_nobody_reads_are_still_checked_to_be_strings() {
        assert!(serde_json::from_str::<AnyText>(r#""with \"escapes\"""#).is_ok());
        let err = serde_json::from_str::<AnyText>("5").unwrap_err();
        assert!(err.to_string().contains("expected a string"), "{err}");
        let err = serde_json::from_str::<Text<'_>>("{}").unwrap_err();
        assert!(err.to_string().contains("expected a string"), "{err}");
    }

    #[test]
    fn an_array_is_not_an_object() {
        let err = serde_json::from_str::<Object<Component<'_>>>(r#"["router"]"#).unwrap_err();
        assert!(err.to_string().contains("expected an object"), "{err}");
        assert!(serde_json::from_str::<Object<Component<'_>>>(r#"{"name":"r"}"#).is_ok());
    }

    #[test]
    fn data_must_be_an_object_of_strings_or_null() {
        let check = |data: &str| {
            let text = format!(r#"{{"train":"s","data":{data}}}"#);
            let version: Object<Version<'_>> = serde_json::from_str(&text).unwrap();
            version.0.check_data(|| "version.data".into())
        };
        assert!(check(r#"{"description":"d","fixes":"f","image":"i"}"#).is_ok());
        assert!(check("null").is_ok());
        assert!(check(r#"{"description":null}"#).is_ok());
        assert!(
            check(r#""notes""#)
                .unwrap_err()
                .reason
                .starts_with("`version.data`: invalid type")
        );
        assert!(check("[1]").is_err());
        assert!(check(r#"{"fixes":1}"#).is_err());
    }

    #[test]
    fn date_times_are_rfc3339_or_empty() {
        assert!(check_date_time(Some("2016-08-01T10:00:00Z"), "firstSeen").is_ok());
        assert!(check_date_time(Some(""), "firstSeen").is_ok());
        assert!(check_date_time(None, "firstSeen").is_ok());
        let err = check_date_time(Some("yesterday"), "firstSeen").unwrap_err();
        assert!(
            err.reason.starts_with("`firstSeen` is not an RFC 3339"),
            "{}",
            err.reason
        );
    }
}
