//! What goes on the wire: headers, multi-line data, event names, and the
//! rule for events that cannot be sent as is.

use std::time::Duration;

use bytes::Bytes;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn headers_data_lines_names_and_invalid_events() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "news", None).await;
    let node = NodeProc::start(
        &nats.url(),
        &[
            ("SSE_DELIVERY__MAX_EVENT_BYTES", "1000"),
            ("SSE_HTTP__RETRY_MS", "3000"),
            ("SSE_HTTP__RETRY_JITTER_MS", "500"),
        ],
    )
    .await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=news"), None)
        .await
        .unwrap();
    client.ready().await;
    let h = &client.headers;
    assert_eq!(h["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    let retry = client.retry.expect("a retry: line before the first event");
    assert!((3000..=3500).contains(&retry), "retry {retry}");
    assert!(client.comments >= 1, "a comment opens the stream");

    publish_with(
        &js,
        "news",
        Some("headline"),
        Bytes::from("line 1\nline 2\r\nline 3\rend"),
    )
    .await;
    publish_with(&js, "news.x", None, Bytes::from("plain")).await;
    publish_with(
        &js,
        "news",
        Some("evil\u{b}data: injected"),
        Bytes::from("x"),
    )
    .await;
    publish_with(&js, "news", None, Bytes::from_static(b"\xff\xfe not utf-8")).await;
    publish_with(&js, "news", None, Bytes::from(vec![b'a'; 1001])).await;
    publish_with(
        &js,
        "news",
        None,
        Bytes::from("injected\n\nevent: fake\ndata: x"),
    )
    .await;

    let events = client.take(6, T).await;
    assert_eq!(events[0].event, "headline");
    assert_eq!(events[0].data, "line 1\nline 2\nline 3\nend");
    assert_eq!(events[1].event, "message");
    assert_eq!(events[1].data, "plain");
    for (event, reason) in events[2..5]
        .iter()
        .zip(["bad_event_name", "invalid_utf8", "too_large"])
    {
        assert_eq!(event.event, "invalid", "{event:?}");
        let body: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(body["reason"], reason);
        assert_eq!(body["subject"], "news");
    }
    // A payload with blank lines stays one event: every line is a data line.
    assert_eq!(events[5].event, "message");
    assert_eq!(events[5].data, "injected\n\nevent: fake\ndata: x");
    for reason in ["bad_event_name", "invalid_utf8", "too_large"] {
        let series = format!("sse_invalid_events_total{{reason=\"{reason}\"}}");
        assert_eq!(node.metric(&series).await, 1.0, "{series}");
    }
}

#[tokio::test(start_paused = false)]
async fn idle_streams_get_heartbeats() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "quiet", None).await;
    let node = NodeProc::start(&nats.url(), &[("SSE_HTTP__HEARTBEAT_SECONDS", "1")]).await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=quiet"), None)
        .await
        .unwrap();
    client.ready().await;
    let opened = client.comments;
    // No event comes, but comments keep arriving.
    assert!(
        client
            .next_event(Duration::from_millis(3500))
            .await
            .is_err()
    );
    assert!(
        client.comments >= opened + 2,
        "heartbeats: {}",
        client.comments - opened
    );
    assert!(node.metric("sse_heartbeats_total").await >= 2.0);
}
