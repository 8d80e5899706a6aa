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

    // Read again from history, on a node that starts after them and on
    // this one, they are the same `invalid` events, counted no more: a
    // count per reading would wake the alert on them again.
    let later = NodeProc::start(&nats.url(), &[("SSE_DELIVERY__MAX_EVENT_BYTES", "1000")]).await;
    let from_start = events[0].id.replace(":1", ":0");
    for (name, node) in [("later", &later), ("first", &node)] {
        let mut again = SseClient::connect(&node.url("/v1/events?topic=news"), Some(&from_start))
            .await
            .unwrap();
        let replayed = again.take(6, T).await;
        let kinds: Vec<&str> = replayed.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "headline", "message", "invalid", "invalid", "invalid", "message"
            ],
            "{name}"
        );
    }
    for reason in ["bad_event_name", "invalid_utf8", "too_large"] {
        let series = format!("sse_invalid_events_total{{reason=\"{reason}\"}}");
        assert_eq!(later.metric(&series).await, 0.0, "later: {series}");
        assert_eq!(node.metric(&series).await, 1.0, "first: {series}");
    }
}

/// An event published straight to NATS under a name the node gives its
/// own events (`reset`, `invalid`) is not sent under it: a client could not
/// tell it from the node's. Nor under a name a browser's `EventSource`
/// fires itself (`open`, `error`), which a page's `onopen` and `onerror`
/// would take for its stream's. It becomes an `invalid` event.
#[tokio::test]
async fn a_publishers_event_named_like_the_nodes_own_becomes_invalid() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "own", None).await;
    let node = NodeProc::start(&nats.url(), &[]).await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=own"), None)
        .await
        .unwrap();
    client.ready().await;
    for name in ["reset", "invalid", "open", "error", "Reset"] {
        publish_with(&js, "own", Some(name), Bytes::from("x")).await;
    }
    let events = client.take(5, T).await;
    for event in &events[..4] {
        assert_eq!(event.event, "invalid", "{event:?}");
        let body: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(body["reason"], "bad_event_name");
    }
    assert_eq!(events[4].event, "Reset");
    assert_eq!(
        node.metric("sse_invalid_events_total{reason=\"bad_event_name\"}")
            .await,
        4.0
    );
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

#[tokio::test]
async fn fast_path_and_hyper_serve_the_same_stream() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "both", None).await;
    let fast = NodeProc::start(&nats.url(), &[]).await;
    let hyper = NodeProc::start(&nats.url(), &[("SSE_HTTP__FAST_PATH", "false")]).await;
    let mut clients = Vec::new();
    for node in [&fast, &hyper] {
        let mut client = SseClient::connect(&node.url("/v1/events?topic=both"), None)
            .await
            .unwrap();
        client.ready().await;
        clients.push(client);
    }
    // The fast path ends the response by closing; hyper uses chunks.
    assert_eq!(clients[0].headers["connection"], "close");
    assert!(clients[0].headers.get("transfer-encoding").is_none());
    assert_eq!(clients[1].headers["transfer-encoding"], "chunked");
    for client in &clients {
        assert_eq!(
            client.headers["content-type"],
            "text/event-stream; charset=utf-8"
        );
        assert_eq!(client.headers["x-accel-buffering"], "no");
    }
    publish_with(&js, "both.a", Some("named"), Bytes::from("one\ntwo")).await;
    publish(&js, "both.b", "three").await;
    let fast_events = clients[0].take(2, T).await;
    let hyper_events = clients[1].take(2, T).await;
    assert_eq!(fast_events, hyper_events);
    assert_eq!(fast_events[0].event, "named");
    // Refusals on the fast path carry the same status and body.
    let (status, body) = get(&fast.url("/v1/events?topic=nosuch"), None).await;
    let (hyper_status, hyper_body) = get(&hyper.url("/v1/events?topic=nosuch"), None).await;
    assert_eq!((status, &body), (hyper_status, &hyper_body));
    assert_eq!(status, 404);
    // A client that goes away is noticed at once on either path.
    drop(clients);
    for node in [&fast, &hyper] {
        eventually(T, "the client to be counted as gone", || async {
            (node.metric("sse_clients_connected").await == 0.0).then_some(())
        })
        .await;
        assert_eq!(
            node.metric("sse_connections_closed_total{reason=\"client\"}")
                .await,
            1.0
        );
    }
}
