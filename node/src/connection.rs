//! Accepted connections: TLS, HTTP/1.1 and HTTP/2 on one port, limits on
//! what a client may send, and a guard against clients that stop reading.
//!
//! [`serve`] accepts TCP connections, optionally completes a TLS handshake
//! (ALPN offers `h2` and `http/1.1`), offers HTTP/1.1 connections to the lean
//! path ([`fastpath`], when `http.fast_path` is on) and serves the rest with
//! hyper's automatic builder, which speaks HTTP/1.1 or, on seeing the HTTP/2
//! preface, HTTP/2 (h2c with prior knowledge in cleartext). A connection
//! the lean path declined gets one HTTP/1.1 response from hyper and is
//! closed (`Connection: close`), so that each HTTP/1.1 request, an event
//! stream on a proxy's pooled connection included, is read by the lean
//! path first. With `http.h2` off, ALPN offers only `http/1.1` and the h2c
//! preface gets GOAWAY with `HTTP_1_1_REQUIRED`. An HTTP/2 connection over
//! TLS 1.3 is served over its own records once the handshake is done,
//! without rustls's buffers ([`tls_records::take_over_connection`]); each
//! connection hyper serves has a task of its own, sized for hyper's state
//! only, not for the handshake's or the lean path's try. Which path served
//! each stream is counted in `sse_streams_served_total{path}`. Limits
//! applied here, each with a metric (`sse_limit_rejections_total{limit}`):
//!
//! - `request_head`: a request line plus headers longer than
//!   `http.max_header_bytes`, or more than `http.max_headers` fields, gets
//!   431 with why, from the lean path's reader or, for what hyper reads
//!   (`http.fast_path` off, HTTP/2), from `Counting` (on HTTP/2 the
//!   header list's size counts, and only that); a head over twice the
//!   bounds is answered by hyper or h2 without a body.
//! - `header_read_timeout`: a client that has not sent its request head
//!   within `http.header_read_timeout_seconds` is dropped (slow-loris),
//!   including one that connects and sends nothing at all, and an HTTP/2
//!   connection that opens no stream in that time.
//! - `idle_timeout`: a connection on which no byte has moved either way for
//!   `http.idle_timeout_seconds` is closed: idle keep-alive connections and
//!   HTTP/2 connections without streams. Open event streams write a
//!   heartbeat more often, so they never count as idle. A connection hyper
//!   serves is also closed once no request has been open on it for as
//!   long, whatever moves: an HTTP/2 client's PINGs would otherwise keep
//!   one without streams for good, outside `http.max_connections`.
//! - `ip_rate`: more than `http.max_connections_per_ip_per_minute` new
//!   connections from one address are closed at once.
//! - `tls_handshake`: a handshake not done in `tls.handshake_timeout_seconds`.
//!
//! When the node starts to drain, every connection hyper serves is asked to
//! finish gracefully (HTTP/2 GOAWAY, HTTP/1.1 close after the response)
//! once it has had a request, while its streams run on: a client then
//! opens its next request, a stream's reconnection included, on a new
//! connection, which the load balancer sends to a node still serving,
//! rather than on the draining node's connection, which would answer 503
//! (an `EventSource` ends for good on any answer but 200). The listener
//! still accepts during the drain, so that a new request is told 503 and
//! why. Once the drain is over the listener closes, the connections not
//! yet asked are asked, and [`serve`] returns once all are gone; the SSE
//! streams themselves end on the node's cancellation token.
//!
//! hyper stops polling a response body while the socket will not take more
//! bytes, so a client that stops reading would never notice its own lag: it
//! would sit on its socket buffers forever. Each accepted stream therefore
//! fails its writes once the socket has refused bytes for
//! `delivery.write_stall_seconds`; hyper then drops the connection and the
//! client's stream records why it ended.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    os::fd::AsRawFd as _,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{Router, serve::Listener as _};
use bytes::Bytes;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::conn::auto,
};
use prometheus::IntCounter;
use socket2::SockRef;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
    time::{Instant, Sleep},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, ContentType,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::TlsConfig,
    fastpath,
    h2_stall::{self, StallExecutor},
    http::{self, HttpState},
    node::Node,
    tls_records::{self, CLOSE_NOTIFY, RecordSealer, Sent},
};

