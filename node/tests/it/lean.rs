//! The lean HTTP/1.1 path against the router: browsers' cross-origin
//! requests (CORS, credentials, the token cookie on a private topic) and
//! TLS are served on the lean path, and every response head it writes is
//! the one the router writes for the same request.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
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
const SECRET: &str = "lean-secret-lean-secret-lean-secret!";
const APP: &str = "https://app.example";
const EVIL: &str = "https://evil.example";

fn token(patterns: &[&str]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    encode(
        &Header::new(Algorithm::HS256),
        &json!({ "exp": now + 300, "sse.subscribe": patterns }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Settings of a node that lets `APP` in with credentials and knows the
/// token secret.
fn cors_env() -> Vec<(&'static str, String)> {
    vec![
        ("SSE_CORS__ALLOWED_ORIGINS", format!("[\"{APP}\"]")),
        ("SSE_CORS__ALLOW_CREDENTIALS", "true".into()),
        ("SSE_AUTH__JWT__HS256_SECRET", SECRET.into()),
    ]
}

fn with(
    env: &[(&'static str, String)],
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut all = env.to_vec();
    all.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    all
}

async fn start(nats: &Nats, env: &[(&'static str, String)]) -> NodeProc {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    NodeProc::start(&nats.url(), &env).await
}

/// A response read off the wire: status, headers (lowercase names, in
/// order), the body of a refusal, and the connection for a stream's events.
pub(crate) struct Raw<IO> {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    body: String,
    pub(crate) rest: Vec<u8>,
    pub(crate) io: IO,
}

impl<IO> Raw<IO> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The headers both paths must agree on: all but those of the
    /// connection's framing (`connection`, `transfer-encoding`) and `date`.
    fn comparable(&self) -> BTreeMap<String, Vec<String>> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &self.headers {
            if !matches!(name.as_str(), "connection" | "transfer-encoding" | "date") {
                map.entry(name.clone()).or_default().push(value.clone());
            }
        }
        map
    }
}

impl<IO: AsyncRead + Unpin + Send + 'static> Raw<IO> {
    /// The event stream of a 200 answered with `Connection: close` (the
    /// lean path's framing), read as a browser would.
    pub(crate) fn events(self) -> SseClient {
        assert_eq!(self.header("connection"), Some("close"));
        events_from(self.rest, self.io, None, 4096)
    }
}

/// The events of a stream whose head is read: the bytes `first` read with
/// it, then `io` read `read_size` bytes at a time, after `pause` each time
/// if there is one (a slow reader).
pub(crate) fn events_from<IO>(
    first: Vec<u8>,
    io: IO,
    pause: Option<Duration>,
    read_size: usize,
) -> SseClient
where
    IO: AsyncRead + Unpin + Send + 'static,
{
    let first = Bytes::from(first);
    let body = futures_util::stream::once(async move { Ok(first) }).chain(
        futures_util::stream::unfold(io, move |mut io| async move {
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            let mut buf = vec![0u8; read_size];
            match io.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), io))
                }
                Err(e) => Some((Err(e.into()), io)),
            }
        }),
    );
    SseClient::from_body(reqwest::header::HeaderMap::new(), body.boxed())
}

/// Sends a `GET` with `headers` on `io` and reads the response head (and
/// the body of a refusal, by its length).
pub(crate) async fn raw_get<IO>(
    mut io: IO,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<Raw<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut request =
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes()).await?;
    read_answer(io).await
}

