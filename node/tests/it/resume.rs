//! Resume on another node: exactly the missing events, in order.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn resume_on_another_node_gets_exactly_the_missing_events() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "orders", None).await;
    let a = NodeProc::start(&nats.url(), &[]).await;
    let b = NodeProc::start(&nats.url(), &[]).await;

    let mut client = SseClient::connect(&a.url("/v1/events?topic=orders"), None)
        .await
        .unwrap();
    let first_cursor = client.ready().await;
    assert!(first_cursor.starts_with("orders:"), "{first_cursor}");
    for i in 0..5 {
        publish(&js, "orders.1", &format!("e{i}")).await;
    }
    let seen = client.take(3, T).await;
    assert_eq!(data_of(&seen), ["e0", "e1", "e2"]);
    let resume_id = seen[2].id.clone();
    drop(client);

    for i in 5..8 {
        publish(&js, "orders.1", &format!("e{i}")).await;
    }
    let mut resumed = SseClient::connect(&b.url("/v1/events?topic=orders"), Some(&resume_id))
        .await
        .unwrap();
    let events = resumed.take(5, T).await;
    assert_eq!(data_of(&events), ["e3", "e4", "e5", "e6", "e7"]);
    // Ids rise by one sequence each and carry the same epoch.
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e.id.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, [4, 5, 6, 7, 8]);
    // Then live, with no duplicate of what was replayed.
    publish(&js, "orders.2", "live").await;
    let live = resumed.take(1, T).await;
    assert_eq!(data_of(&live), ["live"]);
    // `lastEventId` in the query works like the header.
    let url = b.url(&format!(
        "/v1/events?topic=orders&lastEventId={}",
        events[3].id
    ));
    let mut by_query = SseClient::connect(&url, None).await.unwrap();
    assert_eq!(data_of(&by_query.take(2, T).await), ["e7", "live"]);
}

#[tokio::test]
async fn several_topics_and_wildcards_resume_with_a_composite_id() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "orders", None).await;
    create_topic(&js, "chat", None).await;
    let a = NodeProc::start(&nats.url(), &[]).await;
    let b = NodeProc::start(&nats.url(), &[]).await;
    let query = "/v1/events?topic=orders.*&topic=chat.room1.>";

    let mut client = SseClient::connect(&a.url(query), None).await.unwrap();
    let cursor = client.ready().await;
    assert_eq!(cursor.split(',').count(), 2, "{cursor}");
    publish(&js, "orders.1", "o1").await;
    publish(&js, "orders.1.deep", "not matched by orders.*").await;
    publish(&js, "chat.room1.alice", "c1").await;
    publish(&js, "chat.room2.bob", "not matched").await;
    let mut seen = client.take(2, T).await;
    // Across topics the order is by arrival; within a topic, stream order.
    let mut first_two = data_of(&seen);
    first_two.sort();
    assert_eq!(first_two, ["c1", "o1"]);
    // Every id names both topics.
    for event in &seen {
        let parts: Vec<&str> = event.id.split(',').collect();
        assert_eq!(parts.len(), 2, "{}", event.id);
        assert!(parts[0].starts_with("orders:") && parts[1].starts_with("chat:"));
    }
    let resume_id = seen[1].id.clone(); // covers o1 and c1
    publish(&js, "orders.2", "o2").await;
    seen = client.take(1, T).await;
    assert_eq!(data_of(&seen), ["o2"]);
    drop(client);

    publish(&js, "chat.room1.x.y", "c2").await;
    publish(&js, "orders.3", "o3").await;
    let mut resumed = SseClient::connect(&b.url(query), Some(&resume_id))
        .await
        .unwrap();
    let events = resumed.take(3, T).await;
    let mut got = data_of(&events);
    let orders: Vec<_> = got.iter().filter(|d| d.starts_with('o')).cloned().collect();
    assert_eq!(orders, ["o2", "o3"]);
    got.sort();
    assert_eq!(got, ["c2", "o2", "o3"]);
    assert!(
        resumed
            .next_event(Duration::from_millis(500))
            .await
            .is_err(),
        "no duplicate or extra event may follow"
    );
}

