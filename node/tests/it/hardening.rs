//! A node on the internet: publisher values that try to forge frames, every
//! configured limit with its status and metric, and CORS for browsers.

use std::time::Duration;

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::*;

const T: Duration = Duration::from_secs(10);

/// Data as an SSE parser gives it back: every line ending becomes `\n`.
fn normalized(payload: &str) -> String {
    payload.replace("\r\n", "\n").replace('\r', "\n")
}

#[tokio::test]
async fn publisher_values_cannot_add_fields_or_events() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "inject", None).await;
    let node = NodeProc::start(&nats.url(), &[]).await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=inject"), None)
        .await
        .unwrap();
    client.ready().await;
    let retry = client.retry;
    // (event name, payload, whether the event must arrive as is)
    let attempts: Vec<(Option<&str>, &str, bool)> = vec![
        (None, "a\r\nevent: evil\r\n\r\ndata: injected", true),
        (None, "x\n\nid: inject:0:999\n\nretry: 1", true),
        (None, "lone\rcarriage\r", true),
        (None, "\n\n\n", true),
        (None, ": not a comment\ndata: nested", true),
        (None, "nul\u{0}inside", true),
        (Some("name: with colon"), "ok", true),
        (Some("data"), "field-like name", true),
        (
            Some("unicode\u{2028}separator"),
            "not an SSE line ending",
            true,
        ),
        // NATS trims white space around header values, so these are inside.
        (Some("n\u{85}el"), "C1 control", false),
        (Some("tab\there"), "control", false),
        (Some("esc\u{1b}[31m"), "escape", false),
        (Some("nul\u{0}"), "nul in name", false),
        (Some("del\u{7f}"), "delete", false),
    ];
    for (name, payload, _) in &attempts {
        publish_with(&js, "inject", *name, Bytes::from(payload.to_string())).await;
    }
    let events = client.take(attempts.len(), T).await;
    for (i, ((name, payload, as_is), event)) in attempts.iter().zip(&events).enumerate() {
        let seq = i + 1;
        assert!(
            event.id.starts_with("inject:") && event.id.ends_with(&format!(":{seq}")),
            "event {seq}: id {:?}",
            event.id
        );
        if *as_is {
            assert_eq!(event.event, name.unwrap_or("message"), "event {seq}");
            assert_eq!(event.data, normalized(payload), "event {seq}");
        } else {
            assert_eq!(event.event, "invalid", "event {seq}: {event:?}");
            let body: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(body["reason"], "bad_event_name");
            assert_eq!(body["seq"], seq);
        }
    }
    // Exactly one event per publish, and no field was forged on the way.
    publish(&js, "inject", "last").await;
    let last = client.take(1, T).await;
    assert_eq!(data_of(&last), ["last"]);
    assert!(last[0].id.ends_with(&format!(":{}", attempts.len() + 1)));
    assert_eq!(client.retry, retry, "retry: was forged");
}

