//! A worker process: holds up to [`MAX_CONNECTIONS_PER_WORKER`] SSE
//! connections and reports on them.
//!
//! The coordinator starts `sse-bench worker` and writes one JSON
//! [`WorkerConfig`] line to its stdin; the worker opens its connections at
//! once (a bounded number of handshakes at a time), each bound to its own
//! 127.0.0.x source address so that no source runs out of ephemeral ports.
//! Then every [`Command`] line on stdin is answered by one [`WorkerStats`]
//! line on stdout. The worker runs on one thread: connections share plain
//! cells, and a whole read is parsed at one timestamp.
//!
//! A connection counts payload events, checks each subject's counter for
//! gaps and duplicates, and records publish-to-receipt latency. When its
//! stream ends it reconnects after the server's `retry:` hint, to the next
//! address of the list, sending `Last-Event-ID`, as a browser would.
//!
//! The kind of request is set by the config: extra headers (`Origin`,
//! `Cookie`), TLS (trusting one certificate, for `localhost`), or HTTP/2 in
//! cleartext with `h2_streams` streams per connection. HTTP/2 streams do
//! not reconnect: they are for measuring idle streams.

use std::{
    cell::{Cell, RefCell},
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    rc::Rc,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    sync::Semaphore,
    task::LocalSet,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};

use crate::{
    histogram::{Histogram, Sparse},
    sse::{Body, Event, Parser, parse_head},
};

/// Most connections one worker holds (the file limit here is 20,000).
pub const MAX_CONNECTIONS_PER_WORKER: usize = 15_000;

/// What a worker is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// Server addresses; connection `g` starts on `addrs[g % len]`.
    pub addrs: Vec<SocketAddr>,
    /// Request target (path and query) per subject; connection `g`
    /// subscribes to subject `g % len`.
    pub paths: Vec<String>,
    /// Global index of this worker's first connection.
    pub first_index: usize,
    /// Connections in this worker.
    pub count: usize,
    /// Source addresses to spread over: 127.0.0.2 onwards.
    pub sources: usize,
    /// `Last-Event-ID` of the first request, if any.
    pub last_event_id: Option<String>,
    /// The counter each connection has already seen (usually 0).
    pub start_counter: u64,
    /// Handshakes in flight at once.
    pub connect_concurrency: usize,
    /// Reconnect delay; `None` follows the server's `retry:` hint.
    pub retry_ms: Option<u64>,
    /// Extra request header lines, `Name: value`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Speak TLS, trusting this PEM certificate for the name `localhost`.
    #[serde(default)]
    pub tls_ca: Option<String>,
    /// With `tls_ca`: offer only TLS 1.2 (`true`), as older clients and
    /// some proxies that re-encrypt do, instead of 1.3 and 1.2.
    #[serde(default)]
    pub tls12_only: bool,
    /// Streams per HTTP/2 connection; 0 speaks HTTP/1.1. HTTP/2 is h2c
    /// (prior knowledge), or with `tls_ca` TLS with ALPN `h2`, as a browser
    /// reaching a server over TLS negotiates it.
    #[serde(default)]
    pub h2_streams: usize,
    /// The HTTP/2 flow-control windows this client grants, per stream and
    /// per connection; `None` grants what Chromium grants (6 MiB per
    /// stream, 15 MiB per connection), as the browsers that open most
    /// HTTP/2 event streams do. `Some(65535)` is the protocol's default.
    #[serde(default)]
    pub h2_window: Option<u32>,
    /// The topics of each stream that events are published on, each with
    /// its own counter (`--spread-topics`); 0 or 1: one.
    #[serde(default)]
    pub lanes: usize,
    /// Per path, the lanes its stream reads, when streams read different
    /// sets of them (`--topic-sets`): a payload's lane is its place in the
    /// publisher's list, and the connection counts it at its place in this
    /// one. Empty: every stream reads lanes `0..lanes`.
    #[serde(default)]
    pub path_lanes: Vec<Vec<usize>>,
    /// A request target (`/healthz`, say) each connection asks for first,
    /// with the same headers, before its stream request on the same
    /// connection, as a client that keeps connections for its next request
    /// does (a browser, a proxy's pool); a new connection for the stream
    /// if the answer says `Connection: close`. HTTP/1.1 only.
    #[serde(default)]
    pub request_before: Option<String>,
}

