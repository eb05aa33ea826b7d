//! The hostile-input table: bodies and properties a publisher can send, each
//! with what must become of it. Every case is tagged with an `x-case` header
//! (kept on its dead-letter copy) and every storable one carries its case name
//! (a `marker` in checkins, the component name of versions), so the outcome of
//! each can be found again.

use lapin::types::{AMQPValue, FieldTable};

use super::{CLUSTER, Outgoing};

/// What must become of a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Stored once.
    Stored,
    /// Dead-lettered once, as invalid, the reason containing this.
    Invalid(&'static str),
    /// A repeat of an earlier case: neither stored again nor dead-lettered.
    Repeat,
}

#[derive(Clone)]
pub struct Case {
    pub name: String,
    pub version: bool,
    pub message: Outgoing,
    pub expect: Expect,
}

/// Longer than any reason or header may quote.
const BIG: usize = 200_000;

fn big(c: char) -> String {
    std::iter::repeat_n(c, BIG).collect()
}

/// A valid checkin of case `name`, with `extra` JSON members spliced in.
fn checkin(name: &str, extra: &str) -> String {
    format!(
        r#"{{"id":"{CLUSTER}","components":[{{"component":{{"name":"router"}}}}],"marker":"{name}"{extra}}}"#
    )
}

fn version(component: &str, released: &str, extra: &str) -> String {
    format!(
        r#"{{"component":{{"name":"{component}"}},"version":{{"train":"stable","version":"v1","released":"{released}"{extra}}}}}"#
    )
}