/// Reads a response head off `io` (and the body of a refusal, by its
/// length).
pub(crate) async fn read_answer<IO>(mut io: IO) -> Result<Raw<IO>>
where
    IO: AsyncRead + Unpin,
{
    let mut buf = Vec::new();
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 2048];
        let n = tokio::time::timeout(T, io.read(&mut chunk)).await??;
        if n == 0 {
            bail!("connection closed before a response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec())?;
    let mut rest = buf[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = String::new();
    if status != 200 {
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .context("a refusal without a length")?
            .1
            .parse()?;
        while rest.len() < length {
            let mut chunk = [0u8; 2048];
            let n = tokio::time::timeout(T, io.read(&mut chunk)).await??;
            if n == 0 {
                bail!("connection closed inside the body");
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        body = String::from_utf8(rest[..length].to_vec())?;
        rest.clear();
    }
    Ok(Raw {
        status,
        headers,
        body,
        rest,
        io,
    })
}

async fn tcp_get(node: &NodeProc, target: &str, headers: &[(&str, &str)]) -> Raw<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    raw_get(tcp, target, headers).await.unwrap()
}

pub(crate) fn served(path: &str) -> String {
    format!("sse_streams_served_total{{path=\"{path}\"}}")
}

#[tokio::test]
async fn cross_origin_requests_get_the_routers_answer_on_the_lean_path() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "web", None).await;
    create_private_topic(&js, "vault").await;
    let lean = start(&nats, &cors_env()).await;
    let router = start(
        &nats,
        &with(&cors_env(), &[("SSE_HTTP__FAST_PATH", "false")]),
    )
    .await;
    let cookie = format!("theme=dark; sse_token={}", token(&["vault.>", "vault"]));
    let narrow_cookie = format!("sse_token={}", token(&["vault.other"]));
    let bearer = format!("Bearer {}", token(&["vault"]));
    let query_target = format!("/v1/events?topic=vault&access_token={}", token(&["vault"]));
    // What is asked, the request target, its headers, the status expected.
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        (
            "allowed origin",
            "/v1/events?topic=web".into(),
            vec![("Origin", APP)],
            200,
        ),
        (
            "other origin",
            "/v1/events?topic=web".into(),
            vec![("Origin", EVIL)],
            200,
        ),
        ("no origin", "/v1/events?topic=web".into(), vec![], 200),
        (
            "cookie, private topic",
            "/v1/events?topic=vault".into(),
            vec![("Origin", APP), ("Cookie", &cookie)],
            200,
        ),
        (
            "bearer, private topic",
            "/v1/events?topic=vault".into(),
            vec![("Origin", APP), ("Authorization", &bearer)],
            200,
        ),
        (
            "query token, private topic",
            query_target.clone(),
            vec![("Origin", APP)],
            200,
        ),
        (
            "no token",
            "/v1/events?topic=vault".into(),
            vec![("Origin", APP)],
            401,
        ),
        (
            "token without the grant",
            "/v1/events?topic=vault".into(),
            vec![("Origin", APP), ("Cookie", &narrow_cookie)],
            403,
        ),
        (
            "unknown topic",
            "/v1/events?topic=nosuch".into(),
            vec![("Origin", APP)],
            404,
        ),
        ("no topic", "/v1/events".into(), vec![("Origin", APP)], 400),
        (
            "refused, other origin",
            "/v1/events?topic=vault".into(),
            vec![("Origin", EVIL)],
            401,
        ),
    ];
    let mut streams = 0.0;
    for (what, target, headers, status) in &cases {
        let from_lean = tcp_get(&lean, target, headers).await;
        let from_router = tcp_get(&router, target, headers).await;
        assert_eq!(from_lean.status, *status, "{what}: {}", from_lean.body);
        assert_eq!(from_router.status, *status, "{what}: {}", from_router.body);
        assert_eq!(
            from_lean.comparable(),
            from_router.comparable(),
            "{what}: the lean path and the router disagree"
        );
        assert_eq!(from_lean.body, from_router.body, "{what}");
        // The heads are compared above; these say the comparison was of
        // something: the CORS layer answered on both.
        let origin = headers
            .iter()
            .find(|(n, _)| *n == "Origin")
            .map(|(_, v)| *v);
        let allowed = from_lean.header("access-control-allow-origin");
        match origin {
            Some(APP) => {
                assert_eq!(allowed, Some(APP), "{what}");
                assert_eq!(
                    from_lean.header("access-control-allow-credentials"),
                    Some("true")
                );
            }
            _ => assert_eq!(allowed, None, "{what}"),
        }
        assert!(
            from_lean
                .header("vary")
                .is_some_and(|v| v.to_ascii_lowercase().contains("origin")),
            "{what}: {:?}",
            from_lean.headers
        );
        if *status == 200 {
            streams += 1.0;
            assert_eq!(from_lean.header("connection"), Some("close"), "{what}");
            assert_eq!(
                from_router.header("transfer-encoding"),
                Some("chunked"),
                "{what}"
            );
        }
    }
    assert_eq!(lean.metric(&served("lean")).await, streams);
    assert_eq!(lean.metric(&served("router")).await, 0.0);
    assert_eq!(router.metric(&served("router")).await, streams);
    assert_eq!(router.metric(&served("lean")).await, 0.0);

    // A browser's EventSource with credentials on the private topic gets
    // its events on the lean path, and resumes from its Last-Event-ID.
    let mut browser = tcp_get(
        &lean,
        "/v1/events?topic=vault",
        &[("Origin", APP), ("Cookie", &cookie)],
    )
    .await
    .events();
    browser.ready().await;
    publish(&js, "vault.a", "one").await;
    publish(&js, "vault.b", "two").await;
    let first = browser.take(2, T).await;
    assert_eq!(data_of(&first), ["one", "two"]);
    drop(browser);
    publish(&js, "vault.a", "three").await;
    let mut resumed = tcp_get(
        &lean,
        "/v1/events?topic=vault",
        &[
            ("Origin", APP),
            ("Cookie", &cookie),
            ("Last-Event-ID", &first[0].id),
        ],
    )
    .await
    .events();
    assert_eq!(data_of(&resumed.take(2, T).await), ["two", "three"]);
    assert_eq!(lean.metric(&served("lean")).await, streams + 2.0);
}

