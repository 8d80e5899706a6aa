//! Logs and OTLP/HTTP trace export, set up the same way by node and admin.
//!
//! Logs: text or JSON lines on stderr; `RUST_LOG`, when set, wins over the
//! configured level, and the NATS client library's own lines stay at
//! `warn` unless the level names `async_nats`.
//!
//! Traces: on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, to an `http://` or
//! `https://` collector (the system's certificate authorities, which
//! `SSL_CERT_FILE` may replace), with the standard `OTEL_*` variables
//! honoured (service name, headers, sampler, batch settings). Only spans
//! named `sse.…` are exported. An export that fails, and spans dropped
//! because too many wait for export, are logged once a minute at most
//! ([`SayingFailures`], [`SayingDrops`]).

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{
        BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
    },
};
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Every reason spans are dropped for, as the services' metrics label
/// them: `queue_full`, past the spans waiting for export that
/// `OTEL_BSP_MAX_QUEUE_SIZE` allows; `export_failed`, in an export that
/// failed.
pub const SPAN_DROP_REASONS: &[&str] = &["queue_full", "export_failed"];

/// Counts spans dropped, by reason: the service's metric.
type DropCounter = Box<dyn Fn(&'static str, u64) + Send + Sync>;

static DROPPED_SPANS: OnceLock<DropCounter> = OnceLock::new();

/// Has spans dropped from now on counted by `count(reason, spans)` as
/// well as logged; `reason` is one of [`SPAN_DROP_REASONS`]. A process
/// counts them in one place: calls after the first are ignored.
pub fn count_dropped_spans_with(count: impl Fn(&'static str, u64) + Send + Sync + 'static) {
    let _ = DROPPED_SPANS.set(Box::new(count));
}

fn spans_dropped(reason: &'static str, spans: u64) {
    if let Some(count) = DROPPED_SPANS.get() {
        count(reason, spans);
    }
}

/// Whether this process exports spans; when not, callers create none.
#[inline]
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
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

/// Installs logging (`format`: `text` or `json`; `level`: the configured
/// level), and trace export when the environment asks for it, as
/// `service_name`, recording root spans at `default_root_ratio` unless
/// `OTEL_TRACES_SAMPLER` says otherwise. A second call (tests) keeps the
/// first subscriber.
pub fn init(
    format: &str,
    level: &str,
    service_name: &'static str,
    default_root_ratio: f64,
) -> Telemetry {
    // A `RUST_LOG` that does not parse is said once logging is up, rather
    // than passed over in silence for the configured level.
    let unread_rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty() && EnvFilter::try_new(v).is_err());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(crate::log_level::with_quiet_nats_client(level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt_layer = if format == "json" {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        // Colours only on a terminal: a log file or a collector gets plain
        // text.
        fmt::layer()
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed()
    };
    let (provider, setup_error) = if export_wanted() {
        match trace_provider(service_name, default_root_ratio) {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        }
    } else {
        (None, None)
    };
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service_name))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && meta.name().starts_with("sse.")
            }))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(otel_layer)
        .try_init();
    if let Some(rust_log) = unread_rust_log {
        tracing::warn!(
            %rust_log,
            configured_level = %level,
            "RUST_LOG is not a tracing filter (such as info or sse_node=debug,info); logging at log.level instead"
        );
    }
    if let Some(error) = setup_error {
        tracing::warn!(%error, "trace export is off: cannot set up the OTLP exporter");
    } else if provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
}

const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

const PROTOCOL_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
];

/// Whether `protocol`, the value of an `OTEL_EXPORTER_OTLP_*PROTOCOL`
/// variable, names the one the exporter speaks (empty: its default).
fn otlp_protocol_spoken(protocol: &str) -> bool {
    let protocol = protocol.trim();
    protocol.is_empty() || protocol.eq_ignore_ascii_case("http/protobuf")
}

/// Whether the environment asks for trace export.
fn export_wanted() -> bool {
    ENDPOINT_VARIABLES
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
}

