//! Parked streams: a lean-path stream in step with its topic leaves its
//! socket with the topic feed's writer, which writes each batch of events
//! to every parked socket. What a parked stream must still be: exact (no
//! event lost, repeated or cut), filtered to what it asked for, kept alive by
//! heartbeats, ended on time, and given back whole when its socket fills up.

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    lean::{Cert, cert_metric, events_from, raw_get, served},
    support::*,
};

const T: Duration = Duration::from_secs(15);
/// Parking, set explicitly so that these tests do not depend on the default.
pub(crate) const PARK: (&str, &str) = ("SSE_DELIVERY__PARK_STREAMS", "true");

async fn parked(node: &NodeProc) -> f64 {
    node.metric("sse_streams_parked").await
}

async fn wait_parked(node: &NodeProc, count: f64) {
    eventually(T, &format!("{count} streams to park"), || async {
        (parked(node).await == count).then_some(())
    })
    .await;
}

/// Clients of the whole topic, of one path, of a wildcard and of several
/// patterns park. All get exactly their events, in order, each with its
/// own id, and park again after each burst.
#[tokio::test]
async fn streams_in_step_are_written_by_their_feed_and_lose_nothing() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "park", None).await;
    let node = NodeProc::start(&nats.url(), &[PARK]).await;
    let connect = |query: &'static str| {
        let url = node.url(&format!("/v1/events?{query}"));
        async move {
            let mut client = SseClient::connect(&url, None).await.unwrap();
            client.ready().await;
            client
        }
    };
    let mut whole = Vec::new();
    for _ in 0..3 {
        whole.push(connect("topic=park").await);
    }
    let mut one_path = Vec::new();
    for _ in 0..2 {
        one_path.push(connect("topic=park.a").await);
    }
    // `park.*` takes park.a and park.b but not park.c.x; the patterns take
    // park.b and park.c.x but not park.a.
    let mut wildcard = connect("topic=park.*").await;
    let mut patterns = connect("topic=park.b&topic=park.c.*").await;
    let clients = 7.0;
    wait_parked(&node, clients).await;

    let total = 300;
    let path_of = |i: usize| ["park.a", "park.b", "park.c.x", "park.b"][i % 4];
    let mut sequences = Vec::new();
    for i in 0..total {
        sequences.push(publish(&js, path_of(i), &format!("e{i}")).await);
    }
    let expect = |takes: &dyn Fn(&str) -> bool| -> (Vec<String>, Vec<u64>) {
        (0..total)
            .filter(|i| takes(path_of(*i)))
            .map(|i| (format!("e{i}"), sequences[i]))
            .unzip()
    };
    let check = |events: &[SseEvent], (data, seqs): &(Vec<String>, Vec<u64>)| {
        assert_eq!(&data_of(events), data);
        let ids: Vec<u64> = events.iter().map(|e| seq_of(&e.id)).collect();
        assert_eq!(&ids, seqs, "each event carries its own id");
    };
    let all = expect(&|_| true);
    let of_a = expect(&|path| path == "park.a");
    let of_wildcard = expect(&|path| path != "park.c.x");
    let of_patterns = expect(&|path| path != "park.a");
    for client in &mut whole {
        check(&client.take(total, T).await, &all);
    }
    for client in &mut one_path {
        check(&client.take(of_a.0.len(), T).await, &of_a);
    }
    check(&wildcard.take(of_wildcard.0.len(), T).await, &of_wildcard);
    check(&patterns.take(of_patterns.0.len(), T).await, &of_patterns);
    // Nothing more than asked for: after an event only the whole topic and
    // the patterns take, a marker is the next event each of them sees.
    publish(&js, "park.c.x", "not for the wildcard").await;
    publish(&js, "park.b", "last").await;
    for client in &mut whole {
        assert_eq!(data_of(&client.take(1, T).await), ["not for the wildcard"]);
    }
    assert_eq!(data_of(&wildcard.take(1, T).await), ["last"]);
    assert_eq!(
        data_of(&patterns.take(2, T).await),
        ["not for the wildcard", "last"]
    );
    wait_parked(&node, clients).await;
    let delivered = node.metric("sse_events_delivered_total").await;
    let expected = 3 * total + 2 * of_a.0.len() + of_wildcard.0.len() + of_patterns.0.len();
    assert!(delivered >= expected as f64, "{delivered} < {expected}");
}

/// A burst that one stream cannot keep up with moves the feed to its
/// larger channel while the other streams are parked. The writer goes on
/// from the new channel: every stream that reads gets every event exactly,
/// parks again, and gets what is published after. A writer that lost the
/// new channel would stop, and the streams parked again after it would get
/// heartbeats only.
#[tokio::test]
async fn a_burst_that_grows_the_feeds_channel_leaves_no_parked_stream_behind() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "grow", None).await;
    let node = NodeProc::start(&nats.url(), &[PARK]).await;
    let url = node.url("/v1/events?topic=grow");
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = SseClient::connect(&url, None).await.unwrap();
        client.ready().await;
        clients.push(client);
    }
    // Reads nothing once connected: its socket fills, its stream takes it
    // back and falls behind on the feed's channel, which then grows.
    let mut stuck = slow_reader(node.port, "/v1/events?topic=grow")
        .await
        .unwrap();
    stuck.ready().await;
    wait_parked(&node, 5.0).await;
    let payload = "x".repeat(16 * 1024);
    let mut published = 0;
    let mut bursts_after_the_stuck_one_left = 0;
    // Bursts until the stuck socket is full and its stream took it back,
    // then one more while that stream waits on it.
    while bursts_after_the_stuck_one_left < 2 {
        assert!(published < 10_000, "the stuck socket never filled");
        let burst = 100;
        // Published at once, so they are stored in no particular order.
        publish_many(&js, burst, burst, |i| {
            (
                "sse.grow.a".to_owned(),
                format!("{:05}{payload}", published + i),
            )
        })
        .await;
        let expected: Vec<String> = (published..published + burst)
            .map(|i| format!("{i:05}"))
            .collect();
        published += burst;
        let mut first = None;
        for client in &mut clients {
            let events = client.take(burst, T).await;
            let ids: Vec<u64> = events.iter().map(|e| seq_of(&e.id)).collect();
            assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids {ids:?}");
            let data = data_of(&events);
            // Every client gets the events in the stream's one order.
            assert!(
                *first.get_or_insert_with(|| data.clone()) == data,
                "clients differ in order"
            );
            let mut got: Vec<&str> = data.iter().map(|d| &d[..5]).collect();
            got.sort_unstable();
            assert_eq!(got, expected);
        }
        if bursts_after_the_stuck_one_left > 0 || parked(&node).await < 5.0 {
            bursts_after_the_stuck_one_left += 1;
        }
    }
    wait_parked(&node, 4.0).await;
    drop(stuck);
    // After the bursts, single events still reach the parked streams.
    for i in 0..5 {
        publish(&js, "grow.a", &format!("after-{i}")).await;
        for client in &mut clients {
            assert_eq!(data_of(&client.take(1, T).await), [format!("after-{i}")]);
        }
    }
}

