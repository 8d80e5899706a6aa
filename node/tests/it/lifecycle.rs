//! Streams through the life of topics, NATS and the node itself: recreated
//! and expired streams, slow clients, NATS outages, SIGTERM.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

fn reset_body(event: &SseEvent) -> serde_json::Value {
    assert_eq!(event.event, "reset", "{event:?}");
    serde_json::from_str(&event.data).unwrap()
}

/// A topic deleted and created again at once (a deploy that recreates its
/// topics) is no deleted topic to its open streams: they end without
/// `topic_deleted`, and come back to a `reset` for the new stream. Asked for
/// between the two, it is unknown.
#[tokio::test]
async fn a_topic_created_again_at_once_ends_its_streams_without_topic_deleted() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "deploys", None).await;
    let node = NodeProc::start(&nats.url(), &[]).await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=deploys"), None)
        .await
        .unwrap();
    client.ready().await;
    publish(&js, "deploys", "old").await;
    let old_id = client.take(1, T).await[0].id.clone();

    js.delete_stream("SSE_deploys").await.unwrap();
    eventually(T, "the deleted topic to be unknown", || async {
        let (status, _) = get(&node.url("/v1/events?topic=deploys"), None).await;
        (status == 404).then_some(())
    })
    .await;
    create_topic(&js, "deploys", None).await;
    let rest = client.until_closed(T).await.unwrap();
    assert!(
        rest.iter().all(|event| event.event != "topic_deleted"),
        "{rest:?}"
    );
    assert!(client.retry.is_some(), "ended with a retry hint");
    publish(&js, "deploys", "new").await;
    let mut back = SseClient::connect(&node.url("/v1/events?topic=deploys"), Some(&old_id))
        .await
        .unwrap();
    let events = back.take(2, T).await;
    assert_eq!(reset_body(&events[0])["reason"], "stream_recreated");
    assert_eq!(data_of(&events[1..]), ["new"]);
}

#[tokio::test]
async fn deleted_topic_stops_and_recreated_stream_gets_reset() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "jobs", None).await;
    // Deletion is noticed from JetStream's advisory at once, or at the next
    // re-listing of topics if the advisory is missed.
    let node = NodeProc::start(&nats.url(), &[("SSE_NATS__TOPIC_REFRESH_SECONDS", "2")]).await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=jobs"), None)
        .await
        .unwrap();
    client.ready().await;
    publish(&js, "jobs", "old-1").await;
    publish(&js, "jobs", "old-2").await;
    let old = client.take(2, T).await;
    let old_id = old[1].id.clone();

    js.delete_stream("SSE_jobs").await.unwrap();
    // The open stream says so and ends, and the topic is no longer served.
    let rest = client.until_closed(Duration::from_secs(15)).await.unwrap();
    assert_topics_deleted(&rest, &["jobs"]);
    assert_eq!(rest[0].id, old_id, "the cursor stays where it was");
    let (status, _) = get(&node.url("/v1/events?topic=jobs"), None).await;
    assert_eq!(status, 404);

    create_topic(&js, "jobs", None).await;
    publish(&js, "jobs", "new-1").await;
    publish(&js, "jobs", "new-2").await;
    let mut resumed = SseClient::connect(&node.url("/v1/events?topic=jobs"), Some(&old_id))
        .await
        .unwrap();
    let events = resumed.take(3, T).await;
    let reset = reset_body(&events[0]);
    assert_eq!(reset["reason"], "stream_recreated");
    assert_eq!(reset["topic"], "jobs");
    assert_eq!(reset["resume_from"], 1);
    assert_ne!(
        events[0].id.split(':').nth(1),
        old_id.split(':').nth(1),
        "new epoch"
    );
    assert_eq!(data_of(&events[1..]), ["new-1", "new-2"]);
    assert!(events[2].id.ends_with(":2"), "{}", events[2].id);
    assert_eq!(node.metric("sse_reset_events_total").await, 1.0);
}

#[tokio::test]
async fn expired_history_gets_reset_then_continues() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "ticks", Some(Duration::from_secs(1))).await;
    let node = NodeProc::start(&nats.url(), &NO_MEMORY).await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=ticks"), None)
        .await
        .unwrap();
    let start = client.ready().await;
    drop(client);
    for i in 1..=3 {
        publish(&js, "ticks", &format!("gone-{i}")).await;
    }
    eventually(T, "events to expire", || {
        let js = js.clone();
        async move {
            let stream = js.get_stream("SSE_ticks").await.ok()?;
            (stream.cached_info().state.messages == 0).then_some(())
        }
    })
    .await;
    publish(&js, "ticks", "kept-4").await;
    publish(&js, "ticks", "kept-5").await;

    let mut resumed = SseClient::connect(&node.url("/v1/events?topic=ticks"), Some(&start))
        .await
        .unwrap();
    let events = resumed.take(3, T).await;
    let reset = reset_body(&events[0]);
    assert_eq!(reset["reason"], "history_gone");
    assert_eq!(reset["lost_from"], 1);
    assert_eq!(reset["lost_to"], 3);
    assert_eq!(reset["resume_from"], 4);
    assert!(events[0].id.ends_with(":3"), "{}", events[0].id);
    assert_eq!(data_of(&events[1..]), ["kept-4", "kept-5"]);
}

