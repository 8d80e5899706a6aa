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

use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::HeaderMap;
use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogConfig;

/// Share of root spans (connections) recorded when no sampler is configured.
pub const DEFAULT_ROOT_SAMPLE_RATIO: f64 = 0.01;

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported; when not, no span is even created.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the trace exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Installs logging, and trace export when the environment asks for it.
pub fn init(config: &LogConfig, service_name: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(sse_protocol::log_level::with_quiet_nats_client(
            &config.level,
        ))
    });
    let fmt_layer = if config.format == "json" {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        fmt::layer()
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed()
    };
    let wanted = sse_protocol::otel::export_wanted();
    let mut provider = None;
    let mut setup_error = None;
    if wanted {
        match sse_protocol::otel::trace_provider(service_name, DEFAULT_ROOT_SAMPLE_RATIO) {
            Ok(p) => provider = Some(p),
            Err(e) => setup_error = Some(e),
        }
    }
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service_name))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && meta.name().starts_with("sse.")
            }))
    });
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(otel_layer)
        .try_init();
    if let Some(error) = setup_error {
        tracing::warn!(%error, "trace export is off: cannot set up the OTLP exporter");
    } else if provider.is_some() {
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
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