#[tokio::test]
async fn resume_is_served_from_memory_or_from_jetstream() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "feed", None).await;
    // `memory` keeps everything; `disk` keeps nothing in memory.
    let memory = NodeProc::start(&nats.url(), &[]).await;
    let disk = NodeProc::start(&nats.url(), &NO_MEMORY).await;
    let mut client = SseClient::connect(&memory.url("/v1/events?topic=feed"), None)
        .await
        .unwrap();
    let start = client.ready().await;
    for i in 0..20 {
        publish(&js, "feed", &format!("{i}")).await;
    }
    client.take(20, T).await;
    // The disk node has had no client of the topic: it reads nothing of it
    // until the resume below starts its feed.
    assert_eq!(disk.metric("sse_feeds_live").await, 0.0);
    assert_eq!(memory.metric("sse_feeds_live").await, 1.0);

    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    for (node, source) in [(&memory, "memory"), (&disk, "jetstream")] {
        let series = format!("sse_replay_events_total{{source=\"{source}\"}}");
        let before = node.metric(&series).await;
        let mut resumed = SseClient::connect(&node.url("/v1/events?topic=feed"), Some(&start))
            .await
            .unwrap();
        assert_eq!(data_of(&resumed.take(20, T).await), expected, "{source}");
        let after = node.metric(&series).await;
        assert_eq!(after - before, 20.0, "{source} served the replay");
        let other = if source == "memory" {
            "jetstream"
        } else {
            "memory"
        };
        let other_series = format!("sse_replay_events_total{{source=\"{other}\"}}");
        assert_eq!(
            node.metric(&other_series).await,
            0.0,
            "{other} was not used"
        );
    }
}

/// Resumes read JetStream about a mebibyte at a time, whatever the size
/// of the events: 12 resumes at once of a topic's 300 events of 64 KiB,
/// each from its start, hold tens of MiB. An ordered consumer pulls 500
/// events at a time: each resume had the whole 19 MiB topic in flight, a
/// node with 30 such resumes held a gigabyte, and NATS cut its connection
/// once 64 MiB waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_of_large_events_read_jetstream_a_little_at_a_time() {
    const EVENTS: usize = 300;
    const RESUMES: usize = 12;
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "big", None).await;
    let payload = "x".repeat(64 * 1024);
    publish_many(&js, EVENTS, 25, |i| {
        ("sse.big".to_owned(), format!("{i}:{payload}"))
    })
    .await;
    let node = NodeProc::start(&nats.url(), &NO_MEMORY).await;
    let url = node.url("/v1/events?topic=big");
    let head = SseClient::connect(&url, None).await.unwrap().ready().await;
    let from_start = id_at(&head, 0);
    let before = node.peak_rss_kib();
    let resumes = (0..RESUMES).map(|_| {
        let (url, from_start) = (url.clone(), from_start.clone());
        tokio::spawn(async move {
            let mut client = SseClient::connect(&url, Some(&from_start)).await.unwrap();
            client.take(EVENTS, Duration::from_secs(30)).await
        })
    });
    for events in futures_util::future::join_all(resumes).await {
        assert_each_once_in_order(&events.unwrap(), EVENTS as u64);
    }
    let grown_mib = (node.peak_rss_kib() - before) / 1024;
    assert!(
        grown_mib < 80,
        "{RESUMES} resumes of {EVENTS} events of 64 KiB grew the node by {grown_mib} MiB"
    );
    assert_eq!(node.metric("sse_nats_reconnects_total").await, 0.0);
}

#[tokio::test]
async fn a_client_of_one_path_hears_only_that_path_and_resumes_exactly() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "rooms", None).await;
    let a = NodeProc::start(&nats.url(), &[]).await;
    let b = NodeProc::start(&nats.url(), &NO_MEMORY).await;
    let mut one = SseClient::connect(&a.url("/v1/events?topic=rooms.r1"), None)
        .await
        .unwrap();
    let mut all = SseClient::connect(&a.url("/v1/events?topic=rooms.*"), None)
        .await
        .unwrap();
    one.ready().await;
    all.ready().await;
    for i in 0..6 {
        let room = if i % 2 == 0 { "r1" } else { "r2" };
        publish(&js, &format!("rooms.{room}"), &format!("{room}-{i}")).await;
    }
    let mine = one.take(2, T).await;
    assert_eq!(data_of(&mine), ["r1-0", "r1-2"]);
    assert_eq!(data_of(&all.take(6, T).await).len(), 6);
    let resume_id = mine[0].id.clone();
    drop(one);
    publish(&js, "rooms.r2", "r2-6").await;
    publish(&js, "rooms.r1", "r1-7").await;
    // From memory on `a`, from JetStream on `b`: the same events.
    for node in [&a, &b] {
        let mut resumed =
            SseClient::connect(&node.url("/v1/events?topic=rooms.r1"), Some(&resume_id))
                .await
                .unwrap();
        assert_eq!(data_of(&resumed.take(3, T).await), ["r1-2", "r1-4", "r1-7"]);
        assert!(
            resumed
                .next_event(Duration::from_millis(300))
                .await
                .is_err()
        );
    }
}

