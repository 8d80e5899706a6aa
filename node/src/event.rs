//! An event as read from JetStream, encoded once as an SSE frame.
//!
//! The frame is built when the event arrives and then shared, unchanged, by
//! every client that receives it: `event:` and `data:` lines, then the `id:`
//! line and the blank line that ends the frame. A client subscribed to one
//! topic writes the whole frame; a client of several topics writes the body
//! (everything before the `id:` line) and its own composite id.
//!
//! # Frame safety
//! Nothing a publisher controls can add a field or an event. The payload is
//! split into `data:` lines on every line ending the SSE spec knows (`\r\n`,
//! `\r`, `\n`). An event that cannot be sent as is becomes an `invalid`
//! event instead, whose data is JSON naming the reason, the subject path and
//! the sequence; see [`InvalidReason`]. The client's cursor still advances
//! past it, so nothing is silently skipped.

use std::time::SystemTime;

use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};

// The header names and the event-name limit are the contract with
// publishers and admin; they live in `sse_protocol::headers`.
pub use sse_protocol::headers::{
    EVENT_NAME_HEADER, INVALID_EVENT_NAME, MARKER_HEADER, MAX_EVENT_NAME_BYTES, RESET_EVENT_NAME,
    TRACEPARENT_HEADER, valid_event_name,
};
/// Name given to events whose publisher set none.
pub const DEFAULT_EVENT_NAME: &str = "message";

/// Why an event was replaced by an `invalid` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// The payload is not UTF-8.
    InvalidUtf8,
    /// The `Sse-Event` header holds a line break, a control character, or is
    /// too long or empty.
    BadEventName,
    /// The payload is larger than `delivery.max_event_bytes`.
    TooLarge,
    /// The message's header block cannot be read by NATS clients (a value
    /// that is not UTF-8, a name with a space): stored by a publisher that
    /// does not check what it sends, it would drop the node's NATS
    /// connection each time it is delivered, so it is read through
    /// JetStream's JSON API and replaced.
    BadHeaders,
    /// The message's NATS subject is not UTF-8 (the raw protocol, a Go
    /// client, take any bytes): delivering it drops the node's NATS
    /// connection as an unreadable header block does, and it is passed
    /// the same way.
    BadSubject,
}

impl InvalidReason {
    /// The reason as a metric label and as the `reason` field of the event.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidUtf8 => "invalid_utf8",
            Self::BadEventName => "bad_event_name",
            Self::TooLarge => "too_large",
            Self::BadHeaders => "bad_headers",
            Self::BadSubject => "bad_subject",
        }
    }
}

/// What every event of one topic incarnation shares when encoded.
#[derive(Debug, Clone)]
pub struct EncodeContext {
    /// The topic name, first part of the id.
    pub topic: String,
    /// The stream incarnation, second part of the id.
    pub epoch: String,
    /// Largest payload sent as is.
    pub max_event_bytes: usize,
}

/// Whether a stored message is one of JetStream's subject delete markers
/// (a stream with `subject_delete_marker_ttl`), which is not an event: it
/// has `Nats-Marker-Reason` and no data. A publisher's message that sends
/// that header with data is an event like any other, not dropped.
pub fn is_delete_marker(headers: Option<&async_nats::HeaderMap>, payload: &[u8]) -> bool {
    payload.is_empty() && headers.is_some_and(|h| h.get(MARKER_HEADER).is_some())
}

/// One event of one topic, encoded once.
#[derive(Debug)]
pub struct Event {
    /// JetStream stream sequence.
    pub seq: u64,
    /// Subject path within the topic: the NATS subject without the prefix.
    pub path: Box<str>,
    /// When JetStream stored it.
    pub published: SystemTime,
    /// The whole frame, ending in `id: <topic>:<epoch>:<seq>\n\n`.
    pub frame: Bytes,
    /// Length of the body: the frame up to its `id:` line.
    pub body_len: usize,
    /// Why the event was replaced, if it was.
    pub invalid: Option<InvalidReason>,
}

