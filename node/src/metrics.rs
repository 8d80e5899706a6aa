//! Every metric the node exports, with its help text.
//!
//! Labels stay bounded: a topic name (created through admin), a close reason,
//! a replay source, a status code. Never a client, a subject path or an IP.
//!
//! A series with a known label value exists from start, at 0, so a
//! dashboard shows 0 instead of "No data" and `rate()` sees the first
//! increment: the lists below name every such value, and the unit tests of
//! the modules that count them check that they name no other.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every value `sse_connections_closed_total{reason}` takes.
pub const CLOSE_REASONS: &[&str] = &[
    "client",
    "slow",
    "shutdown",
    "lifetime",
    "topic_closed",
    "error",
    "token_expired",
    "stalled",
];
/// Every value `sse_replay_events_total{source}` takes.
pub const REPLAY_SOURCES: &[&str] = &["memory", "jetstream"];
/// Every status `sse_requests_rejected_total{status}` counts.
pub const REJECTED_STATUSES: &[&str] = &["400", "401", "403", "404", "431", "503"];
/// Every value `sse_invalid_events_total{reason}` takes.
pub const INVALID_EVENT_REASONS: &[&str] = &[
    "invalid_utf8",
    "bad_event_name",
    "too_large",
    "bad_headers",
    "bad_subject",
];
/// Every value `sse_auth_failures_total{reason}` takes.
pub const AUTH_FAILURE_REASONS: &[&str] = &[
    "missing",
    "malformed",
    "algorithm",
    "signature",
    "unknown_key",
    "expired",
    "not_yet_valid",
    "audience",
    "issuer",
    "forbidden",
];
/// Every value `sse_streams_served_total{path}` takes: the lean HTTP/1.1
/// path or the router (hyper and axum).
pub const SERVING_PATHS: &[&str] = &["lean", "router"];
/// Every value `sse_limit_rejections_total{limit}` takes.
pub const LIMITS: &[&str] = &[
    "max_topics_per_connection",
    "max_last_event_id_bytes",
    "max_connections",
    "idle_timeout",
    "ip_rate",
    "header_read_timeout",
    "tls_handshake",
    "request_head",
    "accept_failed",
];