/// A request from the coordinator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Command {
    /// The last counter published per subject (per lane, with lanes):
    /// connections at or past it count as caught up.
    pub targets: Option<Vec<u64>>,
    /// Send the latency histogram and exit.
    pub finish: bool,
}

/// The state of a worker's connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerStats {
    /// The worker's process id.
    pub pid: u32,
    /// Connections streaming now.
    pub ready: usize,
    /// Connections that have streamed at least once.
    pub ever_ready: usize,
    /// Payload events received (duplicates included).
    pub received: u64,
    /// Events that were not benchmark payloads (`reset`, `invalid`).
    pub other_events: u64,
    /// Counters skipped: events never seen by a connection.
    pub gaps: u64,
    /// Events whose counter a connection had seen before.
    pub dups: u64,
    /// Attempts that did not reach a streaming response.
    pub failed_attempts: u64,
    /// Streams that ended and were opened again.
    pub reconnects: u64,
    /// HTTP/2 streams ended by an error (their connection's, mostly); they
    /// are not opened again.
    #[serde(default)]
    pub h2_stream_errors: u64,
    /// The text of the first of those errors.
    #[serde(default)]
    pub h2_first_error: Option<String>,
    /// Connections at or past the command's targets.
    pub caught_up: usize,
    /// When the first connection started streaming, µs since the epoch.
    pub first_ready_us: u64,
    /// When the latest payload event arrived, µs since the epoch.
    pub last_event_us: u64,
    /// Publish-to-receipt latency, µs (only when finishing).
    pub hist: Option<Sparse>,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

#[derive(Default)]
struct Shared {
    ready: Cell<usize>,
    ever_ready: Cell<usize>,
    received: Cell<u64>,
    other_events: Cell<u64>,
    gaps: Cell<u64>,
    dups: Cell<u64>,
    failed_attempts: Cell<u64>,
    reconnects: Cell<u64>,
    h2_stream_errors: Cell<u64>,
    h2_first_error: RefCell<Option<String>>,
    first_ready_us: Cell<u64>,
    last_event_us: Cell<u64>,
    /// The last counter per connection, and per lane within it.
    last: Vec<Cell<u64>>,
    lanes: usize,
    /// `WorkerConfig::path_lanes` and what finds a connection's path.
    path_lanes: Vec<Vec<usize>>,
    first_index: usize,
    hist: RefCell<Histogram>,
}

impl Shared {
    /// Where connection `index` counts an event of the publisher's lane
    /// `lane`.
    fn local_lane(&self, index: usize, lane: usize) -> Option<usize> {
        if self.path_lanes.is_empty() {
            return Some(lane);
        }
        let path = (self.first_index + index) % self.path_lanes.len();
        self.path_lanes[path].iter().position(|l| *l == lane)
    }

    /// The publisher's lane that connection `index` counts at `local`.
    fn global_lane(&self, index: usize, local: usize) -> usize {
        match self.path_lanes.as_slice() {
            [] => local,
            sets => sets[(self.first_index + index) % sets.len()][local],
        }
    }
}

fn bump<T: Copy + std::ops::Add<Output = T>>(cell: &Cell<T>, by: T) {
    cell.set(cell.get() + by);
}

