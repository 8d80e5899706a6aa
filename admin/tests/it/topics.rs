//! Topic life cycle through HTTP, and the refusals of bad input.

use serde_json::json;

use crate::support::{Admin, NatsServer, assert_error, bounded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_identical_creates_at_once_one_makes_the_topic() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        // JetStream takes a create with an identical config as a success,
        // yet only one request made the topic.
        let racing = (0..8).map(|_| {
            admin.call(
                "POST",
                "/v1/topics",
                Some(json!({"name": "invoices", "max_age_seconds": 60})),
            )
        });
        let answers = futures_util::future::join_all(racing).await;
        let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "one create makes the topic: {statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 409),
            "{statuses:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_life_cycle() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;

        let created = admin
            .create_topic(json!({"name": "orders", "max_age_seconds": 3600, "max_messages_per_subject": 10}))
            .await;
        assert_eq!(created["name"], "orders");
        assert_eq!(created["stream"], "SSE_orders");
        assert_eq!(created["subjects"], json!(["sse.orders", "sse.orders.>"]));
        assert_eq!(created["settings"]["access"], "public");
        assert_eq!(created["settings"]["max_age_seconds"], 3600);
        assert_eq!(created["settings"]["max_messages_per_subject"], 10);
        assert_eq!(created["settings"]["storage"], "file");
        assert_eq!(created["messages"], 0);

        // The stream is the topic: JetStream holds the settings and access.
        let js = nats.jetstream().await;
        let mut stream = js.get_stream("SSE_orders").await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.metadata["sse.access"], "public");
        // Each event is republished, with its sequence, where dozing feeds
        // of nodes listen.
        let republish = info.config.republish.as_ref().expect("a republish");
        assert_eq!(
            (republish.source.as_str(), republish.destination.as_str(), republish.headers_only),
            (">", "sse.LIVE.>", false)
        );

        assert_error(
            &admin.call("POST", "/v1/topics", Some(json!({"name": "orders"}))).await,
            409,
            "orders",
        );

        for path in ["orders.1", "orders.1", "orders.2", "orders", "orders.2.x"] {
            js.publish(format!("sse.{path}"), "x".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }

        let (status, topic) = admin.call("GET", "/v1/topics/orders", None).await;
        assert_eq!(status, 200, "{topic}");
        assert_eq!(topic["messages"], 5);
        assert_eq!(topic["first_sequence"], 1);
        assert_eq!(topic["last_sequence"], 5);
        assert_eq!(topic["subject_paths"], 4);
        assert_eq!(topic["subscribers"], 0);
        assert!(topic["bytes"].as_u64().unwrap() > 0);
        // One server: it leads, and there is no other copy.
        let placement = &topic["placement"];
        assert!(
            placement["leader"].as_str().is_some_and(|l| !l.is_empty()),
            "{placement}"
        );
        assert_eq!(placement["replicas"], json!([]), "{placement}");

        let chat = admin
            .create_topic(json!({"name": "chat", "storage": "memory", "access": "private", "max_message_bytes": 65536}))
            .await;
        assert_eq!(chat["settings"]["max_message_bytes"], 65536);
        let (status, list) = admin.call("GET", "/v1/topics", None).await;
        assert_eq!(status, 200);
        let names: Vec<&str> = list["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["chat", "orders"]);
        assert_eq!(list["total"], 2);
        assert!(list.get("limit").is_none(), "not paged: {list}");
        // Paged by name, when asked; what is not a page's setting is refused.
        let page_of = |list: &serde_json::Value| -> Vec<String> {
            list["topics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let (status, page) = admin.call("GET", "/v1/topics?limit=1", None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page_of(&page), ["chat"]);
        assert_eq!((page["total"].clone(), page["limit"].clone(), page["offset"].clone()), (json!(2), json!(1), json!(0)));
        let (_, page) = admin.call("GET", "/v1/topics?limit=1&offset=1", None).await;
        assert_eq!(page_of(&page), ["orders"]);
        let (_, page) = admin.call("GET", "/v1/topics?offset=2", None).await;
        assert_eq!(page_of(&page), Vec::<String>::new());
        assert_eq!(page["total"], 2);
        assert_error(&admin.call("GET", "/v1/topics?limit=0", None).await, 400, "limit");
        assert_error(&admin.call("GET", "/v1/topics?limit=1001", None).await, 400, "limit");
        assert_error(&admin.call("GET", "/v1/topics?page=2", None).await, 400, "page");
        // The listing names the same server, though NATS lists the streams
        // of a server of no cluster without saying where they are.
        for listed in list["topics"].as_array().unwrap() {
            assert_eq!(listed["placement"], *placement, "{listed}");
        }

        // Subject paths, paged and sorted.
        let (status, page) = admin.call("GET", "/v1/topics/orders/subjects?limit=2", None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 4);
        assert_eq!(
            page["subjects"],
            json!([{"subject": "orders", "messages": 1}, {"subject": "orders.1", "messages": 2}])
        );
        let (_, page) = admin.call("GET", "/v1/topics/orders/subjects?limit=2&offset=2", None).await;
        assert_eq!(
            page["subjects"],
            json!([{"subject": "orders.2", "messages": 1}, {"subject": "orders.2.x", "messages": 1}])
        );
        assert_error(
            &admin.call("GET", "/v1/topics/orders/subjects?limit=0", None).await,
            400,
            "limit",
        );
        assert_error(
            &admin.call("GET", "/v1/topics/orders/subjects?limit=x", None).await,
            400,
            "limit",
        );

        // Retention and access change; the rest is refused.
        let (status, patched) = admin
            .call("PATCH", "/v1/topics/orders", Some(json!({"max_age_seconds": 60, "access": "private", "max_bytes": 1048576})))
            .await;
        assert_eq!(status, 200, "{patched}");
        assert_eq!(patched["settings"]["max_age_seconds"], 60);
        assert_eq!(patched["settings"]["max_bytes"], 1048576);
        assert_eq!(patched["settings"]["access"], "private");
        assert_eq!(patched["settings"]["max_messages_per_subject"], 10);
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.metadata["sse.access"], "private");
        assert_error(
            &admin.call("PATCH", "/v1/topics/orders", Some(json!({"max_bytes": 4096}))).await,
            400,
            "max_bytes is 4096, below the largest event",
        );
        assert_error(
            &admin.call("PATCH", "/v1/topics/orders", Some(json!({"storage": "memory"}))).await,
            400,
            "storage",
        );
        // More than JetStream may hold: JetStream answers with code 500, but
        // no retry would help.
        assert_error(
            &admin.call("PATCH", "/v1/topics/orders", Some(json!({"max_bytes": 1_000_000_000_000_000u64}))).await,
            400,
            "more than the NATS servers' JetStream may hold",
        );

        // A subject outside the subject-path rules, published straight to
        // NATS, is purged by the name the listing gives it; a subject that
        // NATS would not take either is refused.
        js.publish("sse.orders.é", "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let (status, purged) = admin
            .call("POST", "/v1/topics/orders/purge", Some(json!({"subject": "orders.é"})))
            .await;
        assert_eq!(status, 200, "{purged}");
        assert_eq!(purged["purged"], 1);
        for bad in ["orders..x", "orders.a b", "orders.>.x"] {
            assert_error(
                &admin.call("POST", "/v1/topics/orders/purge", Some(json!({"subject": bad}))).await,
                400,
                "",
            );
        }

        // Purge one subject path, then the rest.
        let (status, purged) = admin
            .call("POST", "/v1/topics/orders/purge", Some(json!({"subject": "orders.1"})))
            .await;
        assert_eq!(status, 200, "{purged}");
        assert_eq!(purged["purged"], 2);
        assert_error(
            &admin.call("POST", "/v1/topics/orders/purge", Some(json!({"subject": "chat.1"}))).await,
            400,
            "subject path \"chat.1\" is not inside topic \"orders\"",
        );
        let (status, purged) = admin.call("POST", "/v1/topics/orders/purge", None).await;
        assert_eq!(status, 200, "{purged}");
        assert_eq!(purged["purged"], 3);
        let (_, topic) = admin.call("GET", "/v1/topics/orders", None).await;
        assert_eq!(topic["messages"], 0);
        assert_eq!(topic["last_sequence"], 6, "a purge keeps sequences");

        // The largest event: set, then kept by JetStream and enforced on
        // publish; 0 gives the bound back to the server.
        let (status, patched) = admin
            .call("PATCH", "/v1/topics/orders", Some(json!({"max_message_bytes": 2048})))
            .await;
        assert_eq!(status, 200, "{patched}");
        assert_eq!(patched["settings"]["max_message_bytes"], 2048);
        assert_eq!(stream.info().await.unwrap().config.max_message_size, 2048);
        let publish = |data: String| {
            admin.call(
                "POST",
                "/v1/topics/orders/events",
                Some(json!({"subject": "orders.9", "data": data, "id": "a"})),
            )
        };
        // NATS counts the event's headers against the limit, here
        // "NATS/1.0\r\nNats-Msg-Id: a\r\n\r\n" (28 bytes): the data may
        // take the rest, and the 413 names what the data may take.
        assert_error(&publish("x".repeat(2049)).await, 413, "at most 2020");
        assert_error(&publish("x".repeat(2021)).await, 413, "at most 2020");
        let (status, body) = admin
            .call(
                "POST",
                "/v1/topics/orders/events",
                Some(json!({"subject": "orders.9", "data": "x".repeat(2020), "id": "b"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let direct = js.publish("sse.orders.9", vec![b'x'; 4096].into()).await.unwrap().await;
        assert!(direct.is_err(), "JetStream keeps the bound for publishers of its own");
        let (status, patched) = admin
            .call("PATCH", "/v1/topics/orders", Some(json!({"max_message_bytes": 0})))
            .await;
        assert_eq!(status, 200, "{patched}");
        assert_eq!(patched["settings"]["max_message_bytes"], 0);
        assert_eq!(publish("x".repeat(4096)).await.0, 200);
        assert_error(
            &admin
                .call("PATCH", "/v1/topics/orders", Some(json!({"max_message_bytes": 1u64 << 40})))
                .await,
            400,
            "max_message_bytes",
        );
        // So small that an event's headers would leave its data no room:
        // every publish through admin would be refused.
        assert_error(
            &admin
                .call("PATCH", "/v1/topics/orders", Some(json!({"max_message_bytes": 20})))
                .await,
            400,
            "at least 1024",
        );

        let (status, _) = admin.call("DELETE", "/v1/topics/orders", None).await;
        assert_eq!(status, 204);
        assert_error(&admin.call("GET", "/v1/topics/orders", None).await, 404, "orders");
        assert_error(&admin.call("DELETE", "/v1/topics/orders", None).await, 404, "orders");
        assert_error(&admin.call("POST", "/v1/topics/orders/purge", None).await, 404, "orders");
        assert_error(&admin.call("GET", "/v1/topics/orders/subjects", None).await, 404, "orders");
        assert!(js.get_stream("SSE_orders").await.is_err());
    })
    .await;
}

/// A NATS server that asks for a user and password gets those of the URL
/// (percent-encoded there); wrong ones keep admin unready, and its
/// readiness answer does not show them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credentials_of_the_nats_url_are_sent() {
    bounded(async {
        let nats = NatsServer::start_with_args(&["--user", "admin", "--pass", "p@ss:word"]);
        let with = |password: &str| {
            nats.url
                .replacen("nats://", &format!("nats://admin:{password}@"), 1)
        };
        let admin =
            Admin::start_with(crate::support::test_config(&with("p%40ss%3Aword"), "")).await;
        admin.create_topic(json!({"name": "guarded"})).await;

        let refused = Admin::spawn(crate::support::test_config(&with("wrong%20one"), "")).await;
        let ready = format!("{}/readyz", refused.base);
        for _ in 0..10 {
            let response = refused.http.get(&ready).send().await.unwrap();
            assert_eq!(
                response.status().as_u16(),
                503,
                "ready without valid credentials"
            );
            let text = response.text().await.unwrap();
            assert!(
                !text.contains("wrong"),
                "the password in the answer: {text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// A topic whose stream was made before topics republished their events
/// gets the republish when admin starts, and one made without it while
/// admin runs gets it with its next update; both keep their events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_made_before_republish_get_it() {
    bounded(async {
        let nats = NatsServer::start();
        let js = nats.jetstream().await;
        let old_stream = |name: &str| async_nats::jetstream::stream::Config {
            name: format!("SSE_{name}"),
            subjects: vec![format!("sse.{name}"), format!("sse.{name}.>")],
            allow_direct: true,
            ..Default::default()
        };
        let republishes = |config: &async_nats::jetstream::stream::Config| {
            config.republish.as_ref().map(|r| r.destination.clone())
        };
        let mut old = js.create_stream(old_stream("old")).await.unwrap();
        js.publish("sse.old", "kept".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(republishes(&old.info().await.unwrap().config), None);

        let admin = Admin::start(&nats).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let info = old.info().await.unwrap();
            if republishes(&info.config).is_some() {
                assert_eq!(republishes(&info.config).as_deref(), Some("sse.LIVE.>"));
                assert_eq!(info.state.messages, 1);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the older topic never got its republish"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }

        let mut later = js.create_stream(old_stream("later")).await.unwrap();
        let (status, patched) = admin
            .call(
                "PATCH",
                "/v1/topics/later",
                Some(json!({"max_age_seconds": 60})),
            )
            .await;
        assert_eq!(status, 200, "{patched}");
        let info = later.info().await.unwrap();
        assert_eq!(republishes(&info.config).as_deref(), Some("sse.LIVE.>"));
        assert_eq!(info.config.max_age, std::time::Duration::from_secs(60));
    })
    .await;
}

/// A topic whose stream was made by hand to deny purges: JetStream answers
/// each purge with code 500, and no retry helps, so admin says why with 400
/// rather than "NATS unavailable, retry".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_denies_purges_gets_400() {
    bounded(async {
        let nats = NatsServer::start();
        let js = nats.jetstream().await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "SSE_kept".into(),
            subjects: vec!["sse.kept".into(), "sse.kept.>".into()],
            deny_purge: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let admin = Admin::start(&nats).await;
        assert_error(
            &admin.call("POST", "/v1/topics/kept/purge", None).await,
            400,
            "refuses the purge",
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_values_are_refused() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        let create = |body| admin.call("POST", "/v1/topics", Some(body));

        assert_error(&create(json!({"name": "Orders"})).await, 400, "Orders");
        assert_error(&create(json!({"name": "a.b"})).await, 400, "a.b");
        assert_error(&create(json!({"name": ""})).await, 400, "topic name");
        assert_error(
            &create(json!({"name": "x".repeat(65)})).await,
            400,
            "topic name",
        );
        assert_error(
            &create(json!({"name": "t", "replicas": 2})).await,
            400,
            "replicas",
        );
        assert_error(
            &create(json!({"name": "t", "storage": "disk"})).await,
            400,
            "disk",
        );
        assert_error(
            &create(json!({"name": "t", "access": "secret"})).await,
            400,
            "secret",
        );
        assert_error(
            &create(json!({"name": "t", "max_age": 5})).await,
            400,
            "max_age",
        );
        assert_error(
            &create(json!({"name": "t", "max_bytes": -1})).await,
            400,
            "max_bytes",
        );
        // Room for less than one event: every event would be dropped as
        // soon as it is stored.
        assert_error(
            &create(json!({"name": "t", "max_bytes": 10})).await,
            400,
            "below the largest event the topic takes (1048576 bytes, the NATS server's max_payload",
        );
        assert_error(
            &create(json!({"name": "t", "max_bytes": 1024, "max_message_bytes": 65536})).await,
            400,
            "max_bytes is 1024, below the largest event the topic takes (65536 bytes, its max_message_bytes)",
        );
        assert_error(
            &create(json!({"name": "t", "max_consumers": 3_000_000_000u64})).await,
            400,
            "max_consumers",
        );
        assert_error(&create(json!({})).await, 400, "name");
        // Replicas 3 on a single server: JetStream's refusal is passed on.
        assert_error(
            &create(json!({"name": "t", "replicas": 3})).await,
            400,
            "replicas",
        );

        let raw = admin
            .http
            .post(format!("{}/v1/topics", admin.base))
            .bearer_auth(crate::support::TOKEN)
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), 400);
        let body: serde_json::Value = raw.json().await.unwrap();
        assert_eq!(body["error"], "bad_request");

        assert_error(
            &admin.call("GET", "/v1/topics/Bad.Name", None).await,
            400,
            "Bad.Name",
        );
        assert_error(&admin.call("GET", "/v1/nope", None).await, 404, "route");
        assert_error(&admin.call("PUT", "/v1/topics", None).await, 405, "method");
        // Nothing was created by any of it.
        let (_, list) = admin.call("GET", "/v1/topics", None).await;
        assert_eq!(list["topics"], json!([]));
    })
    .await;
}

/// NATS 2.15 allows a stream 1,000 consumers unless the stream sets its own
/// limit; a cluster of 7 nodes can need more for one topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_hold_more_consumers_than_the_nats_default() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        let created = admin.create_topic(json!({"name": "wide"})).await;
        assert_eq!(created["settings"]["max_consumers"], 10_000);
        let own = admin
            .create_topic(json!({"name": "narrow", "max_consumers": 5}))
            .await;
        assert_eq!(own["settings"]["max_consumers"], 5);

        let js = nats.jetstream().await;
        let consumer = |stream: &'static str, i: usize| {
            let js = js.clone();
            async move {
                js.create_consumer_on_stream(
                    async_nats::jetstream::consumer::pull::Config {
                        durable_name: Some(format!("c{i}")),
                        ..Default::default()
                    },
                    stream,
                )
                .await
            }
        };
        for i in 0..1001 {
            consumer("SSE_wide", i)
                .await
                .unwrap_or_else(|e| panic!("consumer {i} refused: {e}"));
        }
        for i in 0..5 {
            consumer("SSE_narrow", i).await.unwrap();
        }
        assert!(
            consumer("SSE_narrow", 5).await.is_err(),
            "the topic's own limit holds"
        );

        // 0 gives the server's default back: 1,001 is then over it.
        for (limit, accepted) in [(0, false), (2000, true)] {
            let (status, patched) = admin
                .call(
                    "PATCH",
                    "/v1/topics/wide",
                    Some(json!({ "max_consumers": limit })),
                )
                .await;
            assert_eq!(status, 200, "{patched}");
            assert_eq!(patched["settings"]["max_consumers"], limit);
            assert_eq!(
                consumer("SSE_wide", 1001).await.is_ok(),
                accepted,
                "the 1,002nd consumer with a limit of {limit}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_is_503() {
    bounded(async {
        let mut nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        admin.create_topic(json!({"name": "t"})).await;
        let counted = |metrics: &str| metrics.lines().any(|l| l.starts_with("sse_nodes_live "));
        assert!(
            counted(&admin.metrics().await),
            "live nodes counted while NATS answers"
        );
        let (_, overview) = admin.call_with("GET", "/v1/overview", None, None).await;
        assert_eq!(overview["nodes_read"], true, "{overview}");
        nats.stop();
        let answer = admin.call("GET", "/v1/topics", None).await;
        assert_error(&answer, 503, "nats");
        // Node counts unknown, not zero, for the dashboard too, once its
        // snapshot is taken after NATS went away.
        crate::support::eventually(
            "the overview to say nodes are unknown",
            std::time::Duration::from_secs(10),
            || async {
                let (_, overview) = admin.call_with("GET", "/v1/overview", None, None).await;
                (overview["nats_connected"] == false).then_some(())
            },
        )
        .await;
        let (_, overview) = admin.call_with("GET", "/v1/overview", None, None).await;
        assert_eq!(overview["nodes_read"], false, "{overview}");
        // Not 0, which would say every node is gone: no figure at all.
        assert!(
            !counted(&admin.metrics().await),
            "no count of live nodes without NATS"
        );
        let answer = admin
            .call(
                "POST",
                "/v1/topics/t/events",
                Some(json!({"subject": "t", "data": "x"})),
            )
            .await;
        // What NATS (or its absence) said is passed on.
        assert_error(&answer, 503, "nats is unavailable (not connected to nats)");
        let ready = admin
            .http
            .get(format!("{}/readyz", admin.base))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);
        let overview = admin.call_with("GET", "/v1/overview", None, None).await;
        assert_eq!(overview.0, 200);
        assert_eq!(overview.1["nats_connected"], false);
    })
    .await;
}

/// The OpenAPI document states the limits the server applies, so that a
/// client generated from it, or a test tool fuzzing by it, sends what is
/// taken: each bound as documented, and the server taking the values at it
/// and refusing those past it, with a JSON error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_states_the_limits_the_server_applies() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        let (_, doc) = admin.call("GET", "/openapi.json", None).await;
        let create = &doc["components"]["schemas"]["CreateTopic"]["properties"];
        assert_eq!(create["name"]["pattern"], "^[a-z0-9_-]{1,64}$");
        assert_eq!(create["replicas"]["enum"], json!([1, 3, null]));
        for field in ["max_message_bytes", "max_consumers"] {
            assert_eq!(create[field]["maximum"], 2147483647, "{field}");
        }
        let params = doc["paths"]["/v1/topics/{name}/subjects"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let limit = params.iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(limit["schema"]["minimum"], 1, "{limit}");
        assert_eq!(limit["schema"]["maximum"], 1000, "{limit}");
        for (path, method) in [
            ("/v1/topics/{name}", "get"),
            ("/v1/topics/{name}/purge", "post"),
            ("/v1/topics/{name}/events", "post"),
        ] {
            let name = &doc["paths"][path][method]["parameters"][0];
            assert_eq!(name["schema"]["pattern"], "^[a-z0-9_-]{1,64}$", "{path}");
        }

        let create = |body| admin.call("POST", "/v1/topics", Some(body));
        assert_eq!(create(json!({"name": "a".repeat(64)})).await.0, 201);
        assert_error(&create(json!({"name": "b".repeat(65)})).await, 400, "name");
        assert_eq!(create(json!({"name": "r1", "replicas": 1})).await.0, 201);
        assert_eq!(
            create(json!({"name": "rnull", "replicas": null})).await.0,
            201
        );
        assert_error(
            &create(json!({"name": "r2", "replicas": 2})).await,
            400,
            "replicas",
        );
        let big = json!({"name": "big", "max_message_bytes": 2147483648u64});
        assert_error(&create(big).await, 400, "max_message_bytes");

        for (limit, status) in [(0, 400), (1, 200), (1000, 200), (1001, 400)] {
            let url = format!("/v1/topics/r1/subjects?limit={limit}");
            assert_eq!(
                admin.call("GET", &url, None).await.0,
                status,
                "limit={limit}"
            );
        }
        // A purge's body is optional; `null` asks for no option too.
        let (status, purged) = admin
            .call("POST", "/v1/topics/r1/purge", Some(serde_json::Value::Null))
            .await;
        assert_eq!(status, 200, "{purged}");
        // A name that is no UTF-8 once decoded: a JSON error, as any other.
        for (method, path) in [
            ("GET", "/v1/topics/%FF"),
            ("POST", "/v1/topics/%FF/purge"),
            ("POST", "/v1/topics/%FF/events"),
        ] {
            assert_error(&admin.call(method, path, None).await, 400, "UTF-8");
        }
    })
    .await;
}

/// A memory topic on NATS servers that allow no memory storage (the nats
/// Helm chart's own default) is refused saying so, not as a size to ask
/// less of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_topic_without_memory_storage_is_refused_saying_so() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, "jetstream {\n  max_memory_store: 0\n}\n").unwrap();
        let nats = NatsServer::start_with_args(&["-c", config.to_str().unwrap()]);
        let admin = Admin::start(&nats).await;
        let answer = admin
            .call(
                "POST",
                "/v1/topics",
                Some(json!({"name": "volatile", "storage": "memory"})),
            )
            .await;
        assert_error(&answer, 400, "memory storage");
        assert_error(&answer, 400, "max_memory_store");
        assert_eq!(
            admin.create_topic(json!({"name": "durable"})).await["name"],
            "durable"
        );
    })
    .await;
}

/// On a NATS cluster, a `max_bytes` more than a server's JetStream storage
/// can reserve is refused naming `max_bytes` and the server's limit; the
/// replicas are named as a cause only when there are more than one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_bytes_over_the_nats_storage_is_refused_naming_it() {
    bounded(async {
        let (_conf, servers) = NatsServer::start_cluster(
            3,
            "jetstream {\n  max_file_store: 1GB\n  max_memory_store: 64MB\n}\n",
        );
        let admin = Admin::start(&servers[0]).await;
        // The cluster elects its JetStream leader after it listens.
        crate::support::eventually(
            "the cluster takes a topic",
            std::time::Duration::from_secs(30),
            || async {
                let (status, _) = admin
                    .call(
                        "POST",
                        "/v1/topics",
                        Some(json!({"name": "fits", "max_bytes": 10_000_000})),
                    )
                    .await;
                (status == 201).then_some(())
            },
        )
        .await;
        let create = |body| admin.call("POST", "/v1/topics", Some(body));

        let answer = create(json!({"name": "huge", "max_bytes": 3_000_000_000u64})).await;
        assert_error(&answer, 400, "max_bytes (3000000000 bytes)");
        assert_error(&answer, 400, "max_file_store");
        assert!(
            !answer.1["message"].as_str().unwrap().contains("replicas"),
            "{}",
            answer.1
        );
        let answer = create(json!({"name": "huge", "max_bytes": i64::MAX})).await;
        assert_error(&answer, 400, "max_bytes");

        let answer =
            create(json!({"name": "huge", "max_bytes": 3_000_000_000u64, "replicas": 3})).await;
        assert_error(&answer, 400, "max_bytes (3000000000 bytes)");
        assert_error(&answer, 400, "replicas is 3");

        let answer =
            create(json!({"name": "huge", "max_bytes": 100_000_000, "storage": "memory"})).await;
        assert_error(&answer, 400, "max_memory_store");

        let answer = admin
            .call(
                "PATCH",
                "/v1/topics/fits",
                Some(json!({"max_bytes": 3_000_000_000u64})),
            )
            .await;
        assert_error(&answer, 400, "max_bytes");
        // Nothing was created by any of it.
        let (_, list) = admin.call("GET", "/v1/topics", None).await;
        assert_eq!(list["total"], 1, "{list}");
    })
    .await;
}