#[tokio::test]
async fn slow_client_is_cut_while_fast_client_loses_nothing() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "firehose", None).await;
    let node = NodeProc::start(
        &nats.url(),
        // The queue holds under half of what is published, so the silent
        // client must overflow it; the stall limit leaves the reading
        // client room for a busy test machine.
        &[
            ("SSE_DELIVERY__CLIENT_QUEUE_EVENTS", "512"),
            ("SSE_DELIVERY__WRITE_STALL_SECONDS", "5"),
        ],
    )
    .await;

    // The slow client sends its request and never reads.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", node.port))
        .await
        .unwrap();
    slow.write_all(b"GET /v1/events?topic=firehose HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut fast = SseClient::connect(&node.url("/v1/events?topic=firehose"), None)
        .await
        .unwrap();
    fast.ready().await;
    eventually(T, "both clients to be connected", || async {
        (node.metric("sse_clients_connected").await == 2.0).then_some(())
    })
    .await;

    let total = 1200;
    let payload = "x".repeat(16 * 1024);
    let reader = tokio::spawn(async move {
        let events = fast.take(total, Duration::from_secs(30)).await;
        data_of(&events)
            .iter()
            .map(|d| d.split(':').next().unwrap().parse::<usize>().unwrap())
            .collect::<Vec<_>>()
    });
    publish_many(&js, total, 20, |i| {
        (format!("sse.firehose.{}", i % 7), format!("{i}:{payload}"))
    })
    .await;
    let received = reader.await.unwrap();
    assert_eq!(
        received,
        (0..total).collect::<Vec<_>>(),
        "fast client: all, in order"
    );
    eventually(T, "the slow client to be cut", || async {
        (node
            .metric("sse_connections_closed_total{reason=\"slow\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    drop(slow);
}

/// Clients that leave in the middle of a catch-up (a browser tab closed
/// while its resume is read) are far behind their topic when they go, but
/// their writes were moving: they left, and are counted so, not as slow
/// clients cut off (`SseSlowClientsDropped` wakes on those). Over the lean
/// path and over hyper (`http.fast_path` off).
#[tokio::test]
async fn clients_that_leave_during_a_catch_up_are_not_counted_slow() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "backlog", None).await;
    let payload = "y".repeat(1024);
    publish_many(&js, 3000, 50, |i| {
        ("sse.backlog".to_owned(), format!("{i}:{payload}"))
    })
    .await;
    for fast_path in ["true", "false"] {
        // 3,000 events behind is past the default queue (1,024 events).
        let node = NodeProc::start(&nats.url(), &[("SSE_HTTP__FAST_PATH", fast_path)]).await;
        let mut probe = SseClient::connect(&node.url("/v1/events?topic=backlog"), None)
            .await
            .unwrap();
        let from_start = id_at(&probe.ready().await, 0);
        drop(probe);
        for _ in 0..10 {
            let mut client =
                SseClient::connect(&node.url("/v1/events?topic=backlog"), Some(&from_start))
                    .await
                    .unwrap();
            assert_eq!(client.take(10, T).await.len(), 10);
            drop(client);
        }
        eventually(T, "every client to be gone", || async {
            (node.metric("sse_clients_connected").await == 0.0).then_some(())
        })
        .await;
        assert_eq!(
            node.metric("sse_connections_closed_total{reason=\"slow\"}")
                .await,
            0.0,
            "fast_path {fast_path}"
        );
        assert_eq!(
            node.metric("sse_connections_closed_total{reason=\"client\"}")
                .await,
            11.0,
            "fast_path {fast_path}"
        );
    }
}

/// A burst fills a topic's queue faster than a stream of several topics,
/// which takes their events in turns, drains it: the stream catches up from
/// the node's history and goes on, instead of ending as slow and sending
/// every such client back at once.
#[tokio::test]
async fn a_burst_past_its_queues_does_not_end_a_stream_of_several_topics() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    for topic in ["bursta", "burstb"] {
        create_topic(&js, topic, None).await;
    }
    let node = NodeProc::start(&nats.url(), &[("SSE_DELIVERY__CLIENT_QUEUE_EVENTS", "16")]).await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=bursta&topic=burstb"), None)
        .await
        .unwrap();
    client.ready().await;
    let publisher = connect_to(&nats.url()).await.unwrap();
    let per_topic = 2000;
    for i in 0..per_topic {
        for topic in ["bursta", "burstb"] {
            publisher
                .publish(format!("sse.{topic}"), format!("{topic}-{i}").into())
                .await
                .unwrap();
        }
    }
    publisher.flush().await.unwrap();
    let events = client.take(2 * per_topic, Duration::from_secs(30)).await;
    for topic in ["bursta", "burstb"] {
        let got: Vec<String> = data_of(&events)
            .into_iter()
            .filter(|d| d.starts_with(topic))
            .collect();
        let wanted: Vec<String> = (0..per_topic).map(|i| format!("{topic}-{i}")).collect();
        assert!(
            got == wanted,
            "{topic}: {} events, not each once in order",
            got.len()
        );
    }
    assert_eq!(
        node.metric("sse_connections_closed_total{reason=\"slow\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn nats_outage_keeps_clients_and_loses_nothing() {
    let mut nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "alerts", None).await;
    let node = NodeProc::start(&nats.url(), &[("SSE_HTTP__HEARTBEAT_SECONDS", "1")]).await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=alerts"), None)
        .await
        .unwrap();
    client.ready().await;
    for i in 0..5 {
        publish(&js, "alerts", &format!("{i}")).await;
    }
    assert_eq!(data_of(&client.take(5, T).await), ["0", "1", "2", "3", "4"]);

    nats.stop().await;
    eventually(T, "readiness to drop", || async {
        let (status, _) = get(&node.url("/readyz"), None).await;
        (status == 503).then_some(())
    })
    .await;
    assert_eq!(node.metric("sse_nats_connected").await, 0.0);
    // The stream stays open, kept alive by heartbeats.
    let before = client.comments;
    assert!(
        client
            .next_event(Duration::from_millis(2500))
            .await
            .is_err()
    );
    assert!(client.comments > before, "heartbeats during the outage");

    nats.restart().await;
    node.wait_ready().await;
    let js = nats.jetstream().await;
    for i in 5..10 {
        publish(&js, "alerts", &format!("{i}")).await;
    }
    let events = client.take(5, Duration::from_secs(20)).await;
    assert_eq!(data_of(&events), ["5", "6", "7", "8", "9"]);
    assert!(
        client.next_event(Duration::from_millis(300)).await.is_err(),
        "no duplicate"
    );
    assert!(node.metric("sse_nats_reconnects_total").await >= 1.0);
}

#[tokio::test]
async fn sigterm_drains_streams_and_exits_within_the_window() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "drain", None).await;
    let drain = Duration::from_secs(3);
    let mut node = NodeProc::start(
        &nats.url(),
        &[crate::parked::PARK, ("SSE_SHUTDOWN__DRAIN_SECONDS", "3")],
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = SseClient::connect(&node.url("/v1/events?topic=drain"), None)
            .await
            .unwrap();
        c.ready().await;
        clients.push(c);
    }
    // The drain reaches streams that their feed's writer holds, too.
    eventually(T, "the streams to park", || async {
        (node.metric("sse_streams_parked").await == 5.0).then_some(())
    })
    .await;
    let started = Instant::now();
    node.terminate();
    eventually(T, "readiness to go false", || async {
        let (status, _) = get(&node.url("/readyz"), None).await;
        (status == 503).then_some(())
    })
    .await;
    let response = http_get(node.url("/v1/events?topic=drain")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    publish(&js, "drain", "during-drain").await;
    let mut ended = Vec::new();
    for mut c in clients {
        let events = c
            .until_closed(drain + Duration::from_secs(2))
            .await
            .unwrap();
        assert!(events.len() <= 1, "{events:?}");
        assert!(c.retry.is_some());
        ended.push(started.elapsed());
    }
    let status = node
        .wait_exit(drain + Duration::from_secs(2))
        .await
        .unwrap();
    let exited = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        exited <= drain + Duration::from_millis(1500),
        "exited after {exited:?}"
    );
    // Spread over the window, not all at once.
    let first = ended.iter().min().unwrap();
    assert!(*first < drain, "{ended:?}");
}

