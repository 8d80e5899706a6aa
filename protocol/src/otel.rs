//! OTLP/HTTP trace export, set up the same way by node and admin: on when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set, to an `http://` or `https://` collector (the system's
//! certificate authorities, which `SSL_CERT_FILE` may replace), with the
//! standard `OTEL_*` variables honoured (service name, headers, sampler,
//! batch settings).

use opentelemetry_sdk::{
    Resource,
    trace::{Sampler, SdkTracerProvider},
};

const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// Whether the environment asks for trace export.
pub fn export_wanted() -> bool {
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
pub fn trace_provider(
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
    // The exporter's HTTP client speaks TLS to an `https://` endpoint with
    // rustls, which wants one crypto provider per process: ring, as the
    // services' own TLS. A second call finds it set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.into());
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build());
    if std::env::var("OTEL_TRACES_SAMPLER").is_err() {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            default_root_ratio,
        ))));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

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