/// Runs a worker on stdin/stdout until told to finish.
pub fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    LocalSet::new().block_on(&runtime, async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let first = lines.next_line().await?.context("no worker config")?;
        let config: Rc<WorkerConfig> = Rc::new(serde_json::from_str(&first)?);
        anyhow::ensure!(
            !config.addrs.is_empty() && !config.paths.is_empty(),
            "worker needs addresses and paths"
        );
        let lanes = config.lanes.max(1);
        let shared = Rc::new(Shared {
            last: (0..config.count * lanes)
                .map(|_| Cell::new(config.start_counter))
                .collect(),
            lanes,
            path_lanes: config.path_lanes.clone(),
            first_index: config.first_index,
            ..Shared::default()
        });
        let handshakes = Rc::new(Semaphore::new(config.connect_concurrency.max(1)));
        let alpn: &[u8] = if config.h2_streams > 0 {
            b"h2"
        } else {
            b"http/1.1"
        };
        let tls = config
            .tls_ca
            .as_deref()
            .map(|ca| tls_connector(ca, alpn, config.tls12_only))
            .transpose()?;
        if config.h2_streams > 0 {
            for first in (0..config.count).step_by(config.h2_streams) {
                let n = config.h2_streams.min(config.count - first);
                tokio::task::spawn_local(h2_connection(
                    shared.clone(),
                    config.clone(),
                    handshakes.clone(),
                    tls.clone(),
                    first,
                    n,
                ));
            }
        } else {
            for k in 0..config.count {
                tokio::task::spawn_local(connection(
                    shared.clone(),
                    config.clone(),
                    handshakes.clone(),
                    tls.clone(),
                    k,
                ));
            }
        }
        while let Some(line) = lines.next_line().await? {
            let command: Command = serde_json::from_str(&line)?;
            let stats = snapshot(&shared, &config, &command);
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &stats)?;
            out.write_all(b"\n")?;
            out.flush()?;
            if command.finish {
                // Dropping 15k sockets one by one is slow and measures nothing.
                std::process::exit(0);
            }
        }
        Ok(())
    })
}

fn snapshot(shared: &Shared, config: &WorkerConfig, command: &Command) -> WorkerStats {
    let caught_up = command.targets.as_ref().map_or(0, |targets| {
        if shared.lanes > 1 {
            return shared
                .last
                .chunks(shared.lanes)
                .enumerate()
                .filter(|(k, lanes)| {
                    lanes.iter().enumerate().all(|(local, last)| {
                        let lane = shared.global_lane(*k, local);
                        last.get() >= targets.get(lane).copied().unwrap_or(0)
                    })
                })
                .count();
        }
        shared
            .last
            .iter()
            .enumerate()
            .filter(|(k, last)| {
                let subject = (config.first_index + k) % config.paths.len();
                last.get() >= targets.get(subject).copied().unwrap_or(0)
            })
            .count()
    });
    WorkerStats {
        pid: std::process::id(),
        ready: shared.ready.get(),
        ever_ready: shared.ever_ready.get(),
        received: shared.received.get(),
        other_events: shared.other_events.get(),
        gaps: shared.gaps.get(),
        dups: shared.dups.get(),
        failed_attempts: shared.failed_attempts.get(),
        reconnects: shared.reconnects.get(),
        h2_stream_errors: shared.h2_stream_errors.get(),
        h2_first_error: shared.h2_first_error.borrow().clone(),
        caught_up,
        first_ready_us: shared.first_ready_us.get(),
        last_event_us: shared.last_event_us.get(),
        hist: command.finish.then(|| shared.hist.borrow().to_sparse()),
    }
}

/// How one attempt ended.
enum Ended {
    /// Never reached a streaming response; try the same address again.
    Refused,
    /// No TCP connection; try the next address.
    Unreachable,
    /// Streamed, then the stream ended.
    Streamed,
}

struct Conn {
    index: usize,
    subject: usize,
    source: SocketAddr,
    parser: Parser,
    streamed: bool,
}