#[tokio::test]
async fn readiness_waits_for_nats() {
    let mut nats = Nats::start().await;
    let url = nats.url();
    nats.stop().await;
    let node = NodeProc::spawn(&url, &[]);
    let said = eventually(T, "the node to answer", || async {
        let (status, body) = http_get(node.url("/readyz"))
            .await
            .ok()
            .map(|r| (r.status(), r))?;
        let json: serde_json::Value = body.json().await.ok()?;
        (status == 503 && json["nats_connected"] == false).then_some(json)
    })
    .await;
    // Nothing it can reach answers for JetStream either.
    assert_eq!(said["jetstream_answers"], false, "{said}");
    assert_eq!(said["topics_loaded"], false, "{said}");
    let (status, _) = get(&node.url("/healthz"), None).await;
    assert_eq!(status, 200, "alive without NATS");
    nats.restart().await;
    node.wait_ready().await;
}

/// A node cut off from NATS refuses a stream it has no feed for at once,
/// not after JetStream's call timeout: it knows it is not connected. A
/// stream of a topic it still reads is served from its feed.
#[tokio::test]
async fn a_node_cut_off_from_nats_refuses_new_topics_at_once() {
    let mut nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "held", None).await;
    create_topic(&js, "other", None).await;
    let node = NodeProc::start(&nats.url(), &[]).await;
    let mut held = SseClient::connect(&node.url("/v1/events?topic=held"), None)
        .await
        .unwrap();
    held.ready().await;
    nats.stop().await;
    eventually(T, "the node to see NATS gone", || async {
        let response = http_get(node.url("/readyz")).await.ok()?;
        let json: serde_json::Value = response.json().await.ok()?;
        (json["nats_connected"] == false).then_some(())
    })
    .await;

    let asked = Instant::now();
    let response = http_get(node.url("/v1/events?topic=other")).await.unwrap();
    let took = asked.elapsed();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["retry-after"],
        "2",
        "a refusal the client retries"
    );
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "nats_unavailable", "{json}");
    assert!(
        json["message"]
            .as_str()
            .is_some_and(|m| m.contains("not connected to NATS")),
        "{json}"
    );
    // JetStream's call timeout is 5 s: an answer well before it was not
    // waited for.
    assert!(took < Duration::from_secs(3), "refused after {took:?}");

    // An id of another epoch of the topic it reads needs JetStream's word
    // on the stream: refused as soon.
    let asked = Instant::now();
    let (status, body) = get(&node.url("/v1/events?topic=held"), Some("held:zzzzzz:1")).await;
    let took = asked.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not connected to NATS"), "{body}");
    assert!(took < Duration::from_secs(3), "refused after {took:?}");

    // The topic this node still reads opens from its feed.
    let mut second = SseClient::connect(&node.url("/v1/events?topic=held"), None)
        .await
        .unwrap();
    second.ready().await;

    nats.restart().await;
    node.wait_ready().await;
    let mut other = SseClient::connect(&node.url("/v1/events?topic=other"), None)
        .await
        .unwrap();
    other.ready().await;
    let js = nats.jetstream().await;
    publish(&js, "other", "after").await;
    assert_eq!(data_of(&other.take(1, T).await), ["after"]);
}

