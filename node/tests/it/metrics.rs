//! The metrics operators are promised exist under their exact names.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn every_promised_metric_is_exported() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "seen", None).await;
    let node = NodeProc::start(&nats.url(), &[]).await;
    // Some activity, so that every labelled series has a child.
    let mut client = SseClient::connect(&node.url("/v1/events?topic=seen"), None)
        .await
        .unwrap();
    let start = client.ready().await;
    publish(&js, "seen", "one").await;
    client.take(1, Duration::from_secs(10)).await;
    drop(client);
    let mut resumed = SseClient::connect(&node.url("/v1/events?topic=seen"), Some(&start))
        .await
        .unwrap();
    resumed.take(1, Duration::from_secs(10)).await;
    drop(resumed);
    let _ = get(&node.url("/v1/events"), None).await;
    eventually(
        Duration::from_secs(10),
        "the closes to be counted",
        || async { (node.metric("sse_clients_connected").await == 0.0).then_some(()) },
    )
    .await;

    let text = http_get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "sse_clients_connected ",
        "sse_topic_listing_failures_total 0",
        "sse_nats_server_switches_total 0",
        "sse_connections_opened_total ",
        "sse_connections_closed_total{reason=\"client\"}",
        "sse_events_delivered_total ",
        "sse_replay_events_total{source=\"memory\"}",
        "sse_replay_duration_seconds_bucket",
        "sse_delivery_lag_seconds_bucket",
        "sse_feed_read_lag_seconds_bucket",
        "sse_nats_connected 1",
        "sse_nats_reconnects_total 0",
        "sse_build_info{version=\"",
        "sse_requests_rejected_total{status=\"400\"}",
        "sse_reset_events_total ",
        "sse_heartbeats_total ",
        "sse_history_bytes{topic=\"seen\"}",
        "sse_topic_subscribers{topic=\"seen\"} 0",
        "sse_feed_errors_total{kind=\"consumer_limit\"} 0",
        "sse_trace_spans_dropped_total{reason=\"queue_full\"} 0",
    ] {
        assert!(text.contains(name), "missing {name}\n{text}");
    }
    crate::metric_names::assert_total_names_only_counters(&text);
    assert_eq!(node.metric("sse_connections_opened_total").await, 2.0);
    assert_eq!(node.metric("sse_events_delivered_total").await, 2.0);
    // The one event published was read once, by the topic's feed.
    assert_eq!(node.metric("sse_feed_read_lag_seconds_count").await, 1.0);
    // No label value names a client, a subject path or an address.
    assert!(!text.contains("127.0.0.1"));
}

/// A deleted topic leaves no series behind once its clients are gone: a
/// deployment whose topics come and go (one per session, per tenant) would
/// otherwise grow a series for every topic ever read, until restart.
#[tokio::test]
async fn a_deleted_topic_leaves_no_series() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "churn", None).await;
    let node = NodeProc::start(&nats.url(), &[]).await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=churn"), None)
        .await
        .unwrap();
    client.ready().await;
    publish(&js, "churn", "one").await;
    client.take(1, Duration::from_secs(10)).await;
    let labelled = "topic=\"churn\"";
    let text = http_get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("sse_topic_subscribers{topic=\"churn\"} 1"),
        "{text}"
    );

    js.delete_stream("SSE_churn").await.unwrap();
    let rest = client.until_closed(Duration::from_secs(15)).await.unwrap();
    assert!(rest.iter().any(|e| e.event == "topic_deleted"), "{rest:?}");
    eventually(
        Duration::from_secs(10),
        "the topic's series to go",
        || async {
            let text = http_get(node.url("/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (!text.contains(labelled)).then_some(())
        },
    )
    .await;
}