/// A parked socket whose client reads slowly fills up: the writer gives it
/// back with what it did not take, the stream writes that itself, catches
/// up and parks again. The client gets every event whole, once, in order.
#[tokio::test]
async fn a_parked_socket_that_fills_up_is_given_back_and_its_stream_stays_whole() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "bulk", None).await;
    let node = NodeProc::start(
        &nats.url(),
        &[PARK, ("SSE_DELIVERY__WRITE_STALL_SECONDS", "30")],
    )
    .await;
    let mut slow = slow_reader(node.port, "/v1/events?topic=bulk")
        .await
        .unwrap();
    slow.ready().await;
    wait_parked(&node, 1.0).await;

    let _still_open = bulk_reaches_a_slow_reader(&js, slow, 400).await;
    assert!(
        node.metric("sse_parked_refusals_total").await >= 1.0,
        "the socket never filled up: the test did not test a give-back"
    );
    wait_parked(&node, 1.0).await;
    assert_eq!(
        node.metric("sse_connections_closed_total{reason=\"slow\"}")
            .await,
        0.0
    );
}

/// A parked stream on a quiet topic still gets its heartbeats, and ends at
/// the end of its lifetime with a retry hint.
#[tokio::test]
async fn a_parked_stream_gets_heartbeats_and_ends_on_time() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "quiet", None).await;
    let node = NodeProc::start(
        &nats.url(),
        &[
            PARK,
            ("SSE_HTTP__HEARTBEAT_SECONDS", "1"),
            ("SSE_HTTP__MAX_CONNECTION_LIFETIME_SECONDS", "4"),
        ],
    )
    .await;
    let mut client = SseClient::connect(&node.url("/v1/events?topic=quiet"), None)
        .await
        .unwrap();
    client.ready().await;
    wait_parked(&node, 1.0).await;
    let heartbeats_before = node.metric("sse_heartbeats_total").await;
    let events = client.until_closed(Duration::from_secs(10)).await.unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert!(client.comments >= 3, "heartbeats: {}", client.comments);
    assert!(node.metric("sse_heartbeats_total").await >= heartbeats_before + 2.0);
    assert!(client.retry.is_some());
    wait_ended_unparked(&node, "lifetime", 1).await;
}

/// A stream is never silent for longer than `http.heartbeat_seconds`,
/// whatever its events do: an event a moment after a heartbeat moves the
/// next one to a period after that event, where it used to wait for the
/// period after that (almost twice the heartbeat of silence, past a proxy's
/// idle timeout set just above it). Parked (its feed's writer writes the
/// events) and on hyper's path (`http.fast_path` off: the stream's own
/// task writes them) alike.
#[tokio::test]
async fn a_stream_is_never_silent_for_longer_than_its_heartbeat() {
    const HEARTBEAT: Duration = Duration::from_secs(2);
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "beat", None).await;
    let heartbeat = ("SSE_HTTP__HEARTBEAT_SECONDS", "2");
    let parking = NodeProc::start(&nats.url(), &[PARK, heartbeat]).await;
    let hyper = NodeProc::start(&nats.url(), &[("SSE_HTTP__FAST_PATH", "false"), heartbeat]).await;
    for (name, node) in [("parked", &parking), ("hyper", &hyper)] {
        let mut socket = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
        socket
            .write_all(b"GET /v1/events?topic=beat HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        // Each read, with when it came.
        let (reads, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n @ 1..) = socket.read(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if reads.send((tokio::time::Instant::now(), text)).is_err() {
                    break;
                }
            }
        });
        let mut next = async || {
            tokio::time::timeout(T, arrivals.recv())
                .await
                .expect("bytes within the timeout")
                .expect("an open stream")
        };
        let mut seen = String::new();
        while !seen.contains(": ok") {
            seen.push_str(&next().await.1);
        }
        if name == "parked" {
            wait_parked(node, 1.0).await;
        }
        // A heartbeat; the first event right after it, the second a moment
        // later, each written by the feed's writer to a parked stream (whose
        // first pass after the stream parked does not count as a write).
        let (mut last, beat) = next().await;
        assert!(
            beat.contains(": hb\n\n"),
            "{name}: a heartbeat, not {beat:?}"
        );
        for (i, pause) in [Duration::ZERO, Duration::from_millis(300)]
            .into_iter()
            .enumerate()
        {
            tokio::time::sleep(pause).await;
            publish(&js, "beat", &format!("{name}-{i}")).await;
            let (at, text) = next().await;
            assert!(
                text.contains(&format!("data: {name}-{i}")),
                "{name}: {text:?}"
            );
            last = at;
        }
        // Then nothing but heartbeats, each at most a heartbeat after the
        // last bytes.
        let until = last + 3 * HEARTBEAT;
        let mut beats = 0;
        while last < until {
            let (at, text) = next().await;
            assert!(
                text.contains(": hb\n\n"),
                "{name}: a heartbeat, not {text:?}"
            );
            let silence = at - last;
            assert!(
                silence <= HEARTBEAT + Duration::from_millis(400),
                "{name}: {silence:?} without a byte, heartbeat {HEARTBEAT:?}"
            );
            last = at;
            beats += 1;
        }
        assert!(beats >= 3, "{name}: {beats} heartbeats");
        reader.abort();
    }
}

/// A stream of several topics parks on the one it has heard from alone for
/// a while; that topic's writer writes each event with the stream's cursor
/// over both topics. An event of the other topic after a run of the busy
/// one goes through the parked socket, and the stream stays parked. When
/// the topics take turns, it takes the socket back and keeps it. Every id
/// is exact: its own topic's position is the event's sequence, the other's
/// is the last event of that topic the client got. Resuming from the last
/// id gets exactly what was published while away.
#[tokio::test]
async fn a_stream_of_several_topics_parks_on_its_busy_topic_with_exact_ids() {
    several_topics_park_on_the_busy_one("busy").await;
}

/// The same, the busy topic read at one path: the stream parks on its
/// path, and the writer's run counts the events it wrote to the socket.
#[tokio::test]
async fn a_stream_of_a_path_and_a_topic_parks_on_its_busy_path_with_exact_ids() {
    several_topics_park_on_the_busy_one("busy.x").await;
}

/// A stream of several topics whose busy topic it reads with a wildcard
/// parks on that topic's events that match. Events of the busy topic that
/// do not match are never written. Each id carries the busy topic at the
/// event's own sequence; an event of the calm topic, written through the
/// parked socket, carries the busy topic where the client's last event of
/// it left it or later, never past the next one it gets. Resuming from the
/// last id gets exactly what matched while away.
#[tokio::test]
async fn a_stream_of_a_wildcard_and_a_topic_parks_on_its_busy_wildcard_with_exact_ids() {
    busy_patterns_and_a_calm_topic_park("topic=busy.x.*&topic=calm").await;
}