/// Whether `endpoint` is a URL the OTLP/HTTP exporter can post to.
fn otlp_http_endpoint(endpoint: &str) -> bool {
    let lower = endpoint.trim().to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The exporting tracer provider; root spans are sampled at
/// `default_root_ratio` unless `OTEL_TRACES_SAMPLER` says otherwise, and a
/// span whose parent is sampled always is.
fn trace_provider(
    service_name: &'static str,
    default_root_ratio: f64,
) -> Result<SdkTracerProvider, String> {
    // The exporter takes a `grpc://` endpoint, or one without a scheme, and
    // then posts OTLP/HTTP where a collector waits for gRPC: nothing
    // arrives, and nothing says why.
    for name in ENDPOINT_VARIABLES {
        if let Ok(endpoint) = std::env::var(name)
            && !endpoint.is_empty()
            && !otlp_http_endpoint(&endpoint)
        {
            return Err(format!(
                "{name} is {endpoint:?}: give an http:// or https:// URL of a collector's OTLP/HTTP port (usually 4318); {service_name} does not speak OTLP/gRPC"
            ));
        }
    }
    // Asked for gRPC or JSON, the exporter would post protobuf over HTTP
    // all the same, or give up, without a word.
    for name in PROTOCOL_VARIABLES {
        if let Ok(protocol) = std::env::var(name)
            && !otlp_protocol_spoken(&protocol)
        {
            return Err(format!(
                "{name} is {protocol:?}: {service_name} exports traces over OTLP/HTTP with protobuf only; give http/protobuf or leave it unset"
            ));
        }
    }
    // The exporter's HTTP client speaks TLS to an `https://` endpoint with
    // rustls, which wants one crypto provider per process: ring, as the
    // services' own TLS. A second call finds it set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let waiting = Arc::new(AtomicUsize::new(0));
    let exporter = SayingFailures::new(exporter, waiting.clone());
    let processor = SayingDrops {
        inner: BatchSpanProcessor::builder(exporter).build(),
        waiting,
        capacity: export_queue_capacity(),
        said: Throttled::default(),
    };
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.into());
    let mut builder = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(Resource::builder().with_service_name(service).build());
    if std::env::var("OTEL_TRACES_SAMPLER").is_err() {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            default_root_ratio,
        ))));
    }
    Ok(builder.build())
}

/// How often failed exports, and spans dropped, are logged at most.
const SAID_EVERY: Duration = Duration::from_secs(60);

/// Counts what goes wrong and says when to log it: the first time at once,
/// later ones once per [`SAID_EVERY`] at most, with the counts since.
#[derive(Debug, Default)]
struct Throttled(Mutex<Option<(Instant, u64, u64)>>);

impl Throttled {
    /// Counts one mishap that cost `items`; returns the mishaps and items
    /// to log now, those not logged before included, when it is time.
    fn count(&self, items: u64) -> Option<(u64, u64)> {
        let mut said = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let due = match &mut *said {
            Some((at, times, lost)) if now.duration_since(*at) < SAID_EVERY => {
                *times += 1;
                *lost += items;
                return None;
            }
            Some((_, times, lost)) => (std::mem::take(times) + 1, std::mem::take(lost) + items),
            None => (1, items),
        };
        *said = Some((now, 0, 0));
        Some(due)
    }

    /// Ends a run of mishaps; returns those not logged, if there was a run.
    fn end(&self) -> Option<(u64, u64)> {
        let mut said = self.0.lock().unwrap_or_else(|e| e.into_inner());
        said.take().map(|(_, times, lost)| (times, lost))
    }
}

/// A span exporter that logs its failures: the OTLP exporter's errors (a
/// collector that is down or on another port, one that refuses the spans)
/// are otherwise dropped without a word, and the spans with them. The
/// first failure is logged at once, later ones once a minute at most with
/// how many there were since, and the first export that works after them
/// says so.
#[derive(Debug)]
struct SayingFailures<E> {
    inner: E,
    said: Throttled,
    /// Spans ended and not yet through an export, which [`SayingDrops`]
    /// bounds: an export, whether it works or not, takes its spans off.
    waiting: Arc<AtomicUsize>,
}

impl<E> SayingFailures<E> {
    fn new(inner: E, waiting: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            said: Throttled::default(),
            waiting,
        }
    }

    /// Logs a failed export of `spans` spans, or counts it for the next line.
    fn failed(&self, error: &dyn std::fmt::Display, spans: usize) {
        spans_dropped("export_failed", spans as u64);
        if let Some((exports, lost)) = self.said.count(spans as u64) {
            tracing::warn!(%error, failed_exports = exports, spans_lost = lost, "trace export failed; its spans are dropped");
        }
    }

    /// Says that an export works again after failures.
    fn worked(&self) {
        if let Some((exports, lost)) = self.said.end() {
            tracing::info!(
                failed_exports_not_logged = exports,
                spans_lost_not_logged = lost,
                "trace export works again"
            );
        }
    }
}

