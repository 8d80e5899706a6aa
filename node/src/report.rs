//! How a node shows itself in the cluster view.
//!
//! Every `cluster.report_seconds` the node writes its figures to its own key
//! in the JetStream key-value bucket `cluster.nodes_bucket`, whose entries
//! expire after `cluster.node_ttl_seconds`. A node that dies drops out of the
//! view when its entry expires; one that shuts down deletes its entry.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::{self, kv};
use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::node::Node;

/// One node's entry in the bucket.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    /// Node id, also the key.
    pub id: String,
    /// Where the node can be reached.
    pub address: String,
    /// Build version.
    pub version: &'static str,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// Time of this report, RFC 3339.
    pub reported_at: String,
    /// Open SSE streams.
    pub connections: u64,
    /// Events written to clients since start.
    pub events_delivered: u64,
    /// Whether the node is shutting down.
    pub draining: bool,
    /// Open streams per topic.
    pub topics: BTreeMap<String, u64>,
}

/// Opens the bucket, creating it when missing.
pub async fn nodes_bucket(
    js: &jetstream::Context,
    bucket: &str,
    ttl: Duration,
) -> Result<kv::Store, async_nats::Error> {
    match js.get_key_value(bucket).await {
        Ok(store) => Ok(store),
        Err(_) => Ok(js
            .create_key_value(kv::Config {
                bucket: bucket.to_owned(),
                history: 1,
                max_age: ttl,
                description: "live sse-node instances".into(),
                ..Default::default()
            })
            .await?),
    }
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Reports until `stop`, then deletes the node's entry.
pub async fn report_loop(node: Node, address: String, stop: CancellationToken) {
    let cluster = node.config().cluster.clone();
    let started_at = now_rfc3339();
    let ttl = Duration::from_secs(cluster.node_ttl_seconds);
    let mut store = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(cluster.report_seconds));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if store.is_none() {
            match nodes_bucket(node.jetstream(), &cluster.nodes_bucket, ttl).await {
                Ok(s) => store = Some(s),
                Err(error) => {
                    debug!(%error, "cannot open the nodes bucket yet");
                    continue;
                }
            }
        }
        let Some(kv) = store.as_ref() else { continue };
        let metrics = node.metrics();
        let topics = node
            .topics()
            .feeds()
            .iter()
            .map(|feed| {
                let n = metrics
                    .topic_subscribers
                    .with_label_values(&[feed.topic.as_str()])
                    .get();
                (feed.topic.to_string(), n.max(0) as u64)
            })
            .collect();
        let report = NodeReport {
            id: node.id().to_owned(),
            address: address.clone(),
            version: env!("CARGO_PKG_VERSION"),
            started_at: started_at.clone(),
            reported_at: now_rfc3339(),
            connections: node.connections() as u64,
            events_delivered: metrics.events_delivered.get(),
            draining: node.is_draining(),
            topics,
        };
        let body = serde_json::to_vec(&report).unwrap_or_default();
        if let Err(error) = kv.put(node.id(), body.into()).await {
            warn!(%error, "cannot write the node report");
        }
    }
    if let Some(kv) = store
        && let Err(error) = kv.delete(node.id()).await
    {
        debug!(%error, "cannot delete the node report");
    }
}