/// A resume that can get no JetStream read slot waits with heartbeats only,
/// which keep `EventSource` from ever reconnecting. Here the one slot is held
/// by a resume whose read waits on a NATS server that froze (a host that
/// stalls: its connections stay open, nothing is answered). The waiting
/// stream is behind its topic and makes no progress: after
/// `delivery.no_progress_seconds` it is closed with a retry hint and
/// counted, so its client resumes elsewhere instead of sitting silent.
#[tokio::test]
async fn a_resume_stuck_behind_a_frozen_read_is_closed_not_left_silent() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "backlog", None).await;
    let node = NodeProc::start(
        &nats.url(),
        &[
            // Every resume reads JetStream, one at a time.
            ("SSE_HISTORY__MAX_EVENTS_PER_TOPIC", "1"),
            ("SSE_HISTORY__WARM_EVENTS", "0"),
            ("SSE_HISTORY__MAX_CONCURRENT_JETSTREAM_READS", "1"),
            ("SSE_DELIVERY__NO_PROGRESS_SECONDS", "2"),
            ("SSE_HTTP__HEARTBEAT_SECONDS", "1"),
        ],
    )
    .await;
    let mut probe = SseClient::connect(&node.url("/v1/events?topic=backlog"), None)
        .await
        .unwrap();
    let start_id = probe.ready().await;
    drop(probe);
    let payload = "x".repeat(16 * 1024);
    publish_many(&js, 1500, 50, |i| {
        ("sse.backlog".to_owned(), format!("{i}:{payload}"))
    })
    .await;
    let mut reading = SseClient::connect(&node.url("/v1/events?topic=backlog"), Some(&start_id))
        .await
        .unwrap();
    reading.take(1, T).await;
    nats.freeze();
    // Read on, so that its stream waits on the frozen server, holding the
    // slot, and not on its socket: a client that stops reading gives the
    // slot up after a turn (the test below).
    let draining = tokio::spawn(async move { reading.until_closed(Duration::from_secs(30)).await });

    let opened = Instant::now();
    let mut waiting = SseClient::connect(&node.url("/v1/events?topic=backlog"), Some(&start_id))
        .await
        .unwrap();
    let got = waiting.until_closed(Duration::from_secs(20)).await;
    let waited = opened.elapsed();
    nats.thaw();
    draining.abort();
    let got = got.unwrap();
    assert!(
        got.is_empty(),
        "the waiting client got events: {}",
        got.len()
    );
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "closed after {waited:?}, not after about no_progress_seconds"
    );
    assert!(waiting.retry.is_some(), "closed without a retry hint");
    assert!(node.metric("sse_jetstream_read_waits_total").await >= 1.0);
    assert!(node.metric("sse_stalled_streams_total").await >= 1.0);
    assert!(
        node.metric(r#"sse_connections_closed_total{reason="stalled"}"#)
            .await
            >= 1.0
    );
}

/// A resume waiting for the JetStream read slot held by a client that
/// stopped reading in the middle of its replay, served by hyper (which
/// stops asking its stream for bytes then), gets the slot after a turn and
/// every event, as behind a lean stream
/// (`resume::slow_resumes_take_turns_with_the_jetstream_read_slots`).
#[tokio::test]
async fn a_resume_behind_a_blocked_read_served_by_hyper_gets_the_slot_after_a_turn() {
    const EVENTS: usize = 1500;
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "backlog", None).await;
    let node = NodeProc::start(
        &nats.url(),
        &[
            ("SSE_HISTORY__MAX_EVENTS_PER_TOPIC", "1"),
            ("SSE_HISTORY__WARM_EVENTS", "0"),
            ("SSE_HISTORY__MAX_CONCURRENT_JETSTREAM_READS", "1"),
            ("SSE_DELIVERY__WRITE_STALL_SECONDS", "300"),
            ("SSE_HTTP__FAST_PATH", "false"),
        ],
    )
    .await;
    let mut probe = SseClient::connect(&node.url("/v1/events?topic=backlog"), None)
        .await
        .unwrap();
    let start_id = probe.ready().await;
    drop(probe);
    // More than the loopback socket buffers hold, so the replay to a client
    // that does not read blocks in a write while it holds the read slot.
    let payload = "x".repeat(16 * 1024);
    publish_many(&js, EVENTS, 50, |i| {
        ("sse.backlog".to_owned(), format!("{i}:{payload}"))
    })
    .await;
    let mut blocked = tokio::net::TcpStream::connect(("127.0.0.1", node.port))
        .await
        .unwrap();
    blocked
        .write_all(
            format!(
                "GET /v1/events?topic=backlog HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {start_id}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    eventually(T, "the blocked replay to hold the read slot", || async {
        (node
            .metric(r#"sse_replay_events_total{source="jetstream"}"#)
            .await
            > 0.0)
            .then_some(())
    })
    .await;

    let mut waiting = SseClient::connect(&node.url("/v1/events?topic=backlog"), Some(&start_id))
        .await
        .unwrap();
    let events = waiting.take(EVENTS, Duration::from_secs(30)).await;
    assert_each_once_in_order(&events, EVENTS as u64);
    assert!(node.metric("sse_jetstream_read_waits_total").await >= 1.0);
    assert_eq!(
        node.metric(r#"sse_connections_closed_total{reason="stalled"}"#)
            .await,
        0.0
    );
    drop(blocked);
}

/// Events purged from JetStream are not served from node memory: within a
/// topic refresh the node forgets them, and a resume from before the purge
/// gets `reset`, then what the stream still holds.
#[tokio::test]
async fn purged_events_held_in_memory_are_not_served_after_a_refresh() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "purged", None).await;
    let node = NodeProc::start(&nats.url(), &[("SSE_NATS__TOPIC_REFRESH_SECONDS", "1")]).await;
    let mut live = SseClient::connect(&node.url("/v1/events?topic=purged"), None)
        .await
        .unwrap();
    let start = live.ready().await;
    for i in 1..=3 {
        publish(&js, "purged", &format!("g{i}")).await;
    }
    let first = live.take(3, T).await;
    js.get_stream("SSE_purged")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    publish(&js, "purged", "g4").await;
    live.take(1, T).await;
    // The refresh after the purge trims the node's history.
    eventually(T, "the history to be trimmed", || async {
        let mut probe =
            SseClient::connect(&node.url("/v1/events?topic=purged"), Some(&first[0].id))
                .await
                .ok()?;
        let event = probe.next_event(T).await.ok()??;
        (event.event == "reset").then_some(())
    })
    .await;
    let mut resumed = SseClient::connect(&node.url("/v1/events?topic=purged"), Some(&start))
        .await
        .unwrap();
    let events = resumed.take(2, T).await;
    let reset = reset_body(&events[0]);
    assert_eq!(reset["reason"], "history_gone");
    assert_eq!(reset["lost_from"], 1);
    assert_eq!(reset["lost_to"], 3);
    assert_eq!(data_of(&events[1..]), ["g4"]);
}

