//! The cluster view: live nodes, read from the JetStream KV bucket
//! `cluster.nodes_bucket` (default `sse_nodes`).
//!
//! Each node puts a [`NodeReport`] (defined with the bucket's settings in
//! [`sse_protocol::node_report`]) under its id every 5 s and deletes it on
//! shutdown; the bucket's `max_age` (the node TTL) removes the entry of a node
//! that died. An entry whose `reported_at` is older than the TTL counts as
//! gone too, so a node with a stuck clock or a bucket made with a longer
//! `max_age` cannot linger. Admin reads the bucket on every request and keeps
//! nothing, so every replica shows the same.

use std::collections::HashMap;

use async_nats::jetstream::kv;
use axum::{Json, extract::State};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
pub use sse_protocol::NodeReport;
use sse_protocol::node_report::{NodesBucket, open_nodes_bucket};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use utoipa::ToSchema;

use crate::{error::Error, state::AppState};

/// `GET /v1/nodes`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// Live nodes, by id.
    pub nodes: Vec<NodeReport>,
    /// A report older than this many seconds is not live.
    pub ttl_seconds: u64,
}

/// Opens the node-report bucket with the nodes' settings
/// ([`open_nodes_bucket`]); whoever comes first creates it.
pub async fn nodes_bucket(state: &AppState) -> Result<&kv::Store, Error> {
    let js = state.jetstream()?;
    state
        .nodes_bucket
        .get_or_try_init(|| async {
            let settings = NodesBucket {
                name: state.config.cluster.nodes_bucket.clone(),
                ttl: state.config.node_ttl(),
                replicas: state.config.cluster.nodes_bucket_replicas,
            };
            open_nodes_bucket(js, &settings)
                .await
                .map_err(|err| Error::NatsUnavailable(err.to_string()))
        })
        .await
}

/// Whether a report is younger than the TTL at `now`.
pub fn is_fresh(report: &NodeReport, now: OffsetDateTime, ttl: std::time::Duration) -> bool {
    match OffsetDateTime::parse(&report.reported_at, &Rfc3339) {
        Ok(at) => (now - at) <= ttl,
        Err(_) => false,
    }
}

