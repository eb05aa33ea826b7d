//! A one-pass reader for the common case of a JSON document: no escapes, the
//! expected types, shallow nesting. It only ever *accepts*: anything it is not
//! sure of (an escape, a control character, a wrong type, a duplicate field,
//! bad syntax, deep nesting) makes it give up, and serde then decides the
//! document as before — and names the path of a mistake. So what it accepts
//! must be exactly what serde would accept, with the same values; the
//! differential test in `checkin` holds it to that.
//!
//! It also keeps the guard's rules ([`super::json`]) by giving up: with no
//! backslash there is no escape to check, and it never nests past the limit.
//!
//! Why by hand: decoding through serde's visitors was the largest part of the
//! worker's own CPU per checkin (~4 µs of ~18 on a two-core machine), mostly
//! matching keys and wrapping `Option`s through generic calls; this walk is a
//! loop over bytes and reads a checkin in half the time (BENCHMARKS.md,
//! "A one-pass reader for checkins").

use super::json::word_at;

/// A position in a document; every method returns `None` to give up.
pub struct Cursor<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
    max_depth: usize,
}

/// The fields a reader knows of one kind of object, in the order writers
/// put them (so that the first comparison mostly matches). A type rather
/// than a slice argument so that each reader's names are constants where
/// they are compared: every comparison is then of a known length, and the
/// search through them unrolled (as a slice passed in, the names were loaded
/// and their lengths dispatched on for every key).
pub trait Fields {
    /// At most eight, each without quote, backslash or control character.
    const NAMES: &'static [&'static str];
}

/// An object nobody reads.
struct Unknown;

impl Fields for Unknown {
    const NAMES: &'static [&'static str] = &[];
}

/// Deeper than this the walk gives up, whatever the limit: only unknown fields
/// nest that far, and serde's own limits are then the ones that count.
const MAX_WALK_DEPTH: usize = 64;

impl<'a> Cursor<'a> {
    pub fn new(text: &'a str, max_depth: usize) -> Self {
        Cursor {
            text,
            at: 0,
            depth: 0,
            max_depth: max_depth.min(MAX_WALK_DEPTH),
        }
    }

    /// After the document's one value: nothing but whitespace may follow.
    pub fn end(mut self) -> Option<()> {
        self.whitespace();
        (self.at == self.text.len()).then_some(())
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next byte after whitespace, not consumed. A byte above the space
    /// is returned at once: a compact document (what Go's encoder writes)
    /// has no whitespace, and the walk peeks ~400 times per checkin, so the
    /// whitespace loop's tests before each were a tenth of its instructions.
    fn peek(&mut self) -> Option<u8> {
        match self.bytes().get(self.at) {
            Some(&byte) if byte > b' ' => Some(byte),
            _ => {
                self.whitespace();
                self.bytes().get(self.at).copied()
            }
        }
    }

    /// JSON's whitespace only (serde's too): not Unicode's.
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// `null` (an absent `Option` to serde), consumed if it is next.
    pub fn null(&mut self) -> bool {
        self.peek() == Some(b'n') && self.literal(b"null").is_some()
    }

    /// A string without escapes or control characters, borrowed.
    pub fn string(&mut self) -> Option<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at + 1;
        let end = self.string_end()?;
        // Both ends are ASCII quotes: char boundaries of valid UTF-8.
        self.text.get(start..end)
    }