/// A resume read from JetStream deletes its consumer when it is done. NATS
/// would keep it for 30 s, and a stream holds 1,000 consumers by default
/// (NATS 2.15): a burst of resumes would fill the stream up, and every
/// resume after that would be refused.
#[tokio::test]
async fn jetstream_resumes_leave_no_consumer_behind() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "tidy", None).await;
    // The live client's feed keeps its consumer: a dozing one would read
    // this topic's few events without one.
    let node = NodeProc::start(
        &nats.url(),
        &[
            NO_MEMORY[0],
            NO_MEMORY[1],
            ("SSE_DELIVERY__FEED_DOZE_SECONDS", "0"),
        ],
    )
    .await;
    let mut live = SseClient::connect(&node.url("/v1/events?topic=tidy"), None)
        .await
        .unwrap();
    let start = live.ready().await;
    for i in 0..10 {
        publish(&js, "tidy", &format!("{i}")).await;
    }
    live.take(10, T).await;
    let consumers = || async {
        js.get_stream("SSE_tidy")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .consumer_count
    };
    // The live client's feed.
    assert_eq!(consumers().await, 1);
    let series = "sse_replay_events_total{source=\"jetstream\"}";
    for round in 1..=12 {
        let mut resumed = SseClient::connect(&node.url("/v1/events?topic=tidy"), Some(&start))
            .await
            .unwrap();
        assert_eq!(resumed.take(10, T).await.len(), 10);
        assert_eq!(node.metric(series).await, f64::from(round * 10));
    }
    // Well inside NATS's own 30 s expiry.
    eventually(T, "only the feed's consumer", || async {
        (consumers().await == 1).then_some(())
    })
    .await;
}

