//! Framing: the bytes of one client's stream. Events arrive encoded once
//! and shared; a lone frame is handed on without a copy, several are
//! gathered into one write, and the resume cursor (`id:`) is written for
//! clients of several topics.

use bytes::{BufMut, Bytes, BytesMut};
use sse_protocol::cursor::{write_position, write_position_prefix};
use tokio::time::Instant;

use super::{ClientStream, ClientTopic, PACED_WRITE_MAX, parked::CursorAround};
use crate::event::Event;

impl ClientStream {
    pub(super) fn write_cursor(&self, out: &mut BytesMut) {
        out.put_slice(b"id: ");
        self.write_id_value(out);
        out.put_slice(b"\n\n");
    }

    pub(super) fn write_id_value(&self, out: &mut BytesMut) {
        write_positions(out, &self.topics, None);
    }

    /// The `id:` line this stream writes after each event of the topic at
    /// `parked`, around that event's sequence, for its feed's writer to
    /// fill in while the stream is parked on it.
    pub(super) fn cursor_around(&self, parked: usize) -> CursorAround {
        let mut line = BytesMut::with_capacity(128);
        line.put_slice(b"id: ");
        let split = write_positions(&mut line, &self.topics, Some(parked));
        line.put_slice(b"\n\n");
        let line = String::from_utf8_lossy(&line);
        let (before, after) = line.split_at(split.unwrap_or(line.len()));
        CursorAround {
            before: before.into(),
            after: after.into(),
        }
    }

    /// Writes an event if it is new for this client and matches; returns
    /// whether it was written.
    pub(super) fn deliver(&mut self, index: usize, event: &Event, out: &mut BytesMut) -> bool {
        let topic = &mut self.topics[index];
        if event.seq <= topic.pos {
            return false;
        }
        topic.pos = event.seq;
        if !topic.matches(&event.path) {
            return false;
        }
        if self.single_topic {
            // A lone frame is handed on as is, without a copy; a second one
            // in the same write joins it in the buffer.
            if out.is_empty() && self.lone_frame.is_none() {
                self.lone_frame = Some(event.frame.clone());
            } else {
                if let Some(first) = self.lone_frame.take() {
                    out.put_slice(&first);
                }
                out.put_slice(&event.frame);
            }
        } else {
            out.put_slice(&event.frame[..event.body_len]);
            out.put_slice(b"id: ");
            self.write_id_value(out);
            out.put_slice(b"\n\n");
        }
        true
    }

    /// What a step wrote, if anything: a lone shared frame or the buffer.
    pub(super) fn take_output(&mut self, out: BytesMut) -> Option<Bytes> {
        let bytes = match self.lone_frame.take() {
            Some(frame) if out.is_empty() => frame,
            Some(frame) => {
                // Not reached: the buffer is only written after the lone frame
                // has been moved into it. Keep both, in order, regardless.
                let mut joined = BytesMut::with_capacity(frame.len() + out.len());
                joined.put_slice(&frame);
                joined.put_slice(&out);
                joined.freeze()
            }
            None if out.is_empty() => return None,
            None => out.freeze(),
        };
        let now = Instant::now();
        self.last_wrote = Some(now);
        self.pacer.record_write(now, bytes.len() >= PACED_WRITE_MAX);
        Some(bytes)
    }
}

/// Writes the positions of `topics`, comma-separated: the cursor. With
/// `open`, that topic's sequence is left out, and where it would go in
/// `out` is returned.
fn write_positions(
    out: &mut BytesMut,
    topics: &[ClientTopic],
    open: Option<usize>,
) -> Option<usize> {
    let mut split = None;
    for (i, t) in topics.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        let (topic, epoch) = (t.feed.topic.as_str(), &*t.feed.epoch);
        // Straight into the write buffer: a stream of several topics writes
        // its cursor with every event.
        if open == Some(i) {
            let _ = write_position_prefix(out, topic, epoch);
            split = Some(out.len());
        } else if let Some((held_epoch, last_seen)) = t
            .pending_reset
            .as_deref()
            .and_then(|reset| held_position(reset, epoch))
        {
            // The `reset` for the client's position on this topic waits
            // for the topic's turn in the catch-up (the topics before it
            // may take long): until then the cursor keeps that position,
            // so that a client back with it gets the `reset`, not the new
            // epoch's events as if nothing had happened.
            let _ = write_position(out, topic, held_epoch, last_seen);
        } else {
            let _ = write_position(out, topic, epoch, t.pos);
        }
    }
    split
}

/// The position a held `reset` is about: the epoch of the client's cursor
/// (`old_epoch`, for a stream recreated; else `epoch`, the stream's own)
/// and its sequence. `None` for a reset without `last_seen`.
fn held_position<'a>(reset: &'a serde_json::Value, epoch: &'a str) -> Option<(&'a str, u64)> {
    let last_seen = reset["last_seen"].as_u64()?;
    Some((reset["old_epoch"].as_str().unwrap_or(epoch), last_seen))
}

pub(super) fn write_reset_body(out: &mut BytesMut, data: &serde_json::Value) {
    out.put_slice(b"event: ");
    out.put_slice(crate::event::RESET_EVENT_NAME.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data.to_string().as_bytes());
    out.put_u8(b'\n');
}