#[tokio::test]
async fn each_request_limit_has_a_status_and_a_metric() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "lim", None).await;
    let node = NodeProc::start(
        &nats.url(),
        &[
            ("SSE_HTTP__MAX_CONNECTIONS", "2"),
            ("SSE_HTTP__MAX_TOPICS_PER_CONNECTION", "2"),
            ("SSE_HTTP__MAX_LAST_EVENT_ID_BYTES", "64"),
            ("SSE_HTTP__MAX_HEADER_BYTES", "8192"),
            ("SSE_HTTP__MAX_HEADERS", "20"),
        ],
    )
    .await;
    let limit = |name: &str| format!("sse_limit_rejections_total{{limit=\"{name}\"}}");

    // Streams per node.
    let url = node.url("/v1/events?topic=lim");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = SseClient::connect(&url, None).await.unwrap();
        c.ready().await;
        held.push(c);
    }
    let (status, headers, body) = get_with(&url, &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("node_full"), "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(node.metric(&limit("max_connections")).await, 1.0);
    drop(held);

    // Topics per connection.
    let (status, _, body) = get_with(&node.url("/v1/events?topic=a&topic=b&topic=c"), &[]).await;
    assert_eq!(status, 400);
    assert!(body.contains("too_many_topics"), "{body}");
    assert_eq!(node.metric(&limit("max_topics_per_connection")).await, 1.0);

    // Last-Event-ID.
    let long_id = format!("lim:abc:{}", "1".repeat(80));
    let (status, _, body) = get_with(&url, &[("Last-Event-ID", &long_id)]).await;
    assert_eq!(status, 400);
    assert!(body.contains("last_event_id_too_long"), "{body}");
    assert_eq!(node.metric(&limit("max_last_event_id_bytes")).await, 1.0);

    // Request head: one huge header, too many headers, a huge request line.
    let big = "x".repeat(10_000);
    let status = raw_status(
        node.port,
        &format!("GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, Some(431));
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let status = raw_status(
        node.port,
        &format!("GET /healthz HTTP/1.1\r\nHost: a\r\n{many}\r\n"),
    )
    .await;
    assert_eq!(status, Some(431));
    let status = raw_status(
        node.port,
        &format!("GET /v1/events?topic={big} HTTP/1.1\r\nHost: a\r\n\r\n"),
    )
    .await;
    assert!(matches!(status, Some(414 | 431)), "{status:?}");
    eventually(T, "request_head rejections to be counted", || async {
        (node.metric(&limit("request_head")).await == 3.0).then_some(())
    })
    .await;
    // Headers within the bounds still pass.
    let status = raw_status(
        node.port,
        "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Small: yes\r\n\r\n",
    )
    .await;
    assert_eq!(status, Some(200));
}

#[tokio::test]
async fn slow_request_heads_and_connection_bursts_are_cut() {
    let nats = Nats::start().await;
    let node = NodeProc::start(
        &nats.url(),
        &[
            ("SSE_HTTP__HEADER_READ_TIMEOUT_SECONDS", "1"),
            ("SSE_HTTP__MAX_CONNECTIONS_PER_IP_PER_MINUTE", "40"),
        ],
    )
    .await;
    // A client that never finishes its request head is dropped.
    let mut slow = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection stayed open");
    eventually(T, "the header timeout to be counted", || async {
        let n = node
            .metric("sse_limit_rejections_total{limit=\"header_read_timeout\"}")
            .await;
        (n >= 1.0).then_some(())
    })
    .await;

    // A burst of connections from one address: beyond the per-minute
    // allowance (the readiness probes used some), connections are closed
    // before any request is answered. The metrics are read on a connection
    // opened before the burst.
    let mut kept = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    let mut refused = 0;
    for _ in 0..45 {
        if raw_status(node.port, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .is_none()
        {
            refused += 1;
        }
    }
    assert!(refused >= 5, "only {refused} refused");
    kept.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    let series = "sse_limit_rejections_total{limit=\"ip_rate\"} ";
    while !text.contains(series) || !text[text.find(series).unwrap()..].contains('\n') {
        let mut buf = vec![0u8; 16384];
        let n = tokio::time::timeout(T, kept.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "metrics ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let counted: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(counted, refused as f64);
}

#[tokio::test]
async fn cors_preflight_and_stream_answer_allowed_origins_only() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "web", None).await;
    let node = NodeProc::start(
        &nats.url(),
        &[
            ("SSE_CORS__ALLOWED_ORIGINS", "[\"https://app.example\"]"),
            ("SSE_CORS__ALLOW_CREDENTIALS", "true"),
            ("SSE_CORS__MAX_AGE_SECONDS", "300"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let url = node.url("/v1/events?topic=web");
    // What a browser sends before `fetch(url, {headers: {Authorization}})`
    // or an EventSource with `Last-Event-ID` from another origin.
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, &url)
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header(
                "Access-Control-Request-Headers",
                "authorization,last-event-id",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "300");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    let allow_headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allow_headers.contains("authorization"), "{allow_headers}");
    assert!(allow_headers.contains("last-event-id"), "{allow_headers}");

    let refused = preflight("https://evil.example").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // The stream itself carries the headers for the allowed origin only.
    let stream = SseClient::connect_with(&url, &[("Origin", "https://app.example")])
        .await
        .unwrap();
    assert_eq!(
        stream.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(stream.headers["access-control-allow-credentials"], "true");
    assert!(
        stream.headers["vary"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("origin")
    );
    let other = SseClient::connect_with(&url, &[("Origin", "https://evil.example")])
        .await
        .unwrap();
    assert!(other.headers.get("access-control-allow-origin").is_none());

    // Without [cors], no CORS header at all.
    let plain = NodeProc::start(&nats.url(), &[]).await;
    let response = client
        .request(reqwest::Method::OPTIONS, plain.url("/v1/events?topic=web"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn cors_with_credentials_and_any_origin_is_refused_at_start() {
    let output = std::process::Command::new(binary())
        .arg("--check-config")
        .env("SSE_CORS__ALLOWED_ORIGINS", "[\"*\"]")
        .env("SSE_CORS__ALLOW_CREDENTIALS", "true")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cors.allow_credentials"), "{stderr}");
}

/// Sends raw bytes on a fresh connection and returns the response status,
/// or `None` when the connection closed without an answer.
async fn raw_status(port: u16, request: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    // The server may close before reading everything; that is an answer too.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut buf = vec![0u8; 1024];
    let mut read = 0;
    while read < 12 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf[read..]))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let head = String::from_utf8_lossy(&buf[..read]);
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}