async fn connection(
    shared: Rc<Shared>,
    config: Rc<WorkerConfig>,
    handshakes: Rc<Semaphore>,
    tls: Option<TlsConnector>,
    k: usize,
) {
    let global = config.first_index + k;
    let source_octet = 2 + (global % config.sources.clamp(1, 250)) as u8;
    let mut conn = Conn {
        index: k,
        subject: global % config.paths.len(),
        source: SocketAddr::from((Ipv4Addr::new(127, 0, 0, source_octet), 0)),
        parser: Parser::default(),
        streamed: false,
    };
    if let Some(id) = &config.last_event_id {
        conn.parser.last_id = id.clone().into_bytes();
    }
    let mut attempt = 0;
    loop {
        let addr = config.addrs[(global + attempt) % config.addrs.len()];
        let ended =
            attempt_stream(&shared, &config, &handshakes, tls.as_ref(), &mut conn, addr).await;
        let delay = match ended {
            Ended::Streamed => {
                attempt += 1;
                bump(&shared.reconnects, 1);
                config.retry_ms.or(conn.parser.retry_ms).unwrap_or(1000)
            }
            Ended::Unreachable => {
                attempt += 1;
                bump(&shared.failed_attempts, 1);
                250
            }
            Ended::Refused => {
                bump(&shared.failed_attempts, 1);
                250
            }
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

async fn open(source: SocketAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(source)?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A connection's byte stream: TCP, or TLS over it.
trait Duplex: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Duplex for T {}

/// A TLS client that trusts the certificate in `pem_file` and offers the
/// one application protocol `alpn`; TLS 1.3 and 1.2, or 1.2 only.
pub fn tls_connector(
    pem_file: &str,
    alpn: &[u8],
    tls12_only: bool,
) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem_file)
        .with_context(|| format!("cannot read {pem_file}"))?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = if tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])?
    } else {
        builder.with_safe_default_protocol_versions()?
    };
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn attempt_stream(
    shared: &Shared,
    config: &WorkerConfig,
    handshakes: &Semaphore,
    tls: Option<&TlsConnector>,
    conn: &mut Conn,
    addr: SocketAddr,
) -> Ended {
    let permit = handshakes.acquire().await;
    let mut stream = match connect(conn.source, addr, tls).await {
        Ok(stream) => stream,
        Err(ended) => return ended,
    };
    if let Some(target) = &config.request_before {
        let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
        for header in &config.headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let Some(close) = ask_once(&mut stream, &request).await else {
            return Ended::Refused;
        };
        if close {
            stream = match connect(conn.source, addr, tls).await {
                Ok(stream) => stream,
                Err(ended) => return ended,
            };
        }
    }
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n",
        config.paths[conn.subject]
    );
    for header in &config.headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    if !conn.parser.last_id.is_empty() {
        request.push_str("Last-Event-ID: ");
        request.push_str(&String::from_utf8_lossy(&conn.parser.last_id));
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return Ended::Refused;
    }
    let mut raw: Vec<u8> = Vec::with_capacity(1024);
    let head = loop {
        match stream.read_buf(&mut raw).await {
            Ok(0) | Err(_) => return Ended::Refused,
            Ok(_) => {}
        }
        if let Some(head) = parse_head(&raw) {
            break head;
        }
        if raw.len() > 16 * 1024 {
            return Ended::Refused;
        }
    };
    if head.status != 200 {
        return Ended::Refused;
    }
    drop(permit);
    raw.drain(..head.len);
    let mut body_state = Body::for_head(&head);
    let mut body: Vec<u8> = Vec::with_capacity(256);
    if shared.first_ready_us.get() == 0 {
        shared.first_ready_us.set(now_us());
    }
    bump(&shared.ready, 1);
    if !std::mem::replace(&mut conn.streamed, true) {
        bump(&shared.ever_ready, 1);
    }
    loop {
        if !raw.is_empty() {
            match body_state.decode(&raw, &mut body) {
                Ok(used) => {
                    raw.drain(..used);
                }
                Err(_) => break,
            }
            if !body.is_empty() {
                account(shared, conn.index, &mut conn.parser, &mut body);
            }
            if body_state == Body::Done {
                break;
            }
        }
        if raw.capacity() - raw.len() < 512 {
            raw.reserve(4096);
        }
        match stream.read_buf(&mut raw).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    shared.ready.set(shared.ready.get() - 1);
    Ended::Streamed
}

