//! The older Workflow Manager API (Go), as a reader of the tables: its read
//! queries from `pkg/data` (deis/workflow-manager-api), and the shapes its
//! `json.Unmarshal` decodes the documents into (`models.Cluster`,
//! `models.Data`). Go ignores unknown fields and takes `null` for any field,
//! but a value of the wrong type fails the whole document; these serde types
//! do the same.

use serde::Deserialize;
use tokio_postgres::{Client, Row};

/// `GetLatestVersion` (gorm `Where(...).Order("release_timestamp desc").First`).
pub const LATEST_VERSION: &str = r#"SELECT * FROM "versions"
    WHERE ("component_name" = $1) AND ("train" = $2)
    ORDER BY release_timestamp desc LIMIT 1"#;

/// `GetLatestVersions`, with the IN lists as arrays. The Go code scans each
/// row into exactly six destinations: the table must keep its six columns.
pub const LATEST_VERSIONS: &str = "select * from versions as ver
    where ver.component_name = ANY($1) AND ver.train = ANY($2)
    AND release_timestamp = (select MAX(release_timestamp) from versions as ver1
        where ver1.component_name = ver.component_name AND ver1.train = ver.train)";

/// `GetCluster` (gorm `Where(&clustersTable{ClusterID: id}).First`).
pub const CLUSTER: &str = r#"SELECT * FROM "clusters" WHERE ("cluster_id" = $1) LIMIT 1"#;

/// The cluster count (`getTableCount`).
pub const CLUSTER_COUNT: &str = "SELECT COUNT(*) FROM clusters";

/// `FilterClustersByAge`.
pub const CLUSTERS_BY_AGE: &str = "SELECT clusters.*
    FROM clusters, clusters_checkins
    WHERE clusters_checkins.cluster_id = clusters.cluster_id
    GROUP BY clusters_checkins.cluster_id, clusters.cluster_id
    HAVING MIN(clusters_checkins.created_at) > $1
    AND MIN(clusters_checkins.created_at) < $2
    AND MIN(clusters_checkins.created_at) > $3
    AND MAX(clusters_checkins.created_at) < $4";

/// `FilterClusterCheckins`.
pub const CLUSTER_CHECKINS: &str = "SELECT cluster_id,
    MIN(created_at) AS first_seen,
    MAX(created_at) AS last_seen,
    AGE(MAX(created_at), MIN(created_at)) AS cluster_age,
    AGE(MAX(created_at), NOW()) AS last_checkin,
    COUNT(1) AS checkins
    FROM   clusters_checkins
    GROUP  BY cluster_id
    HAVING MIN(created_at) > $1 AND MIN(created_at) < $2
    ORDER  BY first_seen DESC";

/// `FilterPersistentClusters`.
pub const PERSISTENT_CLUSTERS: &str = "SELECT cluster_id,
    MIN(created_at) AS first_seen,
    MAX(created_at) AS last_seen,
    AGE(MAX(created_at), MIN(created_at)) AS cluster_age,
    COUNT(1) AS checkins
    FROM clusters_checkins
    GROUP  BY cluster_id
    HAVING MIN(created_at) > $1 AND MIN(created_at) < $2
    AND COUNT(1) > 1 AND MAX(created_at) > $3
    ORDER  BY first_seen ASC";

/// `models.Cluster`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // read to prove the document decodes
pub struct Cluster {
    pub id: String,
    #[serde(default, rename = "firstSeen")]
    pub first_seen: Option<DateTime>,
    #[serde(default, rename = "lastSeen")]
    pub last_seen: Option<DateTime>,
    #[serde(default)]
    pub components: Option<Vec<Option<ComponentVersion>>>,
}

/// `models.ComponentVersion`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct ComponentVersion {
    #[serde(default)]
    pub component: Option<Component>,
    #[serde(default)]
    pub version: Option<Version>,
    #[serde(default, rename = "updateAvailable")]
    pub update_available: Option<String>,
}

/// `models.Component`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct Component {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// `models.Version`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct Version {
    #[serde(default)]
    pub train: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub released: Option<String>,
    #[serde(default)]
    pub data: Option<Data>,
}

/// `models.Data`: what `versions.data` must decode into.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Data {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub fixes: Option<String>,
}

/// go-swagger's `strfmt.DateTime`: RFC 3339 (or empty).
#[derive(Debug)]
pub struct DateTime(#[allow(dead_code)] pub String);

impl<'de> Deserialize<'de> for DateTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if !text.is_empty() {
            chrono::DateTime::parse_from_rfc3339(&text).map_err(serde::de::Error::custom)?;
        }
        Ok(DateTime(text))
    }
}

/// Decodes a `data` column as Go's `json.Unmarshal` into `T` would: JSON
/// `null` decodes (to nothing), a value of another shape fails.
pub fn decode<T: for<'de> Deserialize<'de>>(row: &Row, column: &str) -> Option<T> {
    let text: String = row.get::<_, serde_json::Value>(column).to_string();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{column} does not decode: {e}: {text}"))
}

/// The legacy six columns of `versions`, in order.
pub async fn version_columns(client: &Client) -> Vec<String> {
    let statement = client.prepare("SELECT * FROM versions").await.unwrap();
    statement
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect()
}

/// The reports answered from the summaries in `clusters` (README, "Reports at
/// scale"): the same results as [`CLUSTERS_BY_AGE`], [`CLUSTER_CHECKINS`] and
/// [`PERSISTENT_CLUSTERS`] over full history, without reading history.
pub const SUMMARY_CLUSTERS_BY_AGE: &str = "SELECT clusters.* FROM clusters
    WHERE first_checkin_at > $1 AND first_checkin_at < $2
    AND first_checkin_at > $3 AND last_checkin_at < $4";

pub const SUMMARY_CLUSTER_CHECKINS: &str = "SELECT cluster_id,
    first_checkin_at AS first_seen,
    last_checkin_at AS last_seen,
    AGE(last_checkin_at, first_checkin_at) AS cluster_age,
    AGE(last_checkin_at, NOW()) AS last_checkin,
    checkin_count AS checkins
    FROM clusters
    WHERE first_checkin_at > $1 AND first_checkin_at < $2
    ORDER BY first_seen DESC";

pub const SUMMARY_PERSISTENT_CLUSTERS: &str = "SELECT cluster_id,
    first_checkin_at AS first_seen,
    last_checkin_at AS last_seen,
    AGE(last_checkin_at, first_checkin_at) AS cluster_age,
    checkin_count AS checkins
    FROM clusters
    WHERE first_checkin_at > $1 AND first_checkin_at < $2
    AND checkin_count > 1 AND last_checkin_at > $3
    ORDER BY first_seen ASC";
