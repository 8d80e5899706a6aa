//! The client side of an SSE response, parsed with as little state as
//! possible: the HTTP response head, the chunked transfer coding, and the
//! `text/event-stream` lines.
//!
//! A connection feeds raw socket bytes to [`Body::decode`], which appends
//! the de-chunked body to a buffer; [`Parser::feed`] then consumes the
//! complete lines of that buffer and reports each event. Only what the
//! benchmark needs is kept: the first `data:` line of an event (parsed as
//! the payload's counter and timestamp), the last `id:` and the `retry:`
//! hint.

/// The parsed status line and headers of a response.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// HTTP status code.
    pub status: u16,
    /// Whether the body uses the chunked transfer coding.
    pub chunked: bool,
    /// `Content-Length`, if given.
    pub content_length: Option<usize>,
    /// Whether the server closes the connection after this response
    /// (`Connection: close`).
    pub close: bool,
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

/// Parses a response head at the start of `buf`; `None` until it is
/// complete or if it is not HTTP.
pub fn parse_head(buf: &[u8]) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut chunked = false;
    let mut content_length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value
                .split(',')
                .any(|option| option.trim().eq_ignore_ascii_case("close"));
        }
    }
    Some(Head {
        status,
        chunked,
        content_length,
        close,
        len: end + 4,
    })
}

/// The body's transfer coding and where the decoder stands in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Bytes as they come, until the connection closes.
    Identity,
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk, with this many bytes left.
    ChunkData(usize),
    /// Expecting the CRLF after a chunk.
    ChunkEnd,
    /// The last chunk was read.
    Done,
}

impl Body {
    /// The decoder for a response with this head.
    pub fn for_head(head: &Head) -> Self {
        if head.chunked {
            Self::ChunkSize
        } else {
            Self::Identity
        }
    }

    /// Decodes what it can of `input`, appending body bytes to `out`;
    /// returns how many input bytes were consumed. Unconsumed bytes must be
    /// offered again with more behind them.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, &'static str> {
        let mut i = 0;
        loop {
            match *self {
                Self::Identity => {
                    out.extend_from_slice(&input[i..]);
                    return Ok(input.len());
                }
                Self::Done => return Ok(i),
                Self::ChunkSize => {
                    let Some(nl) = input[i..].iter().position(|&b| b == b'\n') else {
                        return if input.len() - i > 64 {
                            Err("chunk size line too long")
                        } else {
                            Ok(i)
                        };
                    };
                    let line = &input[i..i + nl];
                    let hex = line
                        .split(|&b| b == b';' || b == b'\r')
                        .next()
                        .unwrap_or_default();
                    let hex = std::str::from_utf8(hex).map_err(|_| "bad chunk size")?;
                    let size =
                        usize::from_str_radix(hex.trim(), 16).map_err(|_| "bad chunk size")?;
                    i += nl + 1;
                    *self = if size == 0 {
                        Self::Done
                    } else {
                        Self::ChunkData(size)
                    };
                }
                Self::ChunkData(left) => {
                    let n = left.min(input.len() - i);
                    if n == 0 {
                        return Ok(i);
                    }
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    *self = if n == left {
                        Self::ChunkEnd
                    } else {
                        Self::ChunkData(left - n)
                    };
                }
                Self::ChunkEnd => {
                    if input.len() - i < 2 {
                        return Ok(i);
                    }
                    if &input[i..i + 2] != b"\r\n" {
                        return Err("chunk not followed by CRLF");
                    }
                    i += 2;
                    *self = Self::ChunkSize;
                }
            }
        }
    }
}

/// One event as the benchmark sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A benchmark payload: the publisher's per-subject counter and the
    /// publish time in microseconds since the Unix epoch.
    Payload {
        /// Per-subject counter, from 1.
        counter: u64,
        /// Publish time, µs since the epoch.
        sent_us: u64,
        /// Which of a stream's topics the counter counts in, for streams
        /// that read events of several (`--spread-topics`); 0 otherwise.
        lane: usize,
    },
    /// An event with data that is not a benchmark payload, or a named event
    /// (`reset`, `invalid`).
    Other,
}

/// The event-stream parser of one connection.
#[derive(Debug, Default)]
pub struct Parser {
    pending: Option<Event>,
    named: bool,
    /// The last `id:` seen, sent back as `Last-Event-ID` on reconnect.
    pub last_id: Vec<u8>,
    /// The last `retry:` hint, ms.
    pub retry_ms: Option<u64>,
}

