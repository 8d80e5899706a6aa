//! The lean path for SSE over HTTP/1.1, in cleartext or over TLS.
//!
//! Most connections a node holds are long, mostly idle HTTP/1.1 event
//! streams. Served through hyper, each keeps hyper's read and write buffers
//! and connection state for its whole life. This path answers them with
//! much less: it reads the request head, and when it asks for
//! `GET /v1/events` it validates it exactly as the router does
//! ([`http::prepare_stream`]), writes the response head itself and then
//! writes the client's frames straight to the socket. The response is
//! delimited by closing the connection (`Connection: close`), so no chunked
//! framing is added to each event.
//!
//! Every answer, the 200 head as well as a refusal, goes through the same
//! CORS layer as the router's ([`HttpState::cors`]) before it is written,
//! so a browser on another origin gets the same `Access-Control-*` and
//! `Vary` headers from either path. Preflights (`OPTIONS`) go to the router.
//!
//! A head over the bounds, or one HTTP/1.1 cannot read, is refused here
//! with a JSON body that says why, whatever it asks for: hyper would refuse
//! it without a word.
//!
//! In cleartext the head is peeked at ([`serve`]), and a connection whose
//! whole head came in its first packet and asks for anything else (another
//! path or method, HTTP/2 by h2c) is handed to hyper unread. A head that
//! comes in several packets (a browser's cookies past one TCP segment) is
//! read into a buffer instead, as on TLS, whose stream cannot be peeked
//! ([`serve_tls`]): a connection declined then goes to hyper as a
//! [`Replay`] that yields those bytes first. Only TLS connections (1.3 or
//! 1.2) that chose HTTP/1.1 by ALPN (or chose nothing) come here, and
//! once the head is out their events are sealed by a
//! [`RecordSealer`](crate::tls_records::RecordSealer) instead of rustls's
//! whole connection; they park as cleartext streams do.

use std::{
    convert::Infallible,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    http::{HeaderName, HeaderValue, Method, Request, header, response::Parts},
    response::Response,
};
use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;
use tower::{Layer, ServiceExt, service_fn};
use tracing::{debug, warn};

use crate::{
    connection::{GuardedStream, SharedSocket, SharedWriter},
    delivery::{ClientStream, JETSTREAM_TURN_CHECK},
    http::{self, HttpState},
    tls_records,
};

/// How long the socket may take to close after the last frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A connection the lean path answers on.
pub trait LeanIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// What an open stream's events are written to.
    type Writer: EventWriter;

    /// The writer for the events, once the response head is written and
    /// flushed; `Err` says why the stream cannot go on.
    fn into_writer(self) -> Result<Self::Writer, &'static str>;
}

/// Where an open stream's events go.
pub trait EventWriter: AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket under it, watched for the client closing its side.
    fn tcp(&self) -> &TcpStream;

    /// The socket as its feed's writer may share it.
    fn shared(&self) -> Option<&Arc<SharedSocket>> {
        None
    }
}

impl LeanIo for GuardedStream {
    type Writer = SharedWriter;

    fn into_writer(self) -> Result<SharedWriter, &'static str> {
        Ok(self.into_shared())
    }
}

impl EventWriter for SharedWriter {
    fn tcp(&self) -> &TcpStream {
        self.socket().tcp()
    }

    fn shared(&self) -> Option<&Arc<SharedSocket>> {
        Some(self.socket())
    }
}

impl LeanIo for TlsStream<GuardedStream> {
    type Writer = SharedWriter;

    fn into_writer(self) -> Result<SharedWriter, &'static str> {
        tls_records::take_over(self)
    }
}

/// What became of a connection: `S` is the stream the events go to, `D`
/// what is handed to hyper when this path declines.
// Made once per connection and moved once: boxing the large variant would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Outcome<S, D> {
    /// Served to the end here.
    Served,
    /// The response head is written: [`Streaming::run`] writes the events.
    Streaming(Streaming<S>),
    /// Not an SSE request this path takes: serve it normally.
    Declined(D),
}

/// Serves a cleartext connection if its first request is an HTTP/1.x SSE
/// request; otherwise hands it back with the bytes read so far (none when
/// its head came whole).
pub async fn serve(
    state: &HttpState,
    stream: GuardedStream,
    max_head: usize,
    wait: Duration,
) -> Outcome<SharedWriter, Replay<GuardedStream>> {
    // The set-up is boxed: its futures are large and short-lived.
    finish(Box::pin(open_plain(state, stream, max_head, wait)).await).await
}