/// A stream of several topics waits on all of them at once and keeps its
/// place in each: bursts on three topics at the same time arrive whole,
/// once each, every topic in its stream order; the stream ends when one of
/// its topics is deleted.
#[tokio::test]
async fn a_stream_of_several_topics_gets_concurrent_bursts_once_in_each_topics_order() {
    const PER_TOPIC: usize = 300;
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    let names = ["red", "green", "blue"];
    for name in names {
        create_topic(&js, name, None).await;
    }
    let node = NodeProc::start(&nats.url(), &[("SSE_NATS__TOPIC_REFRESH_SECONDS", "2")]).await;
    let mut client = SseClient::connect(
        &node.url("/v1/events?topic=red&topic=green&topic=blue"),
        None,
    )
    .await
    .unwrap();
    client.ready().await;

    futures_util::future::join_all(names.map(|name| {
        let js = js.clone();
        async move {
            publish_many(&js, PER_TOPIC, 25, |i| {
                (format!("sse.{name}.x"), format!("{name}-{i}"))
            })
            .await;
        }
    }))
    .await;
    let events = client.take(3 * PER_TOPIC, T).await;

    // The position of an event's own topic in its id is that event's
    // sequence in the topic: 1, 2, … with nothing skipped or repeated.
    let mut next_seq = [1u64; 3];
    for event in &events {
        let topic = names
            .iter()
            .position(|n| event.data.starts_with(&format!("{n}-")))
            .unwrap_or_else(|| panic!("unexpected data {:?}", event.data));
        let positions: Vec<u64> = event
            .id
            .split(',')
            .map(|part| part.rsplit(':').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(positions.len(), 3, "{}", event.id);
        assert_eq!(
            positions[topic], next_seq[topic],
            "{} out of order: {}",
            names[topic], event.id
        );
        next_seq[topic] += 1;
    }
    assert_eq!(next_seq, [PER_TOPIC as u64 + 1; 3]);
    assert!(
        client.next_event(Duration::from_millis(300)).await.is_err(),
        "no event may follow"
    );
    // A lone event on each quiet topic arrives at once: the stream waits on
    // every topic, not only on its first (a heartbeat, 15 s away, would
    // otherwise be what delivers it).
    for name in ["green", "blue"] {
        publish(&js, &format!("{name}.x"), &format!("{name}-alone")).await;
        let lone = client.take(1, Duration::from_secs(3)).await;
        assert_eq!(data_of(&lone), [format!("{name}-alone")]);
    }

    js.delete_stream("SSE_green").await.unwrap();
    // The stream of both topics ends, naming the one deleted: the page
    // opens it again without that topic.
    let rest = client.until_closed(Duration::from_secs(15)).await.unwrap();
    assert_topics_deleted(&rest, &["green"]);
    // Opened again without it, with the last id seen (which still names
    // it), the stream goes on from there for the others.
    let last_id = rest[0].id.clone();
    publish(&js, "blue.x", "blue-after").await;
    let mut again =
        SseClient::connect(&node.url("/v1/events?topic=red&topic=blue"), Some(&last_id))
            .await
            .unwrap();
    assert_eq!(data_of(&again.take(1, T).await), ["blue-after"]);
    assert_eq!(
        node.metric("sse_connections_closed_total{reason=\"topic_closed\"}")
            .await,
        1.0
    );
}

/// Clients whose cursors the stream is known to hold cost JetStream no
/// question, even while their node's new feed still reads the events it
/// warms its history with (its head below their cursors): a reconnect
/// storm asks nothing per client. Cursors past what the node knows are
/// asked about once, and the answer serves the clients after them.
#[tokio::test]
async fn resumes_at_or_before_what_the_stream_is_known_to_hold_ask_jetstream_nothing() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "storm", None).await;
    publish_many(&js, 1000, 100, |i| ("sse.storm".into(), format!("e{i}"))).await;
    // No listing of the topics within the test: its requests would count.
    let quiet = [("SSE_NATS__TOPIC_REFRESH_SECONDS", "600")];
    let a = NodeProc::start(&nats.url(), &quiet).await;
    let last = SseClient::connect(&a.url("/v1/events?topic=storm"), None)
        .await
        .unwrap()
        .ready()
        .await;
    assert!(last.ends_with(":1000"), "{last}");
    // A node whose feed of the topic starts with the storm: it reads the
    // thousand events it warms its history with, its head below the
    // clients' cursor meanwhile.
    let b = NodeProc::start(&nats.url(), &quiet).await;
    let api_requests = || async { js.query_account().await.unwrap().requests.total };
    let before = api_requests().await;
    let url = b.url("/v1/events?topic=storm");
    let mut clients: Vec<SseClient> =
        futures_util::future::join_all((0..50).map(|_| SseClient::connect(&url, Some(&last))))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    publish(&js, "storm", "next").await;
    for client in &mut clients {
        assert_eq!(data_of(&client.take(1, T).await), ["next"]);
    }
    // The feed's start and consumer, and this query, count too.
    let asked = api_requests().await - before;
    assert!(asked <= 5, "{asked} JetStream API requests for 50 resumes");
}

/// Resumes that read JetStream share its read slots
/// (`history.max_concurrent_jetstream_reads`) by turns: clients that read
/// their catch-up slowly give their slots up to a waiting resume after a
/// turn, where they held them for as long as their catch-up took and every
/// other resume of the node waited behind them (closed by the no-progress
/// watchdog, again and again).
#[tokio::test]
async fn slow_resumes_take_turns_with_the_jetstream_read_slots() {
    const EVENTS: usize = 4000;
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "turns", None).await;
    let (node, from_start) = a_backlog_of_turns(&nats, EVENTS, 2).await;
    // Two clients take both slots and read 20 KiB a second, through small
    // socket buffers: their catch-up of 8 MiB would take minutes.
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(read_slowly(slow_resume(&node, "turns", &from_start).await));
    }
    jetstream_replays(&node, 2.0, "both slow resumes to read JetStream").await;
    // A third resume finds both slots taken, and gets one within a turn.
    let started = Instant::now();
    let mut normal = SseClient::connect(&node.url("/v1/events?topic=turns"), Some(&from_start))
        .await
        .unwrap();
    let events = normal.take(EVENTS, Duration::from_secs(30)).await;
    // Every stored event once, in the stream's order.
    assert_each_once_in_order(&events, EVENTS as u64);
    assert!(node.metric("sse_jetstream_read_waits_total").await >= 1.0);
    assert_eq!(
        node.metric("sse_connections_closed_total{reason=\"stalled\"}")
            .await,
        0.0,
        "the resume waited for no slot until the watchdog closed it ({:?})",
        started.elapsed()
    );
    for task in slow {
        task.abort();
    }
}