/// Builds the TLS acceptor for `[tls]`: the certificate chain and key from
/// PEM files, ALPN `h2` (if `h2`) then `http/1.1`, the ring provider. An
/// error starts with the key it is about (`tls.cert_file: …`).
pub fn tls_acceptor(config: &TlsConfig, h2: bool) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .and_then(|certs| certs.collect())
        .map_err(|e| {
            format!(
                "tls.cert_file: cannot read certificates from {:?}: {e}",
                config.cert_file
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file: {:?} holds no certificate",
            config.cert_file
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| {
        format!(
            "tls.key_file: cannot read a private key from {:?}: {e}",
            config.key_file
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "tls.cert_file, tls.key_file: certificate and key do not make a TLS identity: {e}"
            )
        })?;
    server.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    // The lean path takes the write key of an HTTP/1.1 stream over from
    // rustls once its head is out (see `tls_records`).
    server.enable_secret_extraction = true;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Serves `router` on `listener` until `stop` is cancelled, then waits for
/// every connection to finish. Once `drain` is cancelled, each connection
/// hyper serves is asked to finish after its open requests.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    tls: Option<TlsAcceptor>,
    drain: CancellationToken,
    stop: CancellationToken,
) -> io::Result<()> {
    let node = state.node().clone();
    let router = http::router_with(state.clone());
    let config = node.config().clone();
    let http = &config.http;
    let mut listener = GuardedListener::new(
        listener,
        Duration::from_secs(config.delivery.write_stall_seconds),
    )
    .with_max_unsent(config.delivery.max_unsent_bytes)
    .with_idle_timeout(
        Duration::from_secs(http.idle_timeout_seconds),
        node.metrics()
            .limit_rejections
            .with_label_values(&["idle_timeout"]),
    )
    .with_accept_failures(
        node.metrics()
            .limit_rejections
            .with_label_values(&["accept_failed"]),
    );
    // Each HTTP/2 stream's task is watched for a window its client keeps
    // shut (`h2_stall`), as a socket is for a client that stops reading.
    let mut builder = auto::Builder::new(StallExecutor::new(Duration::from_secs(
        config.delivery.write_stall_seconds,
    )));
    if !http.h2 {
        builder = builder.http1_only();
    }
    // hyper's and h2's own bounds on a head are twice the configured ones:
    // a head over the configured bounds reaches `Counting`, which answers
    // it with why and counts it, where hyper and h2 answer 431 without a
    // body (and h2 without a count). Past twice they still do.
    let head_ceiling = http.max_header_bytes.saturating_mul(HEAD_CEILING_FACTOR);
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(head_ceiling)
        .max_headers(http.max_headers.saturating_mul(HEAD_CEILING_FACTOR))
        .header_read_timeout(Duration::from_secs(http.header_read_timeout_seconds));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(http.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(head_ceiling).unwrap_or(u32::MAX));
    // A connection the lean path declined gets one HTTP/1.1 response and
    // `Connection: close`: a request kept alive after it would reach hyper
    // without the lean path's look, and an event stream on it would be
    // served at the router's cost (a pooling proxy's, say), and a malformed
    // head on it answered without a word. HTTP/2 on such a connection is
    // served as ever.
    let mut one_request = builder.clone();
    one_request.http1().keep_alive(false);
    // TLS that agreed on h2 by ALPN carries HTTP/2 only (RFC 9113 §3.3):
    // hyper's sniffing would take HTTP/1.1 there too, kept alive, past the
    // lean path's reader and its answers to malformed heads.
    // With `http.h2` off no handshake offers h2, and the builder is
    // HTTP/1.1 only already (hyper_util refuses to be made both).
    let alpn_h2 = if http.h2 {
        builder.clone().http2_only()
    } else {
        builder.clone()
    };
    // TLS that did not agree on h2 carries HTTP/1.1 only: HTTP/2 over TLS
    // is agreed by ALPN (RFC 9113 §3.3), and hyper's sniffing would take
    // the preface of a client that skipped it.
    // With `http.h2` off both are HTTP/1.1 only already, and hyper_util
    // refuses to be made so twice.
    let (tls_http1, tls_http1_one_request) = if http.h2 {
        (
            builder.clone().http1_only(),
            one_request.clone().http1_only(),
        )
    } else {
        (builder.clone(), one_request.clone())
    };
    let builders = Arc::new(Builders {
        kept_alive: builder,
        one_request,
        alpn_h2,
        tls_http1,
        tls_http1_one_request,
    });
    let handshake_timeout = Duration::from_secs(config.tls.handshake_timeout_seconds);
    let head_wait = Duration::from_secs(http.header_read_timeout_seconds);
    let max_head = http.max_header_bytes;
    let fast = http.fast_path.then_some(state);
    let h2 = http.h2;
    let idle = Duration::from_secs(http.idle_timeout_seconds);
    let mut rate = IpRate::new(http.max_connections_per_ip_per_minute);
    // Every connection holds a receiver until it is gone: the server's
    // last wait is for all of them. A watch rather than the two tokens
    // themselves: each wake of a connection polls it, and its waiters are
    // spread over several locks where a token's sit behind one.
    let (phase, _) = watch::channel(ServerPhase::Serving);
    info!(
        tls = tls.is_some(),
        h2, "serving http/1.1, and http/2 if h2"
    );
    let mut draining = false;
    loop {
        let (mut stream, addr) = tokio::select! {
            _ = stop.cancelled() => break,
            _ = drain.cancelled(), if !draining => {
                draining = true;
                phase.send_replace(ServerPhase::Draining);
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        if !rate.admit(addr.ip()) {
            node.metrics().limit_hit("ip_rate");
            debug!("connection refused: too many from one address");
            drop(stream);
            continue;
        }
        let hyper = Hyper {
            builders: builders.clone(),
            router: router.clone(),
            phase: phase.subscribe(),
            node: node.clone(),
            idle,
            head_wait,
        };
        let tls = tls.clone();
        let fast = fast.clone();
        tokio::spawn(async move {
            if let Some(acceptor) = tls {
                // Boxed, as the hyper path below: the handshake's future is
                // large and lives only until the stream is open.
                Box::pin(serve_tls(
                    stream,
                    acceptor,
                    handshake_timeout,
                    fast,
                    max_head,
                    head_wait,
                    hyper,
                ))
                .await;
                return;
            }
            // hyper's header timer starts only with the first byte: a client
            // that sends nothing would hold its socket forever. (With TLS,
            // the handshake timeout covers this.) A peek, not `readable()`:
            // readiness may be reported before any byte has arrived.
            let mut first_byte = [0u8; 1];
            match tokio::time::timeout(head_wait, stream.tcp().peek(&mut first_byte)).await {
                Ok(Ok(1..)) => {}
                // Closed or reset before a byte: a TCP health check (a load
                // balancer's, a kubelet's `tcpSocket` probe), not a client
                // held past the limit.
                Ok(_) => {
                    debug!("connection closed by the client before a request");
                    return;
                }
                Err(_) => {
                    hyper.node.metrics().limit_hit("header_read_timeout");
                    debug!("connection closed: no request within the header timeout");
                    return;
                }
            }
            if !h2 && refuse_h2c(&mut stream).await {
                return;
            }
            let stream = match fast {
                Some(state) => match fastpath::serve(&state, stream, max_head, head_wait).await {
                    fastpath::Outcome::Served => return,
                    fastpath::Outcome::Streaming(streaming) => {
                        // The phase's receiver goes with the stream: the
                        // server's last wait is for it as for any
                        // connection.
                        tokio::spawn(streaming.run(hyper.phase));
                        return;
                    }
                    fastpath::Outcome::Declined(stream) => {
                        // A task of its own, so that hyper's connection
                        // state is not kept beside what this task held for
                        // the fast path's try.
                        drop(tokio::spawn(hyper.serve(stream, After::Lean)));
                        return;
                    }
                },
                None => fastpath::Replay::unread(stream),
            };
            drop(tokio::spawn(hyper.serve(stream, After::Nothing)));
        });
    }
    drop(listener);
    // Each connection hyper serves holds a receiver of the phase, and so
    // does a lean stream: this waits until all are gone. Those hyper
    // serves were asked to finish on the drain or now (`Hyper::serve`).
    phase.send_replace(ServerPhase::Stopping);
    phase.closed().await;
    Ok(())
}

/// A TLS connection: the handshake, then the lean path for HTTP/1.1 (when
/// on) and hyper for the rest, HTTP/2 by ALPN included.
async fn serve_tls(
    mut stream: GuardedStream,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    fast: Option<HttpState>,
    max_head: usize,
    head_wait: Duration,
    hyper: Hyper,
) {
    let metrics = hyper.node.metrics();
    // So that an HTTP/2 connection's records can be taken over from rustls
    // once the handshake is done.
    stream.align_tls_records(true);
    let mut stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            metrics.tls_handshake_failures.inc();
            debug!(%error, "tls handshake failed");
            return;
        }
        Err(_) => {
            metrics.tls_handshake_failures.inc();
            metrics.limit_hit("tls_handshake");
            debug!("tls handshake timed out");
            return;
        }
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    if !h2 {
        stream.get_mut().0.align_tls_records(false);
    }
    // HTTP/2 streams share their connection: hyper serves them, over the
    // connection's records without rustls's buffers.
    if h2 {
        match tls_records::take_over_connection(stream, head_wait).await {
            // A task of its own: what the handshake and the take-over held
            // in this one is freed, not kept for the connection's life.
            Ok(records) => drop(tokio::spawn(hyper.serve(records, After::AlpnH2))),
            Err(tls_records::NotTaken::Kept(stream)) => {
                drop(tokio::spawn(hyper.serve(*stream, After::AlpnH2)))
            }
            Err(tls_records::NotTaken::Lost(why)) => debug!(why, "tls connection lost"),
        }
        return;
    }
    // HTTP/1.1, over TLS 1.2 as over 1.3: the lean path writes the
    // stream's records itself once the head is read.
    match fast {
        Some(state) if !h2 => {
            match fastpath::serve_tls(&state, stream, max_head, head_wait).await {
                fastpath::Outcome::Served => {}
                fastpath::Outcome::Streaming(streaming) => {
                    tokio::spawn(streaming.run(hyper.phase));
                }
                fastpath::Outcome::Declined(replay) => {
                    drop(tokio::spawn(hyper.serve(replay, After::TlsLean)))
                }
            }
        }
        _ => drop(tokio::spawn(hyper.serve(stream, After::TlsHttp1))),
    }
}

/// How long a connection closed for its silence may take to say goodbye
/// (GOAWAY, a last flush) before it is dropped.
const GOODBYE_GRACE: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface up to where it differs from any
/// HTTP/1.1 request line.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// What a server that speaks no HTTP/2 sends a client that opened with the
/// HTTP/2 preface (RFC 9113, 3.4 and 6.8): an empty SETTINGS frame, then
/// GOAWAY for no stream with the error `HTTP_1_1_REQUIRED`.
const H2_REFUSAL: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, empty, stream 0
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
    0, 0, 0, 0, // last stream: none
    0, 0, 0, 0xd, // HTTP_1_1_REQUIRED
];

/// With HTTP/2 off: if the client opened with the HTTP/2 preface, tells it
/// that HTTP/1.1 is required and returns true (the connection is done).
/// A preface that has not fully arrived yet goes on to hyper, which speaks
/// only HTTP/1.1 then and closes the connection.
async fn refuse_h2c(stream: &mut GuardedStream) -> bool {
    let mut start = [0u8; H2_PREFACE_START.len()];
    let Ok(peeked) = stream.tcp().peek(&mut start).await else {
        return false;
    };
    if start[..peeked] != *H2_PREFACE_START {
        return false;
    }
    debug!("h2c refused: http.h2 is off");
    let _ = stream.write_all(&H2_REFUSAL).await;
    let _ = stream.shutdown().await;
    // Closing with the client's bytes unread would send a reset, which may
    // discard the GOAWAY before the client reads it: read until the client
    // closes, for a moment at most.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    true
}

/// hyper's builders: one for connections it serves from their start, one
/// for those the lean path looked at and declined, one for TLS that agreed
/// on h2, and the first two HTTP/1.1 only for TLS that did not.
struct Builders {
    kept_alive: auto::Builder<StallExecutor>,
    one_request: auto::Builder<StallExecutor>,
    alpn_h2: auto::Builder<StallExecutor>,
    tls_http1: auto::Builder<StallExecutor>,
    tls_http1_one_request: auto::Builder<StallExecutor>,
}

/// What came before hyper on a connection.
#[derive(Clone, Copy)]
enum After {
    /// Nothing: hyper serves the connection from its start, as long as it
    /// stays open (HTTP/2, `http.fast_path` off).
    Nothing,
    /// The lean path, which read the first request's head and declined it:
    /// hyper serves that request only, so that every HTTP/1.1 request
    /// comes to the lean path first, on a connection of its own.
    Lean,
    /// A TLS handshake that agreed on h2 by ALPN: HTTP/2 only, its
    /// preface or nothing.
    AlpnH2,
    /// A TLS handshake that did not agree on h2: HTTP/1.1 only, from the
    /// start (`http.fast_path` off).
    TlsHttp1,
    /// As [`After::Lean`], over TLS that did not agree on h2: HTTP/1.1
    /// only.
    TlsLean,
}

/// What serving a connection with hyper takes.
struct Hyper {
    builders: Arc<Builders>,
    router: Router,
    /// Where the server is: the connection is asked to finish once it has
    /// had a request when the drain starts, at once when the server stops.
    /// Held until the connection is gone, for the server's last wait.
    phase: watch::Receiver<ServerPhase>,
    node: Node,
    /// `http.idle_timeout_seconds`; zero: off.
    idle: Duration,
    /// `http.header_read_timeout_seconds`: how long the connection may go
    /// without its first request.
    head_wait: Duration,
}

impl Hyper {
    /// Serves `io` (HTTP/1.1 or HTTP/2) with the router until it closes
    /// (after the lean path, once its HTTP/1.1 response is out), or until
    /// it has had no request open for the idle timeout. Bytes
    /// moving do not count here: an HTTP/2 client's PINGs and their answers
    /// would keep a connection without streams open for good, outside
    /// `http.max_connections`, which counts streams.
    async fn serve<IO>(self, io: IO, after: After)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let open = Arc::new(OpenRequests::new());
        let service = Counting {
            router: self.router,
            open: open.clone(),
            node: self.node.clone(),
        };
        let builder = match after {
            After::Nothing => &self.builders.kept_alive,
            After::Lean => &self.builders.one_request,
            After::AlpnH2 => &self.builders.alpn_h2,
            After::TlsHttp1 => &self.builders.tls_http1,
            After::TlsLean => &self.builders.tls_http1_one_request,
        };
        let mut connection = std::pin::pin!(builder.serve_connection(TokioIo::new(io), service));
        let mut phase = self.phase;
        let mut asked_to_finish = std::pin::pin!(finish_asked(&mut phase, &open));
        let mut finishing = false;
        // hyper times the head of HTTP/1.1 requests only: an HTTP/2
        // connection (a preface, SETTINGS, PINGs) that never opens a
        // stream is timed here, as a silent connection is.
        let first_request_due = open.born + self.head_wait;
        // A connection given up for its silence is closed gracefully (an
        // HTTP/2 client is told with GOAWAY which streams were not taken,
        // so that it retries a request sent meanwhile), and dropped if that
        // takes longer than a moment.
        let mut dropped_at: Option<Instant> = None;
        let served = loop {
            let recheck = open.idle_deadline(self.idle);
            let awaiting_first = !open.had_a_request.load(Ordering::Acquire);
            let silent = dropped_at.is_none();
            tokio::select! {
                served = &mut connection => break served,
                () = tokio::time::sleep_until(first_request_due), if awaiting_first && silent => {
                    if !open.had_a_request.load(Ordering::Acquire) {
                        self.node
                            .metrics()
                            .limit_hit("header_read_timeout");
                        debug!("closing a connection with no request within the header timeout");
                        dropped_at = Some(Instant::now() + GOODBYE_GRACE);
                    }
                }
                () = &mut asked_to_finish, if !finishing => {
                    finishing = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep_until(recheck), if !self.idle.is_zero() && silent => {
                    if open.idle_for() >= self.idle {
                        self.node
                            .metrics()
                            .limit_hit("idle_timeout");
                        debug!("closing a connection with no request for the idle timeout");
                        dropped_at = Some(Instant::now() + GOODBYE_GRACE);
                    }
                }
                () = tokio::time::sleep_until(dropped_at.unwrap_or(first_request_due)), if !silent => return,
            }
            if dropped_at.is_some() && !finishing {
                finishing = true;
                connection.as_mut().graceful_shutdown();
            }
        };
        if let Err(error) = served {
            note_connection_error(&self.node, error.as_ref());
        }
    }
}

/// Where the HTTP server is in its life, as each connection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerPhase {
    Serving,
    /// The node drains: connections finish after their open requests.
    Draining,
    /// The drain is over: connections finish now.
    Stopping,
}