/// A self-signed certificate for `localhost`, and a client trusting it.
pub(crate) struct Cert {
    dir: tempfile::TempDir,
    pub(crate) connector: TlsConnector,
    connector_h2: TlsConnector,
}

impl Cert {
    pub(crate) fn new() -> Self {
        let (dir, der) = self_signed_localhost();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let connector = |alpn: &[&[u8]]| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(config))
        };
        Self {
            connector: connector(&[b"http/1.1"]),
            connector_h2: connector(&[b"h2", b"http/1.1"]),
            dir,
        }
    }

    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        let path = |name: &str| self.dir.path().join(name).to_str().unwrap().to_owned();
        vec![
            ("SSE_TLS__CERT_FILE", path("cert.pem")),
            ("SSE_TLS__KEY_FILE", path("key.pem")),
        ]
    }

    async fn connect(
        &self,
        node: &NodeProc,
        connector: &TlsConnector,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(("127.0.0.1", node.port)).await?;
        Ok(connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?)
    }

    pub(crate) async fn get(
        &self,
        node: &NodeProc,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<Raw<tokio_rustls::client::TlsStream<TcpStream>>> {
        let tls = self.connect(node, &self.connector).await?;
        raw_get(tls, target, headers).await
    }

    /// Starts a node serving TLS with this certificate, CORS on and a drain
    /// of a second, with `extra` variables, and waits until it answers
    /// `/readyz` over TLS (a request the lean path declines, replayed to
    /// hyper).
    async fn start_node(&self, nats: &Nats, extra: &[(&'static str, &str)]) -> NodeProc {
        let env = [
            self.env(),
            cors_env(),
            vec![("SSE_SHUTDOWN__DRAIN_SECONDS", "1".to_owned())],
        ]
        .concat();
        let env = with(&env, extra);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let node = NodeProc::spawn(&nats.url(), &pairs);
        eventually(T, "the node to be ready over TLS", || async {
            let ready = self.get(&node, "/readyz", &[]).await.ok()?;
            (ready.status == 200).then_some(())
        })
        .await;
        node
    }

    /// A client trusting this certificate that speaks only TLS 1.2, with
    /// only `suite`, and asks for HTTP/1.1.
    fn tls12_connector(&self, suite: rustls::SupportedCipherSuite) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for cert in self.roots() {
            roots.add(cert).unwrap();
        }
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: vec![suite],
            ..rustls::crypto::ring::default_provider()
        };
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// The certificate, as a client's trust anchor.
    fn roots(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::pem_file_iter(self.dir.path().join("cert.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

/// TLS 1.2 clients (older devices, proxies that re-encrypt to the node)
/// are served on the lean path too: the node seals their records itself
/// with each of TLS 1.2's AEADs (AES-GCM with its explicit nonce,
/// ChaCha20-Poly1305 without), refuses a bad head with why, and closes
/// the TLS way.
/// A browser whose cookie jar takes its head past `http.max_header_bytes`
/// gets 431 with the CORS headers of its origin, so that a page on another
/// origin can read why; a head with too many headers too. Another origin
/// gets none.
#[tokio::test]
async fn a_head_too_large_from_an_allowed_origin_is_refused_with_cors_headers() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "web", None).await;
    let node = start(&nats, &cors_env()).await;
    let jar = (0..600)
        .map(|i| format!("c{i}=0123456789abcdef0123456789"))
        .collect::<Vec<_>>()
        .join("; ");
    assert!(jar.len() > 16_384);
    let many: Vec<(String, &str)> = (0..70).map(|i| (format!("X-H{i}"), "v")).collect();
    let mut too_many: Vec<(&str, &str)> = vec![("Origin", APP)];
    too_many.extend(many.iter().map(|(name, value)| (name.as_str(), *value)));
    // What is sent, its headers, the allowed origin the answer names.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "cookie jar, allowed origin",
            vec![("Origin", APP), ("Cookie", &jar)],
            Some(APP),
        ),
        (
            "cookie jar, other origin",
            vec![("Origin", EVIL), ("Cookie", &jar)],
            None,
        ),
        ("cookie jar, no origin", vec![("Cookie", &jar)], None),
        ("too many headers, allowed origin", too_many, Some(APP)),
    ];
    for (what, headers, allowed) in cases {
        let refused = tcp_get(&node, "/v1/events?topic=web", &headers).await;
        assert_eq!(refused.status, 431, "{what}: {}", refused.body);
        assert!(
            refused.body.contains("\"request_head_too_large\""),
            "{what}: {}",
            refused.body
        );
        assert_eq!(
            refused.header("access-control-allow-origin"),
            allowed,
            "{what}"
        );
        assert_eq!(
            refused.header("access-control-allow-credentials"),
            allowed.map(|_| "true"),
            "{what}"
        );
    }
}

#[tokio::test]
async fn tls_1_2_streams_are_served_on_the_lean_path_with_every_aead() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "legacy", None).await;
    let cert = Cert::new();
    let node = cert.start_node(&nats, &[]).await;
    let target = "/v1/events?topic=legacy";
    let suites = [
        rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    let mut last = None;
    for (n, suite) in suites.into_iter().enumerate() {
        let connector = cert.tls12_connector(suite);
        let tls = cert.connect(&node, &connector).await.unwrap();
        let (_, session) = tls.get_ref();
        assert_eq!(
            session.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert_eq!(session.negotiated_cipher_suite(), Some(suite));
        let stream = raw_get(tls, target, &[("Origin", APP)]).await.unwrap();
        assert_eq!(stream.status, 200);
        assert_eq!(stream.header("access-control-allow-origin"), Some(APP));
        let mut client = stream.events();
        client.ready().await;
        // Enough events for several records, and a large one past a
        // record's 16 KiB.
        let large = "L".repeat(40_000);
        let sent = [format!("{n}-a"), format!("{n}-b"), large];
        for data in &sent {
            publish(&js, "legacy.x", data).await;
        }
        assert_eq!(data_of(&client.take(3, T).await), sent);
        assert_eq!(
            cert_metric(&cert, &node, &served("lean")).await,
            (n + 1) as f64
        );
        last = Some(client);
    }
    let connector = cert.tls12_connector(suites[0]);
    let tls = cert.connect(&node, &connector).await.unwrap();
    let malformed = raw_get(tls, target, &[("Origin", APP), ("X-A", "a\u{0}b")])
        .await
        .unwrap();
    assert_eq!(malformed.status, 400);
    assert!(
        malformed.body.contains("\"bad_request_head\""),
        "{}",
        malformed.body
    );
    assert_eq!(cert_metric(&cert, &node, &served("router")).await, 0.0);

    // The node ends the stream with close_notify: a clean end to the
    // client, no error.
    node.terminate();
    let rest = last.unwrap().until_closed(T).await;
    assert!(rest.is_ok(), "{rest:?}");
}

#[tokio::test]
async fn tls_streams_are_served_on_the_lean_path_and_everything_else_by_hyper() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "secure", None).await;
    let cert = Cert::new();
    let node = cert.start_node(&nats, &[]).await;
    let router = cert
        .start_node(&nats, &[("SSE_HTTP__FAST_PATH", "false")])
        .await;

    let target = "/v1/events?topic=secure";
    let stream = cert.get(&node, target, &[("Origin", APP)]).await.unwrap();
    assert_eq!(stream.status, 200);
    // A head over `http.max_header_bytes` (16 KiB) is refused here with
    // why, as in cleartext.
    let big = "x".repeat(20_000);
    let refused = cert
        .get(&node, target, &[("Origin", APP), ("X-Big", &big)])
        .await
        .unwrap();
    assert_eq!(refused.status, 431);
    assert!(
        refused.body.contains("\"request_head_too_large\""),
        "{}",
        refused.body
    );
    // So is a head HTTP/1.1 cannot read: a NUL in a header's value.
    let malformed = cert
        .get(&node, target, &[("Origin", APP), ("X-A", "a\u{0}b")])
        .await
        .unwrap();
    assert_eq!(malformed.status, 400);
    assert!(
        malformed.body.contains("\"bad_request_head\""),
        "{}",
        malformed.body
    );
    let from_router = cert.get(&router, target, &[("Origin", APP)]).await.unwrap();
    assert_eq!(stream.comparable(), from_router.comparable());
    assert_eq!(stream.header("access-control-allow-origin"), Some(APP));
    let mut client = stream.events();
    client.ready().await;
    for data in ["a", "b", "c"] {
        publish(&js, "secure.x", data).await;
    }
    let events = client.take(3, T).await;
    assert_eq!(data_of(&events), ["a", "b", "c"]);
    assert_eq!(cert_metric(&cert, &node, &served("lean")).await, 1.0);

    // Resume over TLS from the first event's id.
    drop(client);
    publish(&js, "secure.x", "d").await;
    let mut resumed = cert
        .get(&node, target, &[("Last-Event-ID", &events[0].id)])
        .await
        .unwrap()
        .events();
    assert_eq!(data_of(&resumed.take(3, T).await), ["b", "c", "d"]);
    assert_eq!(cert_metric(&cert, &node, &served("lean")).await, 2.0);

    // A refusal over TLS is written by the lean path, as the router's.
    let refused = cert
        .get(&node, "/v1/events?topic=nosuch", &[("Origin", APP)])
        .await
        .unwrap();
    let router_refused = cert
        .get(&router, "/v1/events?topic=nosuch", &[("Origin", APP)])
        .await
        .unwrap();
    assert_eq!(refused.status, 404);
    assert_eq!(refused.comparable(), router_refused.comparable());
    assert_eq!(refused.body, router_refused.body);

    // Declined requests go to hyper with the bytes already read, one to a
    // connection: it closes after the answer, so that the client's next
    // request (an event stream, say) comes to the lean path on a new one.
    let health = cert.get(&node, "/healthz", &[]).await.unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.header("connection"), Some("close"));
    let mut body = health.rest;
    let mut io = health.io;
    tokio::time::timeout(T, io.read_to_end(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, b"ok");

    // HTTP/2 by ALPN goes to hyper.
    let h2 = cert.connect(&node, &cert.connector_h2).await.unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(h2),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("https://localhost:{}{target}", node.port))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(cert_metric(&cert, &node, &served("router")).await, 1.0);
    assert_eq!(cert_metric(&cert, &node, &served("lean")).await, 2.0);

    // A connection that agreed on h2 carries HTTP/2 only (RFC 9113 §3.3):
    // HTTP/1.1 there gets no answer, kept alive past the lean path's reader.
    let mut h2 = cert.connect(&node, &cert.connector_h2).await.unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(T, h2.read_to_end(&mut answer)).await;
    assert!(ended.is_ok(), "the connection stays open");
    assert!(
        !answer.starts_with(b"HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // A stream the node ends is closed the TLS way (close_notify, then the
    // end of the connection): the client reads a clean end, no error.
    node.terminate();
    let rest = resumed.until_closed(T).await;
    assert!(rest.is_ok(), "{rest:?}");
}

/// A metric of a node that speaks only TLS.
pub(crate) async fn cert_metric(cert: &Cert, node: &NodeProc, series: &str) -> f64 {
    let mut response = cert.get(node, "/metrics", &[]).await.unwrap();
    assert_eq!(response.status, 200);
    let length: usize = response.header("content-length").unwrap().parse().unwrap();
    let mut text = std::mem::take(&mut response.rest);
    while text.len() < length {
        let mut chunk = [0u8; 8192];
        let n = response.io.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        text.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// A head in several TCP segments, as a browser's with a cookie jar past
/// one segment reaches a node over a real network: the lean path reads the
/// rest of it, so the stream is served there (not by hyper), a bad byte in
/// a later segment gets the JSON 400 naming it, and a request it does not
/// take reaches the router whole.
#[tokio::test]
async fn a_head_in_several_segments_is_read_whole_by_the_lean_path() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "web", None).await;
    let node = start(&nats, &cors_env()).await;
    let jar = format!("theme=dark; session={}", "s".repeat(3000));
    let head = |target: &str, last_header: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\nOrigin: {APP}\r\nCookie: {jar}\r\n{last_header}\r\n\r\n"
        )
    };
    // Sends `request` in two writes far enough apart for the node to see
    // the first alone, then reads the answer.
    let port = node.port;
    let send_split = |request: String| async move {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (first, second) = request.as_bytes().split_at(request.len() / 2);
        tcp.write_all(first).await.unwrap();
        // No event says when the node has looked at the first segment;
        // this pause only makes the segments arrive apart.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tcp.write_all(second).await.unwrap();
        read_answer(tcp).await.unwrap()
    };

    let stream = send_split(head("/v1/events?topic=web", "Accept: text/event-stream")).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("access-control-allow-origin"), Some(APP));
    let mut client = stream.events();
    client.ready().await;
    publish(&js, "web.x", "a").await;
    assert_eq!(data_of(&client.take(1, T).await), ["a"]);
    assert_eq!(node.metric(&served("lean")).await, 1.0);
    assert_eq!(node.metric(&served("router")).await, 0.0);

    let bad = send_split(head("/v1/events?topic=web", "X-A: a\u{0}b")).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("\"bad_request_head\""), "{}", bad.body);
    assert!(bad.body.contains("a header's value"), "{}", bad.body);

    let health = send_split(head("/healthz", "Accept: */*")).await;
    assert_eq!(health.status, 200);
}