/// Serves a TLS connection (HTTP/1.1 by ALPN, or none) if its first request
/// is an SSE request; otherwise hands it back with the bytes read so far.
pub async fn serve_tls(
    state: &HttpState,
    stream: TlsStream<GuardedStream>,
    max_head: usize,
    wait: Duration,
) -> Outcome<SharedWriter, Replay<TlsStream<GuardedStream>>> {
    finish(Box::pin(open_tls(state, stream, max_head, wait)).await).await
}

async fn finish<S: LeanIo, D>(opened: Opened<S, D>) -> Outcome<S::Writer, D> {
    match opened {
        Opened::Streaming(stream, client) => Outcome::Streaming(Streaming { stream, client }),
        Opened::Answered(mut stream) => {
            let _ = tokio::time::timeout(CLOSE_GRACE, stream.shutdown()).await;
            Outcome::Served
        }
        Opened::Gone => Outcome::Served,
        Opened::Declined(stream) => Outcome::Declined(stream),
    }
}

/// An event stream whose response head is written.
pub struct Streaming<S> {
    stream: S,
    client: ClientStream,
}

impl<S: EventWriter> Streaming<S> {
    /// Writes the client's frames until its stream ends or the socket
    /// fails, holding `guard` as long.
    ///
    /// Meant to run as a task of its own, so a connection's task is sized by
    /// what an open stream needs (the socket, the client's state, the write
    /// loop), not by the largest step on the way to it. Not an `async fn`:
    /// that would copy its arguments into locals of the future and hold
    /// them twice for the stream's life.
    pub fn run<G: Send + 'static>(self, guard: G) -> impl Future<Output = ()> + Send + 'static {
        let Self {
            mut stream,
            mut client,
        } = self;
        async move {
            // Under TLS the socket is watched below the TLS layer: the
            // client sends nothing more this path reads, so whatever comes
            // (a close_notify, then the end) only says it is leaving.
            while let Some(chunk) = client
                .next_chunk_watching(Some(stream.tcp()), stream.shared())
                .await
            {
                // The flush sends what a TLS writer sealed but the socket
                // did not take yet; on TCP it costs nothing.
                let write = async {
                    stream.write_all(&chunk).await?;
                    stream.flush().await
                };
                let written = if client.holds_jetstream_slot() {
                    // A catch-up from JetStream: a client that reads it
                    // slowly blocks this write for long, and gives its
                    // read slot up meanwhile if other resumes wait.
                    let mut write = std::pin::pin!(write);
                    loop {
                        tokio::select! {
                            written = &mut write => break written,
                            () = tokio::time::sleep(JETSTREAM_TURN_CHECK) => {
                                client.end_jetstream_turn_if_others_wait();
                            }
                        }
                    }
                } else {
                    write.await
                };
                if let Err(error) = written {
                    if error.kind() == io::ErrorKind::TimedOut {
                        client.mark_slow();
                    }
                    break;
                }
            }
            drop(client);
            let _ = tokio::time::timeout(CLOSE_GRACE, stream.shutdown()).await;
            drop(guard);
        }
    }
}

/// How the set-up of a connection ended.
#[allow(clippy::large_enum_variant)] // as for `Outcome`
enum Opened<S: LeanIo, D> {
    /// The response head is written: stream the client's events.
    Streaming(S::Writer, ClientStream),
    /// The request was refused with a complete response.
    Answered(S),
    /// The socket failed.
    Gone,
    /// Not for this path.
    Declined(D),
}

async fn open_plain(
    state: &HttpState,
    mut stream: GuardedStream,
    max_head: usize,
    wait: Duration,
) -> Opened<GuardedStream, Replay<GuardedStream>> {
    let deadline = tokio::time::Instant::now() + wait;
    let (head_len, request) = match peek_head(state, &stream, max_head, wait).await {
        Some(Head::Take(len, request)) => (len, Some(request)),
        Some(Head::BadRequestLine(len)) => (len, None),
        Some(Head::TooLarge(origin)) => {
            return refuse_too_large(state, stream, max_head, origin).await;
        }
        Some(Head::Malformed(part)) => {
            return refuse_malformed(state, stream, part, max_head).await;
        }
        // The rest of the head is on its way: peeking again would only
        // see the same bytes, so it is read as a TLS head is.
        Some(Head::Incomplete) => return read_head(state, stream, max_head, deadline, true).await,
        _ => return Opened::Declined(Replay::unread(stream)),
    };
    // The head was only peeked at: take it off the socket now.
    let mut head = vec![0u8; head_len];
    if stream.read_exact(&mut head).await.is_err() {
        return Opened::Gone;
    }
    drop(head);
    match request {
        Some(request) => answer(state, stream, request).await,
        None => refuse_request_line(state, stream).await,
    }
}