/// An HTTP/2 stream whose client stops reading in the middle of a catch-up
/// from JetStream gives its read slot up to a waiting resume after a turn.
/// hyper polls the response body only while the stream's window is open,
/// so such a stream would otherwise hold the slot for good, its connection
/// still moving, and every other resume of the node wait behind it.
#[tokio::test]
async fn an_http2_resume_whose_client_stops_reading_gives_its_jetstream_slot_up() {
    const EVENTS: usize = 2000;
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "shut", None).await;
    let payload = "w".repeat(2048);
    publish_many(&js, EVENTS, 100, |i| {
        ("sse.shut".to_owned(), format!("{i}:{payload}"))
    })
    .await;
    let node = NodeProc::start(
        &nats.url(),
        &[("SSE_HISTORY__MAX_CONCURRENT_JETSTREAM_READS", "1")],
    )
    .await;
    let from_start = id_from_start(&node, "shut").await;
    // A window of 64 KiB that the client never opens again: it does not
    // read the body. 4 MiB of catch-up stay behind it.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", node.port))
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .adaptive_window(false)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(node.url("/v1/events?topic=shut"))
        .header("last-event-id", &from_start)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let shut = sender.send_request(request).await.unwrap();
    assert_eq!(shut.status(), 200);
    jetstream_replays(&node, 1.0, "the unread resume to read JetStream").await;
    let mut normal = SseClient::connect(&node.url("/v1/events?topic=shut"), Some(&from_start))
        .await
        .unwrap();
    let events = normal.take(EVENTS, Duration::from_secs(30)).await;
    assert_each_once_in_order(&events, EVENTS as u64);
    assert!(node.metric("sse_jetstream_read_waits_total").await >= 1.0);
    assert_eq!(
        node.metric("sse_connections_closed_total{reason=\"stalled\"}")
            .await,
        0.0
    );
    drop(shut);
    connection.abort();
}