/// Every case, in publish order.
pub fn cases(max_message_bytes: usize) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: &str, body: Vec<u8>, expect: Expect| {
        let message = Outgoing::new(body).id(format!("h-{name}"));
        cases.push(Case {
            name: name.to_owned(),
            version: false,
            message,
            expect,
        });
    };
    use Expect::*;
    // Oversized strings in every field, quoted back by the parsers.
    add(
        "big-components",
        format!(r#"{{"id":"{CLUSTER}","components":"{}"}}"#, big('x')).into(),
        Invalid("`components`: invalid type"),
    );
    add(
        "big-id",
        format!(r#"{{"id":"{}","components":[]}}"#, big('y')).into(),
        Invalid("`id` is not a UUID"),
    );
    add(
        "big-id-array",
        format!(r#"{{"id":["{}"],"components":[]}}"#, big('z')).into(),
        Invalid("`id`: invalid type"),
    );
    add(
        "big-name",
        format!(
            r#"{{"id":"{CLUSTER}","components":[{{"component":{{"name":{{"n":"{}"}}}}}}]}}"#,
            big('w')
        )
        .into(),
        Invalid("invalid type"),
    );
    add(
        "big-unknown-key",
        checkin("big-unknown-key", &format!(r#","{}":1"#, big('k'))).into(),
        Stored,
    );
    // Deep nesting, in unknown and in known fields.
    for i in 0..2 {
        add(
            &format!("deep-unknown-{i}"),
            checkin("deep", &format!(r#","x":{}"#, "[".repeat(100_000))).into(),
            Invalid("nested deeper than"),
        );
    }
    add(
        "deep-objects",
        checkin(
            "deep",
            &format!(r#","x":{}1{}"#, r#"{"a":"#.repeat(1000), "}".repeat(1000)),
        )
        .into(),
        Invalid("nested deeper than"),
    );
    add(
        "deep-components",
        format!(
            r#"{{"id":"{CLUSTER}","components":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        )
        .into(),
        Invalid("nested deeper than"),
    );
    add(
        "depth-64",
        checkin(
            "depth-64",
            &format!(r#","x":{}{}"#, "[".repeat(63), "]".repeat(63)),
        )
        .into(),
        Stored,
    );
    // Wrong JSON types everywhere.
    for (name, body) in [
        ("id-number", r#"{"id":5,"components":[]}"#.to_owned()),
        ("id-null", r#"{"id":null,"components":[]}"#.to_owned()),
        (
            "components-object",
            format!(r#"{{"id":"{CLUSTER}","components":{{}}}}"#),
        ),
        (
            "components-number",
            format!(r#"{{"id":"{CLUSTER}","components":7}}"#),
        ),
        (
            "component-string",
            format!(r#"{{"id":"{CLUSTER}","components":["router"]}}"#),
        ),
        (
            "name-number",
            format!(r#"{{"id":"{CLUSTER}","components":[{{"component":{{"name":7}}}}]}}"#),
        ),
        (
            "duplicate-key",
            format!(r#"{{"id":"{CLUSTER}","id":"{CLUSTER}","components":[]}}"#),
        ),
    ] {
        add(name, body.into(), Invalid("`"));
    }
    for (name, body) in [
        ("empty", ""),
        ("space", "  "),
        ("null", "null"),
        ("array", "[]"),
        ("string", "\"s\""),
        ("empty-object", "{}"),
        ("two-documents", "{}{}"),
        ("garbage-after", "{\"id\":1} x"),
    ] {
        add(name, body.into(), Invalid(""));
    }
    // Invalid UTF-8 and escapes.
    add(
        "bad-utf8",
        b"{\"id\":\"\xc3\x28\"}".to_vec(),
        Invalid("not UTF-8"),
    );
    add(
        "overlong-utf8",
        b"{\"id\":\"\xc0\xaf\"}".to_vec(),
        Invalid("not UTF-8"),
    );
    add(
        "surrogate-utf8",
        b"{\"id\":\"\xed\xa0\x80\"}".to_vec(),
        Invalid("not UTF-8"),
    );
    add(
        "nul-escape",
        checkin("nul", r#","x":"a\u0000b""#).into(),
        Invalid("\\u0000"),
    );
    add(
        "lone-high",
        checkin("lone", r#","x":"\uD800""#).into(),
        Invalid("lone surrogate"),
    );
    add(
        "lone-low",
        checkin("lone", r#","x":"\uDFFF x""#).into(),
        Invalid("lone surrogate"),
    );
    add(
        "bad-escape",
        checkin("esc", r#","x":"\x41""#).into(),
        Invalid("not valid JSON"),
    );
    add(
        "short-escape",
        checkin("esc", r#","x":"\u12""#).into(),
        Invalid("not valid JSON"),
    );
    add(
        "pair-escape",
        checkin("pair-escape", r#","x":"\uD83D\uDE00""#).into(),
        Stored,
    );
    add(
        "huge-number",
        checkin("huge-number", r#","x":1e999999"#).into(),
        Stored,
    );
    // Sizes: just under and just over the limit.
    let pad = max_message_bytes - checkin("near-limit", r#","pad":"""#).len();
    add(
        "near-limit",
        checkin("near-limit", &format!(r#","pad":"{}""#, "p".repeat(pad))).into(),
        Stored,
    );
    add(
        "over-limit",
        checkin(
            "over-limit",
            &format!(r#","pad":"{}""#, "p".repeat(pad + 1)),
        )
        .into(),
        Invalid("over the limit"),
    );
    properties(&mut cases);
    versions(&mut cases);
    for case in &mut cases {
        case.message = case
            .message
            .clone()
            .header("x-case", AMQPValue::LongString(case.name.as_str().into()));
    }
    cases
}

/// Timestamps, header types and message ids.
fn properties(cases: &mut Vec<Case>) {
    use Expect::*;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut add = |name: &str, message: Outgoing, expect: Expect| {
        cases.push(Case {
            name: name.to_owned(),
            version: false,
            message,
            expect,
        });
    };
    let valid = |name: &str| Outgoing::new(checkin(name, "")).id(format!("h-{name}"));
    add("ts-max", valid("ts-max").at_secs(u64::MAX), Stored);
    add(
        "ts-millis",
        valid("ts-millis").at_secs(now_ms as u64),
        Stored,
    );
    add("ts-zero", valid("ts-zero").at_secs(0), Stored);
    for (name, value) in [
        ("ms-string", AMQPValue::LongString("soon".into())),
        ("ms-float", AMQPValue::Double(1.5e12)),
        ("ms-table", AMQPValue::FieldTable(FieldTable::default())),
        ("ms-max", AMQPValue::LongLongInt(i64::MAX)),
        ("ms-negative", AMQPValue::LongLongInt(-5)),
        (
            "ms-future",
            AMQPValue::LongLongInt(now_ms + 86_400_000 * 365),
        ),
    ] {
        add(name, valid(name).header("timestamp_in_ms", value), Stored);
    }
    add(
        "count-string",
        valid("count-string").header("x-delivery-count", AMQPValue::LongString("9".into())),
        Stored,
    );
    add(
        "count-huge",
        valid("count-huge").header("x-delivery-count", AMQPValue::LongLongInt(1_000_000)),
        Stored,
    );
    // Message ids: empty (absent), a publisher retry without one, a duplicate, the longest.
    add(
        "id-empty-a",
        Outgoing::new(checkin("id-empty-a", "")).id(""),
        Stored,
    );
    add(
        "id-empty-b",
        Outgoing::new(checkin("id-empty-b", "")).id(""),
        Stored,
    );
    add(
        "id-none",
        Outgoing::new(checkin("id-none", "")).at_secs(1_700_000_000),
        Stored,
    );
    add(
        "id-none-retry",
        Outgoing::new(checkin("id-none", "")).at_secs(1_700_000_000),
        Repeat,
    );
    add("id-dup", valid("id-dup"), Stored);
    add(
        "id-dup-again",
        Outgoing::new(checkin("id-dup", "")).id("h-id-dup"),
        Repeat,
    );
    add(
        "id-255",
        Outgoing::new(checkin("id-255", "")).id("i".repeat(255)),
        Stored,
    );
    // Headers near the frame size on an invalid message: its copy must still fit.
    let mut headers = Outgoing::new("not json").id("h-fat-headers");
    for i in 0..25 {
        headers = headers.header(
            &format!("fat-{i}"),
            AMQPValue::LongString("f".repeat(5_000).into()),
        );
    }
    add("fat-headers", headers, Invalid("JSON object"));
}

fn versions(cases: &mut Vec<Case>) {
    use Expect::*;
    let at = "2016-08-02T17:00:00Z";
    let mut add = |name: &str, body: String, expect: Expect| {
        let message = Outgoing::new(body).id(format!("h-{name}"));
        cases.push(Case {
            name: name.to_owned(),
            version: true,
            message,
            expect,
        });
    };
    add(
        "v-big-name",
        version(&big('n'), at, ""),
        Invalid("`component.name` is 200000 characters"),
    );
    add(
        "v-big-released",
        version("v-big-released", &big('r'), ""),
        Invalid("`version.released`"),
    );
    add("v-train-number", r#"{"component":{"name":"c"},"version":{"train":5,"version":"v1","released":"2016-08-02T17:00:00Z"}}"#.to_owned(), Invalid("`version.train`"));
    add(
        "v-bad-date",
        version("v-bad-date", "2016-13-45T00:00:00Z", ""),
        Invalid("RFC 3339"),
    );
    add(
        "v-deep-data",
        version(
            "v-deep-data",
            at,
            &format!(r#","data":{}"#, "[".repeat(100_000)),
        ),
        Invalid("nested deeper than"),
    );
    add(
        "v-ok",
        version("v-ok", at, r#","data":{"description":"fine"}"#),
        Stored,
    );
}