/// The same with the busy topic read at several paths.
#[tokio::test]
async fn a_stream_of_several_paths_and_a_topic_parks_on_its_busy_paths_with_exact_ids() {
    busy_patterns_and_a_calm_topic_park("topic=busy.x.a&topic=busy.x.b&topic=calm").await;
}

/// A stream of `query`, which reads `busy.x.a` but not `busy.y.a` of the
/// topic `busy`, and the topic `calm` whole: see above.
async fn busy_patterns_and_a_calm_topic_park(query: &str) {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "busy", None).await;
    create_topic(&js, "calm", None).await;
    let node = NodeProc::start(&nats.url(), &[PARK]).await;
    let url = node.url(&format!("/v1/events?{query}"));
    let mut client = SseClient::connect(&url, None).await.unwrap();
    client.ready().await;

    // Each event the client must get, by its data: its topic (0 busy,
    // 1 calm) and its sequence there.
    let mut published: Vec<(String, usize, u64)> = Vec::new();
    let mut got = Vec::new();
    let busy_run = async |round: usize, count: usize, published: &mut Vec<(String, usize, u64)>| {
        for i in 0..count {
            let data = format!("busy-{round}-{i}");
            let seq = publish(&js, "busy.x.a", &data).await;
            published.push((data, 0, seq));
            // Not the client's: `busy.x.*` does not take `busy.y.a`.
            publish(&js, "busy.y.a", &format!("other-{round}-{i}")).await;
        }
    };
    // Runs long enough to park on: only what the stream writes live counts,
    // not what it caught up on while the feed started.
    for round in 0..10 {
        busy_run(round, 10, &mut published).await;
        got.extend(client.take(10, T).await);
        if round >= 3 && parked(&node).await == 1.0 {
            break;
        }
    }
    wait_parked(&node, 1.0).await;
    for round in 10..13 {
        busy_run(round, 20, &mut published).await;
        got.extend(client.take(20, T).await);
        let data = format!("calm-{round}");
        let seq = publish(&js, "calm.x", &data).await;
        published.push((data, 1, seq));
        got.extend(client.take(1, T).await);
        assert_eq!(
            parked(&node).await,
            1.0,
            "the calm topic's event took the socket back"
        );
        // A run of the busy topic again before the next calm event.
        busy_run(round + 10, 40, &mut published).await;
        got.extend(client.take(40, T).await);
    }
    assert_eq!(parked(&node).await, 1.0);

    assert_eq!(
        data_of(&got),
        published
            .iter()
            .map(|(d, _, _)| d.clone())
            .collect::<Vec<_>>(),
        "every matching event once, in order, and no other"
    );
    assert_wildcard_cursors(&got, &published, [0, 0]);

    // Away: resuming from the last id gets exactly what matched meanwhile.
    let last_id = got.last().unwrap().id.clone();
    drop(client);
    let mut away = Vec::new();
    busy_run(30, 5, &mut away).await;
    let seq = publish(&js, "calm.x", "calm-away").await;
    away.push(("calm-away".to_owned(), 1, seq));
    let mut back = SseClient::connect(&url, Some(&last_id)).await.unwrap();
    let missed = back.take(6, T).await;
    assert!(
        back.next_event(Duration::from_millis(300)).await.is_err(),
        "no event may follow"
    );
    // A resume catches up topic by topic: each topic's events in their
    // order, the two topics' in any order with each other.
    let of_topic = |topic: usize, events: &[(String, usize, u64)]| -> Vec<String> {
        events
            .iter()
            .filter(|(_, t, _)| *t == topic)
            .map(|(d, _, _)| d.clone())
            .collect()
    };
    let as_got: Vec<(String, usize, u64)> = data_of(&missed)
        .into_iter()
        .map(|data| {
            away.iter()
                .find(|(d, _, _)| *d == data)
                .cloned()
                .unwrap_or_else(|| panic!("{data} was not published while away"))
        })
        .collect();
    for topic in [0, 1] {
        assert_eq!(of_topic(topic, &as_got), of_topic(topic, &away));
    }
    let last = positions(&last_id);
    assert_wildcard_cursors(&missed, &as_got, [last[0], last[1]]);
}

/// Checks the ids of `events`, which must be `published` (data, topic,
/// sequence) in order, starting from the positions `from`: each carries its
/// own topic at its sequence; the calm topic (1) stands exactly at the last
/// calm event got; the busy topic (0), read with a wildcard, stands at or
/// after the last busy event got and before the next one the client gets.
fn assert_wildcard_cursors(
    events: &[SseEvent],
    published: &[(String, usize, u64)],
    from: [u64; 2],
) {
    let mut seen = from;
    for (n, event) in events.iter().enumerate() {
        let (_, own, seq) = &published[n];
        let at = positions(&event.id);
        assert_eq!(at.len(), 2, "{}", event.id);
        assert_eq!(at[*own], *seq, "{} at {}", event.data, event.id);
        if *own == 0 {
            assert_eq!(at[1], seen[1], "{} at {}", event.data, event.id);
        } else {
            let next_busy = published[n..]
                .iter()
                .find(|(_, topic, _)| *topic == 0)
                .map_or(u64::MAX, |(_, _, seq)| *seq);
            assert!(
                at[0] >= seen[0] && at[0] < next_busy,
                "{} at {}: the busy topic at {}, after {} and before {next_busy}",
                event.data,
                event.id,
                at[0],
                seen[0]
            );
        }
        seen[*own] = *seq;
    }
}

