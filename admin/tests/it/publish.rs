//! Publishing through admin: the returned id, what lands in the stream, and
//! the refusals.

use async_nats::jetstream;
use serde_json::json;
use sse_protocol::{Cursor, TopicName, cursor::epoch_from_unix_nanos};

use crate::support::{Admin, NatsServer, assert_error, bounded, test_config};

async fn stream_epoch(js: &jetstream::Context, topic: &str) -> String {
    let mut stream = js.get_stream(format!("SSE_{topic}")).await.unwrap();
    let created = stream.info().await.unwrap().created;
    epoch_from_unix_nanos(created.unix_timestamp_nanos())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_the_id_clients_see() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        let js = nats.jetstream().await;
        admin.create_topic(json!({"name": "orders"})).await;
        let epoch = stream_epoch(&js, "orders").await;

        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let response = admin
            .http
            .post(format!("{}/v1/topics/orders/events", admin.base))
            .bearer_auth(crate::support::TOKEN)
            .header("traceparent", traceparent)
            .json(&json!({"subject": "orders.42", "event": "order.created", "data": "line 1\nline 2", "id": "order-42-created"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let published: serde_json::Value = response.json().await.unwrap();
        let id = published["id"].as_str().unwrap();
        assert_eq!(id, format!("orders:{epoch}:1"));
        let cursor = Cursor::parse(id).unwrap();
        let position = cursor.position(&TopicName::parse("orders").unwrap()).unwrap();
        assert_eq!(position.seq, 1);
        assert_eq!(published["duplicate"], false);

        let stream = js.get_stream("SSE_orders").await.unwrap();
        let message = stream.get_raw_message(1).await.unwrap();
        assert_eq!(message.subject.as_str(), "sse.orders.42");
        assert_eq!(&message.payload[..], b"line 1\nline 2");
        let headers = message.headers;
        assert_eq!(headers.get("Sse-Event").unwrap().as_str(), "order.created");
        assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), "order-42-created");
        assert_eq!(headers.get("traceparent").unwrap().as_str(), traceparent);

        // The same id again is de-duplicated by JetStream: same event id.
        let (status, again) = admin
            .call("POST", "/v1/topics/orders/events", Some(json!({"subject": "orders.42", "data": "other", "id": "order-42-created"})))
            .await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["id"], id);
        assert_eq!(again["duplicate"], true);

        // Without an id one is generated; the bare topic path is allowed.
        let (status, second) = admin
            .call("POST", "/v1/topics/orders/events", Some(json!({"subject": "orders", "data": "{\"n\":2}"})))
            .await;
        assert_eq!(status, 200, "{second}");
        assert_eq!(second["id"], format!("orders:{epoch}:2"));
        let message = stream.get_raw_message(2).await.unwrap();
        let headers = message.headers;
        assert!(headers.get("Nats-Msg-Id").unwrap().as_str().len() > 10);
        assert!(headers.get("Sse-Event").is_none());

        // Without a subject, the event goes to the topic itself.
        let (status, bare) = admin
            .call("POST", "/v1/topics/orders/events", Some(json!({"data": "no subject"})))
            .await;
        assert_eq!(status, 200, "{bare}");
        assert_eq!(bare["id"], format!("orders:{epoch}:3"));
        let message = stream.get_raw_message(3).await.unwrap();
        assert_eq!(message.subject.as_str(), "sse.orders");
        assert_eq!(&message.payload[..], b"no subject");

        // A recreated stream is a new epoch, and the id says so.
        let (status, _) = admin.call("DELETE", "/v1/topics/orders", None).await;
        assert_eq!(status, 204);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        admin.create_topic(json!({"name": "orders"})).await;
        let new_epoch = stream_epoch(&js, "orders").await;
        assert_ne!(new_epoch, epoch);
        let (status, third) = admin
            .call("POST", "/v1/topics/orders/events", Some(json!({"subject": "orders.1", "data": "x"})))
            .await;
        assert_eq!(status, 200, "{third}");
        assert_eq!(third["id"], format!("orders:{new_epoch}:1"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreation_behind_admins_back_is_noticed() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        let js = nats.jetstream().await;
        admin.create_topic(json!({"name": "t"})).await;
        for _ in 0..3 {
            let (status, _) = admin
                .call(
                    "POST",
                    "/v1/topics/t/events",
                    Some(json!({"subject": "t.a", "data": "x"})),
                )
                .await;
            assert_eq!(status, 200);
        }
        // Deleted and recreated straight through NATS, not through admin.
        let config = js
            .get_stream("SSE_t")
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
        js.delete_stream("SSE_t").await.unwrap();
        js.create_stream(config).await.unwrap();
        let epoch = stream_epoch(&js, "t").await;
        let (status, published) = admin
            .call(
                "POST",
                "/v1/topics/t/events",
                Some(json!({"subject": "t.a", "data": "x"})),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(published["id"], format!("t:{epoch}:1"));
    })
    .await;
}

/// Streams made by hand that store nothing published to a topic's subject:
/// a mirror (JetStream fills it from its origin), and one that stores only
/// the paths under the topic. Publishing is refused at once, saying why,
/// not retried until it times out as NATS being unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_where_the_stream_stores_nothing_is_refused_at_once() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        let js = nats.jetstream().await;
        admin.create_topic(json!({"name": "origin"})).await;
        js.create_stream(jetstream::stream::Config {
            name: "SSE_copy".into(),
            mirror: Some(jetstream::stream::Source {
                name: "SSE_origin".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        js.create_stream(jetstream::stream::Config {
            name: "SSE_paths".into(),
            subjects: vec!["sse.paths.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        for (topic, subject, said) in [
            ("copy", "copy.a", "is a mirror of stream \"SSE_origin\""),
            (
                "paths",
                "paths",
                "stores only [\"sse.paths.>\"], not \"sse.paths\"",
            ),
        ] {
            let started = std::time::Instant::now();
            let answer = admin
                .call(
                    "POST",
                    &format!("/v1/topics/{topic}/events"),
                    Some(json!({"subject": subject, "data": "x"})),
                )
                .await;
            assert_error(&answer, 409, said);
            assert_eq!(answer.1["error"], "not_publishable");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
        // A path the stream does store is published as usual.
        let (status, published) = admin
            .call(
                "POST",
                "/v1/topics/paths/events",
                Some(json!({"subject": "paths.a", "data": "x"})),
            )
            .await;
        assert_eq!(status, 200, "{published}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_refused() {
    bounded(async {
        let nats = NatsServer::start();
        let admin =
            Admin::start_with(test_config(&nats.url, "[admin]\nmax_event_bytes = 1024")).await;
        admin.create_topic(json!({"name": "orders"})).await;
        let publish = |body| admin.call("POST", "/v1/topics/orders/events", Some(body));

        assert_error(
            &publish(json!({"subject": "chat.1", "data": "x"})).await,
            400,
            "not inside topic",
        );
        assert_error(
            &publish(json!({"subject": "orders.*", "data": "x"})).await,
            400,
            "wildcard",
        );
        assert_error(
            &publish(json!({"subject": "orders.>", "data": "x"})).await,
            400,
            "wildcard",
        );
        assert_error(
            &publish(json!({"subject": "orders..1", "data": "x"})).await,
            400,
            "empty token",
        );
        assert_error(
            &publish(json!({"subject": "orders.a b", "data": "x"})).await,
            400,
            "character",
        );
        assert_error(
            &publish(json!({"subject": "orders.1", "event": "a\nb", "data": "x"})).await,
            400,
            "event",
        );
        assert_error(
            &publish(json!({"subject": "orders.1", "event": "x".repeat(129), "data": "x"})).await,
            400,
            "event",
        );
        for own in ["reset", "invalid"] {
            assert_error(
                &publish(json!({"subject": "orders.1", "event": own, "data": "x"})).await,
                400,
                "which the nodes send themselves",
            );
        }
        for browsers in ["open", "error"] {
            assert_error(
                &publish(json!({"subject": "orders.1", "event": browsers, "data": "x"})).await,
                400,
                "which a browser's EventSource fires itself",
            );
        }
        assert_error(
            &publish(json!({"subject": "orders.1", "event": " padded", "data": "x"})).await,
            400,
            "event",
        );
        assert_error(
            &publish(json!({"subject": "orders.1", "event": "", "data": "x"})).await,
            400,
            "event",
        );
        assert_error(
            &publish(json!({"subject": "orders.1", "id": "a\r\nb", "data": "x"})).await,
            400,
            "id",
        );
        assert_error(
            &publish(json!({"subject": "orders.1", "data": 5})).await,
            400,
            "data",
        );
        assert_error(&publish(json!({"subject": "orders.1"})).await, 400, "data");
        assert_error(
            &publish(json!({"subject": "orders.1", "data": "x", "retain": true})).await,
            400,
            "retain",
        );
        assert_error(
            &publish(json!({"subject": "orders.1", "data": "x".repeat(1025)})).await,
            413,
            "1024",
        );
        let (status, _) = publish(json!({"subject": "orders.1", "data": "x".repeat(1024)})).await;
        assert_eq!(status, 200);
        // A body far over the limit is refused before it is read whole, and
        // the connection is not offered for another request.
        let refused = admin
            .http
            .post(format!("{}/v1/topics/orders/events", admin.base))
            .bearer_auth(crate::support::TOKEN)
            .json(&json!({"subject": "orders.1", "data": "x".repeat(200_000)}))
            .send()
            .await
            .expect("an answer");
        assert_eq!(
            refused.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..])
        );
        let status = refused.status().as_u16();
        let body: serde_json::Value = refused.json().await.expect("a JSON error");
        // Six times max_event_bytes, plus 64 KiB.
        assert_error(&(status, body), 413, "at most 71680 bytes");
        assert_error(
            &admin
                .call(
                    "POST",
                    "/v1/topics/nosuch/events",
                    Some(json!({"subject": "nosuch.1", "data": "x"})),
                )
                .await,
            404,
            "nosuch",
        );

        // Only the one good event reached the stream.
        let (_, topic) = admin.call("GET", "/v1/topics/orders", None).await;
        assert_eq!(topic["messages"], 1);
        let metrics = admin.metrics().await;
        for line in [
            "sse_admin_events_published_total 1",
            "sse_admin_publish_failures_total{reason=\"too_large\"} 1",
            "sse_admin_nats_server_switches_total 0",
            "sse_admin_trace_spans_dropped_total{reason=\"export_failed\"} 0",
        ] {
            assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
        }

        // A topic's own smaller limit wins over the configured one.
        let js = nats.jetstream().await;
        let mut config = js
            .get_stream("SSE_orders")
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
        config.max_message_size = 100;
        js.update_stream(&config).await.unwrap();
        crate::support::eventually(
            "the topic's limit applies",
            std::time::Duration::from_secs(15),
            || async {
                let (status, _) = admin
                    .call(
                        "POST",
                        "/v1/topics/orders/events",
                        Some(json!({"subject": "orders.1", "data": "y".repeat(200)})),
                    )
                    .await;
                (status == 413).then_some(())
            },
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_out_a_nats_restart() {
    bounded(async {
        let mut nats = NatsServer::start();
        let admin =
            Admin::start_with(test_config(&nats.url, "[nats]\nrequest_timeout_ms = 8000")).await;
        admin.create_topic(json!({"name": "t"})).await;
        let epoch = stream_epoch(&nats.jetstream().await, "t").await;
        nats.stop();
        let publish = admin.call(
            "POST",
            "/v1/topics/t/events",
            Some(json!({"subject": "t.a", "data": "survives", "id": "restart-1"})),
        );
        let restart = async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            nats.restart();
        };
        let ((status, published), ()) = tokio::join!(publish, restart);
        assert_eq!(status, 200, "{published}");
        assert_eq!(published["id"], format!("t:{epoch}:1"));
        let js = nats.jetstream().await;
        let message = js
            .get_stream("SSE_t")
            .await
            .unwrap()
            .get_raw_message(1)
            .await
            .unwrap();
        assert_eq!(&message.payload[..], b"survives");
    })
    .await;
}

/// Events near the default limit (1 MiB): data that JSON escapes to six
/// times its size is taken, and data that fits the limit but not beside
/// its headers in NATS's own limit is refused with the limit that applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_near_the_limit_are_judged_by_their_data() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        admin.create_topic(json!({"name": "big"})).await;
        let publish = |data: String| {
            admin.call(
                "POST",
                "/v1/topics/big/events",
                Some(json!({"subject": "big.1", "data": data})),
            )
        };
        // 400,000 bytes of control characters: a body of 2.4 MB.
        let (status, body) = publish("\u{1}".repeat(400_000)).await;
        assert_eq!(status, 200, "{body}");

        let (status, body) = publish("x".repeat(1024 * 1024)).await;
        assert_eq!(status, 413, "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        let allowed: u64 = message
            .rsplit_once("at most ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no limit in {message:?}"));
        assert!(allowed < 1024 * 1024, "{message}");
        let (status, body) = publish("x".repeat(allowed as usize)).await;
        assert_eq!(status, 200, "the limit it named is taken: {body}");
        // Over admin's own limit as well: the limit named is still the one
        // that applies, not admin's, which NATS's is under.
        let (status, body) = publish("x".repeat(1024 * 1024 + 1)).await;
        assert_eq!(status, 413, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .ends_with(&format!("at most {allowed} are allowed")),
            "{body}"
        );
    })
    .await;
}

/// A stream made by hand to discard new events when full refuses each one
/// past its limit: a conflict, said at once, that no retry mends, and
/// counted as refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_that_discards_new_events_refuses_them_as_a_conflict() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        let js = nats.jetstream().await;
        js.create_stream(jetstream::stream::Config {
            name: "SSE_capped".into(),
            subjects: vec!["sse.capped".into(), "sse.capped.>".into()],
            max_messages: 2,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
        let event = Some(json!({"subject": "capped.a", "data": "x"}));
        for _ in 0..2 {
            let (status, body) = admin
                .call("POST", "/v1/topics/capped/events", event.clone())
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let started = std::time::Instant::now();
        let answer = admin
            .call("POST", "/v1/topics/capped/events", event.clone())
            .await;
        assert_error(&answer, 409, "maximum messages exceeded");
        assert_eq!(answer.1["error"], "store_refused");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let metrics = admin.metrics().await;
        for line in [
            "sse_admin_events_published_total 2",
            "sse_admin_publish_failures_total{reason=\"refused\"} 1",
        ] {
            assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
        }
    })
    .await;
}

/// A publish that NATS does not answer within the request's time is
/// answered 503 and counted as `unavailable`, also when admin had not yet
/// looked the topic up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_while_nats_is_down_is_counted_unavailable() {
    bounded(async {
        let mut nats = NatsServer::start();
        let admin =
            Admin::start_with(test_config(&nats.url, "[nats]\nrequest_timeout_ms = 1000")).await;
        let js = nats.jetstream().await;
        js.create_stream(jetstream::stream::Config {
            name: "SSE_unseen".into(),
            subjects: vec!["sse.unseen".into(), "sse.unseen.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        nats.stop();
        let answer = admin
            .call(
                "POST",
                "/v1/topics/unseen/events",
                Some(json!({"subject": "unseen", "data": "x"})),
            )
            .await;
        assert_error(&answer, 503, "nats is unavailable");
        let metrics = admin.metrics().await;
        let line = "sse_admin_publish_failures_total{reason=\"unavailable\"} 1";
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    })
    .await;
}

/// Sends `head` and the first bytes of a body on a new connection, and
/// reads the answer until admin closes the connection, or `within` is up;
/// returns the answer and how long it took.
async fn raw_answer(
    admin: &Admin,
    head: &str,
    body_start: &[u8],
    within: std::time::Duration,
) -> (String, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = admin.base.trim_start_matches("http://");
    let mut connection = tokio::net::TcpStream::connect(address).await.unwrap();
    let started = std::time::Instant::now();
    connection.write_all(head.as_bytes()).await.unwrap();
    connection.write_all(body_start).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, connection.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "no whole answer within {within:?}: {:?}",
        String::from_utf8_lossy(&answer)
    );
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

/// The JSON error at the end of a raw answer.
fn raw_error(answer: &str) -> serde_json::Value {
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

/// A body declared larger than admin takes is refused from the head, at
/// once: admin does not wait for a body it would refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_too_large_is_refused_at_once() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        admin.create_topic(json!({"name": "orders"})).await;
        for (method, path) in [
            ("POST", "/v1/topics/orders/events"),
            ("POST", "/v1/topics"),
            ("PATCH", "/v1/topics/orders"),
            ("POST", "/v1/topics/orders/purge"),
        ] {
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n",
                crate::support::TOKEN
            );
            let (answer, took) =
                raw_answer(&admin, &head, b"{\"d", std::time::Duration::from_secs(2)).await;
            assert!(answer.starts_with("HTTP/1.1 413 "), "{path}: {answer:?}");
            assert!(
                answer
                    .to_ascii_lowercase()
                    .contains("\r\nconnection: close\r\n"),
                "{path}: {answer:?}"
            );
            // Six times the default max_event_bytes (1 MiB), plus 64 KiB.
            assert_error(&(413, raw_error(&answer)), 413, "at most 6356992 bytes");
            assert!(took < std::time::Duration::from_secs(2), "{path}: {took:?}");
        }
    })
    .await;
}

/// A body that does not arrive in time is answered 408 and its connection
/// closed, so that slow bodies cannot pile up and fill admin's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_slow_is_refused_in_time() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        admin.create_topic(json!({"name": "orders"})).await;
        let head = format!(
            "POST /v1/topics/orders/events HTTP/1.1\r\nHost: admin\r\n\
             Authorization: Bearer {}\r\nContent-Length: 1000\r\n\r\n",
            crate::support::TOKEN
        );
        let limit = sse_admin::http::BODY_READ_TIMEOUT;
        let (answer, took) = raw_answer(
            &admin,
            &head,
            b"{\"data\":\"",
            limit + std::time::Duration::from_secs(5),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{answer:?}"
        );
        let body = raw_error(&answer);
        assert_eq!(body["error"], "request_timeout", "{body}");
        assert_error(
            &(408, body),
            408,
            &format!("did not arrive within {} s", limit.as_secs()),
        );
        assert!(took >= limit, "{took:?}");
        // Nothing was published.
        let (_, topic) = admin.call("GET", "/v1/topics/orders", None).await;
        assert_eq!(topic["messages"], 0, "{topic}");
    })
    .await;
}
