//! A publisher's `traceparent` continues into the node's delivery span, and
//! the span is exported over OTLP/HTTP.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use bytes::Bytes as Payload;

use crate::support::*;

type Received = Arc<Mutex<Vec<Bytes>>>;

async fn collect(State(received): State<Received>, body: Bytes) -> &'static str {
    received.lock().unwrap().push(body);
    ""
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A collector that keeps every body posted to `/v1/traces`: over plain
/// HTTP, or over TLS with the certificate in `tls` (`cert.pem`, `key.pem`).
/// Returns its address.
async fn collector(received: Received, tls: Option<&std::path::Path>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(received);
    let Some(dir) = tls else {
        tokio::spawn(async move { axum::serve(listener, app).await });
        return address;
    };
    use rustls::pki_types::pem::PemObject as _;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    address
}

#[tokio::test]
async fn traceparent_on_a_nats_message_continues_into_an_exported_span() {
    let received: Received = Arc::default();
    let collector = collector(received.clone(), None).await;
    let endpoint = format!("http://{collector}");
    a_published_trace_is_exported(received, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await;
}

/// A collector on `https://`, its certificate trusted as the system's
/// authorities are (`SSL_CERT_FILE`): hosted collectors take OTLP over TLS.
#[tokio::test]
async fn spans_are_exported_to_a_collector_over_https() {
    let received: Received = Arc::default();
    let (dir, _) = self_signed_localhost();
    let collector = collector(received.clone(), Some(dir.path())).await;
    let endpoint = format!("https://localhost:{}", collector.port());
    let trusted = dir.path().join("cert.pem");
    a_published_trace_is_exported(
        received,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("SSL_CERT_FILE", trusted.to_str().unwrap()),
        ],
    )
    .await;
}

/// Starts a node with `env`, publishes an event with a `traceparent`, and
/// waits for the collector to receive the node's delivery span in that trace.
async fn a_published_trace_is_exported(received: Received, env: &[(&str, &str)]) {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "traced", None).await;
    // An event of the topic's history, traced: the node's feed reads it to
    // warm its history up, and that is no delivery of it.
    let old_trace = format!("{:032x}", fastrand::u128(1..));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{old_trace}-{:016x}-01", fastrand::u64(1..)).as_str(),
    );
    js.publish_with_headers("sse.traced.x", headers, Payload::from("old"))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut env = env.to_vec();
    env.extend([
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SERVICE_NAME", "sse-node-under-test"),
    ]);
    let node = NodeProc::start(&nats.url(), &env).await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=traced"), None)
        .await
        .unwrap();
    client.ready().await;

    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let parent_span = format!("{:016x}", fastrand::u64(1..));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{trace_id}-{parent_span}-01").as_str(),
    );
    js.publish_with_headers("sse.traced.x", headers, Payload::from("hello"))
        .await
        .unwrap()
        .await
        .unwrap();
    let events = client.take(1, Duration::from_secs(10)).await;
    assert_eq!(events[0].data, "hello");

    let wanted = hex_to_bytes(&trace_id);
    eventually(Duration::from_secs(15), "the span to be exported", || {
        let received = received.clone();
        let wanted = wanted.clone();
        async move {
            let bodies = received.lock().unwrap();
            bodies
                .iter()
                .find(|b| {
                    b.windows(wanted.len()).any(|w| w == wanted.as_slice())
                        && b.windows(11).any(|w| w == b"sse.deliver")
                })
                .map(|b| {
                    assert!(
                        b.windows(19).any(|w| w == b"sse-node-under-test"),
                        "service name in the resource"
                    );
                    // OTLP's protobuf: attribute `seq` (the stream's second
                    // event) and `subscribers` (the one client) as integers
                    // (AnyValue field 3), and the span a consumer's (kind 5).
                    let has = |bytes: &[u8]| b.windows(bytes.len()).any(|w| w == bytes);
                    assert!(has(b"\x0a\x03seq\x12\x02\x18\x02"), "seq as an integer");
                    assert!(
                        has(b"\x0a\x0bsubscribers\x12\x02\x18\x01"),
                        "subscribers as an integer, one"
                    );
                    assert!(has(b"\x30\x05"), "a consumer's span");
                })
        }
    })
    .await;
    // Exported in an earlier batch, if at all: the feed read it first.
    let old_trace = hex_to_bytes(&old_trace);
    assert!(
        !received.lock().unwrap().iter().any(|b| b
            .windows(old_trace.len())
            .any(|w| w == old_trace.as_slice())),
        "a span for an event the feed read to warm its history up"
    );
}