async fn several_topics_park_on_the_busy_one(busy: &str) {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "busy", None).await;
    create_topic(&js, "calm", None).await;
    let node = NodeProc::start(&nats.url(), &[PARK]).await;
    let url = node.url(&format!("/v1/events?topic={busy}&topic=calm"));
    let mut client = SseClient::connect(&url, None).await.unwrap();
    client.ready().await;
    assert_eq!(parked(&node).await, 0.0, "parked before any run of events");

    let mut got = Vec::new();
    // A run long enough to park on.
    for i in 0..40 {
        publish(&js, "busy.x", &format!("busy-0-{i}")).await;
    }
    got.extend(client.take(40, T).await);
    wait_parked(&node, 1.0).await;
    for round in 0..3 {
        // Events for the writer alone, then one of the calm topic, which
        // goes through the parked socket: a stream that took its socket
        // back would be counted unparked as it writes the event.
        for i in 40..60 {
            publish(&js, "busy.x", &format!("busy-{round}-{i}")).await;
        }
        got.extend(client.take(20, T).await);
        publish(&js, "calm.x", &format!("calm-{round}")).await;
        got.extend(client.take(1, T).await);
        assert_eq!(
            parked(&node).await,
            1.0,
            "the calm topic's event took the socket back"
        );
        for i in 0..40 {
            publish(&js, "busy.x", &format!("busy-{}-{i}", round + 1)).await;
        }
        got.extend(client.take(40, T).await);
    }
    // Topics taking turns: after the first turn, the stream keeps its
    // socket.
    for i in 0..10 {
        publish(&js, "calm.x", &format!("calm-turn-{i}")).await;
        publish(&js, "busy.x", &format!("busy-turn-{i}")).await;
    }
    got.extend(client.take(20, T).await);
    assert_eq!(
        parked(&node).await,
        0.0,
        "parked while the topics take turns"
    );
    let busy: Vec<String> = (0..4)
        .flat_map(|round| {
            let count = if round == 3 { 40 } else { 60 };
            (0..count).map(move |i| format!("busy-{round}-{i}"))
        })
        .chain((0..10).map(|i| format!("busy-turn-{i}")))
        .collect();
    let calm: Vec<String> = (0..3)
        .map(|round| format!("calm-{round}"))
        .chain((0..10).map(|i| format!("calm-turn-{i}")))
        .collect();
    let of = |prefix: &str, events: &[SseEvent]| -> Vec<String> {
        data_of(events)
            .into_iter()
            .filter(|d| d.starts_with(prefix))
            .collect()
    };
    assert_eq!(of("busy-", &got), busy);
    assert_eq!(of("calm-", &got), calm);
    assert_cursors_exact(&got, &[0, 0]);
    let delivered = node.metric("sse_events_delivered_total").await;
    assert!(delivered >= 243.0, "{delivered}");

    // Away: resuming from the last id gets exactly what came meanwhile.
    let last_id = got.last().unwrap().id.clone();
    drop(client);
    for i in 0..5 {
        publish(&js, "busy.x", &format!("away-{i}")).await;
    }
    publish(&js, "calm.x", "calm-away").await;
    let mut back = SseClient::connect(&url, Some(&last_id)).await.unwrap();
    let missed = back.take(6, T).await;
    assert_eq!(
        of("away-", &missed),
        (0..5).map(|i| format!("away-{i}")).collect::<Vec<_>>()
    );
    assert_eq!(of("calm-", &missed), ["calm-away"]);
    assert!(
        back.next_event(Duration::from_millis(300)).await.is_err(),
        "no event may follow"
    );
    let last = [positions(&last_id)[0], positions(&last_id)[1]];
    assert_cursors_exact(&missed, &last);
}

/// A stream of several topics parked on its busy topic ends as
/// `topic_closed` when either topic is deleted: the one it is parked on
/// (its writer gives the socket back) or the one it still reads itself.
#[tokio::test]
async fn a_parked_stream_of_several_topics_ends_when_either_topic_is_deleted() {
    for deleted in ["busy", "calm"] {
        let nats = Nats::start().await;
        let js = nats.jetstream().await;
        create_topic(&js, "busy", None).await;
        create_topic(&js, "calm", None).await;
        let node = NodeProc::start(
            &nats.url(),
            &[PARK, ("SSE_NATS__TOPIC_REFRESH_SECONDS", "2")],
        )
        .await;
        let mut client = SseClient::connect(&node.url("/v1/events?topic=busy&topic=calm"), None)
            .await
            .unwrap();
        client.ready().await;
        for i in 0..40 {
            publish(&js, "busy.x", &format!("busy-{i}")).await;
        }
        assert_eq!(client.take(40, T).await.len(), 40);
        a_deleted_topic_ends_the_parked_streams(&js, &node, &mut [client], deleted).await;
    }
}

/// Waits for the `clients`' streams to park, deletes `topic`, and checks
/// that each ends at once with only `topic_deleted`, counted as
/// `topic_closed`, and none is left parked.
async fn a_deleted_topic_ends_the_parked_streams(
    js: &async_nats::jetstream::Context,
    node: &NodeProc,
    clients: &mut [SseClient],
    topic: &str,
) {
    wait_parked(node, clients.len() as f64).await;
    js.delete_stream(format!("SSE_{topic}")).await.unwrap();
    for client in clients.iter_mut() {
        let rest = client.until_closed(T).await.unwrap();
        assert_topics_deleted(&rest, &[topic]);
    }
    wait_ended_unparked(node, "topic_closed", clients.len()).await;
}

/// NATS with the topics `t0`, `t1` and `t2`, and a node that parks, with
/// `env` besides.
async fn three_topics(env: (&str, &str)) -> (Nats, async_nats::jetstream::Context, NodeProc) {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    for topic in ["t0", "t1", "t2"] {
        create_topic(&js, topic, None).await;
    }
    let node = NodeProc::start(&nats.url(), &[PARK, env]).await;
    (nats, js, node)
}

