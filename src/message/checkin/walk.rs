//! `models.Cluster` read in one pass by [`Cursor`]: the same fields and type
//! checks as the serde shapes ([`super::WireCheckin`], [`crate::message::shape`]),
//! for documents the cursor is sure of. `None` leaves the document to serde.

use std::borrow::Cow;

use super::WireCheckin;
use crate::message::{
    scan::{Cursor, Fields},
    shape::{Components, Text},
};

/// The checkin's fields as serde would read them, or `None` to let serde.
pub(super) fn checkin(text: &str, max_depth: usize) -> Option<WireCheckin<'_>> {
    let mut cursor = Cursor::new(text, max_depth);
    let mut wire = WireCheckin::default();
    cursor.object_of::<Cluster>(|cursor, field| match field {
        Some(0) => text_field(cursor, &mut wire.id),
        Some(1) => text_field(cursor, &mut wire.first_seen),
        Some(2) => text_field(cursor, &mut wire.last_seen),
        Some(3) => {
            wire.components = optional(cursor, components)?;
            Some(())
        }
        _ => cursor.skip(),
    })?;
    cursor.end()?;
    Some(wire)
}

/// Each object's fields, in the order of the models' fields (the order Go's
/// encoder writes them in). Each reader's `match` takes a field by its place
/// in its list: `Some(0)` is the first.
struct Cluster;
struct ComponentVersion;
struct Component;
struct Release;
struct Data;

impl Fields for Cluster {
    const NAMES: &'static [&'static str] = &["id", "firstSeen", "lastSeen", "components"];
}

impl Fields for ComponentVersion {
    const NAMES: &'static [&'static str] = &["component", "version", "updateAvailable"];
}

impl Fields for Component {
    const NAMES: &'static [&'static str] = &["name", "description", "type"];
}

impl Fields for Release {
    const NAMES: &'static [&'static str] = &["train", "version", "released", "data"];
}

impl Fields for Data {
    const NAMES: &'static [&'static str] = &["description", "fixes"];
}

/// A known field: `null`, or the value `read` reads (serde's `Option<T>`).
fn optional<'a, T>(
    cursor: &mut Cursor<'a>,
    read: impl FnOnce(&mut Cursor<'a>) -> Option<T>,
) -> Option<Option<T>> {
    if cursor.null() {
        return Some(None);
    }
    read(cursor).map(Some)
}

fn text_field<'a>(cursor: &mut Cursor<'a>, slot: &mut Option<Text<'a>>) -> Option<()> {
    *slot = cursor.optional_string()?.map(|s| Text(Cow::Borrowed(s)));
    Some(())
}

/// `components`: an array of `models.ComponentVersion` (or `null`s).
fn components(cursor: &mut Cursor<'_>) -> Option<Components> {
    let mut first_unnamed = None;
    let mut index = 0;
    cursor.array(|cursor| {
        let named = if cursor.null() {
            false
        } else {
            component_version(cursor)?
        };
        if !named && first_unnamed.is_none() {
            first_unnamed = Some(index);
        }
        index += 1;
        Some(())
    })?;
    Some(Components { first_unnamed })
}

/// `models.ComponentVersion`; whether its component has a non-empty name.
fn component_version(cursor: &mut Cursor<'_>) -> Option<bool> {
    let mut named = false;
    cursor.object_of::<ComponentVersion>(|cursor, field| match field {
        // component
        Some(0) => {
            named = optional(cursor, component)?.unwrap_or(false);
            Some(())
        }
        // version
        Some(1) => optional(cursor, release).map(drop),
        // updateAvailable
        Some(2) => cursor.optional_plain(),
        _ => cursor.skip(),
    })?;
    Some(named)
}

/// `models.Component`; whether its name is there and not empty.
fn component(cursor: &mut Cursor<'_>) -> Option<bool> {
    let mut named = false;
    cursor.object_of::<Component>(|cursor, field| match field {
        // name
        Some(0) => {
            named = cursor
                .optional_string()?
                .is_some_and(|name| !name.is_empty());
            Some(())
        }
        // description, type
        Some(1 | 2) => cursor.optional_plain(),
        _ => cursor.skip(),
    })?;
    Some(named)
}

/// `models.Version` inside a checkin.
fn release(cursor: &mut Cursor<'_>) -> Option<()> {
    cursor.object_of::<Release>(|cursor, field| match field {
        // train, version, released
        Some(0..=2) => cursor.optional_plain(),
        // data
        Some(3) => optional(cursor, data).map(drop),
        _ => cursor.skip(),
    })
}

