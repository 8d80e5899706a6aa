//! An incremental `text/event-stream` reader, following the HTML spec.
//!
//! Unlike `eventsource-stream`, it reports the last event id after every
//! blank line, also for id-only frames. A node sends such a frame with the
//! current cursor right after the headers, so a tail whose node dies before
//! any event still resumes from the moment it connected.

/// Longest line accepted: a node's largest event plus room; anything longer
/// is not a stream from a node.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The last event id when it was dispatched.
    pub id: String,
    /// The event name; `message` when none was given.
    pub event: String,
    /// Data lines joined with `\n`.
    pub data: String,
}

/// What a chunk of bytes produced, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An event with data.
    Event(Event),
    /// A blank line without data changed the last event id (an id-only
    /// frame).
    Id(String),
}

/// The reader's state between chunks.
#[derive(Debug, Default)]
pub struct Reader {
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting the next one
    /// belongs to the same line ending.
    after_cr: bool,
    data: String,
    has_data: bool,
    event: String,
    id_buffer: String,
    last_id: String,
}

/// The stream broke the format.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A line longer than [`MAX_LINE_BYTES`].
    #[error("a line is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    /// A line that is not UTF-8.
    #[error("a line is not UTF-8")]
    NotUtf8,
}

impl Reader {
    /// A reader whose last event id starts as `id` (a resume).
    pub fn starting_at(id: &str) -> Self {
        Self {
            id_buffer: id.to_owned(),
            last_id: id.to_owned(),
            ..Self::default()
        }
    }

    /// The id a reconnect should send: the last one a blank line committed.
    pub fn last_event_id(&self) -> &str {
        &self.last_id
    }

    /// Feeds bytes; returns what they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Item>, ReadError> {
        let mut items = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    let line = String::from_utf8(line).map_err(|_| ReadError::NotUtf8)?;
                    if let Some(item) = self.line_done(&line) {
                        items.push(item);
                    }
                }
                _ => {
                    if self.line.len() >= MAX_LINE_BYTES {
                        return Err(ReadError::LineTooLong);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(items)
    }

    fn line_done(&mut self, line: &str) -> Option<Item> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_owned(),
            "id" if !value.contains('\0') => self.id_buffer = value.to_owned(),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Item> {
        let id_changed = self.last_id != self.id_buffer;
        self.last_id.clone_from(&self.id_buffer);
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            self.data.clear();
            return id_changed.then(|| Item::Id(self.last_id.clone()));
        }
        self.has_data = false;
        Some(Item::Event(Event {
            id: self.last_id.clone(),
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data: std::mem::take(&mut self.data),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_frames_split_anywhere() {
        let body = b": ok\n\nretry: 1000\n\nid: t:a:5\n\nevent: tick\nid: t:a:6\ndata: one\r\ndata: two\r\n\r\nid: t:a:7\ndata: x\r\r";
        for split in 0..body.len() {
            let mut reader = Reader::default();
            let mut items = reader.feed(&body[..split]).unwrap();
            items.extend(reader.feed(&body[split..]).unwrap());
            assert_eq!(
                items,
                vec![
                    Item::Id("t:a:5".into()),
                    Item::Event(Event {
                        id: "t:a:6".into(),
                        event: "tick".into(),
                        data: "one\ntwo".into()
                    }),
                    Item::Event(Event {
                        id: "t:a:7".into(),
                        event: "message".into(),
                        data: "x".into()
                    }),
                ],
                "split at {split}"
            );
            assert_eq!(reader.last_event_id(), "t:a:7");
        }
    }

    #[test]
    fn an_unfinished_event_does_not_move_the_id() {
        let mut reader = Reader::starting_at("t:a:1");
        let items = reader.feed(b"id: t:a:2\ndata: half").unwrap();
        assert!(items.is_empty());
        assert_eq!(reader.last_event_id(), "t:a:1");
    }
}
