//! End to end with a real node: an event published through admin reaches an
//! SSE client on `sse-node`, with exactly the id admin returned; the node's
//! own report shows up in admin's cluster view and leaves it on shutdown; a
//! purge through admin reaches the node's memory at once.
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

/// The node binary; a test without it fails, naming how to build it.
fn node_binary() -> PathBuf {
    let path = std::env::var_os("SSE_NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sse-node")
        });
    assert!(
        path.is_file(),
        "the node end-to-end test cannot run: target/debug/sse-node is absent (cargo build -p sse-node, or set SSE_NODE_BIN)"
    );
    path
}

/// Waits for the node at `base` to answer `/readyz` with 200.
async fn wait_ready(http: &reqwest::Client, base: &str) {
    eventually("node ready with the topic", Duration::from_secs(20), || {
        let (http, url) = (http.clone(), format!("{base}/readyz"));
        async move {
            let ready = http.get(url).send().await.ok()?;
            ready.status().is_success().then_some(())
        }
    })
    .await;
}

struct Node {
    child: Child,
    base: String,
}

impl Node {
    fn start(binary: &PathBuf, nats_url: &str) -> Self {
        Self::start_with(binary, nats_url, &[])
    }

    fn start_with(binary: &PathBuf, nats_url: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        // `env` last: it may change the report and drain times too.
        let child = Command::new(binary)
            .env("SSE_NATS__URL", nats_url)
            .env("SSE_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("SSE_CLUSTER__REPORT_SECONDS", "1")
            .env("SSE_SHUTDOWN__DRAIN_SECONDS", "1")
            .env("SSE_LOG__LEVEL", "warn")
            .env_remove("SSE_CONFIG")
            .envs(env.iter().copied())
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
    let binary = node_binary();
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        admin.create_topic(json!({"name": "e2e"})).await;
        let mut node = Node::start(&binary, &nats.url);
        let http = http_client_builder().build().expect("client");
        let events_url = format!("{}/v1/events?topic=e2e.>", node.base);
        wait_ready(&http, &node.base).await;

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

/// A drain shows in the cluster view at once, not at the node's next
/// report: a drain may be over before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_shows_in_the_cluster_view_at_once() {
    let binary = node_binary();
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        admin.create_topic(json!({"name": "drained"})).await;
        // Reports a minute apart, and a drain of 20 s that a stream holds
        // open: only a report made as the drain starts shows it in time.
        let mut node = Node::start_with(
            &binary,
            &nats.url,
            &[
                ("SSE_CLUSTER__REPORT_SECONDS", "60"),
                ("SSE_CLUSTER__NODE_TTL_SECONDS", "120"),
                ("SSE_SHUTDOWN__DRAIN_SECONDS", "20"),
            ],
        );
        let http = http_client_builder().build().expect("client");
        wait_ready(&http, &node.base).await;
        let response = http
            .get(format!("{}/v1/events?topic=drained", node.base))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let _events = response.bytes_stream();
        let listed = eventually("node listed", Duration::from_secs(15), || async {
            let (_, list) = admin.call("GET", "/v1/nodes", None).await;
            list["nodes"].as_array()?.first().cloned()
        })
        .await;
        assert_eq!(listed["draining"], false, "{listed}");
        node.terminate();
        let started = std::time::Instant::now();
        eventually("the drain in the view", Duration::from_secs(5), || async {
            let (_, list) = admin.call("GET", "/v1/nodes", None).await;
            (list["nodes"].as_array()?.first()?["draining"] == true).then_some(())
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let _ = node.child.kill().await;
    })
    .await;
}

/// A purge through admin reaches the nodes at once, not at their next topic
/// listing: JetStream announces no purge, so admin has it announce an
/// update of the stream, on which the nodes read the stream again and drop
/// what was purged from their memory. A resume from before the purge then
/// gets `reset`, not the purged events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_through_admin_reaches_the_nodes_memory_at_once() {
    let binary = node_binary();
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        let mut held =
            HeldInMemory::start(&binary, &nats, &admin, "gone", &["p1", "p2", "p3"]).await;

        let (status, purged) = admin.call("POST", "/v1/topics/gone/purge", None).await;
        assert_eq!(status, 200, "{purged}");
        assert_eq!(purged["purged"], 3);
        let (status, published) = admin
            .call(
                "POST",
                "/v1/topics/gone/events",
                Some(json!({"data": "after"})),
            )
            .await;
        assert_eq!(status, 200, "{published}");
        assert_eq!(
            next_event(&mut held.live).await.expect("in time").data,
            "after"
        );

        let (reset, next) = held.resumed_from_the_first().await;
        assert_eq!(
            (reset["lost_from"].as_u64(), reset["lost_to"].as_u64()),
            (Some(2), Some(3)),
            "{reset}"
        );
        assert_eq!(next, "after");
    })
    .await;
}