/// Answers a request line HTTP does not allow with 400 and why.
async fn refuse_request_line<S: LeanIo, D>(state: &HttpState, stream: S) -> Opened<S, D> {
    let (parts, body) = http::reject(state.node(), http::ApiError::bad_request_line()).into_parts();
    write_whole_response(stream, &parts, body).await
}

/// Answers a request head over the bounds with 431 and why, where hyper
/// would answer without a word. A browser's head grows past the bound with
/// its cookie jar: the answer carries the CORS headers of the `Origin` it
/// gave (`origin`), so that a page on another origin can read why.
async fn refuse_too_large<S: LeanIo, D>(
    state: &HttpState,
    stream: S,
    max_head: usize,
    origin: Option<HeaderValue>,
) -> Opened<S, D> {
    let error = http::ApiError::request_head_too_large(state.node());
    let mut response = http::reject(state.node(), error);
    if let Some(origin) = origin {
        let mut request = Request::new(());
        request.headers_mut().insert(header::ORIGIN, origin);
        response = with_cors(state, request, response).await;
    }
    refuse_unread(stream, response, max_head).await
}

/// The value of the `Origin` header among the whole lines of `head`, a
/// request head that may be cut short (a line cut short may hold part of a
/// value); `None` without one, or with one that is no header value.
fn origin_of(head: &[u8]) -> Option<HeaderValue> {
    let whole_lines = &head[..head.iter().rposition(|&byte| byte == b'\n')?];
    whole_lines
        .split(|&byte| byte == b'\n')
        .skip(1)
        .find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&byte| byte == b':')?);
            if !name.eq_ignore_ascii_case(b"origin") {
                return None;
            }
            HeaderValue::from_bytes(value[1..].trim_ascii()).ok()
        })
}

/// Answers a request head HTTP/1.1 cannot read with 400 and which part of
/// it is wrong, where hyper would answer without a word.
async fn refuse_malformed<S: LeanIo, D>(
    state: &HttpState,
    stream: S,
    part: http::MalformedPart,
    max_head: usize,
) -> Opened<S, D> {
    let response = http::reject(state.node(), http::ApiError::malformed_head(part));
    refuse_unread(stream, response, max_head).await
}

