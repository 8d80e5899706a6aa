//! The bearer-token gate: what needs it, what does not, and the answers.

use serde_json::json;

use crate::support::{Admin, NatsServer, TOKEN, assert_error, bounded, test_config};

/// Every route of the API but publishing.
const API_ROUTES: [(&str, &str); 8] = [
    ("GET", "/v1/topics"),
    ("POST", "/v1/topics"),
    ("GET", "/v1/topics/t"),
    ("PATCH", "/v1/topics/t"),
    ("DELETE", "/v1/topics/t"),
    ("POST", "/v1/topics/t/purge"),
    ("GET", "/v1/topics/t/subjects"),
    ("GET", "/v1/nodes"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_api_reads_need_the_token() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        let wrong_same_length: String = TOKEN.chars().rev().collect();
        for token in [
            None,
            Some("nope"),
            Some(wrong_same_length.as_str()),
            Some(""),
        ] {
            let beside = [
                ("POST", "/v1/topics/t/events"),
                ("GET", "/v1/unknown"),
                // Only GETs of the public paths are open.
                ("POST", "/healthz"),
                ("DELETE", "/v1/overview"),
            ];
            for &(method, path) in API_ROUTES.iter().chain(&beside) {
                let answer = admin
                    .call_with(method, path, Some(json!({"name": "t"})), token)
                    .await;
                assert_error(&answer, 401, "token");
                assert_eq!(answer.1["error"], "unauthorized", "{method} {path}");
            }
        }
        let response = admin
            .http
            .get(format!("{}/v1/topics", admin.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        // The scheme name is not case-sensitive; the token is.
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let response = admin
                .http
                .get(format!("{}/v1/topics", admin.base))
                .header("authorization", format!("{scheme} {TOKEN}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{scheme}");
        }
        let upper = TOKEN.to_uppercase();
        assert_error(
            &admin
                .call_with("GET", "/v1/topics", None, Some(&upper))
                .await,
            401,
            "token",
        );
        // Nothing was created without the token.
        let (_, list) = admin.call("GET", "/v1/topics", None).await;
        assert_eq!(list["topics"], json!([]));
    })
    .await;
}

/// The publish token publishes, and opens nothing else: a backend that
/// publishes through admin cannot create, change, purge or delete topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_token_only_publishes() {
    bounded(async {
        const PUBLISH: &str = "publish-token-9876543210";
        let nats = NatsServer::start();
        let admin = Admin::start_with(test_config(
            &nats.url,
            &format!("[admin]\npublish_token = \"{PUBLISH}\"\n"),
        ))
        .await;
        admin.create_topic(json!({"name": "t"})).await;
        let (status, published) = admin
            .call_with(
                "POST",
                "/v1/topics/t/events",
                Some(json!({"data": "hello"})),
                Some(PUBLISH),
            )
            .await;
        assert_eq!(status, 200, "{published}");
        assert!(published["id"].as_str().is_some(), "{published}");
        for (method, path) in API_ROUTES {
            let answer = admin
                .call_with(method, path, Some(json!({"name": "u"})), Some(PUBLISH))
                .await;
            assert_error(&answer, 403, "may only publish events");
            assert_eq!(answer.1["error"], "forbidden", "{method} {path}");
        }
        // Nothing was purged or deleted; the admin token still publishes.
        let (_, topic) = admin.call("GET", "/v1/topics/t", None).await;
        assert_eq!(topic["messages"], 1, "{topic}");
        let (status, _) = admin
            .call(
                "POST",
                "/v1/topics/t/events",
                Some(json!({"data": "again"})),
            )
            .await;
        assert_eq!(status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_pages_are_open() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        for path in [
            "/",
            "/openapi.json",
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/overview",
        ] {
            let response = admin
                .http
                .get(format!("{}{path}", admin.base))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
        let page = admin
            .http
            .get(format!("{}/", admin.base))
            .send()
            .await
            .unwrap();
        assert!(
            page.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(page.text().await.unwrap().contains("EventSource"));

        // The OpenAPI document is generated from the handlers.
        let (status, doc) = admin.call_with("GET", "/openapi.json", None, None).await;
        assert_eq!(status, 200);
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/v1/topics",
            "/v1/topics/{name}",
            "/v1/topics/{name}/purge",
            "/v1/topics/{name}/subjects",
            "/v1/topics/{name}/events",
            "/v1/nodes",
            "/v1/overview",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert!(doc["paths"]["/v1/topics"]["post"]["responses"]["409"].is_object());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["components"]["schemas"]["CreateTopic"].is_object());
    })
    .await;
}
