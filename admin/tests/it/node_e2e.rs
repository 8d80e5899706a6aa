//! End to end with a real node: an event published through admin reaches an
//! SSE client on `sse-node`, with exactly the id admin returned; the node's
//! own report shows up in admin's cluster view and leaves it on shutdown.
//!
//! Uses the node binary at `target/debug/sse-node` (or `SSE_NODE_BIN`). A
//! missing binary fails the test, naming the command that builds it: a test
//! that did not run must not report `ok`.

use std::{path::PathBuf, process::Stdio, time::Duration};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::ports::free_port;

use crate::support::{Admin, NatsServer, bounded, eventually, http_client_builder};

fn node_binary() -> Option<PathBuf> {
    let path = std::env::var_os("SSE_NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sse-node")
        });
    path.is_file().then_some(path)
}

struct Node {
    child: Child,
    base: String,
}

impl Node {
    fn start(binary: &PathBuf, nats_url: &str) -> Self {
        let port = free_port();
        let child = Command::new(binary)
            .env("SSE_NATS__URL", nats_url)
            .env("SSE_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("SSE_CLUSTER__REPORT_SECONDS", "1")
            .env("SSE_SHUTDOWN__DRAIN_SECONDS", "1")
            .env("SSE_LOG__LEVEL", "warn")
            .env_remove("SSE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("sse-node starts");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// SIGTERM: the node drains and deletes its report.
    fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_published_through_admin_reaches_a_node_client_with_the_same_id() {
    let Some(binary) = node_binary() else {
        panic!(
            "the node end-to-end test cannot run: target/debug/sse-node is absent (cargo build -p sse-node, or set SSE_NODE_BIN)"
        );
    };
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        admin.create_topic(json!({"name": "e2e"})).await;
        let mut node = Node::start(&binary, &nats.url);
        let http = http_client_builder().build().expect("client");
        let events_url = format!("{}/v1/events?topic=e2e.>", node.base);
        eventually("node ready with the topic", Duration::from_secs(20), || {
            let (http, url) = (http.clone(), format!("{}/readyz", node.base));
            async move {
                let ready = http.get(url).send().await.ok()?;
                ready.status().is_success().then_some(())
            }
        })
        .await;

        let response = http
            .get(&events_url)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut events = response.bytes_stream().eventsource();

        // The node's report reaches admin's cluster view, with the client.
        let node_view = eventually("node listed with its client", Duration::from_secs(15), || async {
            let (_, list) = admin.call("GET", "/v1/nodes", None).await;
            let node = list["nodes"].as_array()?.first()?.clone();
            (node["connections"].as_u64()? >= 1 && node["topics"]["e2e"].as_u64()? >= 1)
                .then_some(node)
        })
        .await;
        assert_eq!(node_view["draining"], false);
        let (_, topic) = admin.call("GET", "/v1/topics/e2e", None).await;
        assert!(topic["subscribers"].as_u64().unwrap() >= 1, "{topic}");

        let (status, published) = admin
            .call(
                "POST",
                "/v1/topics/e2e/events",
                Some(json!({"subject": "e2e.orders.7", "event": "order", "data": "line one\nline two"})),
            )
            .await;
        assert_eq!(status, 200, "{published}");
        let id = published["id"].as_str().unwrap().to_owned();

        let event = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                let event = events.next().await.expect("stream open").expect("valid frame");
                // Skip the id-only cursor frame sent at connect time.
                if !event.data.is_empty() {
                    return event;
                }
            }
        })
        .await
        .expect("event delivered in time");
        assert_eq!(event.id, id, "the id admin returned is the id the client sees");
        assert_eq!(event.event, "order");
        assert_eq!(event.data, "line one\nline two");
        drop(events);

        // On SIGTERM the node deletes its report; admin drops it at once.
        node.terminate();
        eventually("node gone from the view", Duration::from_secs(15), || async {
            let (_, list) = admin.call("GET", "/v1/nodes", None).await;
            list["nodes"].as_array()?.is_empty().then_some(())
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(10), node.child.wait()).await;
    })
    .await;
}