/// Writes a refusal of a head this path did not take off the socket and
/// closes. The client may still be sending its head: what it sends is read
/// and dropped, for a moment at most, so that closing with its bytes unread
/// does not reset the connection before it reads the answer.
async fn refuse_unread<S: LeanIo, D>(
    mut stream: S,
    response: Response,
    max_head: usize,
) -> Opened<S, D> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut out = encode_head(&parts, Some(body.len()));
    out.extend_from_slice(&body);
    let mut sink = vec![0u8; max_head.clamp(1024, 16 * 1024)];
    let drained = tokio::time::timeout(CLOSE_GRACE, async {
        // What has come so far goes first: a client that writes its
        // whole head before reading would otherwise never read.
        if stream.write_all(&out).await.is_err() {
            return;
        }
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let _ = drained.await;
    Opened::Gone
}

/// Writes a refusal, head and body; the connection ends after it.
async fn write_whole_response<S: LeanIo, D>(
    mut stream: S,
    parts: &Parts,
    body: Body,
) -> Opened<S, D> {
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut out = encode_head(parts, Some(body.len()));
    out.extend_from_slice(&body);
    let _ = stream.write_all(&out).await;
    Opened::Answered(stream)
}

/// Peeks at the request head; says what this path makes of it, `None`
/// when no head came in time.
async fn peek_head(
    state: &HttpState,
    stream: &GuardedStream,
    max_head: usize,
    wait: Duration,
) -> Option<Head> {
    let tcp = stream.tcp();
    tokio::time::timeout(wait, tcp.readable())
        .await
        .ok()?
        .ok()?;
    let mut buf = vec![0u8; max_head];
    let peeked = tcp.peek(&mut buf).await.ok()?;
    match parse_head(state, &buf[..peeked], true) {
        // The whole bound came and no head ended in it.
        Head::Incomplete if peeked == max_head => Some(Head::TooLarge(origin_of(&buf[..peeked]))),
        head => Some(head),
    }
}

async fn open_tls(
    state: &HttpState,
    stream: TlsStream<GuardedStream>,
    max_head: usize,
    wait: Duration,
) -> Opened<TlsStream<GuardedStream>, Replay<TlsStream<GuardedStream>>> {
    // A TLS connection here agreed on HTTP/1.1 or on nothing: the
    // HTTP/2 preface is no way to open it, and hyper, serving it HTTP/1.1,
    // would close it without a word.
    read_head(
        state,
        stream,
        max_head,
        tokio::time::Instant::now() + wait,
        false,
    )
    .await
}

/// Reads the request head off `stream` until it is whole, then answers it
/// or declines it with the bytes read.
async fn read_head<S: LeanIo>(
    state: &HttpState,
    mut stream: S,
    max_head: usize,
    deadline: tokio::time::Instant,
    preface_to_hyper: bool,
) -> Opened<S, Replay<S>> {
    // Grown as bytes come, up to `max_head`: most heads are a few hundred
    // bytes, and this buffer is gone once the stream is open.
    let mut buf = BytesMut::with_capacity(max_head.min(1024));
    loop {
        let room = max_head - buf.len();
        if room == 0 {
            let origin = origin_of(&buf);
            drop(buf);
            return refuse_too_large(state, stream, max_head, origin).await;
        }
        let mut limited = (&mut stream).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Opened::Gone,
            Ok(Ok(_)) => {}
            Err(_) => {
                // Slow or silent after the first byte (or the handshake):
                // hyper's header timer would only start again, so the
                // connection ends here.
                state.node().metrics().limit_hit("header_read_timeout");
                debug!("connection closed: no whole request head within the header timeout");
                return Opened::Gone;
            }
        }
        match parse_head(state, &buf, preface_to_hyper) {
            Head::Incomplete => continue,
            Head::Decline => return Opened::Declined(Replay::new(buf.freeze(), stream)),
            Head::Take(_, request) => {
                // Bytes after the head (a pipelined request) are not read:
                // the stream's response ends only when the connection does.
                drop(buf);
                return answer(state, stream, request).await;
            }
            Head::BadRequestLine(_) => return refuse_request_line(state, stream).await,
            Head::TooLarge(origin) => {
                drop(buf);
                return refuse_too_large(state, stream, max_head, origin).await;
            }
            Head::Malformed(part) => {
                return refuse_malformed(state, stream, part, max_head).await;
            }
        }
    }
}

/// What a request head says to this path.
#[allow(clippy::large_enum_variant)] // made once per connection, as `Outcome`
enum Head {
    /// More bytes are needed.
    Incomplete,
    /// Another kind of request: hyper serves it.
    Decline,
    /// An event stream request, with the head's length.
    Take(usize, Request<()>),
    /// An event stream request whose target HTTP does not allow, with the
    /// head's length: answered 400 here, with why.
    BadRequestLine(usize),
    /// A request head over `http.max_header_bytes` or `http.max_headers`,
    /// whatever it asks for: answered 431 here, with why, and with the
    /// CORS headers its `Origin` (among the bytes read) asks for.
    TooLarge(Option<HeaderValue>),
    /// A head HTTP/1.1 cannot read, whatever it asks for, with the part
    /// that is wrong: answered 400 here, with why.
    Malformed(http::MalformedPart),
}

/// Says what this path makes of `buf`; `preface_to_hyper` where hyper
/// serves HTTP/2 with prior knowledge (a cleartext connection).
fn parse_head(state: &HttpState, buf: &[u8], preface_to_hyper: bool) -> Head {
    // `http.max_headers` bounds this path as it bounds hyper.
    let mut raw_headers = vec![httparse::EMPTY_HEADER; state.node().config().http.max_headers];
    let mut parsed = httparse::Request::new(&mut raw_headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Incomplete,
        Err(httparse::Error::TooManyHeaders) => return Head::TooLarge(origin_of(buf)),
        Err(error) => {
            return target_with_control_bytes(buf)
                .unwrap_or_else(|| malformed(buf, error, preface_to_hyper));
        }
    };
    let hosts = parsed
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("host"))
        .map(|header| header.value);
    if http::host_is_wrong(parsed.version == Some(1), hosts) {
        return Head::Malformed(http::MalformedPart::Host);
    }
    if http::body_framing_is_wrong(parsed.headers.iter().map(|h| (h.name, h.value))) {
        return Head::Malformed(http::MalformedPart::BodyFraming);
    }
    if parsed.method == Some("GET")
        && let Some(target) = parsed.path
        && target.starts_with("/v1/events")
        && target.parse::<axum::http::Uri>().is_err()
    {
        // hyper would answer 400 with no word of why.
        return Head::BadRequestLine(head_len);
    }
    match to_request(&parsed) {
        Some(request) => {
            debug!("serving an event stream on the lean path");
            Head::Take(head_len, request)
        }
        None => Head::Decline,
    }
}