/// Streams of several topics whose events take turns park on the merged
/// feed of their topics: one relay writes every event of any of them to
/// every such stream, framed once, with the stream's cursor after it. Both
/// streams get the same events in the same order, every id is exact, and
/// resuming from the last id gets exactly what was published while away.
/// Deleting one of the topics ends a stream parked this way.
#[tokio::test]
async fn streams_whose_topics_take_turns_park_on_their_merged_feed_with_exact_ids() {
    let (_nats, js, node) = three_topics(("SSE_NATS__TOPIC_REFRESH_SECONDS", "2")).await;
    let url = node.url("/v1/events?topic=t0&topic=t1&topic=t2");
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut client = SseClient::connect(&url, None).await.unwrap();
        client.ready().await;
        clients.push(client);
    }
    let in_turn = |i: usize| (format!("t{}.x", i % 3), format!("t{}-{i}", i % 3));
    let mut got = vec![Vec::new(), Vec::new()];
    // Turns enough to park: no topic ever has a run to park on alone.
    // One round of the three topics at a time: the topics' feeds doze
    // until their first event, and then read what came meanwhile at once,
    // so events published all together could reach the streams topic by
    // topic, in runs too few to count as taking turns.
    for round in (0..30).collect::<Vec<_>>().chunks(3) {
        for i in round {
            let (subject, data) = in_turn(*i);
            publish(&js, &subject, &data).await;
        }
        for (client, got) in clients.iter_mut().zip(&mut got) {
            got.extend(client.take(3, T).await);
        }
    }
    wait_parked(&node, 2.0).await;
    for i in 30..330 {
        let (subject, data) = in_turn(i);
        publish(&js, &subject, &data).await;
        if i % 60 == 0 {
            assert_eq!(
                parked(&node).await,
                2.0,
                "parked while the topics take turns"
            );
        }
    }
    for (client, got) in clients.iter_mut().zip(&mut got) {
        got.extend(client.take(300, T).await);
    }
    assert_eq!(parked(&node).await, 2.0, "still parked");
    for got in &got {
        for topic in 0..3 {
            let prefix = format!("t{topic}-");
            let expected: Vec<String> = (0..330)
                .filter(|i| i % 3 == topic)
                .map(|i| format!("{prefix}{i}"))
                .collect();
            let of_topic: Vec<String> = data_of(got)
                .into_iter()
                .filter(|d| d.starts_with(&prefix))
                .collect();
            assert_eq!(of_topic, expected);
        }
        assert_cursors_exact_by(got, &[0, 0, 0], topic_of_turn);
    }
    let order =
        |got: &[SseEvent]| -> Vec<String> { got[30..].iter().map(|e| e.id.clone()).collect() };
    assert_eq!(order(&got[0]), order(&got[1]), "one order for the set");

    // Away: resuming from the last id gets exactly what came meanwhile.
    let last_id = got[0].last().unwrap().id.clone();
    drop(clients);
    for i in 330..336 {
        let (subject, data) = in_turn(i);
        publish(&js, &subject, &data).await;
    }
    let mut back = SseClient::connect(&url, Some(&last_id)).await.unwrap();
    let missed = back.take(6, T).await;
    let mut data = data_of(&missed);
    data.sort();
    let mut expected: Vec<String> = (330..336).map(|i| in_turn(i).1).collect();
    expected.sort();
    assert_eq!(data, expected);
    assert!(
        back.next_event(Duration::from_millis(300)).await.is_err(),
        "no event may follow"
    );
    let from = positions(&last_id);
    assert_cursors_exact_by(&missed, &from, topic_of_turn);

    // Parked again on the merged feed, with a second stream of the set
    // (a feed is merged for two), and ended when a topic goes.
    let mut second = SseClient::connect(&url, None).await.unwrap();
    second.ready().await;
    for i in 336..366 {
        let (subject, data) = in_turn(i);
        publish(&js, &subject, &data).await;
    }
    assert_eq!(back.take(30, T).await.len(), 30);
    assert_eq!(second.take(30, T).await.len(), 30);
    a_deleted_topic_ends_the_parked_streams(&js, &node, &mut [back, second], "t1").await;
}

/// Streams of a whole topic and one user's path of another, whose events
/// take turns, park on a merged feed too: the path read from a path feed of
/// its own (no client reads the rest of the topic), or from the path's
/// channel of the topic's whole feed (another client reads all of it).
/// Every event of the stream arrives once, in order, and carries the cursor
/// the stream itself would write; other users' events never arrive; a
/// resume from the last id is exact.
#[tokio::test]
async fn streams_of_a_topic_and_a_path_that_take_turns_park_on_a_merged_feed() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "news", None).await;
    create_topic(&js, "users", None).await;
    for whole_feed_runs in [false, true] {
        // A stream that could not park by some 2.5 s after its last event
        // (its relay trailing it on a busy machine) tries again at its
        // next event or heartbeat; the waits below publish nothing.
        let node =
            NodeProc::start(&nats.url(), &[PARK, ("SSE_HTTP__HEARTBEAT_SECONDS", "2")]).await;
        let mut watcher = None;
        if whole_feed_runs {
            let mut all = SseClient::connect(&node.url("/v1/events?topic=users"), None)
                .await
                .unwrap();
            all.ready().await;
            wait_parked(&node, 1.0).await;
            watcher = Some(all);
        }
        let watching = f64::from(u8::from(whole_feed_runs));
        let url = node.url("/v1/events?topic=news&topic=users.u1");
        let mut client = SseClient::connect(&url, None).await.unwrap();
        client.ready().await;
        let mut expected = Vec::new();
        for i in 0..40 {
            expected.push(publish_turn(&js, i).await);
        }
        let mut got = client.take(40, T).await;
        // Alone on its set of topics, the stream keeps its own task: a relay
        // would save it nothing. A second tab of the same user starts the
        // set's merged feed, and both park on it.
        assert_eq!(parked(&node).await, watching, "alone: not merged");
        let mut tab = SseClient::connect(&url, None).await.unwrap();
        tab.ready().await;
        for i in 40..60 {
            expected.push(publish_turn(&js, i).await);
        }
        got.extend(client.take(20, T).await);
        let tab_got = tab.take(20, T).await;
        assert_each_topic_in_order(&tab_got, &expected[40..]);
        wait_parked(&node, 2.0 + watching).await;
        drop(tab);
        wait_parked(&node, 1.0 + watching).await;
        for i in 60..240 {
            expected.push(publish_turn(&js, i).await);
            if i % 50 == 0 {
                assert_eq!(
                    parked(&node).await,
                    1.0 + watching,
                    "parked while the topic and the path take turns"
                );
            }
        }
        got.extend(client.take(180, T).await);
        assert_eq!(parked(&node).await, 1.0 + watching, "still parked");
        assert_each_topic_in_order(&got, &expected);
        assert_cursor_is_each_topics_last(&got, &expected);

        // Away: resuming from the last id gets exactly what came meanwhile.
        let last_id = got.last().unwrap().id.clone();
        drop(client);
        let mut missed_expected = Vec::new();
        for i in 240..246 {
            missed_expected.push(publish_turn(&js, i).await);
        }
        let mut back = SseClient::connect(&url, Some(&last_id)).await.unwrap();
        let missed = back.take(6, T).await;
        assert_each_topic_in_order(&missed, &missed_expected);
        assert!(
            back.next_event(Duration::from_millis(300)).await.is_err(),
            "no event may follow"
        );
        drop(watcher);
    }
}

/// Publishes event `i` of a topic and a path in turn: to `news`, then to
/// user u1's path of `users`, and so on; every fifth time another user's
/// event first, which a stream of u1 must not get. Returns what a stream of
/// `news` and u1 gets: the data, its topic's place in the stream, and its
/// sequence.
async fn publish_turn(js: &async_nats::jetstream::Context, i: usize) -> (String, usize, u64) {
    if i.is_multiple_of(5) {
        publish(js, "users.u2", &format!("u2-{i}")).await;
    }
    let (subject, topic) = if i.is_multiple_of(2) {
        ("news.x", 0)
    } else {
        ("users.u1", 1)
    };
    let data = format!("{topic}-{i}");
    let seq = publish(js, subject, &data).await;
    (data, topic, seq)
}

/// Checks that `got` holds exactly the events of `expected`, (data, topic,
/// sequence) in publication order, each topic's in that order: topics are
/// read apart, so their events may interleave otherwise.
fn assert_each_topic_in_order(got: &[SseEvent], expected: &[(String, usize, u64)]) {
    for topic in 0..2 {
        let of = |data: Vec<String>| -> Vec<String> {
            data.into_iter()
                .filter(|d| d.starts_with(&format!("{topic}-")))
                .collect()
        };
        let want = of(expected.iter().map(|(d, _, _)| d.clone()).collect());
        assert_eq!(
            of(data_of(got)),
            want,
            "topic {topic}: every event once, in order"
        );
    }
    assert_eq!(got.len(), expected.len(), "nothing else");
}