/// Every live node, sorted by id.
pub async fn live_nodes(state: &AppState) -> Result<Vec<NodeReport>, Error> {
    let store = nodes_bucket(state).await?;
    // The keys from the stream's subjects (one JetStream API request), not
    // from `Store::keys`, which makes a consumer on every call and leaves
    // it to NATS for 30 s: a dashboard or a scraper polling the view kept
    // hundreds standing on the replicated bucket. A key deleted is still
    // a subject (its tombstone); `get` says it holds nothing.
    let subjects: Vec<(String, usize)> = store
        .stream
        .info_with_subjects(format!("{}>", store.prefix))
        .await
        .map_err(|err| Error::NatsUnavailable(err.to_string()))?
        .try_collect()
        .await
        .map_err(|err| Error::NatsUnavailable(err.to_string()))?;
    let keys = subjects.into_iter().filter_map(|(subject, _)| {
        subject
            .strip_prefix(store.prefix.as_str())
            .map(str::to_owned)
    });
    let now = OffsetDateTime::now_utc();
    let ttl = state.config.node_ttl();
    let mut nodes = Vec::new();
    for key in keys {
        let Some(value) = store
            .get(key.as_str())
            .await
            .map_err(|err| Error::NatsUnavailable(err.to_string()))?
        else {
            continue;
        };
        match serde_json::from_slice::<NodeReport>(&value) {
            Ok(report) if is_fresh(&report, now, ttl) => nodes.push(report),
            Ok(_) => tracing::debug!(node = %key, "stale node report ignored"),
            Err(err) => tracing::warn!(node = %key, %err, "unreadable node report ignored"),
        }
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(nodes)
}

/// Whether a report is more than two of its node's report intervals old
/// at `now` ([`NodeReport::silent_after`]): the node was killed, or is cut
/// off from NATS. Its entry stays until the TTL; its figures are stale
/// (its clients have reconnected elsewhere), so no sum counts them.
pub fn is_silent(report: &NodeReport, now: OffsetDateTime) -> bool {
    let Some(after) = report.silent_after() else {
        return false;
    };
    match OffsetDateTime::parse(&report.reported_at, &Rfc3339) {
        Ok(at) => now - at > after,
        Err(_) => false,
    }
}

/// The nodes of `nodes` that are not silent at `now` ([`is_silent`]).
pub fn serving(nodes: &[NodeReport], now: OffsetDateTime) -> impl Iterator<Item = &NodeReport> {
    nodes.iter().filter(move |node| !is_silent(node, now))
}

/// Subscribers per topic, summed over the nodes of `nodes` that are not
/// silent.
pub fn subscribers_by_topic(nodes: &[NodeReport]) -> HashMap<String, u64> {
    let mut sums = HashMap::new();
    for node in serving(nodes, OffsetDateTime::now_utc()) {
        for (topic, count) in &node.topics {
            *sums.entry(topic.clone()).or_default() += count;
        }
    }
    sums
}

/// List live nodes.
#[utoipa::path(
    get, path = "/v1/nodes", tag = "cluster",
    responses(
        (status = 200, description = "Live nodes", body = NodeList),
        (status = 401, description = "Missing or wrong token", body = crate::error::ErrorBody),
        (status = 403, description = "The publish token, which opens publishing only", body = crate::error::ErrorBody),
        (status = 503, description = "NATS unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_nodes(State(state): State<AppState>) -> Result<Json<NodeList>, Error> {
    Ok(Json(NodeList {
        nodes: live_nodes(&state).await?,
        ttl_seconds: state.config.cluster.node_ttl_seconds,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn report(reported_at: &str) -> NodeReport {
        serde_json::from_value(serde_json::json!({
            "id": "n1", "address": "10.0.0.1:8080", "version": "0.1.0",
            "started_at": "2026-01-01T00:00:00Z", "reported_at": reported_at,
            "connections": 3, "events_delivered": 10, "draining": false,
            "topics": {"orders": 2, "chat": 1}, "extra": "ignored"
        }))
        .unwrap()
    }

    #[test]
    fn freshness_follows_the_ttl() {
        let now = OffsetDateTime::parse("2026-01-01T00:01:00Z", &Rfc3339).unwrap();
        let ttl = Duration::from_secs(15);
        assert!(is_fresh(&report("2026-01-01T00:00:50Z"), now, ttl));
        assert!(!is_fresh(&report("2026-01-01T00:00:40Z"), now, ttl));
        assert!(!is_fresh(&report("yesterday"), now, ttl));
    }

    #[test]
    fn a_report_two_intervals_late_is_silent_and_left_out_of_sums() {
        let now = OffsetDateTime::now_utc();
        let at = |age: u64| {
            let mut report = report(&(now - Duration::from_secs(age)).format(&Rfc3339).unwrap());
            report.report_seconds = 5;
            report
        };
        assert!(!is_silent(&at(10), now));
        assert!(is_silent(&at(12), now));
        // A node that does not say how often it reports is never silent.
        let mut unsaid = at(12);
        unsaid.report_seconds = 0;
        assert!(!is_silent(&unsaid, now));
        let sums = subscribers_by_topic(&[at(1), at(12)]);
        assert_eq!(sums["orders"], 2);
    }

    #[test]
    fn subscribers_sum_over_nodes() {
        let mut other = report("2026-01-01T00:00:50Z");
        other.topics.insert("orders".into(), 5);
        let sums = subscribers_by_topic(&[report("2026-01-01T00:00:50Z"), other]);
        assert_eq!(sums["orders"], 7);
        assert_eq!(sums["chat"], 2);
    }
}