/// Resolves when a connection hyper serves is to finish gracefully: at
/// once when the server stops; in the drain, once the connection has had
/// a request. A connection asked before its first request would be closed
/// without an answer (hyper drops one whose protocol it has not read
/// yet), where a client that connects during the drain is to be told 503
/// and why.
async fn finish_asked(phase: &mut watch::Receiver<ServerPhase>, open: &OpenRequests) {
    let Ok(now) = phase
        .wait_for(|now| *now != ServerPhase::Serving)
        .await
        .map(|now| *now)
    else {
        // The server is gone.
        return;
    };
    if now == ServerPhase::Draining {
        tokio::select! {
            () = open.first_request() => {}
            _ = phase.wait_for(|now| *now == ServerPhase::Stopping) => {}
        }
    }
}

/// The requests open on one connection hyper serves (an event stream is
/// open until its body ends), and since when none has been.
struct OpenRequests {
    open: AtomicUsize,
    /// Whether a request has begun on the connection, and who waits for one.
    had_a_request: AtomicBool,
    first: Notify,
    /// When the count last fell to zero, in milliseconds from `born`.
    none_since_ms: AtomicU64,
    born: Instant,
}

impl OpenRequests {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            had_a_request: AtomicBool::new(false),
            first: Notify::new(),
            none_since_ms: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// How long the connection has had no request open; zero while one is.
    fn idle_for(&self) -> Duration {
        if self.open.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = self.born + Duration::from_millis(self.none_since_ms.load(Ordering::Acquire));
        Instant::now().saturating_duration_since(since)
    }

