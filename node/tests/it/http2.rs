//! HTTP/2: many SSE streams over one connection, in cleartext with prior
//! knowledge (h2c, on the same port as HTTP/1.1) and over TLS with ALPN.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, future::join_all};
use http_body_util::{BodyExt, BodyStream, Empty};
use hyper::{
    Request,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, pki_types::ServerName},
};

use crate::support::*;

const T: Duration = Duration::from_secs(15);
const STREAMS: usize = 20;
const EVENTS: usize = 50;

/// An HTTP/2 connection over `io`; requests go to `authority`.
async fn h2_connect<IO>(io: IO) -> http2::SendRequest<Empty<Bytes>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .expect("http/2 handshake");
    tokio::spawn(connection);
    sender
}

/// Opens one SSE stream on the connection.
async fn h2_stream(sender: &mut http2::SendRequest<Empty<Bytes>>, uri: &str) -> Result<SseClient> {
    let request = Request::get(uri)
        .header("accept", "text/event-stream")
        .body(Empty::new())?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(response.status() == 200, "status {}", response.status());
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let (parts, body) = response.into_parts();
    let body = BodyStream::new(body)
        .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) })
        .map(|r| r.map_err(anyhow::Error::from));
    Ok(SseClient::from_body(parts.headers, body.boxed()))
}

/// Holds STREAMS streams on one connection, publishes EVENTS events, and
/// checks that every stream receives every one, in order. Returns the
/// streams, still open.
async fn many_streams_receive_everything(
    js: &async_nats::jetstream::Context,
    mut sender: http2::SendRequest<Empty<Bytes>>,
    base: &str,
    topic: &str,
) -> Vec<SseClient> {
    let uri = format!("{base}/v1/events?topic={topic}");
    let mut clients = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let mut client = h2_stream(&mut sender, &uri).await.unwrap();
        client.ready().await;
        clients.push(client);
    }
    let mut expected = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let data = format!("{topic}-{i}");
        publish(js, topic, &data).await;
        expected.push(data);
    }
    let received = join_all(clients.iter_mut().map(|c| c.take(EVENTS, T))).await;
    for events in received {
        assert_eq!(data_of(&events), expected);
    }
    clients
}

#[tokio::test]
async fn twenty_streams_share_one_h2c_connection() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "h2c", None).await;
    let node = NodeProc::start(&nats.url(), &[]).await;
    let tcp = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    let sender = h2_connect(tcp).await;
    let base = format!("http://127.0.0.1:{}", node.port);
    let _open = many_streams_receive_everything(&js, sender.clone(), &base, "h2c").await;
    assert_eq!(node.metric("sse_clients_connected").await, STREAMS as f64);
    // An over-long request head is refused on HTTP/2 too, with why, and
    // counted, whether it asks for a stream or not; one just within the
    // bounds (16,384 bytes of header list, each field's name and value
    // and 32 bytes, pseudo-header fields included) is served.
    let mut sender = sender;
    let pseudo = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", &format!("127.0.0.1:{}", node.port)[..]),
        (":path", "/healthz"),
    ]
    .iter()
    .map(|(name, value)| name.len() + value.len() + 32)
    .sum::<usize>();
    let within = 16_384 - pseudo - "x-big".len() - 32;
    for (path, value_len, expected) in [
        ("/healthz", 20_000, 431),
        ("/v1/events?topic=h2c", 20_000, 431),
        ("/healthz", within + 1, 431),
        ("/healthz", within, 200),
    ] {
        let request = Request::get(format!("{base}{path}"))
            .header("x-big", "x".repeat(value_len))
            .body(Empty::new())
            .unwrap();
        sender.ready().await.unwrap();
        let response = sender
            .send_request(request)
            .await
            .unwrap_or_else(|error| panic!("{path}, {value_len}: no answer: {error}"));
        assert_eq!(response.status(), expected, "{path}, {value_len}");
        if expected == 431 {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"], "request_head_too_large", "{body}");
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains("http.max_header_bytes"),
                "{body}"
            );
        }
    }
    let refused = "sse_limit_rejections_total{limit=\"request_head\"}";
    assert_eq!(node.metric(refused).await, 3.0);
    // Past twice the bounds the h2 layer refuses it before the node reads
    // it: 431 still, without a body and without a count.
    let request = Request::get(format!("{base}/healthz"))
        .header("x-big", "x".repeat(40_000))
        .body(Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(node.metric(refused).await, 3.0);
    // HTTP/1.1 still works on the same port.
    let (status, _) = get(&node.url("/healthz"), None).await;
    assert_eq!(status, 200);
}