/// Events of one path purged from within the stream (as `ssectl topic
/// purge --subject` does) are not served from node memory either: within a
/// topic refresh the node drops the topic's history, and a resume from
/// before them gets what the stream still holds, from JetStream.
#[tokio::test]
async fn a_paths_purged_events_held_in_memory_are_not_served_after_a_refresh() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "paths", None).await;
    let node = NodeProc::start(&nats.url(), &[("SSE_NATS__TOPIC_REFRESH_SECONDS", "1")]).await;
    let mut live = SseClient::connect(&node.url("/v1/events?topic=paths"), None)
        .await
        .unwrap();
    let start = live.ready().await;
    publish(&js, "paths.kept", "kept-1").await;
    publish(&js, "paths.gone", "gone").await;
    publish(&js, "paths.kept", "kept-2").await;
    assert_eq!(
        data_of(&live.take(3, T).await),
        ["kept-1", "gone", "kept-2"]
    );
    let memory_replays = || async {
        node.metric("sse_replay_events_total{source=\"memory\"}")
            .await
    };
    let from_memory = memory_replays().await;
    let mut before = SseClient::connect(&node.url("/v1/events?topic=paths"), Some(&start))
        .await
        .unwrap();
    assert_eq!(
        data_of(&before.take(3, T).await),
        ["kept-1", "gone", "kept-2"]
    );
    assert_eq!(
        memory_replays().await - from_memory,
        3.0,
        "replayed from memory"
    );

    let purged = js
        .get_stream("SSE_paths")
        .await
        .unwrap()
        .purge()
        .filter("sse.paths.gone")
        .await
        .unwrap();
    assert_eq!(purged.purged, 1);
    eventually(T, "the purged event to be gone from resumes", || async {
        let url = node.url("/v1/events?topic=paths");
        let mut probe = SseClient::connect(&url, Some(&start)).await.ok()?;
        let events = [
            probe.next_event(T).await.ok()??,
            probe.next_event(T).await.ok()??,
        ];
        (data_of(&events) == ["kept-1", "kept-2"]).then_some(())
    })
    .await;
    publish(&js, "paths.kept", "kept-3").await;
    assert_eq!(data_of(&live.take(1, T).await), ["kept-3"]);
}

#[tokio::test]
async fn a_cursor_past_the_stream_gets_reset_then_the_next_events() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "ahead", None).await;
    for i in 1..=3 {
        publish(&js, "ahead", &format!("held-{i}")).await;
    }
    let node = NodeProc::start(&nats.url(), &[]).await;
    let mut first = SseClient::connect(&node.url("/v1/events?topic=ahead"), None)
        .await
        .unwrap();
    let cursor = first.ready().await;
    assert!(cursor.ends_with(":3"), "{cursor}");

    // A cursor of the stream's epoch that it never reached: its sequences
    // cannot be trusted, as with another epoch. The client is told, gets
    // every event the stream holds, and goes on.
    let made_up = id_at(&cursor, 9);
    let mut client = SseClient::connect(&node.url("/v1/events?topic=ahead"), Some(&made_up))
        .await
        .unwrap();
    let events = client.take(4, T).await;
    let body = reset_body(&events[0]);
    assert_eq!(body["reason"], "ahead_of_stream");
    assert_eq!(body["topic"], "ahead");
    assert_eq!(body["last_seen"], 9);
    assert_eq!(body["stream_last"], 3);
    assert_eq!(body["resume_from"], 1);
    assert!(body["lost_from"].is_null(), "{body}");
    assert_eq!(events[0].id, id_at(&cursor, 0));
    assert_eq!(data_of(&events[1..]), ["held-1", "held-2", "held-3"]);
    assert_eq!(events[3].id, cursor);
    publish(&js, "ahead", "new-4").await;
    let next = client.take(1, T).await;
    assert_eq!(data_of(&next), ["new-4"]);
    assert_eq!(next[0].id, id_at(&cursor, 4));
    assert_eq!(data_of(&first.take(1, T).await), ["new-4"]);
    assert_eq!(node.metric("sse_reset_events_total").await, 1.0);

    // A cursor the stream holds is taken as it is, on a path too.
    let mut exact = SseClient::connect(&node.url("/v1/events?topic=ahead"), Some(&cursor))
        .await
        .unwrap();
    assert_eq!(data_of(&exact.take(1, T).await), ["new-4"]);
    assert_eq!(node.metric("sse_reset_events_total").await, 1.0);
}