    /// Resolves once a request has begun on the connection.
    async fn first_request(&self) {
        loop {
            let notified = self.first.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the look, so that a request beginning in
            // between is not missed.
            notified.as_mut().enable();
            if self.had_a_request.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// When to look again: when the connection would have been idle for
    /// `idle`, or, while a request is open, one `idle` from now.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        Instant::now() + idle.saturating_sub(self.idle_for())
    }
}

/// Holds one request open on its connection's count until dropped.
struct OpenRequest(Arc<OpenRequests>);

impl OpenRequest {
    fn new(requests: Arc<OpenRequests>) -> Self {
        requests.open.fetch_add(1, Ordering::AcqRel);
        if !requests.had_a_request.swap(true, Ordering::AcqRel) {
            requests.first.notify_waiters();
        }
        Self(requests)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let requests = &self.0;
        let now = requests.born.elapsed().as_millis() as u64;
        requests.none_since_ms.store(now, Ordering::Release);
        requests.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many times the configured bounds on a request head hyper and h2
/// read before they refuse it themselves, without a body.
const HEAD_CEILING_FACTOR: usize = 2;

/// The router, counting each request in `open` from its start to the end
/// of its response's body. A hyper service of its own rather than a tower
/// one behind `TowerToHyperService`, whose future keeps a copy of the
/// router and the request: an HTTP/2 stream's task is sized for the
/// largest state of this future and kept for the stream's life, so the
/// future is a box, freed once the response is out.
#[derive(Clone)]
struct Counting {
    router: Router,
    open: Arc<OpenRequests>,
    /// For the refusal of a head the router never sees.
    node: Node,
}

impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for Counting {
    // Not boxed once more into an axum body: one allocation less for
    // every request, an HTTP/2 stream's life long.
    type Response = axum::http::Response<HeldBody>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        let held = OpenRequest::new(self.open.clone());
        if http::head_is_over_bounds(&self.node.config().http, &request) {
            let refusal = http::reject(
                &self.node,
                http::ApiError::request_head_too_large(&self.node),
            );
            return Box::pin(std::future::ready(Ok(
                refusal.map(|body| HeldBody::new(body, held))
            )));
        }
        let version = request.version();
        if version < axum::http::Version::HTTP_2
            && http::host_is_wrong(
                version == axum::http::Version::HTTP_11,
                request
                    .headers()
                    .get_all(axum::http::header::HOST)
                    .iter()
                    .map(|value| value.as_bytes()),
            )
        {
            // As the lean path answers it (`http.fast_path` off here).
            let refusal = http::reject(
                &self.node,
                http::ApiError::malformed_head(http::MalformedPart::Host),
            );
            return Box::pin(std::future::ready(Ok(
                refusal.map(|body| HeldBody::new(body, held))
            )));
        }
        // A router is always ready: called at once.
        let answered = tower::Service::call(&mut self.router.clone(), request);
        Box::pin(async move {
            let response: axum::response::Response = answered.await?;
            Ok(response.map(|body| HeldBody::new(body, held)))
        })
    }
}

/// A response body that keeps its request counted until it ends, and
/// tells an HTTP/2 stream's task when hyper holds a chunk of it
/// (`h2_stall`).
struct HeldBody {
    body: axum::body::Body,
    _held: OpenRequest,
}

impl HeldBody {
    fn new(body: axum::body::Body, held: OpenRequest) -> Self {
        Self { body, _held: held }
    }
}

impl hyper::body::Body for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        h2_stall::asked();
        let polled = Pin::new(&mut self.get_mut().body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.data_ref().is_some_and(|data| !data.is_empty())
        {
            h2_stall::handed();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Counts connection errors that come from a limit.
fn note_connection_error(node: &Node, error: &(dyn std::error::Error + 'static)) {
    let metrics = node.metrics();
    let Some(error) = error.downcast_ref::<hyper::Error>() else {
        debug!(%error, "connection ended with an error");
        return;
    };
    if error.is_parse_too_large() {
        metrics.limit_hit("request_head");
        metrics.requests_rejected.with_label_values(&["431"]).inc();
    } else if error.is_timeout() {
        metrics.limit_hit("header_read_timeout");
    }
    debug!(%error, "connection ended with an error");
}

/// The error of a connection closed for being idle.
#[derive(Debug)]
struct IdleTimeout;

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no byte moved on the connection for the idle timeout")
    }
}

impl std::error::Error for IdleTimeout {}

/// New connections per client address in the current minute.
struct IpRate {
    per_minute: u32,
    window_start: Instant,
    counts: HashMap<IpAddr, u32>,
}

impl IpRate {
    fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            window_start: Instant::now(),
            counts: HashMap::new(),
        }
    }