/// A self-signed certificate for `localhost`, written as PEM files.
struct TestCert {
    dir: tempfile::TempDir,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCert {
    fn new() -> Self {
        let (dir, der) = self_signed_localhost();
        Self { der, dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    /// Connects over TLS offering `alpn`; returns the stream and the
    /// protocol the server chose.
    async fn connect(
        &self,
        port: u16,
        alpn: &[&[u8]],
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>)> {
        self.connect_with_versions(port, alpn, rustls::DEFAULT_VERSIONS)
            .await
    }

    /// [`Self::connect`], offering only these versions of TLS.
    async fn connect_with_versions(
        &self,
        port: u16,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>)> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let chosen = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        Ok((tls, chosen))
    }

    /// A node serving TLS with this certificate, with `env` beside it,
    /// once it answers `/readyz` over TLS.
    async fn start_node(&self, nats_url: &str, env: &[(&str, &str)]) -> NodeProc {
        let (cert, key) = (self.path("cert.pem"), self.path("key.pem"));
        let mut all = vec![
            ("SSE_TLS__CERT_FILE", cert.as_str()),
            ("SSE_TLS__KEY_FILE", key.as_str()),
        ];
        all.extend_from_slice(env);
        let node = NodeProc::spawn(nats_url, &all);
        eventually(T, "the node to be ready over TLS", || async {
            let (status, _) = self.http1_get(node.port, "/readyz").await.ok()?;
            (status == 200).then_some(())
        })
        .await;
        node
    }

    /// `GET path` over HTTP/1.1 on TLS; the status and body.
    async fn http1_get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        let (tls, alpn) = self.connect(port, &[b"http/1.1"]).await?;
        anyhow::ensure!(alpn.as_deref() == Some(&b"http/1.1"[..]), "alpn {alpn:?}");
        let (mut sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

#[tokio::test]
async fn twenty_streams_share_one_tls_connection_negotiated_by_alpn() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "tls", None).await;
    let cert = TestCert::new();
    let node = cert.start_node(&nats.url(), &[]).await;

    let (tls, alpn) = cert
        .connect(node.port, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "the server prefers h2");
    let sender = h2_connect(tls).await;
    let base = format!("https://localhost:{}", node.port);
    let _open = many_streams_receive_everything(&js, sender, &base, "tls").await;

    // HTTP/2 over TLS is agreed by ALPN (RFC 9113 §3.3): a client that
    // agreed on HTTP/1.1, or on nothing, and sends the HTTP/2 preface all
    // the same is not served HTTP/2.
    let no_alpn: &[&[u8]] = &[];
    for offered in [&[&b"http/1.1"[..]][..], no_alpn] {
        let (tls, _) = cert.connect(node.port, offered).await.unwrap();
        let served = async {
            let (mut sender, connection) =
                http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .ok()?;
            tokio::spawn(connection);
            let request = Request::get(format!("{base}/healthz"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            sender.send_request(request).await.ok()
        };
        let served = tokio::time::timeout(T, served)
            .await
            .expect("an answer in time");
        assert!(
            served.is_none(),
            "HTTP/2 served after ALPN {offered:?}: {:?}",
            served.map(|r| r.status())
        );
        // The preface itself is answered as a malformed request, with why,
        // not with a close.
        let (mut tls, _) = cert.connect(node.port, offered).await.unwrap();
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(T, tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400")
                && answer.contains("bad_request_head")
                && answer.contains("ALPN"),
            "after ALPN {offered:?}: {answer:?}"
        );
    }

    // Cleartext on a TLS port gets no HTTP answer, and is counted.
    let refused = match http_get(node.url("/healthz")).await {
        Err(_) => true,
        Ok(response) => !response.status().is_success(),
    };
    assert!(refused);
    let (_, metrics) = cert.http1_get(node.port, "/metrics").await.unwrap();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(value("sse_clients_connected "), STREAMS as f64);
    assert!(value("sse_tls_handshake_failures_total ") >= 1.0);
}

/// Opens five streams of `uri` on `sender`'s connection, sends the node
/// SIGTERM, and checks that each stream ends with nothing more and that the
/// node exits well within its drain. The connection takes no new request
/// (the node's GOAWAY is in) while streams still run on it: a browser's
/// reconnection then goes out on a new connection, which a load balancer
/// sends to a node still serving, not to this one's 503.
async fn five_streams_drain_on_sigterm(
    sender: &mut http2::SendRequest<Empty<Bytes>>,
    uri: &str,
    node: &mut NodeProc,
) {
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = h2_stream(sender, uri).await.unwrap();
        client.ready().await;
        clients.push(client);
    }
    let started = std::time::Instant::now();
    node.terminate();
    let refused = async {
        loop {
            let request = Request::get(uri)
                .header("accept", "text/event-stream")
                .body(Empty::new())
                .unwrap();
            let sent = async {
                sender.ready().await?;
                sender.send_request(request).await
            };
            match tokio::time::timeout(T, sent).await.expect("bounded") {
                Err(_) => return std::time::Instant::now(),
                // Before the node has read its signal, or before the GOAWAY
                // reached this client.
                Ok(response) => assert!(
                    matches!(response.status().as_u16(), 200 | 503),
                    "{:?}",
                    response.status()
                ),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let all_closed = async {
        for client in &mut clients {
            let rest = client.until_closed(T).await.unwrap();
            assert!(rest.is_empty(), "{rest:?}");
        }
        std::time::Instant::now()
    };
    let (refused_at, closed_at) = tokio::join!(refused, all_closed);
    assert!(
        refused_at < closed_at,
        "new requests were taken until every stream had ended ({:?} after SIGTERM; the last stream ended after {:?})",
        refused_at - started,
        closed_at - started
    );
    let status = node.wait_exit(Duration::from_secs(8)).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_drains_http2_streams_and_exits() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "bye", None).await;
    let mut node = NodeProc::start(&nats.url(), &[("SSE_SHUTDOWN__DRAIN_SECONDS", "2")]).await;
    let tcp = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    let mut sender = h2_connect(tcp).await;
    let uri = format!("http://127.0.0.1:{}/v1/events?topic=bye", node.port);
    five_streams_drain_on_sigterm(&mut sender, &uri, &mut node).await;
}

/// The same over TLS, where each connection runs on the node's own records
/// (`tls_records::RecordStream`): the drain's GOAWAY and the TLS close go
/// out through them, and every stream ends cleanly.
#[tokio::test]
async fn sigterm_drains_http2_streams_over_tls_and_exits() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "byetls", None).await;
    let cert = TestCert::new();
    let mut node = cert
        .start_node(&nats.url(), &[("SSE_SHUTDOWN__DRAIN_SECONDS", "2")])
        .await;
    let (tls, alpn) = cert.connect(node.port, &[b"h2"]).await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let mut sender = h2_connect(tls).await;
    let uri = format!("https://localhost:{}/v1/events?topic=byetls", node.port);
    five_streams_drain_on_sigterm(&mut sender, &uri, &mut node).await;
}

/// HTTP/2 over TLS 1.2 (older browsers; load balancers that re-encrypt to
/// the node over HTTP/2) runs on the node's own records too, whose TLS 1.2
/// records each carry their type and, with AES-GCM, their nonce: twenty
/// streams get every event, and SIGTERM ends five more cleanly.
#[tokio::test]
async fn http2_over_tls_1_2_streams_everything_and_drains() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "tls12h2", None).await;
    let cert = TestCert::new();
    let mut node = cert
        .start_node(&nats.url(), &[("SSE_SHUTDOWN__DRAIN_SECONDS", "2")])
        .await;
    let (tls, alpn) = cert
        .connect_with_versions(node.port, &[b"h2"], &[&rustls::version::TLS12])
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut sender = h2_connect(tls).await;
    let base = format!("https://localhost:{}", node.port);
    let _open = many_streams_receive_everything(&js, sender.clone(), &base, "tls12h2").await;
    let uri = format!("{base}/v1/events?topic=tls12h2");
    five_streams_drain_on_sigterm(&mut sender, &uri, &mut node).await;
}

#[tokio::test]
async fn private_topics_need_a_token_over_http2_too() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_private_topic(&js, "h2priv").await;
    let secret = "h2-secret-h2-secret-h2-secret-h2-secret";
    let node = NodeProc::start(&nats.url(), &[("SSE_AUTH__JWT__HS256_SECRET", secret)]).await;
    let tcp = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    let mut sender = h2_connect(tcp).await;
    let uri = format!("http://127.0.0.1:{}/v1/events?topic=h2priv", node.port);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"exp": exp, "sse.subscribe": ["h2priv"]}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let cases = [
        (None, 401),
        (Some("Bearer nope".to_owned()), 401),
        (Some(format!("Bearer {token}")), 200),
    ];
    for (auth, want) in cases {
        let mut request = Request::get(&uri);
        if let Some(value) = &auth {
            request = request.header("authorization", value);
        }
        sender.ready().await.unwrap();
        let response = sender
            .send_request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), want, "{auth:?}");
        if want == 401 {
            assert!(
                response.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer realm=\"sse\"")
            );
        }
    }
}