impl Parser {
    /// Consumes every complete line at the start of `body`, calling
    /// `on_event` for each dispatched event; leaves a partial line in place.
    pub fn feed(&mut self, body: &mut Vec<u8>, mut on_event: impl FnMut(Event)) {
        let mut start = 0;
        while let Some(nl) = body[start..].iter().position(|&b| b == b'\n') {
            let mut line = &body[start..start + nl];
            start += nl + 1;
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if line.is_empty() {
                if let Some(event) = self.pending.take() {
                    on_event(if self.named { Event::Other } else { event });
                }
                self.named = false;
            } else if let Some(data) = line.strip_prefix(b"data:") {
                if self.pending.is_none() {
                    self.pending = Some(parse_payload(strip_space(data)));
                }
            } else if let Some(id) = line.strip_prefix(b"id:") {
                self.last_id.clear();
                self.last_id.extend_from_slice(strip_space(id));
            } else if let Some(name) = line.strip_prefix(b"event:") {
                self.named = strip_space(name) != b"message";
            } else if let Some(retry) = line.strip_prefix(b"retry:") {
                self.retry_ms = std::str::from_utf8(strip_space(retry))
                    .ok()
                    .and_then(|r| r.parse().ok());
            }
        }
        body.drain(..start);
    }
}

fn strip_space(value: &[u8]) -> &[u8] {
    value.strip_prefix(b" ").unwrap_or(value)
}

/// A data field as a benchmark payload, or [`Event::Other`].
pub fn parse_payload(data: &[u8]) -> Event {
    let mut parts = data.split(|&b| b == b' ');
    let mut number = || -> Option<u64> { std::str::from_utf8(parts.next()?).ok()?.parse().ok() };
    match (number(), number()) {
        (Some(counter), Some(sent_us)) => Event::Payload {
            counter,
            sent_us,
            // The padding after the numbers is never a number.
            lane: number().unwrap_or(0) as usize,
        },
        _ => Event::Other,
    }
}

/// The payload of the `counter`-th event of a subject, sent at `sent_us`,
/// padded with `x` to `size` bytes.
pub fn payload(counter: u64, sent_us: u64, size: usize) -> Vec<u8> {
    pad(format!("{counter} {sent_us} ").into_bytes(), size)
}

/// The payload of the `counter`-th event of lane `lane` (one of the
/// topics a stream reads), as [`payload`] otherwise.
pub fn payload_in_lane(counter: u64, sent_us: u64, lane: usize, size: usize) -> Vec<u8> {
    pad(format!("{counter} {sent_us} {lane} ").into_bytes(), size)
}

fn pad(mut out: Vec<u8>, size: usize) -> Vec<u8> {
    if out.len() < size {
        out.resize(size, b'x');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_says_whether_the_connection_closes_after_it() {
        let head = |extra: &str| {
            parse_head(format!("HTTP/1.1 200 OK\r\n{extra}content-length: 2\r\n\r\nok").as_bytes())
                .unwrap()
        };
        assert!(head("connection: close\r\n").close);
        assert!(head("Connection: keep-alive, Close\r\n").close);
        assert!(!head("connection: keep-alive\r\n").close);
        assert!(!head("").close);
        assert_eq!(head("").content_length, Some(2));
    }

    #[test]
    fn head_and_chunks_split_anywhere() {
        let events = b": ok\n\nretry: 1500\n\nid: t:e:0\n\ndata: 1 100 xx\nid: t:e:1\n\nevent: reset\ndata: {}\n\ndata: 2 200 xx\r\nid: t:e:2\r\n\r\n";
        let mut wire = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for part in events.chunks(7) {
            wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        for split in [1, 3, 5, 64, 4096] {
            let head = parse_head(&wire).unwrap();
            assert_eq!(head.status, 200);
            assert!(head.chunked);
            let mut body_state = Body::for_head(&head);
            let mut raw = Vec::new();
            let mut body = Vec::new();
            let mut parser = Parser::default();
            let mut seen = Vec::new();
            for piece in wire[head.len..].chunks(split) {
                raw.extend_from_slice(piece);
                let used = body_state.decode(&raw, &mut body).unwrap();
                raw.drain(..used);
                parser.feed(&mut body, |e| seen.push(e));
            }
            assert_eq!(body_state, Body::Done);
            assert_eq!(
                seen,
                vec![
                    Event::Payload {
                        counter: 1,
                        sent_us: 100,
                        lane: 0,
                    },
                    Event::Other,
                    Event::Payload {
                        counter: 2,
                        sent_us: 200,
                        lane: 0,
                    },
                ]
            );
            assert_eq!(parser.last_id, b"t:e:2");
            assert_eq!(parser.retry_ms, Some(1500));
        }
    }

    #[test]
    fn payload_round_trips() {
        let p = payload(42, 123456, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(
            parse_payload(&p),
            Event::Payload {
                counter: 42,
                sent_us: 123456,
                lane: 0,
            }
        );
        let p = payload_in_lane(7, 99, 2, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(
            parse_payload(&p),
            Event::Payload {
                counter: 7,
                sent_us: 99,
                lane: 2,
            }
        );
    }
}
