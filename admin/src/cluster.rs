//! The cluster view: live nodes, read from the JetStream KV bucket
//! `cluster.nodes_bucket` (default `sse_nodes`).
//!
//! Each node puts a [`NodeReport`] (defined with the bucket's settings in
//! [`sse_protocol::node_report`]) under its id every 5 s and deletes it on
//! shutdown; the bucket's `max_age` (the node TTL) removes the entry of a node
//! that died. An entry that NATS stored longer ago than the TTL counts as
//! gone too, so a bucket made with a longer `max_age` cannot keep a dead
//! node. A report's age is taken by NATS's clock alone (when it stored the
//! entry, against the time it answers with), never by the node's or
//! admin's: a node whose clock is off stays in the view, with its skew
//! shown. Admin reads the bucket on every request and keeps nothing, so every
//! replica shows the same.

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

/// How old `report` is: by NATS's clock when the view says
/// (`report_age_seconds`), else by its `reported_at` at `now`.
pub fn report_age(report: &NodeReport, now: OffsetDateTime) -> Option<time::Duration> {
    match report.report_age_seconds {
        Some(seconds) => Some(time::Duration::seconds_f64(seconds)),
        None => OffsetDateTime::parse(&report.reported_at, &Rfc3339)
            .ok()
            .map(|at| now - at),
    }
}

/// Whether a report is younger than the TTL at `now`.
pub fn is_fresh(report: &NodeReport, now: OffsetDateTime, ttl: std::time::Duration) -> bool {
    report_age(report, now).is_some_and(|age| age <= ttl)
}

/// NATS's time now, from the `ts` of a stream's info (nats-server 2.10 and
/// later); `None` from a server that does not say.
async fn nats_time(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<Option<OffsetDateTime>, Error> {
    let info: serde_json::Value = js
        .request(format!("STREAM.INFO.{stream}"), &serde_json::json!({}))
        .await
        .map_err(|err| Error::NatsUnavailable(err.to_string()))?;
    Ok(info["ts"]
        .as_str()
        .and_then(|ts| OffsetDateTime::parse(ts, &Rfc3339).ok()))
}

/// Seconds from `earlier` to `later`, to the millisecond.
fn seconds_between(earlier: OffsetDateTime, later: OffsetDateTime) -> f64 {
    // Plus zero: a skew of "-0.0" says nothing the reader needs.
    ((later - earlier).as_seconds_f64() * 1000.0).round() / 1000.0 + 0.0
}

/// Every live node, sorted by id.
pub async fn live_nodes(state: &AppState) -> Result<Vec<NodeReport>, Error> {
    let store = nodes_bucket(state).await?;
    // The keys from the stream's subjects (one JetStream API request), not
    // from `Store::keys`, which makes a consumer on every call and leaves
    // it to NATS for 30 s: a dashboard or a scraper polling the view kept
    // hundreds standing on the replicated bucket. A key deleted is still
    // a subject (its tombstone); `get` says it holds nothing.
    let subjects = async {
        store
            .stream
            .info_with_subjects(format!("{}>", store.prefix))
            .await
            .map_err(|err| Error::NatsUnavailable(err.to_string()))?
            .try_collect::<Vec<(String, usize)>>()
            .await
            .map_err(|err| Error::NatsUnavailable(err.to_string()))
    };
    let (subjects, nats_now) =
        tokio::try_join!(subjects, nats_time(state.jetstream()?, &store.stream_name))?;
    // Taken after NATS's answer, whose time is at most a request older.
    let nats_now = nats_now.unwrap_or_else(OffsetDateTime::now_utc);
    let keys = subjects.into_iter().filter_map(|(subject, _)| {
        subject
            .strip_prefix(store.prefix.as_str())
            .map(str::to_owned)
    });
    let ttl = state.config.node_ttl();
    let mut nodes = Vec::new();
    for key in keys {
        let Some(entry) = store
            .entry(key.as_str())
            .await
            .map_err(|err| Error::NatsUnavailable(err.to_string()))?
        else {
            continue;
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let mut report = match serde_json::from_slice::<NodeReport>(&entry.value) {
            Ok(report) => report,
            Err(err) => {
                tracing::warn!(node = %key, %err, "unreadable node report ignored");
                continue;
            }
        };
        report.report_age_seconds = Some(seconds_between(entry.created, nats_now).max(0.0));
        report.clock_skew_seconds = OffsetDateTime::parse(&report.reported_at, &Rfc3339)
            .ok()
            .map(|written| seconds_between(entry.created, written));
        if is_fresh(&report, nats_now, ttl) {
            nodes.push(report);
        } else {
            tracing::debug!(node = %key, "stale node report ignored");
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
    report_age(report, now).is_some_and(|age| age > after)
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

    /// The age NATS's clock gives wins over the node's own time: a node
    /// three minutes behind is live, one three minutes ahead and silent
    /// for 12 s is silent.
    #[test]
    fn a_report_is_as_old_as_nats_says_whatever_the_nodes_clock() {
        let now = OffsetDateTime::parse("2026-01-01T00:03:00Z", &Rfc3339).unwrap();
        let ttl = Duration::from_secs(15);
        let mut behind = report("2026-01-01T00:00:00Z");
        behind.report_seconds = 5;
        behind.report_age_seconds = Some(2.0);
        assert!(is_fresh(&behind, now, ttl));
        assert!(!is_silent(&behind, now));
        let mut ahead = report("2026-01-01T00:06:00Z");
        ahead.report_seconds = 5;
        ahead.report_age_seconds = Some(12.0);
        assert!(is_fresh(&ahead, now, ttl));
        assert!(is_silent(&ahead, now));
        ahead.report_age_seconds = Some(16.0);
        assert!(!is_fresh(&ahead, now, ttl));
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