    /// Whether a new connection from `ip` is admitted. Fixed one-minute
    /// windows: the map is cleared each minute, so it never outgrows the
    /// addresses seen in one minute.
    fn admit(&mut self, ip: IpAddr) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        if self.window_start.elapsed() >= Duration::from_secs(60) {
            self.window_start = Instant::now();
            self.counts.clear();
        }
        let count = self.counts.entry(ip).or_insert(0);
        *count += 1;
        *count <= self.per_minute
    }
}

/// Bounds what the kernel holds for a client that TCP has not sent yet to
/// `max_unsent` (`delivery.max_unsent_bytes`): for a client on a link
/// slower than its topic the kernel grows the send buffer to megabytes,
/// and events waited there for minutes (53 s behind, then 133 s, at
/// 64 kbit/s) while the socket still took bytes, so the client never
/// counted as slow. Best effort: a kernel that refuses the option leaves
/// the socket as it was. Bytes sent and never acknowledged are not bounded
/// in time: a `TCP_USER_TIMEOUT` of the stall time let a link congested
/// for 20 s drop connections without a FIN or RST, leaving their clients
/// waiting for ever, where the kernel's own retransmissions deliver the
/// node's close once the link clears.
fn bound_kernel_buffering(stream: &TcpStream, max_unsent: u32) {
    if max_unsent > 0 {
        let _ = SockRef::from(stream).set_tcp_notsent_lowat(max_unsent);
    }
}