/// A client that keeps connections for its next request (a browser, a
/// proxy's pool) and asks for an event stream after another request: the
/// other request's answer says `Connection: close` and its connection
/// ends, so the stream comes on a new connection and is served by the lean
/// path, as a first request would be. Kept alive, it reached hyper and was
/// served by the router at several times the memory.
#[tokio::test]
async fn a_stream_asked_for_after_another_request_is_served_by_the_lean_path() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "pooled", None).await;
    let node = start(&nats, &cors_env()).await;
    let pooling = http_client();
    let health = pooling.get(node.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.headers()["connection"], "close");
    assert_eq!(health.text().await.unwrap(), "ok");
    let response = pooling
        .get(node.url("/v1/events?topic=pooled"))
        .header("Origin", APP)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let body = response.bytes_stream().map(|r| r.map_err(Into::into));
    let mut client = SseClient::from_body(headers, body.boxed());
    client.ready().await;
    publish(&js, "pooled", "one").await;
    assert_eq!(data_of(&client.take(1, T).await), ["one"]);
    assert_eq!(node.metric(&served("lean")).await, 1.0);
    assert_eq!(node.metric(&served("router")).await, 0.0);
}

/// A stream request that asks to upgrade the connection (curl's `--http2`
/// in cleartext asks for h2c) is served in HTTP/1.1 on the lean path,
/// the upgrade ignored as HTTP allows; it went to the router before.
#[tokio::test]
async fn a_stream_request_asking_for_h2c_is_served_by_the_lean_path() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "upgrade", None).await;
    let node = start(&nats, &cors_env()).await;
    let stream = tcp_get(
        &node,
        "/v1/events?topic=upgrade",
        &[
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ],
    )
    .await;
    assert_eq!(stream.status, 200);
    let mut client = stream.events();
    client.ready().await;
    publish(&js, "upgrade", "one").await;
    assert_eq!(data_of(&client.take(1, T).await), ["one"]);
    assert_eq!(node.metric(&served("lean")).await, 1.0);
    assert_eq!(node.metric(&served("router")).await, 0.0);
}

