//! How nodes show themselves in the cluster view: the [`NodeReport`] each
//! node writes and admin reads, and the JetStream key-value bucket that holds
//! the reports.
//!
//! Every `cluster.report_seconds` a node puts its report under its own id in
//! the bucket (default [`DEFAULT_NODES_BUCKET`]); the bucket's `max_age` (the
//! node TTL) removes the entry of a node that died, and a node that shuts
//! down deletes its own. Nodes and admin both open the bucket with
//! [`open_nodes_bucket`] (feature `nats`), so whoever comes first creates it
//! with the same settings.
//!
//! # Replication
//! The bucket is the JetStream stream `KV_<bucket>` and is replicated like
//! the topics: `cluster.nodes_bucket_replicas` (default
//! [`DEFAULT_NODES_BUCKET_REPLICAS`], 3) copies, so the cluster view outlives
//! the loss of any one NATS server. A server that is not part of a cluster
//! cannot hold more than one copy; there the bucket gets one. A bucket that
//! exists with fewer copies than configured (made by an older version, or on
//! a cluster that was short of a server at the time) is raised to the
//! configured count when it is opened. Lowering is left to operators: fewer
//! copies is never an upgrade.
//!
//! # Storage
//! The bucket is made in memory: the reports are rewritten every few
//! seconds and worth nothing after a restart, and the topics' streams, on
//! disk, can fill the account's file storage without stopping the reports
//! (on disk, the whole cluster vanished from the view then). Where the
//! account allows no memory storage it is made on disk. A bucket that
//! exists is used as it is; one made on disk by an older version moves to
//! memory once deleted (`nats kv del <bucket>`): the next report makes it
//! again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The bucket's name unless `cluster.nodes_bucket` says otherwise.
pub const DEFAULT_NODES_BUCKET: &str = "sse_nodes";
/// Copies of the bucket unless `cluster.nodes_bucket_replicas` says
/// otherwise; one on a server that is not clustered.
pub const DEFAULT_NODES_BUCKET_REPLICAS: usize = 3;
/// Most copies JetStream keeps of a stream.
pub const MAX_NODES_BUCKET_REPLICAS: usize = 5;
/// Description given to the bucket when it is created.
pub const NODES_BUCKET_DESCRIPTION: &str = "sse-cluster node reports";

/// One node's entry in the bucket, serialised as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeReport {
    /// Node id; also the bucket key.
    pub id: String,
    /// Where the node serves clients.
    pub address: String,
    /// The node's version.
    pub version: String,
    /// When the node started, RFC 3339.
    pub started_at: String,
    /// When this report was written, RFC 3339.
    pub reported_at: String,
    /// Open SSE connections.
    pub connections: u64,
    /// Events written to clients since start.
    pub events_delivered: u64,
    /// Whether the node is shutting down.
    pub draining: bool,
    /// Subscribers per topic.
    #[serde(default)]
    pub topics: BTreeMap<String, u64>,
    /// Seconds between two of this node's reports; 0 from a node that does
    /// not say.
    #[serde(default)]
    pub report_seconds: u64,
    /// Seconds since NATS stored this report, by NATS's clock: how the
    /// cluster view tells a live node from a dead one whatever the node's
    /// clock says. Filled in by admin's view; absent in the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_age_seconds: Option<f64>,
    /// How far the node's clock is ahead of NATS's (negative: behind), from
    /// the time the node wrote in `reported_at` and the time NATS stored the
    /// report. Filled in by admin's view; absent in the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_seconds: Option<f64>,
}

impl NodeReport {
    /// How old this report may grow before its node counts as silent: two
    /// reports missed, and a second for the write. A node killed outright
    /// keeps its entry until the bucket's TTL drops it; this tells it apart
    /// sooner. `None` when the node does not say how often it reports.
    pub fn silent_after(&self) -> Option<std::time::Duration> {
        (self.report_seconds > 0)
            .then(|| std::time::Duration::from_secs(2 * self.report_seconds + 1))
    }
}

/// Whether `name` may name the bucket: `[A-Za-z0-9_-]+`, as JetStream
/// requires of key-value buckets.
pub fn valid_bucket_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `replicas` is a copy count JetStream accepts (1 to 5).
pub fn valid_replicas(replicas: usize) -> bool {
    (1..=MAX_NODES_BUCKET_REPLICAS).contains(&replicas)
}