/// A listener whose connections time out stalled writes and idleness.
pub struct GuardedListener {
    inner: TcpListener,
    stall: Duration,
    max_unsent: u32,
    idle: Duration,
    idle_closed: Option<IntCounter>,
    accept_failed: Option<IntCounter>,
    // When a failed accept was last logged: at most one line in ten seconds.
    accept_failed_logged: Option<Instant>,
}

impl GuardedListener {
    /// Wraps `inner`; writes blocked longer than `stall` fail.
    pub fn new(inner: TcpListener, stall: Duration) -> Self {
        Self {
            inner,
            stall,
            max_unsent: 0,
            idle: Duration::ZERO,
            idle_closed: None,
            accept_failed: None,
            accept_failed_logged: None,
        }
    }

    /// Bounds the bytes each connection's socket may hold unsent
    /// (`delivery.max_unsent_bytes`).
    pub fn with_max_unsent(mut self, bytes: u32) -> Self {
        self.max_unsent = bytes;
        self
    }

    /// Counts connections the node could not accept (out of file
    /// descriptors, say) in `failed`.
    pub fn with_accept_failures(mut self, failed: IntCounter) -> Self {
        self.accept_failed = Some(failed);
        self
    }

    /// Reads fail once no byte has moved either way for `idle`, counted in
    /// `closed`; zero turns this off.
    pub fn with_idle_timeout(mut self, idle: Duration, closed: IntCounter) -> Self {
        self.idle = idle;
        self.idle_closed = Some(closed);
        self
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Events must leave at once, not wait for more bytes.
                    let _ = stream.set_nodelay(true);
                    bound_kernel_buffering(&stream, self.max_unsent);
                    let guarded = GuardedStream {
                        inner: stream,
                        stall: WriteStall::new(self.stall),
                        idle: self.idle,
                        idle_closed: self.idle_closed.clone(),
                        last_active: Instant::now(),
                        idle_timer: None,
                        records: None,
                    };
                    return (guarded, addr);
                }
                Err(error) => {
                    // Out of file descriptors and the like: the client
                    // waits in the listen queue, unanswered. Said, counted,
                    // and retried after a short back-off, not in a spin.
                    if let Some(failed) = &self.accept_failed {
                        failed.inc();
                    }
                    let now = Instant::now();
                    if self
                        .accept_failed_logged
                        .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10))
                    {
                        self.accept_failed_logged = Some(now);
                        warn!(%error, "cannot accept a connection; clients wait unanswered until descriptors are free (see http.max_connections and the open-file limit)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream whose writes fail after stalling too long, and whose reads
/// fail once the connection has been idle too long.
pub struct GuardedStream {
    inner: TcpStream,
    stall: WriteStall,
    idle: Duration,
    idle_closed: Option<IntCounter>,
    last_active: Instant,
    // Allocated only while a read waits.
    idle_timer: Option<Pin<Box<Sleep>>>,
    // Set only during a TLS handshake: see `align_tls_records`.
    records: Option<Box<RecordBoundary>>,
}

/// Where a read stands in the TLS record it is reading.
#[derive(Default)]
struct RecordBoundary {
    header: [u8; TLS_RECORD_HEADER],
    header_read: usize,
    body_left: usize,
}

/// A TLS record's header: content type, version, length.
const TLS_RECORD_HEADER: usize = 5;

impl GuardedStream {
    /// The TCP stream, for peeking and readiness.
    pub fn tcp(&self) -> &TcpStream {
        &self.inner
    }

    /// While on, no read returns bytes of two TLS records: each ends where
    /// the record it reads ends, so that it can be told when rustls holds
    /// no part of a record ([`Self::at_tls_record_boundary`]) and its keys
    /// can be taken over with nothing left behind in its buffers
    /// (`tls_records::take_over_connection`).
    pub fn align_tls_records(&mut self, on: bool) {
        self.records = on.then(Box::default);
    }

    /// True unless a read stopped inside a TLS record (with
    /// [`Self::align_tls_records`] on).
    pub fn at_tls_record_boundary(&self) -> bool {
        self.records.as_ref().is_none_or(|at| at.header_read == 0)
    }

    /// Reads no further than the end of the current TLS record.
    fn poll_read_record(
        inner: &mut TcpStream,
        at: &mut RecordBoundary,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if at.header_read < TLS_RECORD_HEADER {
            let want = (TLS_RECORD_HEADER - at.header_read).min(buf.remaining());
            let mut header = ReadBuf::new(&mut at.header[at.header_read..at.header_read + want]);
            ready!(Pin::new(inner).poll_read(cx, &mut header))?;
            let read = header.filled().len();
            buf.put_slice(&at.header[at.header_read..at.header_read + read]);
            at.header_read += read;
            if at.header_read == TLS_RECORD_HEADER {
                at.body_left = usize::from(u16::from_be_bytes([at.header[3], at.header[4]]));
                if at.body_left == 0 {
                    at.header_read = 0;
                }
            }
            return Poll::Ready(Ok(()));
        }
        let want = at.body_left.min(buf.remaining());
        let mut body = ReadBuf::new(buf.initialize_unfilled_to(want));
        ready!(Pin::new(inner).poll_read(cx, &mut body))?;
        let read = body.filled().len();
        buf.advance(read);
        at.body_left -= read;
        if at.body_left == 0 {
            at.header_read = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// A pending read fails once nothing has moved for the idle timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.idle.is_zero() {
            return Poll::Pending;
        }
        loop {
            let deadline = self.last_active + self.idle;
            let timer = self
                .idle_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                // Writes moved the deadline since the timer was set.
                timer.as_mut().reset(deadline);
            }
            ready!(timer.as_mut().poll(cx));
            if Instant::now() >= self.last_active + self.idle {
                if let Some(closed) = &self.idle_closed {
                    closed.inc();
                }
                debug!("closing an idle connection");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, IdleTimeout)));
            }
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let result = self.stall.check(cx, result);
        if let Poll::Ready(Ok(_)) = result {
            self.last_active = Instant::now();
        }
        result
    }

    /// The write side as a [`SharedWriter`], for an event stream whose
    /// socket its feed's writer may write to while the stream is parked.
    pub fn into_shared(self) -> SharedWriter {
        SharedWriter {
            socket: Arc::new(SharedSocket::plain(self.inner)),
            stall: self.stall,
            closing: false,
        }
    }

    /// As [`Self::into_shared`], for a TLS stream whose records `sealer`
    /// seals from here on.
    pub fn into_shared_sealed(self, sealer: RecordSealer) -> SharedWriter {
        SharedWriter {
            socket: Arc::new(SharedSocket {
                tcp: self.inner,
                records: Some(Box::new(Mutex::new(sealer))),
            }),
            stall: self.stall,
            closing: false,
        }
    }
}

