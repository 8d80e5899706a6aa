//! Logs and traces.
//!
//! Logs: `log.format` (text or json) and `log.level`, which `RUST_LOG`
//! overrides; the NATS client library's own lines stay at `warn` unless
//! `log.level` names `async_nats`.
//!
//! Traces: on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, exported over OTLP/HTTP as
//! the node does (`sse_protocol::otel`). One span, `sse.publish`, per event
//! published through `POST /v1/topics/{name}/events`, from the request to
//! JetStream's acknowledgement: a child of the caller's `traceparent`, and
//! the parent of each node's `sse.deliver` for that event. Unless
//! `OTEL_TRACES_SAMPLER` says otherwise, a publish whose caller sent no
//! `traceparent` is recorded at [`DEFAULT_ROOT_SAMPLE_RATIO`].

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use sse_protocol::otel::Telemetry;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::LogConfig;

/// Share of publishes without a caller's trace that are recorded, when no
/// sampler is configured.
pub const DEFAULT_ROOT_SAMPLE_RATIO: f64 = 0.01;

/// Whether spans are exported; when not, no span is even created.
pub fn tracing_enabled() -> bool {
    sse_protocol::otel::exporting()
}

/// Installs logging, and trace export when the environment asks for it; a
/// second call keeps the first subscriber.
pub fn init(log: &LogConfig) -> Telemetry {
    sse_protocol::otel::init(
        &log.format,
        &log.level,
        "sse-admin",
        DEFAULT_ROOT_SAMPLE_RATIO,
    )
}

struct HttpHeaders<'a>(&'a HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` a child of the W3C trace context of an HTTP request.
pub fn continue_trace(span: &Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HttpHeaders(headers));
    let _ = span.set_parent(parent);
}

struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// The `traceparent` that makes what follows `span` its child, when the
/// span is recorded.
pub fn traceparent_of(span: &Span) -> Option<String> {
    let mut carrier = Traceparent(None);
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.0
}