/// The name the certificate of `tls_connector` is trusted for.
pub fn tls_server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("a valid name")
}

/// A TCP connection from `source` to `addr`, with TLS over it if `tls`.
async fn connect(
    source: SocketAddr,
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
) -> Result<Box<dyn Duplex>, Ended> {
    let Ok(tcp) = open(source, addr).await else {
        return Err(Ended::Unreachable);
    };
    match tls {
        None => Ok(Box::new(tcp)),
        Some(tls) => match tls.connect(tls_server_name(), tcp).await {
            Ok(stream) => Ok(Box::new(stream)),
            Err(_) => Err(Ended::Refused),
        },
    }
}

/// Sends `request` on `stream` and reads its whole answer, which must be a
/// 200 with a length or chunked body; says whether the server closes the
/// connection after it. `None` if it failed or was not a 200.
async fn ask_once(stream: &mut Box<dyn Duplex>, request: &str) -> Option<bool> {
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw: Vec<u8> = Vec::with_capacity(1024);
    let head = loop {
        if stream.read_buf(&mut raw).await.ok()? == 0 {
            return None;
        }
        if let Some(head) = parse_head(&raw) {
            break head;
        }
        if raw.len() > 16 * 1024 {
            return None;
        }
    };
    if head.status != 200 {
        return None;
    }
    raw.drain(..head.len);
    if head.chunked {
        let mut body_state = Body::for_head(&head);
        let mut body = Vec::new();
        loop {
            let used = body_state.decode(&raw, &mut body).ok()?;
            raw.drain(..used);
            if body_state == Body::Done {
                return Some(head.close);
            }
            if stream.read_buf(&mut raw).await.ok()? == 0 {
                return None;
            }
        }
    }
    // Without a length the body ends with the connection.
    let Some(length) = head.content_length else {
        return Some(true);
    };
    while raw.len() < length {
        if stream.read_buf(&mut raw).await.ok()? == 0 {
            return None;
        }
    }
    Some(head.close)
}

/// Counts the events of the complete lines in `body` for connection `index`.
fn account(shared: &Shared, index: usize, parser: &mut Parser, body: &mut Vec<u8>) {
    let now = now_us();
    let lanes = &shared.last[index * shared.lanes..(index + 1) * shared.lanes];
    let mut hist = shared.hist.borrow_mut();
    let mut got = 0;
    parser.feed(body, |event| match event {
        Event::Payload {
            counter,
            sent_us,
            lane,
        } => {
            got += 1;
            let Some(last) = shared.local_lane(index, lane).and_then(|l| lanes.get(l)) else {
                bump(&shared.other_events, 1);
                return;
            };
            let seen = last.get();
            if counter <= seen {
                bump(&shared.dups, 1);
            } else {
                bump(&shared.gaps, counter - seen - 1);
                last.set(counter);
            }
            hist.record(now.saturating_sub(sent_us));
        }
        Event::Other => bump(&shared.other_events, 1),
    });
    if got > 0 {
        bump(&shared.received, got);
        shared.last_event_us.set(now);
    }
}

fn streaming(shared: &Shared) {
    if shared.first_ready_us.get() == 0 {
        shared.first_ready_us.set(now_us());
    }
    bump(&shared.ready, 1);
    bump(&shared.ever_ready, 1);
}

/// The flow-control window Chromium grants each HTTP/2 stream.
const CHROMIUM_STREAM_WINDOW: u32 = 6 * 1024 * 1024;
/// The flow-control window Chromium grants an HTTP/2 connection.
const CHROMIUM_CONNECTION_WINDOW: u32 = 15 * 1024 * 1024;