/// Checks that each event carries its own topic at the event's sequence
/// and the other topic at or past the last event of it before, but short of
/// the next: a resume from any of these ids skips nothing and repeats
/// nothing. A topic read at one path may stand past its last event of that
/// path (at the topic's head when the stream or its relay attached).
/// `expected` is (data, topic, sequence) per event, in publication order.
fn assert_cursor_is_each_topics_last(got: &[SseEvent], expected: &[(String, usize, u64)]) {
    let facts = |event: &SseEvent| -> (usize, u64) {
        let (_, topic, seq) = expected
            .iter()
            .find(|(d, _, _)| *d == event.data)
            .expect("an event published");
        (*topic, *seq)
    };
    let mut last: [Option<u64>; 2] = [None, None];
    let mut previous = vec![0, 0];
    for (k, event) in got.iter().enumerate() {
        let (topic, seq) = facts(event);
        let (data, at) = (&event.data, positions(&event.id));
        assert!(
            at.iter().zip(&previous).all(|(now, before)| now >= before),
            "{data} at {} goes back from {previous:?}",
            event.id
        );
        previous.clone_from(&at);
        assert_eq!(at[topic], seq, "{data} at {}", event.id);
        let other = 1 - topic;
        if let Some(before) = last[other] {
            assert!(at[other] >= before, "{data} at {}", event.id);
        }
        let next = got[k..].iter().map(facts).find(|(t, _)| *t == other);
        if let Some((_, next)) = next {
            assert!(at[other] < next, "{data} at {} skips {next}", event.id);
        }
        last[topic] = Some(seq);
    }
}

/// A socket parked on a merged feed that fills up is given back with what
/// it did not take; its stream writes that, catches up on every topic from
/// the set's cursor and parks again. Every event arrives whole, once, in
/// its topic's order, with an exact cursor.
#[tokio::test]
async fn a_socket_on_a_merged_feed_that_fills_up_is_given_back_whole() {
    let (_nats, js, node) = three_topics(("SSE_DELIVERY__WRITE_STALL_SECONDS", "30")).await;
    let path = "/v1/events?topic=t0&topic=t1&topic=t2";
    let mut slow = slow_reader(node.port, path).await.unwrap();
    slow.ready().await;
    // A set's merged feed starts once two streams share it.
    let mut companion = SseClient::connect(&node.url(path), None).await.unwrap();
    companion.ready().await;
    let payload = |i: usize| format!("t{}-{i}:{}", i % 3, "abcdefghij".repeat(1600));
    // One round of the three topics at a time: the topics' feeds doze
    // until their first event, and then read what came meanwhile at once,
    // so events published all together could reach the streams topic by
    // topic, in runs too few to count as taking turns.
    let mut got = Vec::new();
    for round in (0..30).collect::<Vec<_>>().chunks(3) {
        for i in round {
            publish(&js, &format!("t{}.x", i % 3), &format!("t{}-{i}:", i % 3)).await;
        }
        got.extend(slow.take(3, T).await);
        assert_eq!(companion.take(3, T).await.len(), 3);
    }
    wait_parked(&node, 2.0).await;

    let total = 300;
    let publisher = tokio::spawn(async move {
        let mut beside = Vec::new();
        // One topic at a time per batch, so that each topic's order is the
        // order of publication. Each batch waits for the companion to have
        // the one before: the relay then never trails a topic by half its
        // first channel, whose move would end the relay and give the
        // sockets back before the slow one fills.
        for chunk in (30..30 + total).collect::<Vec<_>>().chunks(30) {
            for topic in 0..3 {
                let acks = futures_util::future::join_all(
                    chunk
                        .iter()
                        .filter(|i| *i % 3 == topic)
                        .map(|i| js.publish(format!("sse.t{topic}.x"), payload(*i).into())),
                )
                .await;
                for ack in acks {
                    ack.expect("publish").await.expect("ack");
                }
            }
            beside.extend(companion.take(chunk.len(), T).await);
        }
        (beside, companion)
    });
    // The slow client reads nothing until its socket has filled, however
    // fast the machine reads for it.
    eventually(
        Duration::from_secs(60),
        "the slow socket to fill up",
        || async { (node.metric("sse_parked_refusals_total").await >= 1.0).then_some(()) },
    )
    .await;
    let received = slow.take(total, Duration::from_secs(60)).await;
    let (beside, _still_open) = publisher.await.unwrap();
    for event in &received {
        let index: usize = event
            .data
            .split(['-', ':'])
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            event.data == payload(index),
            "event {} is not whole",
            event.id
        );
    }
    got.extend(received);
    assert_cursors_exact_by(&got, &[0, 0, 0], topic_of_turn);
    assert_eq!(beside.len(), total, "the companion got every event");
    wait_parked(&node, 2.0).await;
    assert_eq!(
        node.metric("sse_connections_closed_total{reason=\"slow\"}")
            .await,
        0.0
    );
}

