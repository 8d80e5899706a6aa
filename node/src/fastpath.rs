//! The lean path for SSE over plain HTTP/1.1.
//!
//! Most connections a node holds are long, mostly idle HTTP/1.1 event
//! streams. Served through hyper, each keeps hyper's read and write buffers
//! and connection state for its whole life. This path answers them with
//! much less: it peeks at the request head without consuming it, and when
//! the head is complete and asks for `GET /v1/events` (with no `Origin`
//! header when CORS is configured), it validates it exactly as the router
//! does ([`http::prepare_stream`]), writes the response head itself and
//! then writes the client's frames straight to the socket. The response is
//! delimited by closing the connection (`Connection: close`), so no chunked
//! framing is added to each event.
//!
//! Anything else — another path or method, HTTP/2 (h2c), a head split over
//! several packets, a cross-origin request — is left unread and handed to
//! hyper, which serves it as before.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use crate::{
    connection::GuardedStream,
    delivery::ClientStream,
    http::{self, HttpState, STREAM_HEADERS},
};

/// How long the socket may take to close after the last frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What became of a connection.
// Made once per connection and moved once: boxing the large variant would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// Served to the end here.
    Served,
    /// The response head is written: [`Streaming::run`] writes the events.
    Streaming(Streaming),
    /// Not an SSE request this path takes: serve it normally.
    Declined(GuardedStream),
}

/// Serves the connection if its first request is an HTTP/1.x SSE request.
pub async fn serve(
    state: &HttpState,
    stream: GuardedStream,
    max_head: usize,
    wait: Duration,
) -> Outcome {
    // The set-up is boxed: its futures are large and short-lived.
    match Box::pin(open(state, stream, max_head, wait)).await {
        Opened::Streaming(stream, client) => Outcome::Streaming(Streaming { stream, client }),
        Opened::Answered(stream) => {
            close(stream).await;
            Outcome::Served
        }
        Opened::Gone => Outcome::Served,
        Opened::Declined(stream) => Outcome::Declined(stream),
    }
}

/// An event stream whose response head is written.
pub struct Streaming {
    stream: GuardedStream,
    client: ClientStream,
}

impl Streaming {
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
            while let Some(chunk) = client.next_chunk_watching(Some(stream.tcp())).await {
                if let Err(error) = stream.write_all(&chunk).await {
                    if error.kind() == std::io::ErrorKind::TimedOut {
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
enum Opened {
    /// The response head is written: stream the client's events.
    Streaming(GuardedStream, ClientStream),
    /// The request was refused with a complete response.
    Answered(GuardedStream),
    /// The socket failed.
    Gone,
    /// Not for this path.
    Declined(GuardedStream),
}

async fn open(
    state: &HttpState,
    mut stream: GuardedStream,
    max_head: usize,
    wait: Duration,
) -> Opened {
    let Some((head_len, headers, query)) = read_head(state, &stream, max_head, wait).await else {
        return Opened::Declined(stream);
    };
    let node = state.node();
    let prepared = http::prepare_stream(state, &headers, &query).await;
    // Nothing below reads the request again.
    drop((headers, query));
    // The head was only peeked at: take it off the socket now.
    let mut head = vec![0u8; head_len];
    if stream.read_exact(&mut head).await.is_err() {
        return Opened::Gone;
    }
    match prepared {
        Err(error) => {
            let response = http::reject(node, error);
            let _ = write_response(&mut stream, response).await;
            Opened::Answered(stream)
        }
        Ok(client) => {
            let mut head = BytesMut::with_capacity(160);
            head.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            for (name, value) in STREAM_HEADERS {
                head.extend_from_slice(name.as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(value.as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"connection: close\r\n\r\n");
            if stream.write_all(&head).await.is_err() {
                return Opened::Gone;
            }
            Opened::Streaming(stream, client)
        }
    }
}

async fn close(mut stream: GuardedStream) {
    let _ = tokio::time::timeout(CLOSE_GRACE, stream.shutdown()).await;
}

/// Peeks at the request head; returns its length, headers and query string
/// if this path should serve it.
async fn read_head(
    state: &HttpState,
    stream: &GuardedStream,
    max_head: usize,
    wait: Duration,
) -> Option<(usize, HeaderMap, String)> {
    let tcp = stream.tcp();
    tokio::time::timeout(wait, tcp.readable())
        .await
        .ok()?
        .ok()?;
    let mut buf = vec![0u8; max_head];
    let peeked = tcp.peek(&mut buf).await.ok()?;
    // `http.max_headers` bounds this path as it bounds hyper: a head with
    // more fields fails to parse here and is handed to hyper, which answers
    // 431 and counts it.
    let mut raw_headers = vec![httparse::EMPTY_HEADER; state.node().config().http.max_headers];
    let mut request = httparse::Request::new(&mut raw_headers);
    let httparse::Status::Complete(head_len) = request.parse(&buf[..peeked]).ok()? else {
        return None;
    };
    if request.method != Some("GET") {
        return None;
    }
    let target = request.path?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/v1/events" {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(header.value).ok()?;
        headers.append(name, value);
    }
    if headers.contains_key("upgrade") {
        return None;
    }
    if headers.contains_key("origin") && !state.node().config().cors.allowed_origins.is_empty() {
        // Cross-origin answers need the CORS layer's headers.
        return None;
    }
    debug!("serving an event stream on the fast path");
    Some((head_len, headers, query.to_owned()))
}

async fn write_response(
    stream: &mut GuardedStream,
    response: axum::response::Response,
) -> std::io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut out = BytesMut::with_capacity(256 + body.len());
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
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    stream.write_all(&out).await
}
