//! A checkin body, read by the worker as it arrives from a publisher:
//! - nothing panics, whatever the bytes (the whole parse, as the pipeline
//!   calls it), and a rejection's reason stays within its bound (it travels
//!   in a dead-letter header);
//! - the one-pass walk, written by hand for speed, reads only what serde
//!   reads, and reads it the same;
//! - the document guard, which passes most documents on a count of their
//!   brackets and backslashes, passes exactly the JSON documents no deeper
//!   than the limit and without a `\u0000` escape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, SeqAccess, Visitor},
};
use wfm_worker::message::{Checkin, MAX_REASON_BYTES, fuzzing};

/// Small enough that the fuzzer reaches it, and below serde_json's own
/// recursion limit (128), so that the reference parse sees past it.
const MAX_DEPTH: usize = 8;

fuzz_target!(|body: &[u8]| {
    let (envelope, limits) = fuzzing::delivered(body, MAX_DEPTH);
    if let Err(rejection) = Checkin::parse(&envelope, &limits) {
        assert!(rejection.reason.len() <= MAX_REASON_BYTES, "{rejection}");
    }

    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let (walked, by_serde) = fuzzing::checkin_both_ways(text, MAX_DEPTH);
    if let Some(walked) = walked {
        assert_eq!(
            Some(walked),
            by_serde.ok(),
            "the walk and serde read it differently"
        );
    }
    if let Ok(shape) = serde_json::from_str::<Shape>(text) {
        let fit = shape.depth <= MAX_DEPTH && !shape.nul;
        assert_eq!(fuzzing::guard_passes(text, MAX_DEPTH), fit, "the guard");
    }
});

/// What the guard decides of a JSON document, read by serde_json: the
/// nesting of objects and arrays (a scalar is 0, `[]` is 1), and whether a
/// string or key holds a NUL (which JSON can hold only as `\u0000`). Every
/// value counts, a duplicate key's too.
struct Shape {
    depth: usize,
    nul: bool,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl ShapeVisitor {
    const SCALAR: Shape = Shape {
        depth: 0,
        nul: false,
    };

    fn text(s: &str) -> Shape {
        Shape {
            depth: 0,
            nul: s.contains('\0'),
        }
    }
}

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Self::SCALAR)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Self::SCALAR)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Self::SCALAR)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Self::SCALAR)
    }

    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Self::SCALAR)
    }

    fn visit_str<E>(self, s: &str) -> Result<Shape, E> {
        Ok(Self::text(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Shape, A::Error> {
        let mut shape = Shape {
            depth: 1,
            nul: false,
        };
        while let Some(item) = items.next_element::<Shape>()? {
            shape.depth = shape.depth.max(1 + item.depth);
            shape.nul |= item.nul;
        }
        Ok(shape)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<Shape, A::Error> {
        let mut shape = Shape {
            depth: 1,
            nul: false,
        };
        while let Some((key, value)) = fields.next_entry::<Shape, Shape>()? {
            shape.depth = shape.depth.max(1 + value.depth);
            shape.nul |= key.nul || value.nul;
        }
        Ok(shape)
    }
}