/// A stream that waits for a second stream of its set to start their
/// merged feed parks on it even when that second stream starts it while
/// handling the last event both get, with no event after to try again at:
/// it is woken to park, long before its heartbeat. Twenty-four sets (every
/// order of five topics that starts with t0) run at once, so that in one
/// set or another the waiting stream handles that last event before its
/// second does.
#[tokio::test]
async fn a_stream_waiting_for_its_merged_feed_parks_once_a_second_starts_it_after_the_last_event() {
    const TOPICS: usize = 5;
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    for topic in 0..TOPICS {
        create_topic(&js, &format!("t{topic}"), None).await;
    }
    // No heartbeat in the test's time: only the stream itself can try
    // again to park.
    let node = NodeProc::start(
        &nats.url(),
        &[
            PARK,
            ("SSE_HTTP__HEARTBEAT_SECONDS", "600"),
            ("SSE_HTTP__IDLE_TIMEOUT_SECONDS", "0"),
        ],
    )
    .await;
    let mut orders: Vec<Vec<usize>> = vec![vec![0]];
    for _ in 1..TOPICS {
        orders = orders
            .into_iter()
            .flat_map(|order| {
                (1..TOPICS)
                    .filter(|t| !order.contains(t))
                    .map(|t| [order.clone(), vec![t]].concat())
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    assert_eq!(orders.len(), 24);
    let url = |order: &[usize]| {
        let query: Vec<String> = order.iter().map(|t| format!("topic=t{t}")).collect();
        node.url(&format!("/v1/events?{}", query.join("&")))
    };
    let in_turn = |i: usize| (format!("t{}.x", i % TOPICS), format!("t{}-{i}", i % TOPICS));
    let mut first = Vec::new();
    for order in &orders {
        let mut client = SseClient::connect(&url(order), None).await.unwrap();
        client.ready().await;
        first.push(client);
    }
    // Turns enough for each first stream to ask for its set's merged
    // feed, and to wait, alone on its set.
    for i in 0..3 * TOPICS {
        let (subject, data) = in_turn(i);
        publish(&js, &subject, &data).await;
    }
    for client in &mut first {
        assert_eq!(client.take(3 * TOPICS, T).await.len(), 3 * TOPICS);
    }
    assert_eq!(parked(&node).await, 0.0, "a stream alone on its set waits");
    let mut second = Vec::new();
    for order in &orders {
        let mut client = SseClient::connect(&url(order), None).await.unwrap();
        client.ready().await;
        second.push(client);
    }
    // One event at a time from t0, so that each stream takes each in on
    // its own wake. A new stream counts a turn at every event but the
    // first, of t0, the topic it lists first: every second stream has
    // turns enough at the ninth and last event, and starts its set's
    // merged feed while the first stream of its set handles that event.
    let from = 3 * TOPICS;
    for i in from..from + 9 {
        let (subject, data) = in_turn(i);
        publish(&js, &subject, &data).await;
        for client in first.iter_mut().chain(&mut second) {
            assert_eq!(data_of(&client.take(1, T).await), vec![data.clone()]);
        }
    }
    eventually(Duration::from_secs(10), "every stream to park", || async {
        (parked(&node).await == 48.0).then_some(())
    })
    .await;
    // Parked, each still gets the next event exactly once.
    let (subject, data) = in_turn(from + 9);
    publish(&js, &subject, &data).await;
    for client in first.iter_mut().chain(&mut second) {
        let next = client.take(1, T).await;
        assert_eq!(data_of(&next), vec![data.clone()]);
    }
}

/// The topic of an event `t<topic>-…` of the tests of topics in turn.
fn topic_of_turn(data: &str) -> usize {
    data[1..2].parse().unwrap()
}

/// Waits until the node counts `count` streams ended for `reason` and
/// none parked.
async fn wait_ended_unparked(node: &NodeProc, reason: &str, count: usize) {
    let series = format!("sse_connections_closed_total{{reason=\"{reason}\"}}");
    eventually(
        T,
        &format!("{count} streams ended as {reason}, none parked"),
        || async {
            let ended = node.metric(&series).await == count as f64;
            (ended && parked(node).await == 0.0).then_some(())
        },
    )
    .await;
}

/// The positions, by topic, of a cursor `topic:epoch:seq,…`.
fn positions(id: &str) -> Vec<u64> {
    id.split(',').map(seq_of).collect()
}

/// Checks that each event of a stream of the topics `busy` and `calm`,
/// starting from the positions `from`, carries the cursor it must: its own
/// topic at the next sequence of that topic, the other where the client's
/// last event of it left it.
fn assert_cursors_exact(events: &[SseEvent], from: &[u64; 2]) {
    assert_cursors_exact_by(events, from, |data| usize::from(data.starts_with("calm-")));
}

/// Checks that each event, starting from the positions `from`, carries its
/// own topic (`topic_of` its data) at that topic's next sequence and every
/// other topic where the client's last event of it left it.
fn assert_cursors_exact_by(events: &[SseEvent], from: &[u64], topic_of: impl Fn(&str) -> usize) {
    let mut seen = from.to_vec();
    for event in events {
        let own = topic_of(&event.data);
        let at = positions(&event.id);
        assert_eq!(at.len(), seen.len(), "{}", event.id);
        for (topic, (at, seen)) in at.iter().zip(&seen).enumerate() {
            let expected = if topic == own { seen + 1 } else { *seen };
            assert_eq!(*at, expected, "{} at {}", event.data, event.id);
        }
        seen[own] = at[own];
    }
}

/// Publishes `total` events of 16 KiB to `sse.bulk` while `slow` reads
/// them, and checks that it got every one whole, once, in order. Returns
/// the client, its stream still open.
async fn bulk_reaches_a_slow_reader(
    js: &async_nats::jetstream::Context,
    mut slow: SseClient,
    total: usize,
) -> SseClient {
    let payload = |i: usize| format!("{i}:{}", "abcdefghij".repeat(1600));
    let reader = tokio::spawn(async move {
        let events = slow.take(total, Duration::from_secs(60)).await;
        (events, slow)
    });
    // Published 50 at a time: JetStream's order within a batch is the order
    // the events carry in their ids.
    publish_many(js, total, 50, |i| ("sse.bulk".to_owned(), payload(i))).await;
    let (received, still_open) = reader.await.unwrap();
    let ids: Vec<u64> = received.iter().map(|e| seq_of(&e.id)).collect();
    assert_eq!(
        ids,
        (1..=total as u64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    // Each batch's events may take their ids in any order among
    // themselves, so each payload is checked for being there once.
    let mut seen = vec![false; total];
    for event in &received {
        let index: usize = event.data.split(':').next().unwrap().parse().unwrap();
        assert!(!seen[index], "payload {index} came twice");
        seen[index] = true;
        assert!(
            event.data == payload(index),
            "event {} is not whole: {} bytes",
            event.id,
            event.data.len()
        );
    }
    still_open
}

/// The sequence of an id `topic@epoch:seq`.
fn seq_of(id: &str) -> u64 {
    id.rsplit(':').next().unwrap().parse().unwrap()
}

/// A client whose socket has a small receive buffer and which reads a few
/// KiB at a time with pauses: the node's socket to it fills up.
async fn slow_reader(port: u16, path: &str) -> Result<SseClient> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream: TcpStream = socket.connect(([127, 0, 0, 1], port).into()).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream
            .read_exact(&mut byte)
            .await
            .context("response head")?;
        head.push(byte[0]);
    }
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    Ok(slow_events(Vec::new(), stream))
}

/// A node serving TLS (with a certificate for `localhost`) and parking, and
/// the client side of it.
async fn tls_node(nats: &Nats, extra: &[(&str, &str)]) -> (NodeProc, Cert) {
    let cert = Cert::new();
    let env = cert.env();
    let mut pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.push(PARK);
    pairs.extend_from_slice(extra);
    let node = NodeProc::spawn(&nats.url(), &pairs);
    eventually(T, "the node to be ready over TLS", || async {
        let ready = cert.get(&node, "/readyz", &[]).await.ok()?;
        (ready.status == 200).then_some(())
    })
    .await;
    (node, cert)
}

/// A TLS node that parks, with 1 s heartbeats and streams that end after
/// 8 s.
async fn short_lived_tls_node(nats: &Nats) -> (NodeProc, Cert) {
    tls_node(
        nats,
        &[
            ("SSE_HTTP__HEARTBEAT_SECONDS", "1"),
            ("SSE_HTTP__MAX_CONNECTION_LIFETIME_SECONDS", "8"),
        ],
    )
    .await
}

/// Checks that each of `clients`, TLS streams of a short-lived node, gets
/// heartbeats and then its stream's end with a retry hint and no event,
/// all of it decrypting.
async fn heartbeats_then_a_clean_close(clients: &mut [SseClient]) {
    for client in clients {
        let comments_before = client.comments;
        let rest = client.until_closed(Duration::from_secs(15)).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        assert!(client.comments > comments_before, "no heartbeat came");
        assert!(client.retry.is_some(), "no retry hint before the close");
    }
}

async fn wait_parked_tls(cert: &Cert, node: &NodeProc, count: f64) {
    eventually(T, &format!("{count} tls streams to park"), || async {
        (cert_metric(cert, node, "sse_streams_parked").await == count).then_some(())
    })
    .await;
}

/// TLS streams park too: the feed's writer seals their events with each
/// connection's own key and record sequence, and the stream's own records
/// (a heartbeat, the close) go on from where the writer left it. A wrong
/// sequence number would fail the client's decryption at the next record.
/// A stream of two topics parked on its busy one gets its own `id:` lines
/// sealed the same way.
#[tokio::test]
async fn tls_streams_park_and_their_records_stay_in_sequence() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "sealed", None).await;
    create_topic(&js, "calm", None).await;
    let (node, cert) = short_lived_tls_node(&nats).await;
    let mut clients = Vec::new();
    for target in [
        "/v1/events?topic=sealed",
        "/v1/events?topic=sealed",
        "/v1/events?topic=sealed.a",
        "/v1/events?topic=sealed&topic=calm",
    ] {
        let response = cert.get(&node, target, &[]).await.unwrap();
        assert_eq!(response.status, 200);
        let mut client = response.events();
        client.ready().await;
        clients.push(client);
    }
    wait_parked_tls(&cert, &node, 3.0).await;

    // A burst, with the writer's pacing putting several events in a write,
    // then one event at a time, each awaited: one event per write.
    let total = 200;
    let name = |i: usize| format!("e{i}");
    for i in 0..total {
        let path = if i % 2 == 0 { "sealed.a" } else { "sealed.b" };
        publish(&js, path, &name(i)).await;
    }
    let all: Vec<String> = (0..total).map(name).collect();
    let of_a: Vec<String> = (0..total).step_by(2).map(name).collect();
    for client in &mut clients[..2] {
        assert_eq!(data_of(&client.take(total, T).await), all);
    }
    assert_eq!(data_of(&clients[2].take(of_a.len(), T).await), of_a);
    let mut got_both = clients[3].take(total, T).await;
    assert_eq!(data_of(&got_both), all);
    // The stream of two topics parks on the busy one after a run of its
    // events.
    wait_parked_tls(&cert, &node, 4.0).await;
    for i in total..total + 20 {
        publish(&js, "sealed.a", &name(i)).await;
        for client in &mut clients[..3] {
            assert_eq!(data_of(&client.take(1, T).await), [name(i)]);
        }
        let one = clients[3].take(1, T).await;
        assert_eq!(data_of(&one), [name(i)]);
        got_both.extend(one);
    }
    wait_parked_tls(&cert, &node, 4.0).await;
    assert_cursors_exact(&got_both, &[0, 0]);
    assert_eq!(
        cert_metric(&cert, &node, &served("lean")).await,
        4.0,
        "the streams were not served by the lean path"
    );

    // Heartbeats while parked, and the close at the end of the lifetime,
    // sealed after the writer's records: the client reads them all and a
    // clean close_notify (rustls reports a close without one as an error).
    heartbeats_then_a_clean_close(&mut clients).await;
}

/// TLS streams of several topics in turn park on their merged feed too:
/// its relay's events are sealed for each socket in the connection's own
/// record sequence, and the stream's own records (heartbeats, the close)
/// follow on from it. Every event arrives once, with an exact cursor.
#[tokio::test]
async fn tls_streams_on_a_merged_feed_keep_their_records_in_sequence() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    for topic in ["t0", "t1", "t2"] {
        create_topic(&js, topic, None).await;
    }
    let (node, cert) = short_lived_tls_node(&nats).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let response = cert
            .get(&node, "/v1/events?topic=t0&topic=t1&topic=t2", &[])
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        let mut client = response.events();
        client.ready().await;
        clients.push(client);
    }
    let mut got = vec![Vec::new(), Vec::new()];
    let publish_in_turn = |from: usize, to: usize| {
        let js = js.clone();
        async move {
            for i in from..to {
                publish(&js, &format!("t{}.x", i % 3), &format!("t{}-{i}", i % 3)).await;
            }
        }
    };
    // A round of the three topics at a time, as in
    // `streams_whose_topics_take_turns_park_on_their_merged_feed_with_exact_ids`.
    for round in 0..10 {
        publish_in_turn(3 * round, 3 * round + 3).await;
        for (client, got) in clients.iter_mut().zip(&mut got) {
            got.extend(client.take(3, T).await);
        }
    }
    wait_parked_tls(&cert, &node, 2.0).await;
    publish_in_turn(30, 150).await;
    for (client, got) in clients.iter_mut().zip(&mut got) {
        got.extend(client.take(120, T).await);
        assert_cursors_exact_by(got, &[0, 0, 0], topic_of_turn);
    }
    heartbeats_then_a_clean_close(&mut clients).await;
}

