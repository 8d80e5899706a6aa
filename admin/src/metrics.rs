//! Every Prometheus metric of sse-admin, declared in one place.
//!
//! Cluster-wide figures (`sse_topic_*`, `sse_nodes_live`) are computed at
//! scrape time from JetStream and the node-report bucket, so every admin
//! replica reports the same values and a deleted topic disappears from the
//! next scrape. Labels are bounded: the topic name (topics are created by
//! operators), or a fixed set of reasons.

use axum::{extract::State, http::header, response::IntoResponse};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::{overview, state::AppState};

/// Every value `sse_admin_publish_failures_total{reason}` takes.
pub const PUBLISH_FAILURE_REASONS: &[&str] = &["too_large", "unavailable", "refused"];

/// The metrics and their registry.
pub struct Metrics {
    registry: Registry,
    topic_messages: IntGaugeVec,
    topic_bytes: IntGaugeVec,
    topic_subscribers: IntGaugeVec,
    nodes_live: IntGaugeVec,
    nats_connected: IntGauge,
    published: IntCounter,
    publish_failures: IntCounterVec,
    nats_server_switches: IntCounter,
    trace_spans_dropped: IntCounterVec,
    // Scrapes reset and refill the topic gauges; one at a time.
    scrape: tokio::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Declares and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let topic = &["topic"];
        let topic_messages = IntGaugeVec::new(
            Opts::new("sse_topic_messages", "Events held in the topic's stream."),
            topic,
        )
        .expect("valid metric");
        let topic_bytes = IntGaugeVec::new(
            Opts::new("sse_topic_bytes", "Bytes held in the topic's stream."),
            topic,
        )
        .expect("valid metric");
        let topic_subscribers = IntGaugeVec::new(
            Opts::new(
                "sse_cluster_topic_subscribers",
                "Clients subscribed to the topic, summed over live nodes.",
            ),
            topic,
        )
        .expect("valid metric");
        // A vector without labels, so that the series can be absent while
        // the node reports cannot be read: 0 would say every node is gone.
        let nodes_live = IntGaugeVec::new(
            Opts::new("sse_nodes_live", "Nodes with a fresh report."),
            &[],
        )
        .expect("valid metric");
        let nats_connected = IntGauge::new(
            "sse_admin_nats_connected",
            "1 while this admin is connected to NATS.",
        )
        .expect("valid metric");
        let published = IntCounter::new(
            "sse_admin_events_published_total",
            "Events published through this admin and acknowledged by JetStream.",
        )
        .expect("valid metric");
        let publish_failures = IntCounterVec::new(
            Opts::new(
                "sse_admin_publish_failures_total",
                "Publishes through this admin that failed, by reason: too_large, unavailable, refused.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let nats_server_switches = IntCounter::new(
            "sse_admin_nats_server_switches_total",
            "Times this admin left a NATS server that answered it but could not reach JetStream (cut off from its peers) for another server that could.",
        )
        .expect("valid metric");
        let trace_spans_dropped = IntCounterVec::new(
            Opts::new(
                "sse_admin_trace_spans_dropped_total",
                "Trace spans of this admin not exported, by reason: queue_full (more waiting for export than OTEL_BSP_MAX_QUEUE_SIZE), export_failed (in an export that failed).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        // Known reasons exist from start, at 0: a dashboard shows 0, not
        // "No data", and rate() sees the first failure.
        for reason in PUBLISH_FAILURE_REASONS {
            publish_failures.with_label_values(&[*reason]);
        }
        for reason in sse_protocol::otel::SPAN_DROP_REASONS {
            trace_spans_dropped.with_label_values(&[*reason]);
        }
        for m in [
            Box::new(topic_messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(topic_bytes.clone()),
            Box::new(topic_subscribers.clone()),
            Box::new(nodes_live.clone()),
            Box::new(nats_connected.clone()),
            Box::new(published.clone()),
            Box::new(publish_failures.clone()),
            Box::new(nats_server_switches.clone()),
            Box::new(trace_spans_dropped.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        Self {
            registry,
            topic_messages,
            topic_bytes,
            topic_subscribers,
            nodes_live,
            nats_connected,
            published,
            publish_failures,
            nats_server_switches,
            trace_spans_dropped,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// Has the spans this process drops counted here (by the first admin
    /// that asks, where a process runs several).
    pub fn count_dropped_spans(&self) {
        let dropped = self.trace_spans_dropped.clone();
        sse_protocol::otel::count_dropped_spans_with(move |reason, spans| {
            dropped.with_label_values(&[reason]).inc_by(spans);
        });
    }

    /// Counts an acknowledged publish.
    pub fn published(&self) {
        self.published.inc();
    }

    /// Counts a move to another NATS server, away from one that could not
    /// reach JetStream.
    pub fn nats_server_switched(&self) {
        self.nats_server_switches.inc();
    }

    /// Counts a failed publish; `reason` is one of
    /// [`PUBLISH_FAILURE_REASONS`].
    pub fn publish_failed(&self, reason: &'static str) {
        debug_assert!(PUBLISH_FAILURE_REASONS.contains(&reason), "{reason}");
        self.publish_failures.with_label_values(&[reason]).inc();
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    let m = &state.metrics;
    let _one_at_a_time = m.scrape.lock().await;
    let (overview, nodes_read) = overview::snapshot_and_nodes_read(&state).await;
    m.topic_messages.reset();
    m.topic_bytes.reset();
    m.topic_subscribers.reset();
    for t in &overview.topics {
        let label = [t.name.as_str()];
        m.topic_messages
            .with_label_values(&label)
            .set(i64::try_from(t.messages).unwrap_or(i64::MAX));
        m.topic_bytes
            .with_label_values(&label)
            .set(i64::try_from(t.bytes).unwrap_or(i64::MAX));
        m.topic_subscribers
            .with_label_values(&label)
            .set(i64::try_from(t.subscribers).unwrap_or(i64::MAX));
    }
    if nodes_read {
        m.nodes_live
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(overview.nodes_live).unwrap_or(i64::MAX));
    } else {
        m.nodes_live.reset();
    }
    m.nats_connected.set(i64::from(overview.nats_connected));
    if let Some(error) = &overview.error {
        tracing::debug!(%error, "scrape could not read every figure");
    }
    let mut body = Vec::new();
    if let Err(err) = prometheus::TextEncoder::new().encode(&m.registry.gather(), &mut body) {
        tracing::error!(%err, "metrics encoding failed");
    }
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body)
}
