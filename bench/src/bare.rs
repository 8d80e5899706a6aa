//! `sse-bench bare --listen HOST:PORT`: the floor for a server's cost per
//! delivery.
//!
//! A "bare loop" SSE server with nothing a real one needs: no topics, no
//! resume, no heartbeats, no limits. Subscribers ask `GET /sub?id=<channel>`;
//! publishers `POST /pub?id=<channel>` (as to Nchan, so the same publisher
//! drives both). Every event read from a publisher is encoded once as
//! `data: <payload>\n\n`, and one loop on one thread writes the frames of
//! each read to every socket of the channel with a plain non-blocking
//! `write` (`TCP_NODELAY` on). What a socket does not take at once waits in
//! its own buffer and is retried every millisecond.
//!
//! What the real servers pay on top of this is their per-client machinery:
//! tasks, queues, wake-ups, timers.

use std::{
    collections::HashMap,
    io::{ErrorKind, Write as _},
    net::SocketAddr,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// Largest request head or body taken from a client.
const MAX_REQUEST: usize = 64 * 1024;

/// The response head of every subscriber: a close-delimited event stream.
const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
    Cache-Control: no-cache\r\nConnection: close\r\n\r\n";

/// What the connection tasks hand to the write loop.
enum Message {
    /// A subscriber: its response head, then every frame of `channel`
    /// from now on, go to it.
    Subscriber(String, std::net::TcpStream),
    /// Events read from a publisher in one read: `(channel, payload)`.
    Events(Vec<(String, Vec<u8>)>),
}

/// One subscriber socket and the bytes it has not taken yet.
struct Subscriber {
    socket: std::net::TcpStream,
    pending: Vec<u8>,
}

impl Subscriber {
    /// Writes `pending`, then `frames`; keeps what the socket does not
    /// take. `false` once the socket is gone.
    fn write(&mut self, frames: &[u8]) -> bool {
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(frames);
            return self.flush();
        }
        match (&self.socket).write(frames) {
            Ok(n) => {
                self.pending.extend_from_slice(&frames[n..]);
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.pending.extend_from_slice(frames);
                true
            }
            Err(_) => false,
        }
    }

    /// Writes what is pending; `false` once the socket is gone.
    fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            match (&self.socket).write(&self.pending) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }
}

/// Runs the bare server until the process is killed.
pub fn run(listen: &str) -> anyhow::Result<()> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("bad --listen {listen:?}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(rx));
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(serve(stream, tx.clone()));
        }
    })
}

/// The one loop that writes every frame to every socket.
async fn write_loop(mut rx: mpsc::UnboundedReceiver<Message>) {
    let mut channels: HashMap<String, Vec<Subscriber>> = HashMap::new();
    let mut retry = tokio::time::interval(Duration::from_millis(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut any_pending = false;
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                None => return,
                Some(Message::Subscriber(channel, socket)) => {
                    let mut subscriber = Subscriber {
                        socket,
                        pending: STREAM_HEAD.to_vec(),
                    };
                    if subscriber.flush() {
                        any_pending |= !subscriber.pending.is_empty();
                        channels.entry(channel).or_default().push(subscriber);
                    }
                }
                Some(Message::Events(events)) => {
                    let mut frames: HashMap<&str, Vec<u8>> = HashMap::new();
                    for (channel, payload) in &events {
                        let frame = frames.entry(channel).or_default();
                        frame.extend_from_slice(b"data: ");
                        frame.extend_from_slice(payload);
                        frame.extend_from_slice(b"\n\n");
                    }
                    for (channel, frame) in frames {
                        if let Some(subscribers) = channels.get_mut(channel) {
                            subscribers.retain_mut(|s| s.write(&frame));
                            any_pending |= subscribers.iter().any(|s| !s.pending.is_empty());
                        }
                    }
                }
            },
            _ = retry.tick(), if any_pending => {
                any_pending = false;
                for subscribers in channels.values_mut() {
                    subscribers.retain_mut(Subscriber::flush);
                    any_pending |= subscribers.iter().any(|s| !s.pending.is_empty());
                }
            }
        }
    }
}

/// Reads a connection's requests: a subscriber is handed to the write loop
/// at once; a publisher's events are, read by read.
async fn serve(mut stream: TcpStream, tx: mpsc::UnboundedSender<Message>) -> anyhow::Result<()> {
    let mut raw = Vec::with_capacity(4096);
    loop {
        let mut events = Vec::new();
        let mut replies = Vec::new();
        while let Some(end) = find(&raw, b"\r\n\r\n") {
            let head = std::str::from_utf8(&raw[..end]).context("request head is not UTF-8")?;
            let mut lines = head.split("\r\n");
            let mut parts = lines.next().unwrap_or_default().split(' ');
            let (method, target) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let channel = target
                .split_once("id=")
                .map(|(_, rest)| rest.split('&').next().unwrap_or_default().to_owned())
                .unwrap_or_default();
            if method == "GET" {
                // The head is written by the write loop, so that no event
                // can reach the loop before the subscriber does.
                let socket = stream.into_std()?;
                socket.set_nonblocking(true)?;
                // The write loop owns the socket from here; a closed
                // subscriber shows up there as a failed write.
                let _ = tx.send(Message::Subscriber(channel, socket));
                return Ok(());
            }
            let length: usize = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse())
                .transpose()
                .context("bad content-length")?
                .unwrap_or(0);
            anyhow::ensure!(length <= MAX_REQUEST, "request body too large");
            if raw.len() < end + 4 + length {
                break;
            }
            events.push((channel, raw[end + 4..end + 4 + length].to_vec()));
            raw.drain(..end + 4 + length);
            replies.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
        if !events.is_empty() {
            let _ = tx.send(Message::Events(events));
            stream.write_all(&replies).await?;
        }
        anyhow::ensure!(raw.len() <= MAX_REQUEST, "request too large");
        if stream.read_buf(&mut raw).await? == 0 {
            return Ok(());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpStream,
        time::{Duration, Instant},
    };

    /// Reads from `stream` until `want` has arrived, or fails after 10 s.
    fn read_until(stream: &mut TcpStream, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(want) {
            assert!(Instant::now() < deadline, "no {want:?} in {seen:?}");
            match stream.read(&mut buf) {
                Ok(0) => panic!("closed before {want:?}: {seen:?}"),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("{e}"),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    #[test]
    fn every_subscriber_of_a_channel_gets_each_event_once_and_no_other() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let server = listen.clone();
        std::thread::spawn(move || super::run(&server));
        let connect = || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(s) = TcpStream::connect(&listen) {
                    s.set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                    return s;
                }
                assert!(Instant::now() < deadline, "bare loop did not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let mut subscribers: Vec<TcpStream> = ["a", "a", "b"]
            .iter()
            .map(|channel| {
                let mut s = connect();
                write!(s, "GET /sub?id={channel} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                read_until(&mut s, "\r\n\r\n");
                s
            })
            .collect();
        let mut publisher = connect();
        for (channel, body) in [("a", "1 0 x"), ("b", "1 0 y"), ("a", "2 0 x")] {
            write!(
                publisher,
                "POST /pub?id={channel} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
        let replies = read_until(&mut publisher, "200 OK");
        assert!(replies.starts_with("HTTP/1.1 200 OK"), "{replies}");
        for s in &mut subscribers[..2] {
            let got = read_until(s, "data: 2 0 x\n\n");
            assert_eq!(got, "data: 1 0 x\n\ndata: 2 0 x\n\n");
        }
        let got = read_until(&mut subscribers[2], "data: 1 0 y\n\n");
        assert_eq!(got, "data: 1 0 y\n\n");
    }
}
