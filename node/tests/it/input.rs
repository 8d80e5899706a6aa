//! Bad input gets a precise status and a JSON body, never a panic.

use futures_util::StreamExt;
use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn bad_requests_get_precise_errors() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "orders", None).await;
    let node = NodeProc::start(
        &nats.url(),
        &[
            ("SSE_HTTP__MAX_TOPICS_PER_CONNECTION", "3"),
            ("SSE_HTTP__MAX_LAST_EVENT_ID_BYTES", "64"),
        ],
    )
    .await;
    let long_path = format!("orders.{}", "x".repeat(300));
    let long_id = "orders:abc:1,".repeat(10);
    let many = "topic=orders.a&topic=orders.b&topic=orders.c&topic=orders.d";
    let cases: Vec<(String, Option<&str>, u16, &str)> = vec![
        ("/v1/events".into(), None, 400, "missing_topic"),
        ("/v1/events?other=1".into(), None, 400, "missing_topic"),
        ("/v1/events?topic=".into(), None, 400, "bad_topic"),
        ("/v1/events?topic=orders..1".into(), None, 400, "bad_topic"),
        (
            "/v1/events?topic=orders.a%20b".into(),
            None,
            400,
            "bad_topic",
        ),
        (
            "/v1/events?topic=orders.%C3%A9".into(),
            None,
            400,
            "bad_topic",
        ),
        (
            "/v1/events?topic=orders.%3E.x".into(),
            None,
            400,
            "bad_topic",
        ),
        ("/v1/events?topic=*".into(), None, 400, "bad_topic"),
        (
            format!("/v1/events?topic={long_path}"),
            None,
            400,
            "bad_topic",
        ),
        (format!("/v1/events?{many}"), None, 400, "too_many_topics"),
        (
            "/v1/events?topic=orders".into(),
            Some("garbage"),
            400,
            "bad_last_event_id",
        ),
        (
            "/v1/events?topic=orders".into(),
            Some("orders:abc:x"),
            400,
            "bad_last_event_id",
        ),
        (
            "/v1/events?topic=orders".into(),
            Some("orders:ABC:1"),
            400,
            "bad_last_event_id",
        ),
        (
            "/v1/events?topic=orders".into(),
            Some("orders:abc:1,orders:abc:2"),
            400,
            "bad_last_event_id",
        ),
        (
            "/v1/events?topic=orders".into(),
            Some(&long_id),
            400,
            "last_event_id_too_long",
        ),
        (
            "/v1/events?topic=orders&lastEventId=x:y".into(),
            None,
            400,
            "bad_last_event_id",
        ),
        (
            "/v1/events?topic=orders&lastEventId=orders:abc:1&lastEventId=orders:abc:2".into(),
            None,
            400,
            "bad_last_event_id",
        ),
        // A resume parameter spelt otherwise would start the stream live
        // and lose what the client missed.
        (
            "/v1/events?topic=orders&lastEventID=orders:abc:1".into(),
            None,
            400,
            "bad_query",
        ),
        (
            "/v1/events?topic=orders&last_event_id=orders:abc:1".into(),
            None,
            400,
            "bad_query",
        ),
        ("/v1/events?Topic=orders".into(), None, 400, "bad_query"),
        (
            "/v1/events?topic=orders&access_token=a&access_token=b".into(),
            None,
            400,
            "bad_query",
        ),
        ("/v1/events?topic=nosuch".into(), None, 404, "unknown_topic"),
        (
            "/v1/events?topic=orders&topic=nosuch.x".into(),
            None,
            404,
            "unknown_topic",
        ),
        ("/v1/nothing".into(), None, 404, "not_found"),
    ];
    for (path, id, status, code) in &cases {
        let (got, body) = get(&node.url(path), *id).await;
        assert_eq!(got, *status, "{path} {id:?}: {body}");
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}"));
        assert_eq!(json["error"], *code, "{path} {id:?}: {body}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path}: {body}"
        );
    }
    // Another method than GET: 405 with the JSON error too, and Allow.
    let refused = http_client()
        .post(node.url("/v1/events?topic=orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 405);
    let allow = refused
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    let json: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(json["error"], "method_not_allowed", "{json}");
    assert_eq!(allow.as_deref(), Some("GET,HEAD"));
    // The messages name the bad value, and where an id came from.
    let (_, body) = get(&node.url("/v1/events?topic=orders.a%20b"), None).await;
    assert!(body.contains("orders.a b"), "{body}");
    let (_, body) = get(&node.url("/v1/events?topic=orders&lastEventId=x:y"), None).await;
    assert!(body.contains("the lastEventId parameter"), "{body}");
    let (_, body) = get(&node.url("/v1/events?topic=orders"), Some("x:y")).await;
    assert!(body.contains("Last-Event-ID"), "{body}");
    let (_, body) = get(&node.url("/v1/events?topic=orders&Last-Event-ID=x"), None).await;
    let message = serde_json::from_str::<serde_json::Value>(&body).unwrap()["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .contains("did you mean \"lastEventId\""),
        "{body}"
    );
    // Parameters of the app's own (a cache-buster) are left alone.
    let mut client = SseClient::connect(&node.url("/v1/events?topic=orders&_=17&v=2"), None)
        .await
        .unwrap();
    client.ready().await;
    assert!(
        node.metric("sse_requests_rejected_total{status=\"400\"}")
            .await
            >= 15.0
    );
    // The node is still serving.
    let mut client = SseClient::connect(&node.url("/v1/events?topic=orders"), None)
        .await
        .unwrap();
    client.ready().await;
}

