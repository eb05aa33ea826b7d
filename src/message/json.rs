//! JSON documents: what serde checks, and what it does not but PostgreSQL and
//! the readers of the tables would trip on.
//!
//! serde_json's recursion limit guards only what is deserialized into typed
//! fields; unknown fields are skipped unchecked, yet stored verbatim. PostgreSQL's
//! `json` input recurses and refuses very deep documents (`54001 stack depth
//! limit exceeded`), refuses lone surrogate escapes, and accepts `\u0000` — which
//! `jsonb`, `->>` and every reader that casts then refuse. So before serde sees a
//! document, the guard bounds nesting everywhere and refuses both escapes
//! (usually on a count of its brackets and backslashes, otherwise in one pass
//! through its strings): what is stored can always be read back as `jsonb`.

use super::Rejection;

/// Checks nesting depth (objects and arrays, unknown fields included) and the
/// `\u` escapes of every string. Syntax errors are left to serde.
pub fn guard(text: &str, max_depth: usize) -> Result<(), Rejection> {
    let bytes = text.as_bytes();
    if plainly_within(bytes, max_depth) {
        return Ok(());
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i + 1)?,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(Rejection::invalid(format!(
                        "JSON is nested deeper than {max_depth} levels (WFM_MAX_JSON_DEPTH)"
                    )));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Whether `bytes` passes the guard on a count alone, without finding its
/// strings: with no backslash anywhere there is no escape to check, and with
/// no more opening brackets than `max_depth` (in strings or not) nothing can
/// nest deeper. A typical checkin (~2 KB, 34 brackets, no escapes) is decided
/// by two vector scans instead of a walk through its hundred-odd strings,
/// which was a fifth of its parse (BENCHMARKS.md, "A guard that counts").
/// Anything else takes the walk, which decides exactly.
fn plainly_within(bytes: &[u8], max_depth: usize) -> bool {
    memchr::memchr(b'\\', bytes).is_none() && openers_at_most(bytes, max_depth)
}

/// Whether `bytes` holds at most `limit` `{` and `[`. Counted per chunk in a
/// byte, which the compiler turns into vector compares and adds; it stops at
/// the first chunk over the limit. [`COUNT_CHUNK`] fits the count in a byte
/// and is a whole number of vectors, so only the document's last chunk has a
/// tail counted byte by byte.
fn openers_at_most(bytes: &[u8], limit: usize) -> bool {
    let mut seen = 0usize;
    for chunk in bytes.chunks(COUNT_CHUNK) {
        let in_chunk = chunk
            .iter()
            .fold(0u8, |n, &b| n + u8::from(b == b'{' || b == b'['));
        seen += usize::from(in_chunk);
        if seen > limit {
            return false;
        }
    }
    true
}

/// At most 255 (a byte's count), and a multiple of 64 (four SSE2 vectors, two
/// AVX2, one AVX-512).
const COUNT_CHUNK: usize = 192;

/// Index of the closing quote of the string starting at `i` (or the end of the
/// input, for serde to report), checking each `\u` escape on the way.
fn string_end(bytes: &[u8], mut i: usize) -> Result<usize, Rejection> {
    loop {
        let Some(at) = quote_or_backslash(bytes, i) else {
            return Ok(bytes.len());
        };
        i = at;
        match bytes.get(i + 1) {
            _ if bytes[i] == b'"' => return Ok(i),
            Some(b'u') => i = unicode_escape(bytes, i)?,
            _ => i += 2,
        }
    }
}

/// How far a string is scanned a word at a time before the vector search takes
/// over: most strings (keys, names, ids, times) end within it, sooner than
/// `memchr` can start.
const WORD_SCAN: usize = 64;

/// Index of the first `"` or `\` at or after `from`. The guard spends its time
/// here: eight bytes per step (a branch per byte was ~7 % of the worker's CPU).
fn quote_or_backslash(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    let words_end = bytes.len().min(from.saturating_add(WORD_SCAN));
    while i + 8 <= words_end {
        let word = word_at(bytes, i);
        let found = bytes_equal(word, b'"') | bytes_equal(word, b'\\');
        if found != 0 {
            return Some(i + found.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    if words_end == bytes.len() {
        let rest = bytes.get(i..)?;
        return rest
            .iter()
            .position(|b| matches!(b, b'"' | b'\\'))
            .map(|at| i + at);
    }
    memchr::memchr2(b'"', b'\\', &bytes[i..]).map(|at| i + at)
}

/// The eight bytes of `bytes` at `at` as one word, in the little-endian lanes
/// [`bytes_equal`] and [`bytes_below`] read.
pub(super) fn word_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

/// The high bit of each byte of `word` equal to `byte` (little-endian lanes).
/// Exact for the lowest such byte, which is all [`quote_or_backslash`] reads:
/// a lane above a match may be flagged by the borrow, never one below it.
pub(super) fn bytes_equal(word: u64, byte: u8) -> u64 {
    bytes_below(word ^ (ONES * u64::from(byte)), 1)
}

/// The high bit of each byte of `word` below `bound` (at most 0x80), exact
/// for the lowest such byte in the same way as [`bytes_equal`].
pub(super) fn bytes_below(word: u64, bound: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(bound)) & !word & HIGHS
}

pub(super) const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Checks the `\uXXXX` escape at `i` (and the low half of a surrogate pair);
/// returns the index after it.
fn unicode_escape(bytes: &[u8], i: usize) -> Result<usize, Rejection> {
    let Some(unit) = hex4(bytes, i + 2) else {
        return Ok(i + 2); // malformed: serde reports it
    };
    match unit {
        0 => Err(Rejection::invalid(
            "JSON contains a \\u0000 escape, which PostgreSQL's jsonb cannot hold",
        )),
        0xD800..=0xDBFF => {
            let low = (bytes.get(i + 6..i + 8) == Some(b"\\u"))
                .then(|| hex4(bytes, i + 8))
                .flatten();
            match low {
                Some(0xDC00..=0xDFFF) => Ok(i + 12),
                _ => Err(lone_surrogate(unit)),
            }
        }
        0xDC00..=0xDFFF => Err(lone_surrogate(unit)),
        _ => Ok(i + 6),
    }
}

fn lone_surrogate(unit: u32) -> Rejection {
    Rejection::invalid(format!(
        "JSON contains a lone surrogate escape \\u{unit:04X}, which PostgreSQL refuses"
    ))
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

/// Parses a whole JSON document into `T`, naming the offending path on failure.
/// The document must be one JSON object: serde would otherwise accept an array
/// for a struct, field by position.
pub fn parse_object<'a, T: serde::Deserialize<'a>>(
    text: &'a str,
    what: &str,
    max_depth: usize,
) -> Result<T, Rejection> {
    if !text.trim_start().starts_with('{') {
        return Err(Rejection::invalid(format!("{what} must be a JSON object")));
    }
    guard(text, max_depth)?;
    // The fast path knows no paths; only a document that fails is parsed again
    // to name where (hostile input pays twice, valid input once).
    let mut de = serde_json::Deserializer::from_str(text);
    match T::deserialize(&mut de).and_then(|parsed| de.end().map(|()| parsed)) {
        Ok(parsed) => Ok(parsed),
        Err(_) => Err(explain::<T>(text)),
    }
}

/// Why `text` does not parse as `T`, with the offending path.
fn explain<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Rejection {
    let mut de = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) => rejection(e.inner(), &e.path().to_string()),
        Ok(_) => match de.end() {
            Err(e) => rejection(&e, "."),
            // Unreachable: the same input failed a moment ago.
            Ok(()) => Rejection::invalid("body is not valid JSON"),
        },
    }
}

/// serde's message quotes the offending value whole; [`Rejection`] cuts it.
fn rejection(error: &serde_json::Error, path: &str) -> Rejection {
    use serde_json::error::Category;
    match error.classify() {
        Category::Data => Rejection::invalid(format!("`{path}`: {error}")),
        Category::Io | Category::Syntax | Category::Eof => {
            Rejection::invalid(format!("body is not valid JSON: {error}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(text: &str) -> String {
        guard(text, 64).unwrap_err().reason
    }

    #[test]
    fn depth_counts_unknown_fields_too() {
        let deep = format!(r#"{{"id":1,"x":{}{}}}"#, "[".repeat(64), "]".repeat(64));
        assert!(reason(&deep).contains("deeper than 64"));
        let ok = format!(r#"{{"x":{}{}}}"#, "[".repeat(63), "]".repeat(63));
        assert!(guard(&ok, 64).is_ok());
    }

    #[test]
    fn a_document_without_escapes_or_more_brackets_than_the_limit_is_passed_on_a_count() {
        let checkin = r#"{"id":"x","components":[{"component":{"name":"deis-router"},"version":{"data":{}}}]}"#;
        assert!(plainly_within(checkin.as_bytes(), 64));
        // Exactly the limit passes on the count; one more takes the walk,
        // which still accepts what does not nest that deep.
        assert!(plainly_within(checkin.as_bytes(), 6));
        assert!(!plainly_within(checkin.as_bytes(), 5));
        assert!(guard(checkin, 5).is_ok());
        assert!(guard(checkin, 4).is_err());
        // Any backslash takes the walk, even one that escapes nothing harmful.
        assert!(!plainly_within(br#"{"x":"a\"b"}"#, 64));
    }

    #[test]
    fn brackets_are_counted_across_chunks_of_every_fill() {
        for len in [0, 1, 63, 64, 191, 192, 193, 255, 256, 384, 385, 1000] {
            let all = "[".repeat(len);
            assert!(openers_at_most(all.as_bytes(), len), "{len}");
            assert_eq!(
                openers_at_most(all.as_bytes(), len.saturating_sub(1)),
                len == 0,
                "{len}"
            );
            let mixed: String = (0..len)
                .map(|i| if i % 3 == 0 { '{' } else { 'a' })
                .collect();
            let count = len.div_ceil(3);
            assert!(openers_at_most(mixed.as_bytes(), count), "{len}");
            assert_eq!(
                openers_at_most(mixed.as_bytes(), count.saturating_sub(1)),
                count == 0
            );
        }
    }

    #[test]
    fn brackets_inside_strings_are_not_nesting() {
        let text = format!(r#"{{"x":"{}"}}"#, "[{".repeat(1000));
        assert!(guard(&text, 64).is_ok());
        assert!(guard(r#"{"x":"a\"[[[[[[[[[["}"#, 4).is_ok());
    }

    #[test]
    fn a_hundred_thousand_levels_are_refused_without_recursion() {
        let text = format!("{{\"x\":{}", "[".repeat(100_000));
        assert!(reason(&text).contains("deeper than"));
    }

    #[test]
    fn nul_escapes_are_refused_naming_jsonb() {
        assert!(reason(r#"{"x":"a\u0000b"}"#).contains("\\u0000"));
        // An escaped backslash followed by "u0000" is text, not an escape.
        assert!(guard(r#"{"x":"a\\u0000b"}"#, 64).is_ok());
    }

    #[test]
    fn escapes_deep_inside_long_strings_are_found() {
        let long = "x".repeat(100);
        assert!(reason(&format!(r#"{{"x":"{long}\u0000"}}"#)).contains("\\u0000"));
        assert!(reason(&format!(r#"{{"x":"{long}\"{long}\uDC00"}}"#)).contains("lone surrogate"));
        // Brackets after a long string still count; inside it they do not.
        let nested = format!(r#"{{"x":"{long}[[[[","y":[[[[]]]]}}"#);
        assert!(guard(&nested, 5).is_ok());
        assert!(guard(&nested, 4).is_err());
    }

    #[test]
    fn the_word_scan_finds_the_first_quote_or_backslash_wherever_it_is() {
        // Every length around the word and vector boundaries, every position,
        // with multi-byte UTF-8 and bytes one off the targets around it.
        let filler = ["a", "é", "#", "]", "!"];
        for len in 0..(WORD_SCAN + 24) {
            for fill in filler {
                let text: Vec<u8> = fill.bytes().cycle().take(len).collect();
                assert_eq!(quote_or_backslash(&text, 0), None, "{len} {fill}");
                for at in 0..len {
                    for target in [b'"', b'\\'] {
                        let mut text = text.clone();
                        text[at] = target;
                        if let Some(later) = text.get_mut(at + 3) {
                            *later = b'"';
                        }
                        for from in [0, at / 2, at] {
                            assert_eq!(
                                quote_or_backslash(&text, from),
                                Some(at),
                                "{len} {at} {from}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The guard byte by byte, the plainest way: what the string-by-string
    /// scan must agree with.
    fn byte_by_byte(text: &str, max_depth: usize) -> Result<(), String> {
        let bytes = text.as_bytes();
        let (mut depth, mut in_string, mut i) = (0usize, false, 0);
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if in_string => {
                    i = match bytes.get(i + 1) {
                        Some(b'u') => unicode_escape(bytes, i).map_err(|r| r.reason)?,
                        _ => i + 2,
                    };
                    continue;
                }
                b'"' => in_string = !in_string,
                b'{' | b'[' if !in_string => {
                    depth += 1;
                    if depth > max_depth {
                        return Err(format!(
                            "JSON is nested deeper than {max_depth} levels (WFM_MAX_JSON_DEPTH)"
                        ));
                    }
                }
                b'}' | b']' if !in_string => depth = depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
        }
        Ok(())
    }

    #[test]
    fn the_guard_agrees_with_a_scan_byte_by_byte() {
        // Pieces that matter to the guard, bytes one bit off a bracket,
        // multi-byte UTF-8, and escapes of every kind, in documents of every
        // length around the word and vector boundaries.
        const PIECES: [&str; 23] = [
            // Longer than the word scan: the rest of the string is memchr's.
            "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
            "\"",
            "\\",
            "{",
            "[",
            "}",
            "]",
            "a",
            "é",
            "Y",
            "_",
            "y",
            "\u{7f}",
            " ",
            ":",
            "\\\"",
            "\\\\",
            "\\u0041",
            "\\u0000",
            "\\uD800",
            "\\uDC00",
            "\\uD83D\\uDE00",
            "\\u12",
        ];
        let mut rng = fastrand::Rng::with_seed(13);
        for case in 0..200_000 {
            let pieces = rng.usize(0..40);
            let text: String = (0..pieces)
                .map(|_| PIECES[rng.usize(..PIECES.len())])
                .collect();
            let max_depth = rng.usize(1..5);
            assert_eq!(
                guard(&text, max_depth).map_err(|r| r.reason),
                byte_by_byte(&text, max_depth),
                "case {case}: {text:?} at depth {max_depth}"
            );
        }
    }

    #[test]
    fn lone_surrogates_are_refused_and_pairs_accepted() {
        assert!(reason(r#"{"x":"\uD800"}"#).contains("lone surrogate escape \\uD800"));
        assert!(reason(r#"{"x":"\uDC00"}"#).contains("lone surrogate escape \\uDC00"));
        assert!(reason(r#"{"x":"\uD800\u0041"}"#).contains("lone surrogate"));
        assert!(guard(r#"{"x":"\uD83D\uDE00 \u00e9"}"#, 64).is_ok());
    }

    #[test]
    fn malformed_escapes_are_left_to_serde() {
        assert!(guard(r#"{"x":"\u12"}"#, 64).is_ok());
        let err =
            parse_object::<serde::de::IgnoredAny>(r#"{"x":"\u12"}"#, "a document", 64).unwrap_err();
        assert!(
            err.reason.starts_with("body is not valid JSON"),
            "{}",
            err.reason
        );
    }
}
