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

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::HeaderMap;
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogConfig;

/// Share of publishes without a caller's trace that are recorded, when no
/// sampler is configured.
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

/// Installs logging, and trace export when the environment asks for it; a
/// second call keeps the first subscriber.
pub fn init(log: &LogConfig) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            EnvFilter::try_new(sse_protocol::log_level::with_quiet_nats_client(&log.level))
        })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a collector gets plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt = if log.format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let (provider, setup_error) = if sse_protocol::otel::export_wanted() {
        match sse_protocol::otel::trace_provider("sse-admin", DEFAULT_ROOT_SAMPLE_RATIO) {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        }
    } else {
        (None, None)
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("sse-admin"))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && meta.name().starts_with("sse.")
            }))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    if let Some(error) = setup_error {
        tracing::warn!(%error, "trace export is off: cannot set up the OTLP exporter");
    } else if provider.is_some() {
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
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