#[tokio::test]
async fn bad_config_stops_start_up_naming_the_key() {
    for (key, value, needle) in [
        ("SSE_HTTP__LISTEN", "not-an-address", "http.listen"),
        ("SSE_NATS__URL", "", "nats.url"),
        ("SSE_HTTP__HEARTBEAT_SECONDS", "often", "heartbeat_seconds"),
        (
            "SSE_NATS__PING_INTERVAL_SECONDS",
            "0",
            "nats.ping_interval_seconds",
        ),
        ("SSE_LOG__FORMAT", "xml", "log.format"),
        ("SSE_LOG__LEVEL", "warning", "log.level"),
        ("SSE_HTTP__NO_SUCH_KEY", "1", "no_such_key"),
    ] {
        let output = tokio::process::Command::new(binary())
            .env(key, value)
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(64), "{key}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.to_lowercase().contains(needle),
            "{key}={value}: {stderr}"
        );
    }
    let ok = tokio::process::Command::new(binary())
        .arg("--check-config")
        .env("SSE_NATS__URL", "nats://a:4222,nats://b:4222")
        .output()
        .await
        .unwrap();
    assert!(ok.status.success());
}

/// A configuration with several mistakes, in its file and its environment,
/// names them all at once, each with its key and where it was set, so that
/// one run shows everything to fix.
#[tokio::test]
async fn every_mistake_of_a_configuration_is_named_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "[http]\nlistn = \"0.0.0.0:8080\"\n[delivery]\nclient_queue_events = -1\n[histroy]\nmax_bytes = 1\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(binary())
        .arg("--check-config")
        .arg("--config")
        .arg(&file)
        .env("SSE_HTTP__MAX_CONNECTIONS", "lots")
        .env("SSE_NATS__URLL", "nats://a:4222")
        .env("SSE_METRICS__PORT", "9090")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = file.display();
    for said in [
        "histroy: unknown section; the sections are auth, cluster, cors, delivery, history,".to_owned(),
        "http.listn: unknown key; [http] has fast_path, h2,".to_owned(),
        "nats.urll: unknown key; [nats] has connection_name, creds_file, nkey_seed_file, ping_interval_seconds, subject_prefix, tls_ca_file, tls_cert_file, tls_key_file, topic_refresh_seconds, url (set by SSE_NATS__URLL)".to_owned(),
        format!("delivery.client_queue_events: invalid value signed int `-1`, expected usize (in {file} TOML file)"),
        "http.max_connections: invalid type: found string \"lots\", expected usize (set by SSE_HTTP__MAX_CONNECTIONS)".to_owned(),
        // A section is no variable: the one that set a key in it is named.
        "metrics: unknown section; the sections are auth,".to_owned(),
        "(set by SSE_METRICS__PORT)".to_owned(),
    ] {
        assert!(stderr.contains(&said), "{said:?} not in:\n{stderr}");
    }
}

/// Kubernetes gives every container variables for each Service of its
/// namespace, named after the Service: beside Services named
/// `sse-cluster-node` and `sse-admin` (a release named `sse`), they start
/// with `SSE_`, and are no configuration keys. The node starts all the same.
#[tokio::test]
async fn service_variables_kubernetes_sets_do_not_stop_start_up() {
    let output = tokio::process::Command::new(binary())
        .arg("--check-config")
        .env("SSE_NATS__URL", "nats://nats:4222")
        .envs([
            ("SSE_CLUSTER_NODE_SERVICE_HOST", "10.96.0.12"),
            ("SSE_CLUSTER_NODE_SERVICE_PORT", "8080"),
            ("SSE_CLUSTER_NODE_SERVICE_PORT_HTTP", "8080"),
            ("SSE_CLUSTER_NODE_PORT", "tcp://10.96.0.12:8080"),
            ("SSE_CLUSTER_NODE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
            ("SSE_CLUSTER_NODE_PORT_8080_TCP_PROTO", "tcp"),
            ("SSE_CLUSTER_NODE_PORT_8080_TCP_PORT", "8080"),
            ("SSE_CLUSTER_NODE_PORT_8080_TCP_ADDR", "10.96.0.12"),
            ("SSE_ADMIN_SERVICE_HOST", "10.96.0.13"),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A node whose NATS does not answer says so at warn, naming where it
/// tries, so that an operator at the default level sees why it is not
/// ready.
#[tokio::test]
async fn an_unreachable_nats_is_said_at_warn_with_its_address() {
    use tokio::io::AsyncBufReadExt;
    let dead = crate::ports::free_port();
    let mut node = tokio::process::Command::new(binary())
        .env("SSE_NATS__URL", format!("nats://127.0.0.1:{dead}"))
        .env("SSE_HTTP__LISTEN", "127.0.0.1:0")
        .env("SSE_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = tokio::io::BufReader::new(node.stdout.take().unwrap());
    let stderr = tokio::io::BufReader::new(node.stderr.take().unwrap());
    let mut lines = std::pin::pin!(futures_util::stream::select(
        tokio_stream_lines(stdout.lines()),
        tokio_stream_lines(stderr.lines()),
    ));
    let said = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(line) = lines.next().await {
            if line.contains("cannot reach nats") {
                return line;
            }
        }
        panic!("the node ended without saying it");
    })
    .await
    .expect("a warning within 15 s");
    assert!(said.contains(&format!("127.0.0.1:{dead}")), "{said}");
    assert!(said.contains("WARN"), "{said}");
}

fn tokio_stream_lines<R: tokio::io::AsyncBufRead + Unpin>(
    lines: tokio::io::Lines<R>,
) -> impl futures_util::Stream<Item = String> {
    futures_util::stream::unfold(lines, |mut lines| async move {
        lines
            .next_line()
            .await
            .ok()
            .flatten()
            .map(|line| (line, lines))
    })
}