/// Events removed from a stream's start while a resume reads it from
/// JetStream (a purge, a cut of its limits, an expiry) are announced with a
/// `reset`, as they are when gone before the resume: the read passed over
/// them without a word, and a client went from an event of the first
/// thousands to the first one published after the purge.
#[tokio::test]
async fn events_purged_while_a_resume_reads_them_get_a_reset() {
    const EVENTS: usize = 2000;
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "cut", None).await;
    let payload = "z".repeat(2048);
    publish_many(&js, EVENTS, 100, |_| {
        ("sse.cut".to_owned(), payload.clone())
    })
    .await;
    // No history in memory: the whole catch-up reads JetStream.
    let node = NodeProc::start(
        &nats.url(),
        &[
            ("SSE_HISTORY__WARM_EVENTS", "0"),
            ("SSE_HISTORY__MAX_EVENTS_PER_TOPIC", "1"),
        ],
    )
    .await;
    let from_start = id_from_start(&node, "cut").await;
    // A client that reads slowly, through a small socket buffer: most of
    // its catch-up is still to be read when the stream is purged.
    let mut stream = slow_resume(&node, "cut", &from_start).await;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while received.len() < 200 * 1024 {
        let n = tokio::time::timeout(T, tokio::io::AsyncReadExt::read(&mut stream, &mut buf))
            .await
            .expect("the catch-up goes on")
            .unwrap();
        assert!(n > 0, "closed early");
        received.extend_from_slice(&buf[..n]);
    }
    js.get_stream("SSE_cut")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    for i in 1..=3 {
        publish(&js, "cut", &format!("after-{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !received.ends_with(b"data: after-3\n\n")
        && !String::from_utf8_lossy(&received[received.len().saturating_sub(64 * 1024)..])
            .contains("data: after-3\n")
    {
        assert!(Instant::now() < deadline, "after-3 did not come");
        let n = tokio::time::timeout(T, tokio::io::AsyncReadExt::read(&mut stream, &mut buf))
            .await
            .expect("the stream goes on")
            .unwrap();
        assert!(n > 0, "closed before after-3");
        received.extend_from_slice(&buf[..n]);
    }
    let body_at = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let body = bytes::Bytes::copy_from_slice(&received[body_at..]);
    let mut client = SseClient::from_body(
        Default::default(),
        futures_util::stream::iter([Ok(body)]).boxed(),
    );
    let events = client.until_closed(T).await.unwrap();
    let resets: Vec<_> = events.iter().filter(|e| e.event == "reset").collect();
    assert_eq!(resets.len(), 1, "one reset for the purged events");
    let reset: serde_json::Value = serde_json::from_str(&resets[0].data).unwrap();
    assert_eq!(reset["reason"], "history_gone", "{reset}");
    let at = events.iter().position(|e| e.event == "reset").unwrap();
    // Every event before the reset once, in order, from the first; the
    // reset names the rest as lost; then the events published after.
    let before: Vec<u64> = events[..at]
        .iter()
        .map(|e| e.id.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(before, (1..=before.len() as u64).collect::<Vec<_>>());
    assert!(
        before.len() < EVENTS,
        "the purge came after the whole catch-up"
    );
    assert_eq!(reset["last_seen"], before.len());
    assert_eq!(reset["lost_from"], before.len() + 1);
    assert_eq!(reset["lost_to"], EVENTS);
    assert_eq!(reset["resume_from"], EVENTS + 1);
    assert_eq!(
        data_of(&events[at + 1..]),
        ["after-1", "after-2", "after-3"]
    );
}

/// A stream of several topics whose cursor for one of them needs a `reset`
/// (another epoch) sends it at that topic's turn in the catch-up, after
/// the topics before it. Until then its cursor keeps the client's position
/// on that topic: it named the new epoch from the first frame, and a
/// client that dropped before the `reset` came back with it and never
/// heard that its position was of a deleted stream.
#[tokio::test]
async fn a_reset_that_waits_its_turn_leaves_the_clients_position_in_the_cursor() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "first", None).await;
    create_topic(&js, "again", None).await;
    for i in 1..=3 {
        publish(&js, "first", &format!("e{i}")).await;
    }
    publish(&js, "again", "new-1").await;
    let node = NodeProc::start(&nats.url(), &[]).await;
    let query = "/v1/events?topic=first&topic=again";
    // Once both feeds know their topic's last event: a feed that knows of
    // none yet sends a `reset` at once, rightly, as of a stream that has
    // held nothing, and the reset would not wait its turn.
    let live = eventually(T, "both feeds to know their heads", || async {
        let mut probe = SseClient::connect(&node.url(query), None).await.ok()?;
        let live = probe.ready().await;
        let (first, again) = live.split_once(',')?;
        (first.ends_with(":3") && again.ends_with(":1")).then_some(live)
    })
    .await;
    let (first, again) = live.split_once(',').unwrap();
    let new_epoch = again.split(':').nth(1).unwrap();
    let id = format!("{},again:zzz:2", id_at(first, 0));

    let mut resumed = SseClient::connect(&node.url(query), Some(&id))
        .await
        .unwrap();
    let events = resumed.take(5, T).await;
    assert_eq!(data_of(&events[..3]), ["e1", "e2", "e3"]);
    // The position on `again` is kept until its reset.
    for event in &events[..3] {
        assert!(event.id.ends_with(",again:zzz:2"), "{}", event.id);
    }
    assert_eq!(events[3].event, "reset", "{:?}", events[3]);
    let reset: serde_json::Value = serde_json::from_str(&events[3].data).unwrap();
    assert_eq!(reset["reason"], "stream_recreated", "{reset}");
    assert_eq!(reset["topic"], "again");
    assert_eq!(reset["old_epoch"], "zzz");
    assert_eq!(reset["last_seen"], 2);
    assert_eq!(events[4].data, "new-1");
    assert!(
        events[4].id.ends_with(&format!(",again:{new_epoch}:1")),
        "{}",
        events[4].id
    );
}

/// The id of `topic`'s position before its first event, on `node`.
/// The same turns for resumes that read by direct gets, their stream at
/// its consumer limit: a direct read holds no consumer between its gets,
/// so a slow client's slot goes to a waiting resume after a get, where it
/// kept it for as long as its writes stayed blocked.
#[tokio::test]
async fn slow_resumes_by_direct_gets_take_turns_with_the_jetstream_read_slots() {
    const EVENTS: usize = 4000;
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        max_consumers: 1,
        republish: Some(sse_protocol::topic::live_republish("sse")),
        ..topic_without_republish("turns")
    })
    .await
    .expect("create stream");
    // Another reader holds the stream's one consumer.
    js.create_consumer_on_stream(
        async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("other".into()),
            ..Default::default()
        },
        "SSE_turns",
    )
    .await
    .expect("another reader's consumer");
    let (node, from_start) = a_backlog_of_turns(&nats, EVENTS, 1).await;
    // A client takes the slot and reads 20 KiB a second, through a small
    // socket buffer: its catch-up of 8 MiB would take minutes.
    let slow = read_slowly(slow_resume(&node, "turns", &from_start).await);
    jetstream_replays(&node, 1.0, "the slow resume to read JetStream").await;
    // A second resume finds the slot taken, and gets it after a get.
    let mut normal = SseClient::connect(&node.url("/v1/events?topic=turns"), Some(&from_start))
        .await
        .unwrap();
    let events = normal.take(EVENTS, Duration::from_secs(15)).await;
    assert_each_once_in_order(&events, EVENTS as u64);
    assert!(node.metric("sse_jetstream_read_waits_total").await >= 1.0);
    // Read without a consumer (else this test no longer tests what it says).
    assert_eq!(node.metric("sse_jetstream_consumers").await, 0.0);
    for reason in ["stalled", "slow"] {
        assert_eq!(
            node.metric(&format!(
                "sse_connections_closed_total{{reason=\"{reason}\"}}"
            ))
            .await,
            0.0,
            "{reason}"
        );
    }
    slow.abort();
}

