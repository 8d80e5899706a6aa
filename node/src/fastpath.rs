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
    http::{self, HttpState, STREAM_HEADERS},
};

/// How long the socket may take to close after the last frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What became of a connection.
pub enum Outcome {
    /// Served to the end here.
    Served,
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
    // The set-up futures are boxed: they are large and short-lived, and held
    // inline they would size the task of every connection for its whole life.
    let Some((head_len, headers, query)) =
        Box::pin(read_head(state, &stream, max_head, wait)).await
    else {
        return Outcome::Declined(stream);
    };
    let node = state.node();
    let prepared = Box::pin(http::prepare_stream(state, &headers, &query)).await;
    // Nothing below reads the request again: free it rather than hold it
    // for the stream's life.
    drop((headers, query));
    let mut stream = stream;
    // The head was only peeked at: take it off the socket now.
    let mut head = vec![0u8; head_len];
    if stream.read_exact(&mut head).await.is_err() {
        return Outcome::Served;
    }
    drop(head);
    match prepared {
        Err(error) => {
            let response = http::reject(node, error);
            let _ = Box::pin(write_response(&mut stream, response)).await;
        }
        Ok(mut client) => {
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
                return Outcome::Served;
            }
            drop(head);
            while let Some(chunk) = client.next_chunk_watching(Some(stream.tcp())).await {
                if let Err(error) = stream.write_all(&chunk).await {
                    if error.kind() == std::io::ErrorKind::TimedOut {
                        client.mark_slow();
                    }
                    break;
                }
            }
            drop(client);
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, stream.shutdown()).await;
    Outcome::Served
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
