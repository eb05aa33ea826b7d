//! Realistic messages: checkins of ~2 KB with 8 components from 10,000 clusters
//! reused, and version events.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};

pub const CLUSTERS: usize = 10_000;

const COMPONENTS: [&str; 8] = [
    "deis-builder",
    "deis-controller",
    "deis-database",
    "deis-logger",
    "deis-minio",
    "deis-monitor",
    "deis-registry",
    "deis-router",
];

/// The cluster id of the `i`th message: clusters are reused round-robin.
pub fn cluster_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{:012}", i % CLUSTERS)
}

/// A checkin document of about 2 KB.
pub fn checkin(i: usize) -> String {
    let components: Vec<String> = COMPONENTS
        .iter()
        .enumerate()
        .map(|(n, name)| {
            format!(
                r#"{{"component":{{"name":"{name}","description":"The {name} component of Deis Workflow","type":"Deployment"}},"version":{{"train":"stable","version":"v2.{n}.{}","released":"2016-08-02T17:00:00Z","data":{{"description":"release notes","fixes":"fix #{i}"}}}},"updateAvailable":"v2.{n}.9"}}"#,
                i % 7
            )
        })
        .collect();
    format!(
        r#"{{"id":"{}","components":[{}],"firstSeen":"2016-08-01T10:00:00Z","lastSeen":"2016-08-02T10:00:00Z"}}"#,
        cluster_id(i),
        components.join(",")
    )
}

/// A version event; 20,000 distinct triples.
pub fn version(i: usize) -> String {
    format!(
        r#"{{"component":{{"name":"{}"}},"version":{{"train":"stable","version":"v{}.{}.0","released":"2016-08-02T17:00:00Z","data":{{"description":"release {i}","fixes":"many","image":"quay.io/deis/component:v{i}"}}}}}}"#,
        COMPONENTS[i % COMPONENTS.len()],
        i / 100,
        i % 100
    )
}

/// Persistent, with a unique message id and the publish time in milliseconds.
pub fn properties(message_id: &str, now_ms: i64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("timestamp_in_ms".into(), AMQPValue::LongLongInt(now_ms));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(message_id.into())
        .with_timestamp((now_ms / 1000) as u64)
        .with_headers(headers)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    #[test]
    fn checkins_are_realistic_in_size() {
        let len = super::checkin(12345).len();
        assert!((1500..=2500).contains(&len), "{len} bytes");
    }
}