/// `models.Data`.
fn data(cursor: &mut Cursor<'_>) -> Option<()> {
    cursor.object_of::<Data>(|cursor, field| match field {
        // description, fixes
        Some(0 | 1) => cursor.optional_plain(),
        _ => cursor.skip(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::checkin::{Read, read_both_ways};

    #[test]
    fn known_keys_are_plain_strings_so_they_can_be_compared_in_place() {
        for key in [
            Cluster::NAMES,
            ComponentVersion::NAMES,
            Component::NAMES,
            Release::NAMES,
            Data::NAMES,
        ]
        .concat()
        {
            let quoted = format!("\"{key}\"");
            let mut cursor = Cursor::new(&quoted, 1);
            assert_eq!(cursor.string(), Some(key), "{key:?}");
        }
    }

    fn walked(text: &str) -> Option<Read> {
        read_both_ways(text, 64).0
    }

    fn by_serde(text: &str) -> Option<Read> {
        read_both_ways(text, 64).1.ok()
    }

    const ID: &str = "00000000-0000-4000-8000-000000000007";

    fn seeds() -> Vec<String> {
        let component = r#"{"component":{"name":"deis-router","description":"The router","type":"Deployment"},"version":{"train":"stable","version":"v2.4.0","released":"2016-08-02T17:00:00Z","data":{"description":"notes","fixes":"fix #1"}},"updateAvailable":"v2.4.1"}"#;
        vec![
            format!(
                r#"{{"id":"{ID}","components":[{component},{component}],"firstSeen":"2016-08-01T10:00:00Z","lastSeen":"2016-08-02T10:00:00Z"}}"#
            ),
            format!(
                "{{\n  \"id\": \"{ID}\",\n\t\"components\": [ {component} ],\r\n  \"extra\": {{\"n\": [1, -2.5e3, true, false, null, \"é\"]}}\n}}\n"
            ),
            format!(
                r#"{{"id":"{ID}","firstSeen":null,"lastSeen":"","components":[null,{{}},{{"component":null,"version":null,"updateAvailable":null}},{{"component":{{"name":null,"description":null,"type":null}},"version":{{"train":null,"version":null,"released":null,"data":null}}}},{{"version":{{"data":{{"description":null,"fixes":null,"image":"i"}}}}}}]}}"#
            ),
            format!(r#"{{"components":[],"id":"{ID}","id2":{{"id":1}},"components2":"x"}}"#),
        ]
    }

    #[test]
    fn typical_checkins_are_read_in_one_pass_as_serde_reads_them() {
        for seed in seeds() {
            assert!(walked(&seed).is_some(), "{seed}");
            assert_eq!(walked(&seed), by_serde(&seed), "{seed}");
        }
    }

    #[test]
    fn what_only_serde_can_decide_is_left_to_it() {
        let left = [
            format!(r#"{{"id":"{ID}","id":"{ID}","components":[]}}"#),
            format!(r#"{{"id":"{ID}","components":[{{"component":{{"name":"a","name":null}}}}]}}"#),
            format!(r#"{{"id":"\u0030{ID}","components":[]}}"#),
            format!(r#"{{"id":"{ID}","components":[],"x":"a\"b"}}"#),
            r#"{"id":5,"components":[]}"#.to_owned(),
            format!(r#"{{"id":"{ID}","components":{{}}}}"#),
            format!(r#"{{"id":"{ID}","components":[["a"]]}}"#),
            format!(r#"{{"id":"{ID}","components":[{{"version":{{"data":"notes"}}}}]}}"#),
            format!(r#"{{"id":"{ID}","components":[]}} trailing"#),
            format!("\u{feff}{{\"id\":\"{ID}\",\"components\":[]}}"),
            format!(
                r#"{{"id":"{ID}","components":[],"x":{}}}"#,
                "[".repeat(70) + &"]".repeat(70)
            ),
        ];
        for text in left {
            assert_eq!(walked(&text), None, "{text}");
        }
    }

    /// Random edits of the seeds (tokens inserted, bytes dropped, spans
    /// repeated): wherever the walk reads a document, serde reads it the
    /// same. Many edits keep the document valid, many do not; both occur.
    #[test]
    fn whatever_the_walk_reads_serde_reads_the_same() {
        const TOKENS: &[&str] = &[
            "null",
            "1",
            "-0.5e3",
            "01",
            "1.",
            "\"x\"",
            "\"\"",
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\n",
            "\t",
            "\"name\"",
            "\"component\"",
            "\"id\"",
            "\"components\"",
            "\"data\"",
            "\"version\"",
            "\"firstSeen\":\"x\",",
            "{\"name\":\"a\"}",
            "true",
            "\\",
            "\\u0000",
            "\u{1}",
            "é",
            "\u{a0}",
            "nul",
            "\"name\":\"\",",
            "\\n",
            "\\u00e9",
            "\\/",
        ];
        let seeds = seeds();
        let mut rng = fastrand::Rng::with_seed(13);
        let (mut read, mut left, mut refused) = (0, 0, 0);
        for _ in 0..20_000 {
            let mut text = seeds[rng.usize(..seeds.len())].clone();
            for _ in 0..rng.usize(1..=3) {
                let at = boundary(&text, rng.usize(..=text.len()));
                match rng.u8(..3) {
                    0 => text.insert_str(at, TOKENS[rng.usize(..TOKENS.len())]),
                    1 => {
                        let end = boundary(&text, (at + rng.usize(1..6)).min(text.len()));
                        text.replace_range(at..end, "");
                    }
                    _ => {
                        let end = boundary(&text, (at + rng.usize(1..40)).min(text.len()));
                        let span = text[at..end].to_owned();
                        let to = boundary(&text, rng.usize(..=text.len()));
                        text.insert_str(to, &span);
                    }
                }
            }
            let serde = by_serde(&text);
            match walked(&text) {
                Some(walk) => {
                    assert_eq!(Some(walk), serde, "{text}");
                    read += 1;
                }
                None if serde.is_some() => left += 1,
                None => refused += 1,
            }
        }
        // Not vacuous: the walk read many, and left some valid ones to serde.
        assert!(
            read > 2_000 && left > 100 && refused > 2_000,
            "{read} {left} {refused}"
        );
    }

    fn boundary(text: &str, mut at: usize) -> usize {
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    }
}
