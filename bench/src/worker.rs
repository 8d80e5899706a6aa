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

use std::{
    cell::{Cell, RefCell},
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    rc::Rc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    sync::Semaphore,
    task::LocalSet,
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
}

/// A request from the coordinator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Command {
    /// The last counter published per subject: connections at or past it
    /// count as caught up.
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
    first_ready_us: Cell<u64>,
    last_event_us: Cell<u64>,
    last: Vec<Cell<u64>>,
    hist: RefCell<Histogram>,
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
        let shared = Rc::new(Shared {
            last: (0..config.count)
                .map(|_| Cell::new(config.start_counter))
                .collect(),
            ..Shared::default()
        });
        let handshakes = Rc::new(Semaphore::new(config.connect_concurrency.max(1)));
        for k in 0..config.count {
            tokio::task::spawn_local(connection(
                shared.clone(),
                config.clone(),
                handshakes.clone(),
                k,
            ));
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
        let ended = attempt_stream(&shared, &config, &handshakes, &mut conn, addr).await;
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

async fn open(conn: &Conn, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(conn.source)?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn attempt_stream(
    shared: &Shared,
    config: &WorkerConfig,
    handshakes: &Semaphore,
    conn: &mut Conn,
    addr: SocketAddr,
) -> Ended {
    let permit = handshakes.acquire().await;
    let Ok(mut stream) = open(conn, addr).await else {
        return Ended::Unreachable;
    };
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n",
        config.paths[conn.subject]
    );
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
                let now = now_us();
                let last = &shared.last[conn.index];
                let mut hist = shared.hist.borrow_mut();
                let mut got = 0;
                conn.parser.feed(&mut body, |event| match event {
                    Event::Payload { counter, sent_us } => {
                        got += 1;
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