/// A stream of several topics whose cursor is past each of their streams
/// waits for JetStream's second answer once, for all of them together: its
/// head comes about 2 s later, not 2 s per topic (8 s for these four), and
/// each topic gets its `reset`.
#[tokio::test]
async fn cursors_past_several_streams_are_confirmed_together() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    let topics = ["ahead1", "ahead2", "ahead3", "ahead4"];
    for topic in topics {
        create_topic(&js, topic, None).await;
        publish(&js, topic, &format!("{topic} held")).await;
    }
    let node = NodeProc::start(&nats.url(), &[]).await;
    let query = topics.map(|t| format!("topic={t}")).join("&");
    let url = node.url(&format!("/v1/events?{query}"));
    let cursor = SseClient::connect(&url, None).await.unwrap().ready().await;
    let made_up = cursor
        .split(',')
        .map(|id| id_at(id, 9))
        .collect::<Vec<_>>()
        .join(",");
    let asked = std::time::Instant::now();
    let mut client = SseClient::connect(&url, Some(&made_up)).await.unwrap();
    let events = client.take(8, T).await;
    let waited = asked.elapsed();
    let mut reset_topics: Vec<String> = events
        .iter()
        .filter(|e| e.event == "reset")
        .map(|e| {
            let body = reset_body(e);
            assert_eq!(body["reason"], "ahead_of_stream", "{body}");
            body["topic"].as_str().unwrap().to_owned()
        })
        .collect();
    reset_topics.sort();
    assert_eq!(reset_topics, topics);
    let mut held = data_of(&events);
    held.retain(|d| d.ends_with(" held"));
    assert_eq!(held.len(), 4, "{events:?}");
    assert!(
        waited < Duration::from_secs(5),
        "the four topics were confirmed one after another: {waited:?}"
    );
}

/// A topic whose limits keep fewer events than a node's feed is behind
/// (a burst while the feed was held up) loses its oldest events before the
/// feed reads them. Its live clients are not taken past them without a
/// word: their streams end, and each resumes from its id to a `reset` that
/// names what it lost. They went from the last event read to the oldest
/// one left, as if nothing had been published in between.
#[tokio::test]
async fn live_clients_are_told_of_events_that_left_before_the_feed_read_them() {
    const KEPT: u64 = 10;
    const BURST: u64 = 100;
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    // Read by a consumer all along: no republish for a dozing feed to hear.
    js.create_stream(async_nats::jetstream::stream::Config {
        max_messages: KEPT as i64,
        ..topic_without_republish("brief")
    })
    .await
    .unwrap();
    // Large events: the feed pulls about 1 MiB at a time, so NATS sends the
    // frozen node a few of the burst, and the rest leaves the stream.
    let payload = "b".repeat(64 * 1024);
    for _ in 0..5 {
        publish(&js, "brief", &payload).await;
    }
    let node = NodeProc::start(
        &nats.url(),
        &[
            ("SSE_DELIVERY__FEED_DOZE_SECONDS", "0"),
            ("SSE_DELIVERY__FEED_DIRECT_DOZE_SECONDS", "0"),
        ],
    )
    .await;
    let url = node.url("/v1/events?topic=brief");
    let mut client = SseClient::connect(&url, None).await.unwrap();
    let cursor = client.ready().await;
    assert!(cursor.ends_with(":5"), "{cursor}");
    node.freeze();
    publish_many(&js, BURST as usize, 20, |_| {
        ("sse.brief".to_owned(), payload.clone())
    })
    .await;
    node.thaw();
    let last = 5 + BURST;
    let seq = |event: &SseEvent| -> u64 { event.id.rsplit(':').next().unwrap().parse().unwrap() };
    let events = client
        .until_closed(T)
        .await
        .expect("the stream ends once its feed finds events gone unread");
    let read: Vec<u64> = events.iter().map(seq).collect();
    assert_eq!(
        read,
        (6..6 + read.len() as u64).collect::<Vec<_>>(),
        "no event passed over"
    );
    let seen = 5 + read.len() as u64;
    assert!(
        seen < last - KEPT,
        "the feed read the whole burst: {read:?}"
    );
    let resume_id = events.last().map_or(cursor.clone(), |e| e.id.clone());

    let mut resumed = SseClient::connect(&url, Some(&resume_id)).await.unwrap();
    let got = resumed.take(1 + KEPT as usize, T).await;
    let body = reset_body(&got[0]);
    assert_eq!(body["reason"], "history_gone", "{body}");
    assert_eq!(body["last_seen"], seen, "{body}");
    assert_eq!(body["lost_from"], seen + 1, "{body}");
    assert_eq!(body["lost_to"], last - KEPT, "{body}");
    assert_eq!(body["resume_from"], last - KEPT + 1, "{body}");
    assert_eq!(
        got[1..].iter().map(seq).collect::<Vec<_>>(),
        (last - KEPT + 1..=last).collect::<Vec<_>>()
    );
}