/// An event stream request whose target holds a control byte or DEL,
/// which the parser refuses (hyper would answer 400 with no word of why):
/// answered as any target HTTP does not allow. `None` for anything else,
/// a bad header among it, or a head not all in yet.
fn target_with_control_bytes(buf: &[u8]) -> Option<Head> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let target = buf[..line_end].strip_prefix(b"GET /v1/events")?;
    let target = target
        .strip_suffix(b" HTTP/1.1")
        .or(target.strip_suffix(b" HTTP/1.0"))?;
    if !target.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return None;
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(Head::BadRequestLine(head_end + 4))
}

/// What to make of a head the parser refused: the HTTP/2 preface (h2c
/// with prior knowledge) goes to hyper when `preface_to_hyper`, else is
/// answered 400 once its request line is in (read on until then); anything else is answered
/// 400 here with the part that is wrong, as hyper would answer it 400
/// without one.
fn malformed(buf: &[u8], error: httparse::Error, preface_to_hyper: bool) -> Head {
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";
    if buf.starts_with(H2_PREFACE) || H2_PREFACE.starts_with(buf) {
        return if preface_to_hyper {
            Head::Decline
        } else if buf.starts_with(H2_PREFACE_LINE) {
            Head::Malformed(http::MalformedPart::Http2WithoutAlpn)
        } else {
            Head::Incomplete
        };
    }
    let in_request_line = buf
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .is_none_or(|line_end| {
            // The parser stops at the first bad byte; a request line that
            // ends well puts the error in the headers.
            httparse::Request::new(&mut [])
                .parse(&buf[..line_end + 2])
                .is_err()
        });
    Head::Malformed(match error {
        _ if in_request_line => http::MalformedPart::RequestLine,
        httparse::Error::HeaderName => http::MalformedPart::HeaderName,
        httparse::Error::HeaderValue => http::MalformedPart::HeaderValue,
        _ => http::MalformedPart::LineEnd,
    })
}

/// The request as `http` types, if it is an event stream request.
fn to_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    if parsed.method != Some("GET") {
        return None;
    }
    let target = parsed.path?;
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/v1/events" {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(target)
        .body(())
        .ok()?;
    let headers = request.headers_mut();
    headers.reserve(parsed.headers.len());
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(header.value).ok()?;
        headers.append(name, value);
    }
    // An `Upgrade` (curl's `--http2` asks for h2c in cleartext) is ignored,
    // as HTTP allows and as hyper would: the stream goes on in HTTP/1.1.
    Some(request)
}

/// Validates the request as the router does, and writes the answer.
async fn answer<S: LeanIo, D>(
    state: &HttpState,
    mut stream: S,
    request: Request<()>,
) -> Opened<S, D> {
    let node = state.node();
    let query = request.uri().query().unwrap_or("");
    let (response, client) = match http::prepare_stream(state, request.headers(), query).await {
        Ok(client) => (http::stream_response(Body::empty()), Some(client)),
        Err(error) => (http::reject(node, error), None),
    };
    let (parts, body) = with_cors(state, request, response).await.into_parts();
    match client {
        Some(client) => {
            let head = encode_head(&parts, None);
            drop(parts);
            if stream.write_all(&head).await.is_err() || stream.flush().await.is_err() {
                return Opened::Gone;
            }
            match stream.into_writer() {
                Ok(writer) => {
                    http::served_by(node, "lean");
                    Opened::Streaming(writer, client)
                }
                Err(why) => {
                    // The client reconnects and resumes elsewhere.
                    warn!(why, "an event stream could not go on after its head");
                    Opened::Gone
                }
            }
        }
        None => write_whole_response(stream, &parts, body).await,
    }
}

/// `response` as the router would send it: through the CORS layer, when
/// one is configured.
async fn with_cors(state: &HttpState, request: Request<()>, response: Response) -> Response {
    let Some(cors) = state.cors() else {
        return response;
    };
    let mut response = Some(response);
    let answer = service_fn(move |_: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(response.take().unwrap_or_default()))
    });
    match cors.layer(answer).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The status line and headers of a response closed by `Connection: close`,
