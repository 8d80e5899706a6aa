//! Logs and traces.
//!
//! Logs: a tracing subscriber writing text or JSON lines to stderr;
//! `RUST_LOG`, when set, wins over `log.level`.
//!
//! Traces: on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, exported over OTLP/HTTP,
//! `http://` or `https://` (the system's certificate authorities, which
//! `SSL_CERT_FILE` may replace), with the standard `OTEL_*` variables
//! honoured (service name, headers, sampler, batch settings). Spans:
//!
//! - `sse.deliver`, one per event that arrives with a `traceparent` header,
//!   as a child of the publisher's span: the event reaching this node and
//!   being handed to its subscribers. Only events the publisher chose to
//!   trace pay for it, once per node, never once per client.
//! - `sse.connection` and its child `sse.resume`, per SSE connection. They
//!   are roots, so unless `OTEL_TRACES_SAMPLER` says otherwise only a
//!   fraction ([`DEFAULT_ROOT_SAMPLE_RATIO`]) is recorded.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use sse_protocol::otel::Telemetry;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::LogConfig;

/// Share of root spans (connections) recorded when no sampler is configured.
pub const DEFAULT_ROOT_SAMPLE_RATIO: f64 = 0.01;

/// Whether spans are exported; when not, no span is even created.
#[inline]
pub fn tracing_enabled() -> bool {
    sse_protocol::otel::exporting()
}

/// Installs logging, and trace export when the environment asks for it.
pub fn init(config: &LogConfig, service_name: &'static str) -> Telemetry {
    sse_protocol::otel::init(
        &config.format,
        &config.level,
        service_name,
        DEFAULT_ROOT_SAMPLE_RATIO,
    )
}

struct NatsHeaders<'a>(&'a HeaderMap);

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Makes `span` a child of the W3C trace context carried in NATS headers.
pub fn continue_trace(span: &Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&NatsHeaders(headers));
    let _ = span.set_parent(parent);
}