/// One HTTP/2 connection carrying `n` streams, for connections
/// `first..first + n` of this worker: in cleartext (prior knowledge), or
/// over TLS when `tls` is given, which must then agree on `h2`.
async fn h2_connection(
    shared: Rc<Shared>,
    config: Rc<WorkerConfig>,
    handshakes: Rc<Semaphore>,
    tls: Option<TlsConnector>,
    first: usize,
    n: usize,
) {
    let global = config.first_index + first;
    let source_octet = 2 + (global % config.sources.clamp(1, 250)) as u8;
    let source = SocketAddr::from((Ipv4Addr::new(127, 0, 0, source_octet), 0));
    let addr = config.addrs[global % config.addrs.len()];
    let permit = handshakes.acquire().await;
    let Ok(tcp) = open(source, addr).await else {
        bump(&shared.failed_attempts, n as u64);
        return;
    };
    let (io, scheme): (Box<dyn Duplex>, &str) = match &tls {
        None => (Box::new(tcp), "http"),
        Some(tls) => match tls.connect(tls_server_name(), tcp).await {
            Ok(stream) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                (Box::new(stream), "https")
            }
            Ok(_) => {
                eprintln!("TLS connection to {addr} did not agree on h2 by ALPN");
                bump(&shared.failed_attempts, n as u64);
                return;
            }
            Err(_) => {
                bump(&shared.failed_attempts, n as u64);
                return;
            }
        },
    };
    let (stream_window, connection_window) = match config.h2_window {
        Some(window) => (window, window),
        None => (CHROMIUM_STREAM_WINDOW, CHROMIUM_CONNECTION_WINDOW),
    };
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(stream_window)
        .initial_connection_window_size(connection_window);
    let Ok((client, connection)) = builder.handshake::<_, bytes::Bytes>(io).await else {
        bump(&shared.failed_attempts, n as u64);
        return;
    };
    tokio::task::spawn_local(async move {
        // Said on stderr: an HTTP/2 connection that fails takes all its
        // streams with it, and they do not reconnect.
        if let Err(error) = connection.await {
            eprintln!("h2 connection to {addr} failed: {error}");
        }
    });
    drop(permit);
    let mut client = client;
    for k in first..first + n {
        let subject = (config.first_index + k) % config.paths.len();
        let authority = if tls.is_some() {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        };
        let uri = format!("{scheme}://{authority}{}", config.paths[subject]);
        let mut request = http::Request::get(uri).header("accept", "text/event-stream");
        for header in &config.headers {
            if let Some((name, value)) = header.split_once(':') {
                request = request.header(name.trim(), value.trim());
            }
        }
        let Ok(request) = request.body(()) else {
            bump(&shared.failed_attempts, 1);
            continue;
        };
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => {
                bump(&shared.failed_attempts, (first + n - k) as u64);
                return;
            }
        };
        match client.send_request(request, true) {
            Ok((response, _)) => {
                tokio::task::spawn_local(h2_stream(shared.clone(), k, response));
            }
            Err(_) => bump(&shared.failed_attempts, 1),
        }
    }
}

async fn h2_stream(shared: Rc<Shared>, index: usize, response: h2::client::ResponseFuture) {
    let response = match response.await {
        Ok(response) if response.status() == 200 => response,
        _ => {
            bump(&shared.failed_attempts, 1);
            return;
        }
    };
    streaming(&shared);
    let mut stream = response.into_body();
    let mut parser = Parser::default();
    let mut body = Vec::new();
    while let Some(data) = stream.data().await {
        let data = match data {
            Ok(data) => data,
            Err(error) => {
                bump(&shared.h2_stream_errors, 1);
                shared
                    .h2_first_error
                    .borrow_mut()
                    .get_or_insert_with(|| error.to_string());
                break;
            }
        };
        let _ = stream.flow_control().release_capacity(data.len());
        body.extend_from_slice(&data);
        account(&shared, index, &mut parser, &mut body);
    }
    shared.ready.set(shared.ready.get() - 1);
}