/// with its `Content-Length` when it has a body.
fn encode_head(parts: &Parts, content_length: Option<usize>) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == "content-length" || name == "connection" {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(length) = content_length {
        out.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

/// A stream that yields `buffered` before reading `inner`: what hyper gets
/// of a connection whose head the lean path has read and declined.
pub struct Replay<S> {
    buffered: Bytes,
    inner: S,
}

impl<S> Replay<S> {
    fn new(buffered: Bytes, inner: S) -> Self {
        Self { buffered, inner }
    }

    /// A connection nothing was read from.
    pub fn unread(inner: S) -> Self {
        Self::new(Bytes::new(), inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.buffered.has_remaining() {
            let n = self.buffered.len().min(buf.remaining());
            buf.put_slice(&self.buffered[..n]);
            self.buffered.advance(n);
            if !self.buffered.has_remaining() {
                // Release the head's buffer for the connection's life.
                self.buffered = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_of_a_head_cut_short_is_read_from_whole_lines_only() {
        let head = b"GET /v1/events?topic=a HTTP/1.1\r\nHost: x\r\norigin:  https://app.example \r\nCookie: a=b";
        assert_eq!(
            origin_of(head).as_ref().map(HeaderValue::as_bytes),
            Some(&b"https://app.example"[..])
        );
        assert_eq!(
            origin_of(b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: https://app.ex"),
            None
        );
        assert_eq!(
            origin_of(b"GET / HTTP/1.1\r\nHost: x\r\nX-Origin: y\r\n"),
            None
        );
        // The request line is no header.
        assert_eq!(origin_of(b"Origin: y\r\n"), None);
    }

    #[tokio::test]
    async fn replay_yields_the_buffered_bytes_then_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut replay = Replay::new(Bytes::from_static(b"GET / HTTP/1.1\r\n"), server);
        client.write_all(b"Host: a\r\n\r\n").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    /// The part a refused head names, as the parser refuses it.
    fn part_of(head: &[u8]) -> Option<http::MalformedPart> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let error = httparse::Request::new(&mut headers)
            .parse(head)
            .expect_err("a head the parser refuses");
        match malformed(head, error, true) {
            Head::Malformed(part) => Some(part),
            _ => None,
        }
    }

    /// Over TLS, on a connection that agreed on HTTP/1.1 or on nothing, the
    /// HTTP/2 preface is answered 400 once its request line is in, rather
    /// than handed to hyper, which would close the connection unanswered.
    #[test]
    fn the_http2_preface_without_alpn_h2_is_answered_400() {
        for head in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n",
        ] {
            let error = httparse::Request::new(&mut [httparse::EMPTY_HEADER; 4])
                .parse(head)
                .expect_err("a head the parser refuses");
            assert!(
                matches!(
                    malformed(head, error, false),
                    Head::Malformed(http::MalformedPart::Http2WithoutAlpn)
                ),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        // Not all of its request line yet: more bytes are read first.
        let error = httparse::Request::new(&mut [])
            .parse(b"PRI * HTTP/2")
            .expect_err("a head the parser refuses");
        assert!(matches!(
            malformed(b"PRI * HTTP/2", error, false),
            Head::Incomplete
        ));
    }

    #[test]
    fn a_refused_head_names_its_wrong_part_and_the_http2_preface_goes_to_hyper() {
        use http::MalformedPart::*;
        for (head, part) in [
            (
                &b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n"[..],
                Some(HeaderValue),
            ),
            (
                b"GET / HTTP/1.1\r\nX-A: a\r\n folded\r\n\r\n",
                Some(HeaderName),
            ),
            (b"GET / HTTP/1.1\r\nX A: a\r\n\r\n", Some(HeaderName)),
            (
                b"GET / HTTP/1.1\r\nX-A: a\rX-B: b\r\n\r\n",
                Some(HeaderValue),
            ),
            (b"GET / HTTP/1.1\r\nX-A: a\r\n\rX", Some(LineEnd)),
            (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", Some(RequestLine)),
            (b"GET /\r\n\r\n", Some(RequestLine)),
            (b"G(T / HTTP/1.1\r\n", Some(RequestLine)),
            (
                b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
                Some(RequestLine),
            ),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                Some(RequestLine),
            ),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", None),
        ] {
            assert_eq!(part_of(head), part, "{}", String::from_utf8_lossy(head));
        }
    }
}