async fn id_from_start(node: &NodeProc, topic: &str) -> String {
    let mut probe = SseClient::connect(&node.url(&format!("/v1/events?topic={topic}")), None)
        .await
        .unwrap();
    id_at(&probe.ready().await, 0)
}

/// Publishes `events` events of 2 KiB to topic `turns`, then starts a node
/// with `slots` JetStream read slots; returns it and an id from the
/// topic's start.
async fn a_backlog_of_turns(nats: &Nats, events: usize, slots: u32) -> (NodeProc, String) {
    let js = nats.jetstream().await;
    let payload = "z".repeat(2048);
    publish_many(&js, events, 100, |i| {
        ("sse.turns".to_owned(), format!("{i}:{payload}"))
    })
    .await;
    let slots = slots.to_string();
    let node = NodeProc::start(
        &nats.url(),
        &[("SSE_HISTORY__MAX_CONCURRENT_JETSTREAM_READS", &slots)],
    )
    .await;
    let from_start = id_from_start(&node, "turns").await;
    (node, from_start)
}

/// Reads `stream` a kibibyte every 50 ms, about 20 KiB a second, until it
/// ends.
fn read_slowly(mut stream: tokio::net::TcpStream) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        while matches!(
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await,
            Ok(n) if n > 0
        ) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Waits until `node` has replayed at least `events` events from JetStream.
async fn jetstream_replays(node: &NodeProc, events: f64, what: &str) {
    eventually(T, what, || async {
        (node
            .metric("sse_replay_events_total{source=\"jetstream\"}")
            .await
            >= events)
            .then_some(())
    })
    .await;
}

/// A resume of `topic` from `last_event_id` over a socket with a 4 KiB
/// receive buffer, its response not read yet: a client that reads slowly.
async fn slow_resume(node: &NodeProc, topic: &str, last_event_id: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(format!("127.0.0.1:{}", node.port).parse().unwrap())
        .await
        .unwrap();
    let request = format!(
        "GET /v1/events?topic={topic} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {last_event_id}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}
