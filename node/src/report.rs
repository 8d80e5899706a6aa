//! How a node shows itself in the cluster view.
//!
//! Every `cluster.report_seconds` the node writes its figures to its own key
//! in the JetStream key-value bucket `cluster.nodes_bucket`, whose entries
//! expire after `cluster.node_ttl_seconds`. A node that dies drops out of the
//! view when its entry expires; one that shuts down deletes its entry. The
//! report's shape and the bucket's settings (replicated, see
//! [`sse_protocol::node_report`]) are shared with admin.

use std::time::Duration;

use sse_protocol::node_report::{NodeReport, NodesBucket, open_nodes_bucket};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::node::Node;

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Reports until `stop`, then deletes the node's entry.
pub async fn report_loop(node: Node, address: String, stop: CancellationToken) {
    let cluster = node.config().cluster.clone();
    let started_at = now_rfc3339();
    let bucket = NodesBucket {
        name: cluster.nodes_bucket.clone(),
        ttl: Duration::from_secs(cluster.node_ttl_seconds),
        replicas: cluster.nodes_bucket_replicas,
    };
    let mut store = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(cluster.report_seconds));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if store.is_none() {
            match open_nodes_bucket(node.jetstream(), &bucket).await {
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
            version: env!("CARGO_PKG_VERSION").to_owned(),
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