    /// `null` or a string: serde's `Option<String>`.
    pub fn optional_string(&mut self) -> Option<Option<&'a str>> {
        match self.peek()? {
            b'n' => self.literal(b"null").map(|()| None),
            _ => self.string().map(Some),
        }
    }

    /// A string nobody reads.
    fn plain(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.string_end().map(drop)
    }

    /// `null` or a string nobody reads (most of a checkin's values): the
    /// same checks as [`Self::optional_string`] without building a `&str`.
    pub fn optional_plain(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string_end().map(drop),
            b'n' => self.literal(b"null"),
            _ => None,
        }
    }

    /// At a string's opening quote: moves past its closing one and returns
    /// where that is, if no escape or control character comes first.
    /// Inlined into its few callers: for the short strings of a checkin the
    /// call and the set-up of a shared scan cost as much as the scan.
    #[inline(always)]
    fn string_end(&mut self) -> Option<usize> {
        let start = self.at + 1;
        let end = start + plain_run(self.bytes().get(start..)?);
        if self.bytes().get(end) != Some(&b'"') {
            return None;
        }
        self.at = end + 1;
        Some(end)
    }

    /// An object whose keys are mostly `F`'s: `field` is handed each key's
    /// place in [`Fields::NAMES`], or `None` for any other key, and must read
    /// the value. Each key is compared in place with `F`'s first and scanned
    /// only if it is none of them: a checkin is ~175 strings, 100 of them
    /// keys, and scanning one costs more than comparing it with an object's
    /// few keys (BENCHMARKS.md, "Keys compared in place"); handing over the
    /// place rather than the key spares the reader matching it a second time.
    /// A known key met twice gives up: serde refuses a duplicate field, even
    /// after a `null`. Other keys are not read, so serde ignores them however
    /// often they come.
    pub fn object_of<F: Fields>(
        &mut self,
        mut field: impl FnMut(&mut Self, Option<usize>) -> Option<()>,
    ) -> Option<()> {
        const { assert!(F::NAMES.len() <= 8) };
        let mut seen = 0u8;
        self.container(b'{', b'}', |cursor| {
            cursor.whitespace();
            let key = F::NAMES.iter().position(|key| cursor.quoted(key));
            match key {
                Some(i) => {
                    let bit = 1 << i;
                    if seen & bit != 0 {
                        return None;
                    }
                    seen |= bit;
                }
                None => cursor.plain()?,
            }
            cursor.eat(b':')?;
            field(cursor, key)
        })
    }

    /// `"key"` next, consumed if so: exactly the JSON string `key`, since a
    /// known key holds no quote, backslash or control character (its quotes
    /// are then the string's ends; the walk's tests check every known key).
    #[inline(always)]
    fn quoted(&mut self, key: &str) -> bool {
        debug_assert_eq!(plain_run(key.as_bytes()), key.len(), "{key:?}");
        let rest = &self.bytes()[self.at..];
        let end = key.len() + 1;
        let found = rest.get(end) == Some(&b'"')
            && rest[0] == b'"'
            && same_short(&rest[1..end], key.as_bytes());
        if found {
            self.at += end + 1;
        }
        found
    }

    /// An array, calling `element` for each element, which must read it.
    pub fn array(&mut self, element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.container(b'[', b']', element)
    }

    /// `open`, the items `item` reads separated by commas, then `close`.
    fn container(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        self.descend()?;
        if self.peek()? != close {
            loop {
                item(self)?;
                if self.peek()? != b',' {
                    break;
                }
                self.at += 1;
            }
        }
        self.eat(close)?;
        self.depth -= 1;
        Some(())
    }

    fn descend(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= self.max_depth).then_some(())
    }

    /// Any value, unread (serde's `IgnoredAny`, for fields nobody decodes).
    pub fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string_end().map(drop),
            b'{' => self.object_of::<Unknown>(|cursor, _| cursor.skip()),
            b'[' => self.array(Self::skip),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes()[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, as serde checks it.
    fn number(&mut self) -> Option<()> {
        if self.bytes().get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.bytes().get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.bytes().get(self.at) == Some(&b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.bytes().get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.bytes().get(self.at) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        // What may follow (not a digit after a leading zero, say) is the
        // container's to check, as for any value.
        Some(())
    }

    fn digits(&mut self) {
        while self.bytes().get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

/// `a == b` for slices of one length, in at most two overlapping words each.
/// Slice equality calls `memcmp`, which for keys of 4–16 bytes (all but `id`
/// of a checkin's) cost more than the comparison (~115 calls per checkin, 7 %
/// of the runtime threads' samples); shorter and longer ones still take it.
/// `inline(always)` here and on `quoted` because neither is inlined otherwise,
/// and the call is the cost (BENCHMARKS.md, "Keys without memcmp").
#[inline(always)]
fn same_short(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    match n {
        4..8 => u32_at(a, 0) == u32_at(b, 0) && u32_at(a, n - 4) == u32_at(b, n - 4),
        8..=16 => word_at(a, 0) == word_at(b, 0) && word_at(a, n - 8) == word_at(b, n - 8),
        _ => a == b,
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// How many bytes from the start are neither `"`, `\` nor a control character
/// (below 0x20): a string's plain run. Sixteen bytes per step with SSE2 (in
/// every x86-64 CPU): most of a checkin's strings end within the first step,
/// and the vector registers hold the constants, where the word-at-a-time
/// loop needed callee-saved registers, pushed and popped around every
/// string read.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn plain_run(bytes: &[u8]) -> usize {
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 16) {
        // SAFETY: `stops` needs SSE2 alone, and this build has it (the cfg).
        #[allow(unsafe_code)]
        let found = unsafe { stops(chunk.try_into().expect("sixteen bytes")) };
        if found != 0 {
            return i + found.trailing_zeros() as usize;
        }
        i += 16;
    }
    // The last few bytes of a document, byte by byte: the word-at-a-time
    // loop here would bring back its constants' registers.
    i + plain_bytes(&bytes[i..])
}

/// A bit for each of the sixteen bytes that ends a plain run.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
fn stops(chunk: [u8; 16]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
        _mm_set1_epi8, _mm_xor_si128,
    };
    // Two words, which the compiler loads as one vector.
    let word = |at: usize| i64::from_le_bytes(chunk[at..at + 8].try_into().expect("8 bytes"));
    let bytes = _mm_set_epi64x(word(8), word(0));
    // As in `plain_run_words`, flipping bit 1 takes `"` to 0x20 and keeps
    // every control byte below it: one unsigned "at most 0x20" finds both.
    let flipped = _mm_xor_si128(bytes, _mm_set1_epi8(0x02));
    let low = _mm_cmpeq_epi8(_mm_min_epu8(flipped, _mm_set1_epi8(0x20)), flipped);
    let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
    _mm_movemask_epi8(_mm_or_si128(low, backslash)) as u32
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn plain_run(bytes: &[u8]) -> usize {
    plain_run_words(bytes)
}

/// [`plain_run`] eight bytes per step, in a word, where there is no SSE2.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
fn plain_run_words(bytes: &[u8]) -> usize {
    use super::json::{ONES, bytes_below, bytes_equal};
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // Flipping bit 1 maps `"` (0x22) to 0x20 and keeps every control
        // byte below 0x20 (and no other byte at or below 0x20): one test for
        // both. Each mask is exact for its lowest flagged lane, so their
        // union is exact for the lowest of all, the only one read.
        let found = bytes_below(word ^ (ONES * 0x02), 0x21) | bytes_equal(word, b'\\');
        if found != 0 {
            return i + found.trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    i + plain_bytes(&bytes[i..])
}

/// [`plain_run`] a byte at a time.
fn plain_bytes(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .unwrap_or(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_slices_are_compared_byte_for_byte() {
        let letters = |n: u8| (0..n).map(|b| b'a' + b).collect::<Vec<u8>>();
        for n in 0..=24 {
            let a = &letters(n)[..];
            // Equal contents at different addresses.
            assert!(same_short(a, &letters(n)), "{n}");
            for at in 0..n {
                let mut b = a.to_vec();
                b[usize::from(at)] ^= 0x20;
                assert!(!same_short(a, &b), "length {n}, differing at {at}");
            }
        }
    }

    fn skips(text: &str) -> bool {
        let mut cursor = Cursor::new(text, 64);
        cursor.skip().and_then(|()| cursor.end()).is_some()
    }

    #[test]
    fn values_are_skipped_as_serde_reads_them() {
        for text in [
            "0",
            "-0",
            "1.5",
            "-12e+3",
            "1E-0",
            "2.50e7",
            "true",
            "false",
            "null",
            r#""""#,
            "[]",
            "{}",
            r#" [1, {"a": [null, "é"]}, false] "#,
            "\"\x7f\"",
        ] {
            assert!(skips(text), "{text}");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok());
        }
    }

    #[test]
    fn anything_unsure_or_wrong_gives_up() {
        for text in [
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "+1",
            "tru",
            "nul",
            "[1,]",
            "{,}",
            r#"{"a"}"#,
            r#"{"a":1,}"#,
            r#""a\"b""#,
            "\"tab\there\"",
            "\"open",
            "[1 2]",
            "1 2",
            "\u{a0}1",
            r#"{1:2}"#,
        ] {
            assert!(!skips(text), "{text}");
        }
    }

    /// Random strings of JSON's pieces (no escapes, so nothing for the walk
    /// to leave to serde): numbers, literals and nesting, read alike.
    #[test]
    fn without_escapes_skip_reads_exactly_what_serde_reads() {
        const PIECES: &[&str] = &[
            "{", "}", "[", "]", ",", ":", "\"k\"", "\"\"", "0", "1", "9", "-", "+", ".", "e", "E",
            "-1.5e+3", "true", "false", "null", "nul", " ", "\n", "x",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut read, mut refused) = (0, 0);
        for _ in 0..50_000 {
            let text: String = (0..rng.usize(1..10))
                .map(|_| PIECES[rng.usize(..PIECES.len())])
                .collect();
            let by_serde = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
            assert_eq!(skips(&text), by_serde, "{text}");
            if by_serde {
                read += 1;
            } else {
                refused += 1;
            }
        }
        assert!(read > 1_000 && refused > 1_000, "{read} {refused}");
    }

    #[test]
    fn nesting_past_the_limit_gives_up() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let at = |text: &str, max: usize| {
            let mut cursor = Cursor::new(text, max);
            cursor.skip().is_some()
        };
        assert!(at(&nested(3), 3));
        assert!(!at(&nested(4), 3));
        assert!(!at(&nested(MAX_WALK_DEPTH + 1), 1_000));
    }

    struct NameType;

    impl Fields for NameType {
        const NAMES: &'static [&'static str] = &["name", "type"];
    }

    fn keys(text: &str) -> Option<Vec<Option<usize>>> {
        let mut cursor = Cursor::new(text, 8);
        let mut keys = Vec::new();
        cursor.object_of::<NameType>(|cursor, key| {
            keys.push(key);
            cursor.skip()
        })?;
        cursor.end().map(|()| keys)
    }

    #[test]
    fn known_keys_are_found_by_place_in_any_order_and_spacing() {
        // A tab before `"name"`: a known key after whitespace is still known.
        let read = keys(r#"{"type":1, "other":3,	"name" :2,"nam":5,"namex":6,"other":7}"#);
        assert_eq!(read, Some(vec![Some(1), None, Some(0), None, None, None]));
        assert_eq!(keys("{ \"name\"\n:1 }"), Some(vec![Some(0)]));
        assert_eq!(keys(r#"{"na\u006de":1}"#), None, "an escape gives up");
    }

    #[test]
    fn a_known_key_twice_gives_up_as_serde_refuses_it() {
        assert_eq!(keys(r#"{"name":1,"type":2,"name":3}"#), None);
        assert_eq!(keys(r#"{"name":null,"name":null}"#), None);
    }

    #[test]
    fn broken_keys_give_up() {
        for broken in [
            r#"{"name"x:1}"#,
            r#"{"name:1}"#,
            r#"{"name"#,
            r#"{"name""#,
            r#"{name:1}"#,
        ] {
            assert_eq!(keys(broken), None, "{broken:?}");
        }
    }

    #[test]
    fn a_plain_run_stops_at_the_first_quote_backslash_or_control_byte() {
        for (text, run) in [
            ("abcdefghijkl\"", 12),
            ("abc\\d", 3),
            ("abcdefghi\u{1}", 9),
            ("é\"", 2),
            ("plain", 5),
            ("a~\u{7f}bcdefgh!\"", 11),
            // Bytes around `"` and the control range, which share one test.
            (" !#$ !#$ !#$\"", 12),
            ("abcdefgh\u{1f}", 8),
            ("abcdefgh\u{2}", 8),
            ("abcdefgh\u{0}", 8),
            ("abcdefg\u{20}\u{21}\u{23}\u{7f}\u{80}\\", 13),
        ] {
            assert_eq!(plain_run(text.as_bytes()), run, "{text:?}");
        }
    }

    /// Every byte value at every place of a step (and past it, and in the
    /// last bytes of a text, which are read one by one): the vector scan,
    /// the word-at-a-time one and a byte at a time agree. Bytes at and above
    /// 0x80 are there to catch a signed comparison.
    #[test]
    fn every_scan_of_a_plain_run_agrees_byte_by_byte() {
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..20_000 {
            let len = rng.usize(0..48);
            let mut text: Vec<u8> = (0..len).map(|_| rng.u8(0x20..=0xff)).collect();
            for _ in 0..rng.usize(0..3) {
                if len > 0 {
                    text[rng.usize(..len)] = rng.u8(..);
                }
            }
            let expected = plain_bytes(&text);
            assert_eq!(plain_run(&text), expected, "{text:?}");
            assert_eq!(plain_run_words(&text), expected, "{text:?}");
        }
        for stop in (0..=0xffu8).filter(|&b| b < 0x20 || b == b'"' || b == b'\\') {
            for at in 0..40 {
                let mut text = vec![b'a'; 40];
                text[at] = stop;
                assert_eq!(plain_run(&text), at, "{stop:#x} at {at}");
                assert_eq!(plain_run_words(&text), at, "{stop:#x} at {at}");
            }
        }
    }
}
