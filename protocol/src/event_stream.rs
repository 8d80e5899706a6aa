//! The `text/event-stream` format as a browser reads it, for checking that
//! what the node writes parses back as intended (tests and fuzz targets).
//! It follows the HTML spec's rules: lines end at `\r\n`, `\r` or `\n`;
//! a blank line dispatches an event that has data; `id` updates the last
//! event id; comments are skipped.

/// One dispatched event.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedEvent {
    /// Event type; `message` when none was given.
    pub event: String,
    /// Data lines joined with `\n`.
    pub data: String,
    /// The last event id when it was dispatched.
    pub id: String,
}

/// Parses a `text/event-stream` body; returns the events and every field
/// name seen. Panics if the body does not end with a line ending, which an
/// encoded frame always does.
pub fn parse_event_stream(bytes: &[u8]) -> (Vec<ParsedEvent>, Vec<String>) {
    let text = std::str::from_utf8(bytes).expect("frames are UTF-8");
    let (mut events, mut fields) = (Vec::new(), Vec::new());
    let (mut event, mut data, mut id) = (String::new(), String::new(), String::new());
    let mut rest = text;
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                let name = if event.is_empty() {
                    "message".to_owned()
                } else {
                    std::mem::take(&mut event)
                };
                events.push(ParsedEvent {
                    event: name,
                    data: std::mem::take(&mut data),
                    id: id.clone(),
                });
            }
            event.clear();
            data.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        fields.push(field.to_owned());
        match field {
            "event" => event = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => id = value.to_owned(),
            _ => {}
        }
    }
    assert!(
        rest.is_empty(),
        "a frame ends without a line ending: {rest:?}"
    );
    (events, fields)
}