/// A limit lowered through admin reaches the nodes' memory at once, as a
/// purge does: a resume from before what the new limit evicted gets
/// `reset`, not the evicted events the node still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_limit_through_admin_reaches_the_nodes_memory_at_once() {
    let binary = node_binary();
    bounded(async {
        let nats = NatsServer::start();
        let admin = Admin::start(&nats).await;
        let sent = ["t1", "t2", "t3", "t4", "t5"];
        let held = HeldInMemory::start(&binary, &nats, &admin, "trimmed", &sent).await;

        let (status, updated) = admin
            .call(
                "PATCH",
                "/v1/topics/trimmed",
                Some(json!({"max_messages": 2})),
            )
            .await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(updated["messages"], 2, "{updated}");

        let (reset, next) = held.resumed_from_the_first().await;
        assert_eq!(
            (reset["lost_from"].as_u64(), reset["lost_to"].as_u64()),
            (Some(2), Some(3)),
            "{reset}"
        );
        assert_eq!(next, "t4");
    })
    .await;
}

/// A topic's events in a node's memory: a node that lists topics only every
/// 300 s, so that only an announcement tells it of a change in time, and a
/// client that read the events live there.
struct HeldInMemory {
    _node: Node,
    http: reqwest::Client,
    url: String,
    ids: Vec<String>,
    live: EventStream,
}

/// An open event stream, read frame by frame.
type EventStream = std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

impl HeldInMemory {
    /// Creates `topic`, starts the node, and publishes `sent` through
    /// admin to a client that reads each live.
    async fn start(
        binary: &PathBuf,
        nats: &NatsServer,
        admin: &Admin,
        topic: &str,
        sent: &[&str],
    ) -> Self {
        admin.create_topic(json!({"name": topic})).await;
        let node = Node::start_with(
            binary,
            &nats.url,
            &[("SSE_NATS__TOPIC_REFRESH_SECONDS", "300")],
        );
        let http = http_client_builder().build().expect("client");
        let url = format!("{}/v1/events?topic={topic}", node.base);
        wait_ready(&http, &node.base).await;
        let mut live = open_events(&http, &url, None).await;
        let mut ids = Vec::new();
        for data in sent {
            let (status, published) = admin
                .call(
                    "POST",
                    &format!("/v1/topics/{topic}/events"),
                    Some(json!({"data": data})),
                )
                .await;
            assert_eq!(status, 200, "{published}");
            ids.push(published["id"].as_str().unwrap().to_owned());
        }
        // Read live: the node's memory holds them.
        for data in sent {
            assert_eq!(next_event(&mut live).await.expect("in time").data, *data);
        }
        Self {
            _node: node,
            http,
            url,
            ids,
            live,
        }
    }

    /// What a resume from the first event gets, well within the listing's
    /// 300 s: a `history_gone` reset (its data) and the next event's data.
    async fn resumed_from_the_first(&self) -> (serde_json::Value, String) {
        let (reset, next) = eventually(
            "a resume from the first event to get reset",
            Duration::from_secs(5),
            || async {
                let mut resumed = open_events(&self.http, &self.url, Some(&self.ids[0])).await;
                let event = next_event(&mut resumed).await.ok()?;
                (event.event == "reset").then_some((event, next_event(&mut resumed).await.ok()?))
            },
        )
        .await;
        let body: serde_json::Value = serde_json::from_str(&reset.data).unwrap();
        assert_eq!(body["reason"], "history_gone", "{body}");
        (body, next.data)
    }
}

/// Opens `url` as an event stream, resuming after `last_event_id`.
async fn open_events(
    http: &reqwest::Client,
    url: &str,
    last_event_id: Option<&str>,
) -> EventStream {
    let mut request = http.get(url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    Box::pin(response.bytes_stream().eventsource())
}

/// The next event with data (not the cursor frame), within 10 s.
async fn next_event<S, E>(
    events: &mut S,
) -> Result<eventsource_stream::Event, tokio::time::error::Elapsed>
where
    S: futures_util::Stream<Item = Result<eventsource_stream::Event, E>> + Unpin,
    E: std::fmt::Debug,
{
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events
                .next()
                .await
                .expect("stream open")
                .expect("valid frame");
            if !event.data.is_empty() {
                return event;
            }
        }
    })
    .await
}