/// Fails a write once the socket has refused bytes for too long.
struct WriteStall {
    limit: Duration,
    // Allocated only while a write is blocked, so idle connections stay small.
    blocked: Option<Pin<Box<Sleep>>>,
}

impl WriteStall {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            blocked: None,
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.blocked = None;
            return result;
        }
        let limit = self.limit;
        let timer = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client stopped reading",
        )))
    }
}

/// The socket of an event stream on the lean path, shared: the stream's
/// own task writes to it, and while the stream is parked its feed's writer
/// does, never both at once (see `delivery::parked`). Under TLS it carries
/// the connection's [`RecordSealer`], so both seal with the same key and
/// record sequence.
#[derive(Debug)]
pub struct SharedSocket {
    tcp: TcpStream,
    // Locked only by whichever of the two writes at the moment: never
    // contended, never held across a wait. Boxed: a cleartext socket pays
    // one pointer for it, not the sealer's size.
    records: Option<Box<Mutex<RecordSealer>>>,
}

impl SharedSocket {
    /// A cleartext socket.
    pub fn plain(tcp: TcpStream) -> Self {
        Self { tcp, records: None }
    }

    /// The TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    fn sealer(&self) -> Option<MutexGuard<'_, RecordSealer>> {
        // A panic while sealing leaves at worst a record unsent, which the
        // stream's next write fails on: the lock itself stays usable.
        self.records
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether bytes the socket has not taken yet wait to go out first; such
    /// a socket is not handed to its feed's writer.
    pub fn has_unsent(&self) -> bool {
        self.sealer().is_some_and(|s| !s.unsent.is_empty())
    }

    /// Reads what [`Self::try_send`] reads first, so that it is in the
    /// cache by then; the value means nothing.
    pub(crate) fn warm(&self) -> i32 {
        self.tcp.as_raw_fd() ^ i32::from(self.records.is_some())
    }