impl<E: SpanExporter> SpanExporter for SayingFailures<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.waiting.fetch_sub(spans, Ordering::AcqRel);
        match &result {
            Ok(()) => self.worked(),
            Err(error) => self.failed(error, spans),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The most spans waiting for export, as the batch processor reads it.
fn export_queue_capacity() -> usize {
    std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|size| size.parse().ok())
        .unwrap_or(2_048)
}

/// The batch span processor, with its bound on spans waiting for export
/// kept here: the processor drops what comes past its queue after a
/// single line for the process's life, and counts it nowhere one can read.
/// A span that would take the spans ended and not yet through an export
/// past the queue's size is dropped here instead, counted, and logged as
/// failures are ([`Throttled`]). The processor's queue holds no more than
/// that, so it never drops one itself.
#[derive(Debug)]
struct SayingDrops<P> {
    inner: P,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
    said: Throttled,
}

impl<P> SayingDrops<P> {
    /// Whether a span may wait for export; counts and logs it when not.
    fn takes_one(&self) -> bool {
        if self.waiting.fetch_add(1, Ordering::AcqRel) < self.capacity {
            return true;
        }
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        spans_dropped("queue_full", 1);
        if let Some((dropped, _)) = self.said.count(1) {
            tracing::warn!(
                spans_dropped = dropped,
                queue = self.capacity,
                "too many spans wait for export (OTEL_BSP_MAX_QUEUE_SIZE); spans dropped"
            );
        }
        false
    }
}

impl<P: SpanProcessor> SpanProcessor for SayingDrops<P> {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.takes_one() {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_failures_are_said_once_a_minute_with_how_many() {
        let exporter = SayingFailures::new((), Arc::default());
        let counted = || exporter.said.0.lock().unwrap().map(|(_, e, l)| (e, l));
        exporter.failed(&"refused", 3);
        assert_eq!(counted(), Some((0, 0)), "the first is said at once");
        exporter.failed(&"refused", 2);
        exporter.failed(&"refused", 5);
        assert_eq!(counted(), Some((2, 7)), "later ones within the minute wait");
        exporter.worked();
        assert_eq!(counted(), None, "said to work again, the count with it");
    }

    /// Past the queue's size a span is dropped and counted; each export
    /// makes room for as many spans as it took.
    #[test]
    fn spans_past_the_queue_are_dropped_and_counted() {
        let processor = SayingDrops {
            inner: (),
            waiting: Arc::default(),
            capacity: 2,
            said: Throttled::default(),
        };
        assert!(processor.takes_one() && processor.takes_one());
        assert!(!processor.takes_one(), "the third is past the queue");
        assert!(!processor.takes_one());
        let counted = processor.said.0.lock().unwrap().map(|(_, e, l)| (e, l));
        assert_eq!(
            counted,
            Some((1, 1)),
            "the first drop said, the second counted"
        );
        assert_eq!(processor.waiting.load(Ordering::Relaxed), 2);
        processor.waiting.fetch_sub(2, Ordering::AcqRel);
        assert!(processor.takes_one(), "an export made room");
    }

    #[test]
    fn only_the_protocol_spoken_is_taken() {
        for good in ["", "http/protobuf", " HTTP/Protobuf "] {
            assert!(otlp_protocol_spoken(good), "{good:?}");
        }
        for bad in ["grpc", "http/json", "http"] {
            assert!(!otlp_protocol_spoken(bad), "{bad:?}");
        }
    }

    /// Only http(s) URLs are taken; a gRPC URL or a bare address would be
    /// posted to as OTLP/HTTP and lose every span without a word.
    #[test]
    fn only_http_and_https_endpoints_are_taken() {
        for good in [
            "http://otel:4318",
            "HTTPS://otel.example:4318/",
            " http://a:1",
        ] {
            assert!(otlp_http_endpoint(good), "{good:?}");
        }
        for bad in ["grpc://otel:4317", "otel:4317", "", "ftp://x"] {
            assert!(!otlp_http_endpoint(bad), "{bad:?}");
        }
    }
}