/// A `reset` that restarts a client at the oldest event held (a cursor
/// past the stream, or of another epoch) names that event and moves the
/// cursor to just before it: a client that drops before its next event
/// comes back to no second `reset` for events it was never going to get.
#[tokio::test]
async fn a_restart_reset_names_the_oldest_event_held_and_moves_the_cursor_there() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        max_messages: 5,
        republish: Some(sse_protocol::topic::live_republish("sse")),
        ..topic_without_republish("capped")
    })
    .await
    .unwrap();
    for i in 1..=10 {
        publish(&js, "capped", &format!("e-{i}")).await;
    }
    create_topic(&js, "gone", None).await;
    publish(&js, "gone", "old-1").await;
    let node = NodeProc::start(&nats.url(), &[]).await;
    let capped = SseClient::connect(&node.url("/v1/events?topic=capped"), None)
        .await
        .unwrap()
        .ready()
        .await;
    assert!(capped.ends_with(":10"), "{capped}");
    let url = node.url("/v1/events?topic=capped");
    let mut client = SseClient::connect(&url, Some(&id_at(&capped, 50)))
        .await
        .unwrap();
    let events = client.take(6, T).await;
    let body = reset_body(&events[0]);
    assert_eq!(body["reason"], "ahead_of_stream", "{body}");
    assert_eq!(body["resume_from"], 6, "{body}");
    assert_eq!(events[0].id, id_at(&capped, 5));
    assert_eq!(data_of(&events[1..]), ["e-6", "e-7", "e-8", "e-9", "e-10"]);

    // Deleted, created again, given three events and purged: the new
    // stream holds nothing and its next event is the fourth.
    let url = node.url("/v1/events?topic=gone");
    let old_gone = SseClient::connect(&url, None).await.unwrap().ready().await;
    js.delete_stream("SSE_gone").await.unwrap();
    create_topic(&js, "gone", None).await;
    for i in 1..=3 {
        publish(&js, "gone", &format!("new-{i}")).await;
    }
    js.get_stream("SSE_gone")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let new_gone = eventually(T, "the node to serve the new stream", || async {
        let mut client = SseClient::connect(&url, None).await.ok()?;
        let id = client.ready().await;
        (id.split(':').nth(1) != old_gone.split(':').nth(1)).then_some(id)
    })
    .await;
    assert!(new_gone.ends_with(":3"), "{new_gone}");
    let mut client = SseClient::connect(&url, Some(&old_gone)).await.unwrap();
    let events = client.take(1, T).await;
    let body = reset_body(&events[0]);
    assert_eq!(body["reason"], "stream_recreated", "{body}");
    assert_eq!(body["resume_from"], 4, "{body}");
    assert_eq!(events[0].id, new_gone);
    // Back before the next event, with the id the reset left.
    drop(client);
    let mut back = SseClient::connect(&url, Some(&new_gone)).await.unwrap();
    assert_eq!(back.ready().await, new_gone);
    publish(&js, "gone", "new-4").await;
    let events = back.take(1, T).await;
    assert_eq!(data_of(&events), ["new-4"], "no second reset");
    assert_eq!(node.metric("sse_reset_events_total").await, 2.0);

    // Once the new stream holds an event again, a client back with the
    // old epoch starts at it.
    let mut client = SseClient::connect(&url, Some(&old_gone)).await.unwrap();
    let events = client.take(2, T).await;
    let body = reset_body(&events[0]);
    assert_eq!(body["resume_from"], 4, "{body}");
    assert_eq!(events[0].id, new_gone);
    assert_eq!(data_of(&events[1..]), ["new-4"]);
}

/// A NATS server whose disk is restored from a backup holds its streams
/// as they were, created at the same time (so of the same epoch) but with
/// fewer events: the node's feed, past the stream's last event, closes
/// when it finds that out, and its clients come back to a reset and the
/// events stored from then on.
#[tokio::test]
async fn a_reading_feed_past_a_stream_restored_from_a_backup_closes_and_its_clients_get_reset() {
    feed_past_a_restored_stream(&[]).await;
}

/// The same with a feed that dozes: its look at JetStream once NATS is
/// back finds the stream behind it.
#[tokio::test]
async fn a_dozing_feed_past_a_stream_restored_from_a_backup_closes_and_its_clients_get_reset() {
    feed_past_a_restored_stream(&[
        ("SSE_DELIVERY__FEED_DOZE_SECONDS", "1"),
        ("SSE_DELIVERY__NO_PROGRESS_SECONDS", "60"),
    ])
    .await;
}

/// A NATS server with topic `topic`, three events published to `path`,
/// and a backup of the topic's stream taken then, the server stopped.
async fn topic_backed_up(topic: &str, path: &str) -> (Nats, tempfile::TempDir) {
    let mut nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, topic, None).await;
    for i in 1..=3 {
        publish(&js, path, &format!("kept-{i}")).await;
    }
    let backup = tempfile::tempdir().unwrap();
    nats.stop().await;
    nats.copy_stream_store(&format!("SSE_{topic}"), backup.path());
    nats.restart().await;
    (nats, backup)
}

/// Stops the server, puts `topic`'s stream back as `backup` holds it, and
/// starts the server again.
async fn restore_backup(nats: &mut Nats, topic: &str, backup: &tempfile::TempDir) {
    nats.stop().await;
    nats.put_back_stream_store(&format!("SSE_{topic}"), backup.path());
    nats.restart().await;
}

async fn feed_past_a_restored_stream(env: &[(&str, &str)]) {
    let (mut nats, backup) = topic_backed_up("restored", "restored").await;
    let js = nats.jetstream().await;
    let node = NodeProc::start(&nats.url(), env).await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=restored"), None)
        .await
        .unwrap();
    let cursor = client.ready().await;
    let dozing = if env.is_empty() { 0.0 } else { 1.0 };
    eventually(T, "the feed to read or doze", || async {
        (node.metric("sse_feeds_dozing").await == dozing).then_some(())
    })
    .await;
    assert!(cursor.ends_with(":3"), "{cursor}");
    publish(&js, "restored", "lost-4").await;
    publish(&js, "restored", "lost-5").await;
    let last_seen = client.take(2, T).await[1].id.clone();
    assert!(last_seen.ends_with(":5"), "{last_seen}");

    restore_backup(&mut nats, "restored", &backup).await;
    let js = nats.jetstream().await;
    let info = js.get_stream("SSE_restored").await.unwrap();
    assert_eq!(info.cached_info().state.last_sequence, 3);
    // The feed finds the stream behind it once NATS is back, and closes.
    let rest = client.until_closed(Duration::from_secs(20)).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let mut resumed = SseClient::connect(&node.url("/v1/events?topic=restored"), Some(&last_seen))
        .await
        .unwrap();
    let events = resumed.take(4, T).await;
    let body = reset_body(&events[0]);
    assert_eq!(body["reason"], "ahead_of_stream", "the same epoch: {body}");
    assert_eq!(body["last_seen"], 5);
    assert_eq!(body["stream_last"], 3);
    assert_eq!(body["resume_from"], 1);
    assert_eq!(data_of(&events[1..]), ["kept-1", "kept-2", "kept-3"]);
    // The restored stream numbers its next event 4: the client gets it.
    assert_eq!(publish(&js, "restored", "after-4").await, 4);
    let next = resumed.take(1, T).await;
    assert_eq!(data_of(&next), ["after-4"]);
    assert_eq!(next[0].id, id_at(&cursor, 4));
}

