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

#[tokio::test]
async fn traceparent_on_a_nats_message_continues_into_an_exported_span() {
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "traced", None).await;
    let endpoint = format!("http://{collector}");
    let node = NodeProc::start(
        &nats.url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "sse-node-under-test"),
        ],
    )
    .await;
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
                })
        }
    })
    .await;
}