/// A client that floods its stream's socket with bytes after its head is
/// no `EventSource`: its stream is closed, where the node read them 64
/// bytes a system call for as long as the client liked. A few bytes (a
/// pipelined request the node never answers) are let be.
#[tokio::test]
async fn a_client_that_floods_its_stream_with_bytes_is_closed() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    create_topic(&js, "flood", None).await;
    let node = NodeProc::start(&nats.url(), &[]).await;
    let tcp = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    let response = raw_get(tcp, "/v1/events?topic=flood", &[]).await.unwrap();
    assert_eq!(response.status, 200);
    let (read, mut write) = tokio::io::split(response.io);
    let mut stream = events_from(response.rest, read, None, 4096);
    stream.ready().await;
    write
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    publish(&js, "flood", "still-open").await;
    assert_eq!(data_of(&stream.take(1, T).await), ["still-open"]);

    let flood = tokio::spawn(async move {
        let junk = vec![b'x'; 64 * 1024];
        for _ in 0..256 {
            if write.write_all(&junk).await.is_err() {
                break;
            }
        }
    });
    let started = std::time::Instant::now();
    let ended = stream.until_closed(T).await;
    assert!(
        !matches!(&ended, Err(e) if e.to_string().starts_with("no bytes within")),
        "the stream stays open under a flood: {ended:?}"
    );
    // Closed for the flood, not for anything that comes later.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    flood.abort();
    // Everyone else is served on.
    let mut other = SseClient::connect(&node.url("/v1/events?topic=flood"), None)
        .await
        .unwrap();
    other.ready().await;
}