/// The JetStream stream behind the key-value bucket `bucket`.
pub fn bucket_stream_name(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// Copies the bucket gets: the configured count, or one where the server
/// is not part of a cluster (JetStream refuses more there).
pub fn effective_replicas(configured: usize, clustered: bool) -> usize {
    if clustered { configured.max(1) } else { 1 }
}

#[cfg(feature = "nats")]
pub use nats::{BucketError, NodesBucket, open_nodes_bucket};

#[cfg(feature = "nats")]
mod nats {
    use std::time::Duration;

    use async_nats::jetstream::{self, context::KeyValueErrorKind, kv, stream::StorageType};

    use super::{NODES_BUCKET_DESCRIPTION, bucket_stream_name, effective_replicas};

    /// How the bucket is made.
    #[derive(Debug, Clone)]
    pub struct NodesBucket {
        /// Bucket name (`cluster.nodes_bucket`).
        pub name: String,
        /// Entries expire after this long (`cluster.node_ttl_seconds`).
        pub ttl: Duration,
        /// Copies wanted (`cluster.nodes_bucket_replicas`).
        pub replicas: usize,
    }

    /// Why the bucket could not be opened.
    #[derive(Debug, thiserror::Error)]
    pub enum BucketError {
        /// Neither opening nor creating the bucket worked.
        #[error("cannot open or create the node-report bucket {bucket:?}: {reason}")]
        Unavailable {
            /// The bucket name.
            bucket: String,
            /// What NATS answered.
            reason: String,
        },
    }

    /// Opens the bucket, creating it when missing and raising its copies to
    /// the configured count when it has fewer.
    pub async fn open_nodes_bucket(
        js: &jetstream::Context,
        settings: &NodesBucket,
    ) -> Result<kv::Store, BucketError> {
        let unavailable = |reason: String| BucketError::Unavailable {
            bucket: settings.name.clone(),
            reason,
        };
        let opened = js.get_key_value(settings.name.as_str()).await;
        // Read after the first answer: a client made with
        // `retry_on_initial_connect` has seen no server INFO before it.
        let clustered = js.client().server_info().cluster.is_some();
        let replicas = effective_replicas(settings.replicas, clustered);
        let store = match opened {
            Ok(store) => store,
            Err(err) if err.kind() == KeyValueErrorKind::GetBucket => {
                let config = |storage| kv::Config {
                    bucket: settings.name.clone(),
                    description: NODES_BUCKET_DESCRIPTION.to_owned(),
                    history: 1,
                    max_age: settings.ttl,
                    num_replicas: replicas,
                    storage,
                    ..Default::default()
                };
                let mut storage = StorageType::Memory;
                let mut created = js.create_key_value(config(storage)).await;
                if let Err(error) = &created {
                    tracing::debug!(bucket = %settings.name, %error, "cannot make the node-report bucket in memory");
                    // An account without memory storage: on disk, then.
                    // Only on JetStream's own refusal: a bucket made on
                    // disk stays there, and a NATS that did not answer in
                    // time (down, starting) refused nothing; the next
                    // report tries again.
                    if jetstream_refused(error) {
                        storage = StorageType::File;
                        created = js.create_key_value(config(storage)).await;
                    }
                }
                match created {
                    Ok(store) => {
                        tracing::info!(bucket = %settings.name, replicas, ?storage, "node-report bucket created");
                        return Ok(store);
                    }
                    // Lost a race with a node or another admin: open theirs.
                    Err(create_err) => js
                        .get_key_value(settings.name.as_str())
                        .await
                        .map_err(|_| unavailable(create_err.to_string()))?,
                }
            }
            Err(err) => return Err(unavailable(err.to_string())),
        };
        raise_replicas(js, &settings.name, replicas).await;
        Ok(store)
    }

    /// Whether JetStream itself refused to make the bucket's stream, as
    /// opposed to a request that timed out or found no JetStream.
    fn jetstream_refused(error: &jetstream::context::CreateKeyValueError) -> bool {
        use jetstream::context::{
            CreateKeyValueErrorKind, CreateStreamError, CreateStreamErrorKind,
        };
        error.kind() == CreateKeyValueErrorKind::BucketCreate
            && std::error::Error::source(error)
                .and_then(|source| source.downcast_ref::<CreateStreamError>())
                .is_some_and(|source| matches!(source.kind(), CreateStreamErrorKind::JetStream(_)))
    }

    /// Raises the bucket's stream to `replicas` copies when it has fewer.
    /// A failure is logged, not returned: the bucket still works with the
    /// copies it has, and the next open tries again.
    async fn raise_replicas(js: &jetstream::Context, bucket: &str, replicas: usize) {
        let stream_name = bucket_stream_name(bucket);
        let stream = match js.get_stream(&stream_name).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%bucket, %error, "cannot read the node-report bucket's replicas");
                return;
            }
        };
        let mut config = stream.cached_info().config.clone();
        if config.num_replicas >= replicas {
            return;
        }
        let from = config.num_replicas;
        config.num_replicas = replicas;
        match js.update_stream(&config).await {
            Ok(_) => {
                tracing::info!(%bucket, from, to = replicas, "node-report bucket replicas raised")
            }
            Err(error) => tracing::warn!(
                %bucket, from, to = replicas, %error,
                "cannot raise the node-report bucket's replicas"
            ),
        }
    }

    #[cfg(test)]
    mod tests {
        use async_nats::jetstream::context::{
            CreateKeyValueError, CreateKeyValueErrorKind, CreateStreamError, CreateStreamErrorKind,
        };

        use super::jetstream_refused;

        #[test]
        fn only_jetstreams_own_refusal_puts_the_bucket_on_disk() {
            // What an account without memory storage answers.
            let refusal: async_nats::jetstream::Error = serde_json::from_str(
                r#"{"code":400,"err_code":10047,"description":"insufficient storage resources available"}"#,
            )
            .unwrap();
            let refused = CreateKeyValueError::with_source(
                CreateKeyValueErrorKind::BucketCreate,
                CreateStreamError::new(CreateStreamErrorKind::JetStream(refusal)),
            );
            assert!(jetstream_refused(&refused));
            // A NATS that is starting or away answers nothing in time: the
            // account look-up or the create times out.
            let lookup_timed_out = CreateKeyValueError::with_source(
                CreateKeyValueErrorKind::JetStream,
                std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
            );
            assert!(!jetstream_refused(&lookup_timed_out));
            let create_timed_out = CreateKeyValueError::with_source(
                CreateKeyValueErrorKind::TimedOut,
                CreateStreamError::new(CreateStreamErrorKind::TimedOut),
            );
            assert!(!jetstream_refused(&create_timed_out));
            let no_jetstream = CreateKeyValueError::with_source(
                CreateKeyValueErrorKind::BucketCreate,
                CreateStreamError::new(CreateStreamErrorKind::JetStreamUnavailable),
            );
            assert!(!jetstream_refused(&no_jetstream));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_without_a_cluster() {
        assert_eq!(effective_replicas(3, false), 1);
        assert_eq!(effective_replicas(3, true), 3);
        assert_eq!(effective_replicas(0, true), 1);
        assert!(valid_replicas(1) && valid_replicas(5));
        assert!(!valid_replicas(0) && !valid_replicas(6));
    }

    #[test]
    fn bucket_names_are_what_jetstream_takes() {
        assert!(valid_bucket_name("sse_nodes-2"));
        assert!(!valid_bucket_name(""));
        assert!(!valid_bucket_name("a.b"));
    }

    #[test]
    fn report_reads_what_it_writes_and_ignores_unknown_fields() {
        let json = serde_json::json!({
            "id": "n1", "address": "10.0.0.1:8080", "version": "0.1.0",
            "started_at": "2026-01-01T00:00:00Z", "reported_at": "2026-01-01T00:00:05Z",
            "connections": 3, "events_delivered": 10, "draining": false,
            "topics": {"orders": 2}, "extra": "ignored"
        });
        let report: NodeReport = serde_json::from_value(json).unwrap();
        assert_eq!(report.topics["orders"], 2);
        let back: NodeReport =
            serde_json::from_slice(&serde_json::to_vec(&report).unwrap()).unwrap();
        assert_eq!(back, report);
        assert_eq!(bucket_stream_name(DEFAULT_NODES_BUCKET), "KV_sse_nodes");
    }
}
