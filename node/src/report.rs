//! How a node shows itself in the cluster view.
//!
//! Every `cluster.report_seconds` the node writes its figures to its own key
//! in the JetStream key-value bucket `cluster.nodes_bucket`, whose entries
//! expire after `cluster.node_ttl_seconds`. A node that dies drops out of the
//! view when its entry expires; one that shuts down deletes its entry. The
//! report's shape and the bucket's settings (replicated, see
//! [`sse_protocol::node_report`]) are shared with admin.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use sse_protocol::nats_switch::{ServerSwitch, Verdict};
use sse_protocol::node_report::{NodeReport, NodesBucket, open_nodes_bucket};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{clock, node::Node};

/// Longest wait for a report's acknowledgement. The bucket is in memory
/// and an answer takes milliseconds; a NATS server cut off from its peers,
/// still taking itself for the bucket's leader, would leave it unanswered
/// for JetStream's whole ack timeout, and the node that much longer on it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// When the next report comes after a failed one that no NATS server
/// could have answered either, for the first [`QUICK_RETRIES`] in a row.
const RETRY_SOONER: Duration = Duration::from_secs(1);
/// Failed reports in a row that are followed [`RETRY_SOONER`].
const QUICK_RETRIES: u32 = 5;

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Reports until `stop`, then deletes the node's entry; reports at once
/// when `drain_started` is cancelled, so that the view shows the drain
/// while it lasts. Each write tells `switch` whether JetStream answered
/// through the node's NATS server.
pub async fn report_loop(
    node: Node,
    address: String,
    mut switch: ServerSwitch,
    drain_started: CancellationToken,
    stop: CancellationToken,
) {
    let cluster = node.config().cluster.clone();
    let started_at = now_rfc3339();
    let bucket = NodesBucket {
        name: cluster.nodes_bucket.clone(),
        ttl: Duration::from_secs(cluster.node_ttl_seconds),
        replicas: cluster.nodes_bucket_replicas,
    };
    let mut store = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(cluster.report_seconds));
    let mut drain_reported = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
            _ = drain_started.cancelled(), if !drain_reported => {
                drain_reported = true;
                ticker.reset();
            }
        }
        if store.is_none() {
            match open_nodes_bucket(node.jetstream(), &bucket).await {
                Ok(s) => store = Some(s),
                Err(error) => {
                    debug!(%error, "cannot open the nodes bucket yet");
                    if node.readiness().nats_connected {
                        let verdict = switch.failed().await;
                        judge(&node, verdict, switch.cut_off());
                    }
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
            report_seconds: cluster.report_seconds,
            // Admin's view fills these in, by NATS's clock.
            report_age_seconds: None,
            clock_skew_seconds: None,
        };
        let body = serde_json::to_vec(&report).unwrap_or_default();
        let sent = SystemTime::now();
        let written =
            match tokio::time::timeout(WRITE_TIMEOUT, kv.put(node.id(), body.into())).await {
                Ok(written) => written.map_err(|error| error.to_string()),
                Err(_) => Err(format!("no acknowledgement in {WRITE_TIMEOUT:?}")),
            };
        match written {
            Ok(revision) => {
                switch.answered();
                node.jetstream_answered();
                measure_clock(&node, kv, revision, sent, SystemTime::now()).await;
            }
            Err(error) => {
                // async-nats says "no stream found" when no server answered
                // for the bucket's stream, which an election or a restart
                // causes far more often than a deleted bucket.
                if error.contains("no stream found") {
                    warn!(%error, "cannot write the node report: no NATS server answered for the nodes bucket (electing its leader, or restarting?); retrying");
                } else {
                    warn!(%error, "cannot write the node report");
                }
                if !node.readiness().nats_connected {
                    continue;
                }
                let verdict = switch.failed().await;
                match judge(&node, verdict, switch.cut_off()) {
                    // JetStream answers, yet the write failed: the bucket
                    // may be gone, which no write would mend. Opened (and
                    // made if missing) at the next report.
                    Verdict::OwnServerAnswers => store = None,
                    // The others may be electing the bucket's leader: the
                    // next report, and look, comes sooner, the first few
                    // times. Past those, the cluster has lost its quorum,
                    // and every node asking every server each second would
                    // only add to its load.
                    Verdict::NoneAnswers if switch.failures() <= QUICK_RETRIES => {
                        ticker.reset_after(RETRY_SOONER);
                    }
                    Verdict::NoneAnswers => {}
                    Verdict::Counted | Verdict::Switched => {}
                }
            }
        }
    }
    if let Some(kv) = store
        && let Err(error) = kv.delete(node.id()).await
    {
        debug!(%error, "cannot delete the node report");
    }
}

/// Compares the node's clock with NATS's by when the bucket stored the
/// report written at `revision` ([`clock`]), and logs when the node starts
/// or stops going by NATS's clock.
async fn measure_clock(
    node: &Node,
    kv: &kv::Store,
    revision: u64,
    sent: SystemTime,
    answered: SystemTime,
) {
    let entry = match tokio::time::timeout(WRITE_TIMEOUT, kv.entry(node.id())).await {
        Ok(Ok(Some(entry))) if entry.revision == revision => entry,
        // Read at the next report; a missed measurement changes nothing.
        _ => return,
    };
    let measurement = clock::Measurement::of_write(sent, answered, entry.created.into());
    node.metrics().clock_offset.set(measurement.offset_seconds);
    let offset = format!("{:+.1}s", measurement.offset_seconds);
    match clock::apply(measurement) {
        clock::Change::Corrected | clock::Change::Moved => warn!(
            nats_minus_node = %offset,
            "this node's clock is off from NATS's by more than {:?}: the node now goes by NATS's clock for tokens, lags and quiet topics; set its clock right (NTP)",
            clock::CORRECTED_FROM
        ),
        clock::Change::Restored => info!(
            nats_minus_node = %offset,
            "this node's clock agrees with NATS's again; the node goes by its own"
        ),
        clock::Change::Unchanged => {}
    }
}

/// Counts a switch of NATS server, and tells the node whether it is cut
/// off from JetStream (`cut_off`: no server it reaches answers, and some it
/// cannot reach); returns `verdict`. JetStream away for the whole cluster
/// (its meta leader elected again after a partition heals, say) is no
/// reason for a node to say it is not ready: every node would say so at
/// once, and the load balancer would answer new streams 503, which ends a
/// browser's `EventSource` for good.
fn judge(node: &Node, verdict: Verdict, cut_off: bool) -> Verdict {
    match verdict {
        Verdict::Switched => {
            node.metrics().nats_server_switches.inc();
            node.jetstream_answered();
        }
        Verdict::OwnServerAnswers => node.jetstream_answered(),
        Verdict::NoneAnswers if cut_off => node.jetstream_unanswered(),
        Verdict::NoneAnswers => node.jetstream_answered(),
        Verdict::Counted => {}
    }
    verdict
}