impl Event {
    /// Encodes an event of the topic described by `ctx`.
    pub fn encode(
        ctx: &EncodeContext,
        seq: u64,
        path: &str,
        published: SystemTime,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Self {
        let max_event_bytes = ctx.max_event_bytes;
        // Header names are matched as HTTP's are, whatever their case:
        // a publisher's `sse-event` is the event's name too. Of several
        // spellings, the exact one wins, else the least in byte order: the
        // map's own order is a hash's, and every node must name an event
        // alike.
        let name = headers.and_then(|h| {
            h.get(EVENT_NAME_HEADER)
                .or_else(|| {
                    h.iter()
                        .filter(|(n, _)| {
                            let n: &str = n.as_ref();
                            n.eq_ignore_ascii_case(EVENT_NAME_HEADER)
                        })
                        .min_by(|(a, _), (b, _)| {
                            let (a, b): (&str, &str) = (a.as_ref(), b.as_ref());
                            a.cmp(b)
                        })
                        .and_then(|(_, values)| values.first())
                })
                .map(|v| v.as_str())
        });
        let mut invalid = None;
        let mut buf = BytesMut::with_capacity(payload.len() + 64);
        if payload.len() > max_event_bytes {
            invalid = Some(InvalidReason::TooLarge);
        } else if name.is_some_and(|n| !valid_event_name(n)) {
            invalid = Some(InvalidReason::BadEventName);
        } else {
            match std::str::from_utf8(payload) {
                Ok(text) => {
                    if let Some(name) = name.filter(|n| *n != DEFAULT_EVENT_NAME) {
                        buf.put_slice(b"event: ");
                        buf.put_slice(name.as_bytes());
                        buf.put_u8(b'\n');
                    }
                    write_data_lines(&mut buf, text);
                }
                Err(_) => invalid = Some(InvalidReason::InvalidUtf8),
            }
        }
        if let Some(reason) = invalid {
            return Self::replaced(ctx, seq, path, published, reason);
        }
        Self::finish(ctx, seq, path, published, buf, None)
    }

    /// The `invalid` event that stands for a stored event that cannot be
    /// sent as it is, for `reason`.
    pub fn replaced(
        ctx: &EncodeContext,
        seq: u64,
        path: &str,
        published: SystemTime,
        reason: InvalidReason,
    ) -> Self {
        let mut buf = BytesMut::with_capacity(128);
        buf.put_slice(b"event: ");
        buf.put_slice(INVALID_EVENT_NAME.as_bytes());
        buf.put_slice(b"\ndata: ");
        let json = serde_json::json!({
            "reason": reason.as_str(),
            "subject": path,
            "seq": seq,
        });
        buf.put_slice(json.to_string().as_bytes());
        buf.put_u8(b'\n');
        Self::finish(ctx, seq, path, published, buf, Some(reason))
    }

    /// Ends `buf`, the frame's body, with its `id:` line.
    fn finish(
        ctx: &EncodeContext,
        seq: u64,
        path: &str,
        published: SystemTime,
        mut buf: BytesMut,
        invalid: Option<InvalidReason>,
    ) -> Self {
        let EncodeContext { topic, epoch, .. } = ctx;
        let body_len = buf.len();
        buf.put_slice(b"id: ");
        buf.put_slice(topic.as_bytes());
        buf.put_u8(b':');
        buf.put_slice(epoch.as_bytes());
        buf.put_u8(b':');
        buf.put_slice(seq.to_string().as_bytes());
        buf.put_slice(b"\n\n");
        Self {
            seq,
            path: path.into(),
            published,
            frame: buf.freeze(),
            body_len,
            invalid,
        }
    }

    /// The marker a feed broadcasts when the node starts draining; never
    /// written to a client. Real events have sequences from 1.
    pub fn drain_marker() -> Self {
        Self {
            seq: 0,
            path: "".into(),
            published: SystemTime::UNIX_EPOCH,
            frame: Bytes::new(),
            body_len: 0,
            invalid: None,
        }
    }

    /// Whether this is the drain marker.
    pub fn is_drain_marker(&self) -> bool {
        self.seq == 0
    }

    /// The frame without its `id:` line and terminating blank line.
    pub fn body(&self) -> Bytes {
        self.frame.slice(..self.body_len)
    }

    /// Bytes of memory this event holds, for the history bound.
    pub fn weight(&self) -> usize {
        self.frame.len() + self.path.len() + std::mem::size_of::<Self>()
    }
}

/// Writes `text` as `data:` lines, splitting on `\r\n`, `\r` and `\n`.
pub fn write_data_lines(buf: &mut BytesMut, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' | b'\r' => {
                buf.put_slice(b"data: ");
                buf.put_slice(&bytes[start..i]);
                buf.put_u8(b'\n');
                if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    buf.put_slice(b"data: ");
    buf.put_slice(&bytes[start..]);
    buf.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalid_reason_is_a_known_metric_label() {
        for reason in [
            InvalidReason::InvalidUtf8,
            InvalidReason::BadEventName,
            InvalidReason::TooLarge,
            InvalidReason::BadHeaders,
            InvalidReason::BadSubject,
        ] {
            // A new reason must be added to the list too, so its series
            // exists from start.
            match reason {
                InvalidReason::InvalidUtf8
                | InvalidReason::BadEventName
                | InvalidReason::TooLarge
                | InvalidReason::BadHeaders
                | InvalidReason::BadSubject => {}
            }
            assert!(
                crate::metrics::INVALID_EVENT_REASONS.contains(&reason.as_str()),
                "{}",
                reason.as_str()
            );
        }
    }

    fn encode(name: Option<&str>, payload: &[u8]) -> Event {
        let mut headers = HeaderMap::new();
        if let Some(name) = name {
            headers.insert(EVENT_NAME_HEADER, name);
        }
        let ctx = EncodeContext {
            topic: "t".into(),
            epoch: "e1".into(),
            max_event_bytes: 1024,
        };
        Event::encode(
            &ctx,
            7,
            "t.x",
            SystemTime::UNIX_EPOCH,
            Some(&headers),
            payload,
        )
    }

    fn text(e: &Event) -> String {
        String::from_utf8(e.frame.to_vec()).unwrap()
    }

    #[test]
    fn splits_every_line_ending() {
        let e = encode(Some("update"), b"a\nb\r\nc\rd\n");
        assert_eq!(
            text(&e),
            "event: update\ndata: a\ndata: b\ndata: c\ndata: d\ndata: \nid: t:e1:7\n\n"
        );
        assert_eq!(&e.body()[..], &e.frame[..e.body_len]);
        assert!(e.body().ends_with(b"data: \n"));
    }

    #[test]
    fn the_event_name_header_is_read_whatever_its_case() {
        let mut headers = HeaderMap::new();
        headers.insert("sse-event", "update");
        let ctx = EncodeContext {
            topic: "t".into(),
            epoch: "e1".into(),
            max_event_bytes: 1024,
        };
        let e = Event::encode(&ctx, 7, "t.x", SystemTime::UNIX_EPOCH, Some(&headers), b"x");
        assert_eq!(text(&e), "event: update\ndata: x\nid: t:e1:7\n\n");
        // Several spellings, none exact: the least in byte order, whatever
        // the order the map keeps them in (a hash's, per map).
        for _ in 0..32 {
            let mut headers = HeaderMap::new();
            headers.insert("sse-event", "lower");
            headers.insert("SSE-EVENT", "upper");
            headers.insert("Sse-event", "mixed");
            let e = Event::encode(&ctx, 7, "t.x", SystemTime::UNIX_EPOCH, Some(&headers), b"x");
            assert_eq!(text(&e), "event: upper\ndata: x\nid: t:e1:7\n\n");
        }
    }

    #[test]
    fn default_name_is_omitted_and_empty_payload_still_dispatches() {
        assert_eq!(text(&encode(None, b"")), "data: \nid: t:e1:7\n\n");
        assert_eq!(
            text(&encode(Some("message"), b"x")),
            "data: x\nid: t:e1:7\n\n"
        );
    }

    #[test]
    fn unsafe_events_become_invalid_events() {
        for (name, payload, reason) in [
            (Some("evil\u{b}data: x"), &b"ok"[..], "bad_event_name"),
            (Some("bell\u{7}"), b"ok", "bad_event_name"),
            (Some(&"n".repeat(200)), b"ok", "bad_event_name"),
            (Some(""), b"ok", "bad_event_name"),
            (None, b"\xff\xfe", "invalid_utf8"),
            (None, &[b'a'; 2000][..], "too_large"),
        ] {
            let e = encode(name, payload);
            let t = text(&e);
            assert!(t.starts_with("event: invalid\ndata: {"), "{t}");
            assert!(t.contains(reason), "{t}");
            assert_eq!(t.matches('\n').count(), 4, "{t}");
            assert!(e.invalid.is_some());
        }
    }
}