/// A parked TLS socket whose client reads slowly fills up in the middle of
/// a record: the rest of that record goes out first, from the stream, and
/// the client gets every event whole, once, in order.
#[tokio::test]
async fn a_parked_tls_socket_that_fills_up_gets_the_rest_of_its_record_first() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "bulk", None).await;
    let (node, cert) = tls_node(&nats, &[("SSE_DELIVERY__WRITE_STALL_SECONDS", "30")]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket
        .connect(([127, 0, 0, 1], node.port).into())
        .await
        .unwrap();
    let tls = cert
        .connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let response = raw_get(tls, "/v1/events?topic=bulk", &[]).await.unwrap();
    assert_eq!(response.status, 200);
    let mut slow = slow_events(response.rest, response.io);
    slow.ready().await;
    wait_parked_tls(&cert, &node, 1.0).await;

    let _still_open = bulk_reaches_a_slow_reader(&js, slow, 300).await;
    assert!(
        cert_metric(&cert, &node, "sse_parked_refusals_total").await >= 1.0,
        "the socket never filled up: the test did not test a give-back"
    );
    wait_parked_tls(&cert, &node, 1.0).await;
    assert_eq!(
        cert_metric(
            &cert,
            &node,
            "sse_connections_closed_total{reason=\"slow\"}"
        )
        .await,
        0.0
    );
}

/// Events from `io` read a couple of KiB at a time with pauses, after the
/// bytes `first` already read with the head.
fn slow_events<IO>(first: Vec<u8>, io: IO) -> SseClient
where
    IO: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    events_from(first, io, Some(Duration::from_millis(2)), 2048)
}