/// The node's metrics, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// Open SSE streams.
    pub clients_connected: IntGauge,
    /// Streams opened.
    pub connections_opened: IntCounter,
    /// Streams opened, by the path that serves them.
    pub streams_served: IntCounterVec,
    /// Streams whose socket their feed's writer holds.
    pub streams_parked: IntGauge,
    /// Parked sockets the writer gave back because they did not take a
    /// whole batch (full or failed).
    pub parked_refusals: IntCounter,
    /// Streams closed, by reason.
    pub connections_closed: IntCounterVec,
    /// Events written to clients (live and replayed).
    pub events_delivered: IntCounter,
    /// Events replayed on resume, by source (`memory`, `jetstream`).
    pub replay_events: IntCounterVec,
    /// Time from a resume's start to the end of its replay.
    pub replay_duration: Histogram,
    /// Time from the JetStream timestamp to the write to a client.
    pub delivery_lag: Histogram,
    /// Time from the JetStream timestamp to a feed reading the event.
    pub feed_read_lag: Histogram,
    /// NATS's clock minus the node's, as last measured.
    pub clock_offset: Gauge,
    /// 1 while connected to NATS.
    pub nats_connected: IntGauge,
    /// Reconnections to NATS.
    pub nats_reconnects: IntCounter,
    /// Topic listings that JetStream did not answer.
    pub topic_listing_failures: IntCounter,
    /// Moves away from a NATS server that answered but could not reach JetStream.
    pub nats_server_switches: IntCounter,
    /// Requests refused, by status.
    pub requests_rejected: IntCounterVec,
    /// `reset` events sent.
    pub reset_events: IntCounter,
    /// Heartbeat comments written.
    pub heartbeats: IntCounter,
    /// Events that could not be sent as is, by reason.
    pub invalid_events: IntCounterVec,
    /// Bytes held by each topic's recent-event memory.
    pub history_bytes: IntGaugeVec,
    /// Open streams per topic.
    pub topic_subscribers: IntGaugeVec,
    /// Events read from JetStream by the per-topic feeds.
    pub feed_events: IntCounterVec,
    /// Errors reported by the per-topic JetStream readers.
    pub feed_errors: IntCounterVec,
    /// Feeds whose consumer made no progress while JetStream held newer
    /// events, and was re-created.
    pub feed_stalls: IntCounter,
    /// Events that feeds woken from their doze read with a direct get,
    /// before making their consumer.
    pub feed_direct_reads: IntCounter,
    /// Events dozing feeds took in as their stream republished them.
    pub feed_live_reads: IntCounter,
    /// Feeds whose parked sockets' writer was found stuck and replaced.
    pub parked_writer_stalls: IntCounter,
    /// Client streams closed because they made no progress while behind
    /// their topic's head.
    pub stalled_streams: IntCounter,
    /// Topic feeds running on this node.
    pub feeds_live: IntGauge,
    /// Topic feeds without a consumer while their topic is quiet.
    pub feeds_dozing: IntGauge,
    /// Topic feeds started.
    pub feed_starts: IntCounter,
    /// Topic feeds stopped (last client gone, topic deleted or recreated).
    pub feed_stops: IntCounter,
    /// JetStream consumers this node holds: one per live feed, plus the
    /// resume reads under way.
    pub jetstream_consumers: IntGauge,
    /// Bytes of history held by every live topic together.
    pub history_held_bytes: IntGauge,
    /// The node-wide history budget, `history.max_bytes`.
    pub history_budget_bytes: IntGauge,
    /// Histories evicted because the node was over its budget.
    pub history_evictions: IntCounter,
    /// Stream requests refused by authentication or authorization, by reason.
    pub auth_failures: IntCounterVec,
    /// Requests or connections refused by a configured limit, by limit.
    pub limit_rejections: IntCounterVec,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: IntCounter,
    /// Resumes that waited for a JetStream read slot.
    pub jetstream_read_waits: IntCounter,
    /// Spans not exported, by reason (`sse_protocol::otel::SPAN_DROP_REASONS`).
    pub trace_spans_dropped: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str, known: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            for value in known {
                c.with_label_values(&[*value]);
            }
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let gauge_vec = |name: &str, help: &str, label: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let build_info = IntGaugeVec::new(
            Opts::new("sse_build_info", "Build of this node; always 1."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("unique metric");
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        Self {
            clients_connected: gauge("sse_clients_connected", "Open SSE streams."),
            connections_opened: counter("sse_connections_opened_total", "SSE streams opened."),
            streams_served: counter_vec(
                "sse_streams_served_total",
                "SSE streams opened, by the path that serves them: lean (HTTP/1.1 written straight to the socket) or router (hyper and axum).",
                "path",
                SERVING_PATHS,
            ),
            streams_parked: gauge(
                "sse_streams_parked",
                "SSE streams in step with their topic whose socket the topic feed's writer holds and writes to.",
            ),
            parked_refusals: counter(
                "sse_parked_refusals_total",
                "Parked sockets given back to their stream because they did not take a whole batch (full or failed); the stream catches up by itself.",
            ),
            connections_closed: counter_vec(
                "sse_connections_closed_total",
                "SSE streams closed, by reason.",
                "reason",
                CLOSE_REASONS,
            ),
            events_delivered: counter(
                "sse_events_delivered_total",
                "Events written to clients, live and replayed.",
            ),
            replay_events: counter_vec(
                "sse_replay_events_total",
                "Events replayed to resuming clients, by source.",
                "source",
                REPLAY_SOURCES,
            ),
            replay_duration: histogram(
                "sse_replay_duration_seconds",
                "Time from a resume's start to the end of its replay.",
                latency_buckets.clone(),
            ),
            delivery_lag: histogram(
                "sse_delivery_lag_seconds",
                "Time from the JetStream timestamp to the write to a client: for a client's own writes one batch in eight, timing its oldest event; for a feed's writer every event, up to the end of its pass over the parked sockets.",
                latency_buckets.clone(),
            ),
            feed_read_lag: histogram(
                "sse_feed_read_lag_seconds",
                "Time from the JetStream timestamp to a topic feed reading the event: the part of the delivery lag spent before the node has the event.",
                latency_buckets,
            ),
            clock_offset: {
                let g = Gauge::new(
                    "sse_clock_offset_seconds",
                    "NATS's clock minus this node's, measured at each cluster report to within half a write's round trip: positive when the node's clock is behind. Off by 1 s or more, the node goes by NATS's clock for tokens, lags and quiet topics.",
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique");
                g
            },
            nats_connected: gauge("sse_nats_connected", "1 while connected to NATS."),
            nats_reconnects: counter("sse_nats_reconnects_total", "Reconnections to NATS."),
            topic_listing_failures: counter(
                "sse_topic_listing_failures_total",
                "Listings of the topics (every nats.topic_refresh_seconds) that JetStream did not answer: NATS unreachable, or a server that cannot serve JetStream (cut off from its peers, no quorum).",
            ),
            nats_server_switches: counter(
                "sse_nats_server_switches_total",
                "Times the node left a NATS server that answered it but could not reach JetStream (cut off from its peers) for another server that could.",
            ),
            requests_rejected: counter_vec(
                "sse_requests_rejected_total",
                "Stream requests refused, by HTTP status.",
                "status",
                REJECTED_STATUSES,
            ),
            reset_events: counter("sse_reset_events_total", "reset events sent to clients."),
            heartbeats: counter("sse_heartbeats_total", "Heartbeat comments written."),
            invalid_events: counter_vec(
                "sse_invalid_events_total",
                "Events that could not be sent as is and became invalid events, by reason.",
                "reason",
                INVALID_EVENT_REASONS,
            ),
            history_bytes: gauge_vec(
                "sse_history_bytes",
                "Bytes of recent events held in memory, per topic.",
                "topic",
            ),
            topic_subscribers: gauge_vec(
                "sse_topic_subscribers",
                "Open SSE streams per topic.",
                "topic",
            ),
            feed_events: counter_vec(
                "sse_feed_events_total",
                "Events read from JetStream by the per-topic feeds.",
                "topic",
                &[],
            ),
            feed_errors: counter_vec(
                "sse_feed_errors_total",
                "Errors reported by the per-topic JetStream readers, by kind: consumer (one could not be made), consumer_limit (refused at the stream's limit), unanswered (a look at the stream got no answer), or the NATS client's own kind of read error.",
                "kind",
                // At zero from the start, so that an alert on them has a
                // series before the first error.
                &["consumer_limit", "consumer", "unanswered"],
            ),
            feed_stalls: counter(
                "sse_feed_stalls_total",
                "Topic feeds that made no progress while JetStream held newer events; their consumer was re-created.",
            ),
            feed_direct_reads: counter(
                "sse_feed_direct_reads_total",
                "Events that topic feeds woken from their doze read with a direct get, before making their consumer.",
            ),
            feed_live_reads: counter(
                "sse_feed_live_reads_total",
                "Events that dozing topic feeds took in as their stream republished them, without asking JetStream.",
            ),
            parked_writer_stalls: counter(
                "sse_parked_writer_stalls_total",
                "Writers of parked streams (a topic's writer, or a merged feed's relay) that took in no event they were sent for a heartbeat interval; their streams took their sockets back and a new writer started.",
            ),
            stalled_streams: counter(
                "sse_stalled_streams_total",
                "Client streams closed with a retry hint because they made no progress while behind their topic (delivery.no_progress_seconds).",
            ),
            feeds_live: gauge(
                "sse_feeds_live",
                "Topic feeds (one JetStream reader each) running on this node: topics with clients here, or left within delivery.feed_linger_seconds.",
            ),
            feeds_dozing: gauge(
                "sse_feeds_dozing",
                "Topic feeds that read no event for delivery.feed_doze_seconds: they hold no JetStream consumer and wait for their topic's next publish.",
            ),
            feed_starts: counter(
                "sse_feed_starts_total",
                "Topic feeds started, on the first client of a topic on this node.",
            ),
            feed_stops: counter(
                "sse_feed_stops_total",
                "Topic feeds stopped: no client for delivery.feed_linger_seconds, or the topic deleted, recreated or made private.",
            ),
            jetstream_consumers: gauge(
                "sse_jetstream_consumers",
                "JetStream consumers held by this node: one per live feed plus resume reads under way.",
            ),
            history_held_bytes: gauge(
                "sse_history_held_bytes",
                "Bytes of recent events held in memory by every live topic together.",
            ),
            history_budget_bytes: gauge(
                "sse_history_budget_bytes",
                "The node-wide bound on history memory (history.max_bytes).",
            ),
            history_evictions: counter(
                "sse_history_evictions_total",
                "Topic histories evicted, coldest first, because the node was over history.max_bytes.",
            ),
            auth_failures: counter_vec(
                "sse_auth_failures_total",
                "Stream requests refused by authentication (401) or authorization (403), by reason.",
                "reason",
                AUTH_FAILURE_REASONS,
            ),
            limit_rejections: counter_vec(
                "sse_limit_rejections_total",
                "Requests or connections refused by a configured limit, by limit.",
                "limit",
                LIMITS,
            ),
            tls_handshake_failures: counter(
                "sse_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
            ),
            jetstream_read_waits: counter(
                "sse_jetstream_read_waits_total",
                "Resumes that waited for a JetStream read slot (history.max_concurrent_jetstream_reads).",
            ),
            trace_spans_dropped: counter_vec(
                "sse_trace_spans_dropped_total",
                "Trace spans not exported, by reason: queue_full (more waiting for export than OTEL_BSP_MAX_QUEUE_SIZE), export_failed (in an export that failed).",
                "reason",
                sse_protocol::otel::SPAN_DROP_REASONS,
            ),
            registry,
        }
    }

    /// Counts a connection or request refused or closed by `limit`, one of
    /// [`LIMITS`].
    pub fn limit_hit(&self, limit: &str) {
        debug_assert!(LIMITS.contains(&limit), "unknown limit {limit}");
        self.limit_rejections.with_label_values(&[limit]).inc();
    }

    /// Counts a JetStream consumer as held until the guard is dropped.
    pub fn consumer_held(&self) -> ConsumerHeld {
        self.jetstream_consumers.inc();
        ConsumerHeld(self.jetstream_consumers.clone())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One JetStream consumer counted in `sse_jetstream_consumers` while held.
#[derive(Debug)]
pub struct ConsumerHeld(IntGauge);

impl Drop for ConsumerHeld {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_label_values_exist_from_start() {
        let text = Metrics::new().render();
        for (name, label, values) in [
            ("sse_connections_closed_total", "reason", CLOSE_REASONS),
            ("sse_replay_events_total", "source", REPLAY_SOURCES),
            ("sse_requests_rejected_total", "status", REJECTED_STATUSES),
            ("sse_invalid_events_total", "reason", INVALID_EVENT_REASONS),
            ("sse_auth_failures_total", "reason", AUTH_FAILURE_REASONS),
            ("sse_limit_rejections_total", "limit", LIMITS),
            ("sse_streams_served_total", "path", SERVING_PATHS),
        ] {
            for value in values {
                let series = format!("{name}{{{label}=\"{value}\"}} 0");
                assert!(text.contains(&series), "{series} missing from:\n{text}");
            }
        }
    }
}