    /// Sends `buf` without waiting, with a plain `send` past tokio's
    /// readiness: the feed's writer sends to every parked socket for every
    /// batch, and the readiness check would touch one more allocation per
    /// socket. A refusal leaves tokio's readiness set; the stream's own
    /// writes find it stale and clear it (`poll_raw`).
    pub(crate) fn send_now(&self, buf: &[u8]) -> io::Result<usize> {
        SockRef::from(&self.tcp).send(buf)
    }

    /// Writes `frames[start..]` (event frames, cleartext) without waiting.
    pub(crate) fn try_send(&self, frames: &Bytes, start: usize) -> Sent {
        if let Some(mut sealer) = self.sealer() {
            return sealer.try_send(self, &frames[start..]);
        }
        match self.send_now(&frames[start..]) {
            Ok(n) if n == frames.len() - start => Sent::Whole,
            Ok(n) if n > 0 => Sent::Partly(frames.slice(start + n..)),
            _ => Sent::Refused,
        }
    }

    /// Writes `buf` (event frames, cleartext) without waiting; what the
    /// socket does not take comes back as a copy.
    pub(crate) fn try_send_slice(&self, buf: &[u8]) -> Sent {
        if let Some(mut sealer) = self.sealer() {
            return sealer.try_send(self, buf);
        }
        match self.send_now(buf) {
            Ok(n) if n == buf.len() => Sent::Whole,
            Ok(n) if n > 0 => Sent::Partly(Bytes::copy_from_slice(&buf[n..])),
            _ => Sent::Refused,
        }
    }
}

/// The write side of a [`SharedSocket`] for its stream's own task. Writes
/// fail as a [`GuardedStream`]'s do once the socket stalls; under TLS each
/// write is sealed into records first.
pub struct SharedWriter {
    socket: Arc<SharedSocket>,
    stall: WriteStall,
    closing: bool,
}

impl SharedWriter {
    /// The shared socket.
    pub fn socket(&self) -> &Arc<SharedSocket> {
        &self.socket
    }

    /// Writes `buf` to the socket as it is.
    fn poll_raw(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let tcp = &self.socket.tcp;
        let result = loop {
            match tcp.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => match tcp.try_write(buf) {
                    // The readiness was stale; `try_write` cleared it.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    written => break Poll::Ready(written),
                },
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        self.stall.check(cx, result)
    }

    /// Writes what is left of sealed records the socket did not take.
    fn poll_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Taken out of the lock for the write: only this task writes now.
            let unsent = match self.socket.sealer() {
                Some(mut sealer) if !sealer.unsent.is_empty() => std::mem::take(&mut sealer.unsent),
                _ => return Poll::Ready(Ok(())),
            };
            let written = match self.poll_raw(cx, &unsent) {
                Poll::Ready(Ok(0)) => Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => Ok(n),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => {
                    self.put_back_unsent(unsent);
                    return Poll::Pending;
                }
            };
            match written {
                Ok(n) => self.put_back_unsent(unsent.slice(n..)),
                Err(e) => {
                    self.put_back_unsent(unsent);
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    fn put_back_unsent(&self, rest: Bytes) {
        if let Some(mut sealer) = self.socket.sealer() {
            sealer.unsent = rest;
        }
    }

    fn seal_into_unsent(&self, typ: ContentType, plaintext: &[u8]) -> io::Result<()> {
        if let Some(mut sealer) = self.socket.sealer() {
            sealer.unsent = sealer.seal(typ, plaintext)?;
        }
        Ok(())
    }
}

impl AsyncWrite for SharedWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.socket.records.is_none() {
            return this.poll_raw(cx, buf);
        }
        ready!(this.poll_unsent(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.seal_into_unsent(ContentType::ApplicationData, buf)?;
        // The bytes are accepted once sealed: what the socket does not take
        // now goes out on the next write or flush.
        let _ = this.poll_unsent(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_unsent(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_unsent(cx))?;
        if this.socket.records.is_some() && !this.closing {
            this.closing = true;
            this.seal_into_unsent(ContentType::Alert, &CLOSE_NOTIFY)?;
            ready!(this.poll_unsent(cx))?;
        }
        Poll::Ready(socket2::SockRef::from(&this.socket.tcp).shutdown(std::net::Shutdown::Write))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let read = match this.records.as_deref_mut() {
            Some(at) => Self::poll_read_record(&mut this.inner, at, cx, buf),
            None => Pin::new(&mut this.inner).poll_read(cx, buf),
        };
        match read {
            Poll::Ready(result) => {
                self.last_active = Instant::now();
                self.idle_timer = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_idle(cx),
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        // A flush moves no byte: it must not keep an idle connection alive
        // (hyper flushes whenever its task is polled, the idle timer's own
        // wake-up included).
        let idle_since = self.last_active;
        let result = self.check(cx, result);
        self.last_active = idle_since;
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted socket holds at most `delivery.max_unsent_bytes` that
    /// TCP has not sent; without the setting the kernel's own rule stays.
    #[tokio::test]
    async fn accepted_sockets_bound_what_the_kernel_holds_unsent() {
        for (bound, expected) in [(Some(32 * 1024), 32 * 1024), (None, 0)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let mut listener = GuardedListener::new(listener, Duration::from_secs(5));
            if let Some(bytes) = bound {
                listener = listener.with_max_unsent(bytes);
            }
            let _client = TcpStream::connect(address).await.unwrap();
            let (accepted, _) = axum::serve::Listener::accept(&mut listener).await;
            let lowat = SockRef::from(accepted.tcp()).tcp_notsent_lowat().unwrap();
            assert_eq!(lowat, expected, "{bound:?}");
        }
    }
}