/// A collector that refuses every export (here 503) is no longer passed
/// over in silence: the node logs that trace export failed, with the spans
/// it dropped, and goes on serving.
#[tokio::test]
async fn a_failed_trace_export_is_logged() {
    use axum::http::StatusCode;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let refusing = Router::new().route(
        "/v1/traces",
        post(|| async { StatusCode::SERVICE_UNAVAILABLE }),
    );
    tokio::spawn(async move { axum::serve(listener, refusing).await });

    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    let mut node = a_traced_node(&nats, address, &[]).await;
    publish_traced(&js, 1).await;
    assert_eq!(
        data_of(&node.client.take(1, Duration::from_secs(10)).await),
        ["event 0"]
    );
    let said = logged(&mut node.log, "trace export failed").await;
    assert!(said.contains("503"), "{said}");
    assert!(said.contains("spans_lost="), "{said}");
    let dropped = r#"sse_trace_spans_dropped_total{reason="export_failed"}"#;
    assert!(node.metric(dropped).await >= 1.0, "{dropped}");
}

/// Spans that would take those waiting for export past the queue's size
/// (`OTEL_BSP_MAX_QUEUE_SIZE`) are dropped, and the node says so with how
/// many, where the batch processor dropped them without a word. Here the
/// collector takes connections and never answers, so nothing leaves the
/// queue of two while eight events are delivered.
#[tokio::test]
async fn spans_past_the_export_queue_are_dropped_and_logged() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    let mut node = a_traced_node(&nats, address, &[("OTEL_BSP_MAX_QUEUE_SIZE", "2")]).await;
    publish_traced(&js, 8).await;
    let expected: Vec<String> = (0..8).map(|n| format!("event {n}")).collect();
    assert_eq!(
        data_of(&node.client.take(8, Duration::from_secs(10)).await),
        expected,
        "spans dropped, events not"
    );
    let said = logged(&mut node.log, "too many spans wait for export").await;
    assert!(said.contains("spans_dropped="), "{said}");
    assert!(said.contains("queue=2"), "{said}");
    // Eight delivered, at most two waiting: six at least dropped.
    let dropped = r#"sse_trace_spans_dropped_total{reason="queue_full"}"#;
    assert!(node.metric(dropped).await >= 6.0, "{dropped}");
}

/// A node exporting traces to a collector, and a client of its topic
/// `traced`.
struct TracedNode {
    _process: tokio::process::Child,
    /// The node's log, at `warn`.
    log: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    client: SseClient,
    port: u16,
}

impl TracedNode {
    /// The value of the metric `series` (name and labels as written).
    async fn metric(&self, series: &str) -> f64 {
        let text = http_get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    }
}

/// Starts a node exporting traces to the collector at `collector`.
async fn a_traced_node(
    nats: &Nats,
    collector: std::net::SocketAddr,
    env: &[(&str, &str)],
) -> TracedNode {
    use tokio::io::AsyncBufReadExt;

    create_topic(&nats.jetstream().await, "traced", None).await;
    let port = crate::ports::free_port();
    let mut node = tokio::process::Command::new(binary())
        .env("SSE_NATS__URL", nats.url())
        .env("SSE_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("SSE_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sse-node");
    let log = tokio::io::BufReader::new(node.stderr.take().unwrap()).lines();
    let url = format!("http://127.0.0.1:{port}/v1/events?topic=traced");
    let mut client = eventually(Duration::from_secs(20), "the node to serve", || {
        let url = url.clone();
        async move { SseClient::connect(&url, None).await.ok() }
    })
    .await;
    client.ready().await;
    TracedNode {
        _process: node,
        log,
        client,
        port,
    }
}

/// Publishes `count` events (`event 0`, …) to `traced`, each in a sampled
/// trace of its own.
async fn publish_traced(js: &async_nats::jetstream::Context, count: usize) {
    for n in 0..count {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "traceparent",
            format!(
                "00-{:032x}-{:016x}-01",
                fastrand::u128(1..),
                fastrand::u64(1..)
            )
            .as_str(),
        );
        js.publish_with_headers("sse.traced.x", headers, Payload::from(format!("event {n}")))
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// The first line of `log` that holds `needle`, within 20 s.
async fn logged(
    log: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    needle: &str,
) -> String {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the node's log ended");
    })
    .await
    .unwrap_or_else(|_| panic!("a line saying {needle:?} within 20 s"))
}