#[tokio::test]
async fn with_h2_off_browsers_get_http1_over_tls_and_h2c_gets_http_1_1_required() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "h1only", None).await;
    let cert = TestCert::new();
    let node = cert
        .start_node(&nats.url(), &[("SSE_HTTP__H2", "false")])
        .await;

    // A browser offers h2 first; the node picks HTTP/1.1, and the stream
    // takes the lean path.
    let (tls, alpn) = cert
        .connect(node.port, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("/v1/events?topic=h1only")
        .header("host", "localhost")
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let (parts, body) = response.into_parts();
    let body = BodyStream::new(body)
        .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) })
        .map(|r| r.map_err(anyhow::Error::from));
    let mut client = SseClient::from_body(parts.headers, body.boxed());
    client.ready().await;
    publish(&js, "h1only", "over-http1").await;
    assert_eq!(data_of(&client.take(1, T).await), ["over-http1"]);
    let (_, metrics) = cert.http1_get(node.port, "/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "sse_streams_served_total{path=\"lean\"} 1"),
        "{metrics}"
    );

    // A client that will speak nothing but h2 is refused in the handshake.
    assert!(cert.connect(node.port, &[b"h2"]).await.is_err());

    // In cleartext, the HTTP/2 preface gets GOAWAY with HTTP_1_1_REQUIRED.
    let plain = NodeProc::start(&nats.url(), &[("SSE_HTTP__H2", "false")]).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", plain.port)).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(T, tcp.read_to_end(&mut answer))
        .await
        .expect("the node closes the connection")
        .unwrap();
    let goaway = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xd];
    assert!(answer.ends_with(&goaway), "{answer:?}");
    // HTTP/1.1 still works there.
    let (status, _) = get(&plain.url("/healthz"), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_stream_whose_window_stays_shut_is_reset_while_its_neighbour_flows() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "shut", None).await;
    // h2 takes a whole chunk while the window has room for a byte of it,
    // and holds the rest unseen: a stream whose last event went so waits
    // for its next chunk, at the latest its heartbeat, to be seen held.
    let node = NodeProc::start(
        &nats.url(),
        &[
            ("SSE_DELIVERY__WRITE_STALL_SECONDS", "2"),
            ("SSE_HTTP__HEARTBEAT_SECONDS", "1"),
        ],
    )
    .await;
    let tcp = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    // Each stream's window holds 16 KiB until its reader takes them; the
    // connection's is wide enough for both streams' events.
    let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(4 << 20)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("http/2 handshake");
    tokio::spawn(connection);
    let uri = format!("http://127.0.0.1:{}/v1/events?topic=shut", node.port);
    // A stream whose body is never read: its window shuts once 16 KiB
    // have come.
    let request = Request::get(&uri)
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.ready().await.unwrap();
    let shut = sender.send_request(request).await.unwrap();
    assert_eq!(shut.status(), 200);
    let mut flowing = h2_stream(&mut sender, &uri).await.unwrap();
    flowing.ready().await;
    let kib = "x".repeat(1024);
    let data: Vec<String> = (0..40).map(|i| format!("{i}-{kib}")).collect();
    // Read while they are published: a stream left unread for the stall
    // limit is reset, as the other one is.
    let publishing = async {
        for one in &data {
            publish(&js, "shut", one).await;
        }
    };
    let ((), taken) = tokio::join!(publishing, flowing.take(40, T));
    assert_eq!(data_of(&taken), data);

    // The stream whose window stayed shut for the stall limit (2 s) is
    // reset; its neighbour on the same connection goes on.
    eventually(T, "the shut stream to be closed", || async {
        (node.metric("sse_clients_connected").await == 1.0).then_some(())
    })
    .await;
    let mut body = shut.into_body();
    let ended = tokio::time::timeout(T, async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(error)) => break Some(error),
                None => break None,
            }
        }
    })
    .await
    .expect("the shut stream's body to end");
    let error = ended.expect("a reset, not an end of stream");
    assert!(format!("{error:?}").contains("CANCEL"), "{error:?}");
    // Reset for its window, as slow; its neighbour untouched.
    assert_eq!(
        node.metric("sse_connections_closed_total{reason=\"slow\"}")
            .await,
        1.0
    );
    assert_eq!(
        node.metric("sse_connections_closed_total{reason=\"client\"}")
            .await,
        0.0
    );
    publish(&js, "shut", "after").await;
    assert_eq!(data_of(&flowing.take(1, T).await), ["after"]);
}