/// The same with a feed of one path that dozes, reading its events as the
/// stream republishes them: the first event it hears after the restore is
/// numbered at or below its head but stored after the head's event, so
/// the feed asks JetStream, finds the stream behind it and closes.
#[tokio::test]
async fn a_dozing_path_feed_hearing_a_restored_stream_closes_and_its_clients_get_reset() {
    let (mut nats, backup) = topic_backed_up("rewind", "rewind.a").await;
    let js = nats.jetstream().await;
    let node = NodeProc::start(
        &nats.url(),
        &[
            ("SSE_DELIVERY__FEED_DOZE_SECONDS", "1"),
            ("SSE_DELIVERY__NO_PROGRESS_SECONDS", "60"),
            ("SSE_NATS__TOPIC_REFRESH_SECONDS", "600"),
        ],
    )
    .await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=rewind.a"), None)
        .await
        .unwrap();
    client.ready().await;
    eventually(T, "the feed to doze", || async {
        (node.metric("sse_feeds_dozing").await == 1.0).then_some(())
    })
    .await;
    publish(&js, "rewind.a", "lost-4").await;
    publish(&js, "rewind.a", "lost-5").await;
    let last_seen = client.take(2, T).await[1].id.clone();

    restore_backup(&mut nats, "rewind", &backup).await;
    let js = nats.jetstream().await;
    eventually(T, "the node to be back on NATS", || async {
        (get(&node.url("/readyz"), None).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(publish(&js, "rewind.a", "after-4").await, 4);
    let rest = client.until_closed(Duration::from_secs(20)).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let mut resumed = SseClient::connect(&node.url("/v1/events?topic=rewind.a"), Some(&last_seen))
        .await
        .unwrap();
    let events = resumed.take(5, T).await;
    let body = reset_body(&events[0]);
    assert_eq!(body["reason"], "ahead_of_stream");
    assert_eq!(body["stream_last"], 4);
    assert_eq!(
        data_of(&events[1..]),
        ["kept-1", "kept-2", "kept-3", "after-4"]
    );
}

/// A stream restored through JetStream's API (`nats stream restore`) gets
/// a new creation time (nats-server 2.15.1): ids from before it are of
/// another epoch, and a client back with one gets `stream_recreated` and
/// every event the restored stream holds (docs/deploy.md, "Restoring NATS
/// from a backup").
#[tokio::test]
async fn a_stream_restored_through_jetstreams_api_is_another_epoch() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "snap", None).await;
    for i in 1..=3 {
        publish(&js, "snap", &format!("kept-{i}")).await;
    }
    let client = connect_to(&nats.url()).await.unwrap();
    let snapshot = snapshot_stream(&client, "SSE_snap").await;
    let node = NodeProc::start(&nats.url(), &[]).await;
    let mut before = SseClient::connect(&node.url("/v1/events?topic=snap"), None)
        .await
        .unwrap();
    before.ready().await;
    publish(&js, "snap", "lost-4").await;
    let last_seen = before.take(1, T).await[0].id.clone();

    js.delete_stream("SSE_snap").await.unwrap();
    restore_stream(&client, &snapshot).await;
    // A client back before the node heard of the deletion finds its stream
    // ended, as the old feed stops, and comes back again, as a browser does.
    let (mut resumed, reset) = eventually(T, "a stream of the restored topic", || async {
        let url = node.url("/v1/events?topic=snap");
        let mut resumed = SseClient::connect(&url, Some(&last_seen)).await.ok()?;
        let first = resumed.next_event(T).await.ok()??;
        Some((resumed, first))
    })
    .await;
    let mut events = vec![reset];
    events.extend(resumed.take(3, T).await);
    let body = reset_body(&events[0]);
    assert_eq!(body["reason"], "stream_recreated", "{body}");
    assert_eq!(data_of(&events[1..]), ["kept-1", "kept-2", "kept-3"]);
    assert_ne!(
        events[1].id.split(':').nth(1),
        last_seen.split(':').nth(1),
        "a new epoch"
    );
}

/// NATS restarts while a topic is busy: the node's feed re-creates its
/// consumer for the reconnection and does not count a stall, as the
/// watchdog's look at the stream, asked while NATS was away and answered
/// once it is back, would have it (`sse_feed_stalls_total` wakes an alert,
/// which a planned NATS restart must not). The client gets every event
/// once.
#[tokio::test]
async fn a_nats_restart_under_a_busy_topic_is_a_reconnection_not_a_stall() {
    const TOTAL: u64 = 300;
    let mut nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "busy", None).await;
    let node = NodeProc::start(&nats.url(), &[]).await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=busy"), None)
        .await
        .unwrap();
    client.ready().await;
    // 50 events a second, each retried with its de-duplication id until
    // JetStream has it, across the restart, by a publisher that is back on
    // NATS before the node (whose reconnections back off): the node's look
    // at the stream, asked while NATS was away, is answered with events it
    // has not read yet.
    let publisher_client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(20))
        .connect(nats.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(publisher_client);
    let publisher = tokio::spawn(async move {
        for n in 1..=TOTAL {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", n.to_string().as_str());
            loop {
                let sent = async {
                    js.publish_with_headers("sse.busy", headers.clone(), n.to_string().into())
                        .await?
                        .await
                };
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), sent).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut events = client.take(100, T).await;
    // An outage of some seconds, as a NATS server's restart takes.
    nats.restart_after(Duration::from_secs(5)).await;
    tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("the publisher ends")
        .unwrap();
    events.extend(
        client
            .take((TOTAL - 100) as usize, Duration::from_secs(30))
            .await,
    );
    let expected: Vec<String> = (1..=TOTAL).map(|n| n.to_string()).collect();
    assert_eq!(data_of(&events), expected);
    assert!(node.metric("sse_nats_reconnects_total").await >= 1.0);
    assert_eq!(node.metric("sse_feed_stalls_total").await, 0.0);
}
