//! Any event name and payload encode to a frame that parses back to
//! exactly one event: the same data, or an `invalid` event.
//!
//! Input: the first byte picks whether a name is given; up to the first
//! 0xFF byte is the name (lossy UTF-8), the rest is the payload.
#![no_main]

use std::time::SystemTime;

use async_nats::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sse_node::event::{EVENT_NAME_HEADER, EncodeContext, Event};
use sse_node_fuzz::parse_sse;

fuzz_target!(|input: &[u8]| {
    let Some((&flag, rest)) = input.split_first() else {
        return;
    };
    let (name, payload) = match rest.iter().position(|b| *b == 0xff) {
        Some(i) if flag & 1 == 1 => (Some(String::from_utf8_lossy(&rest[..i])), &rest[i + 1..]),
        _ => (None, rest),
    };
    let mut headers = HeaderMap::new();
    if let Some(name) = &name {
        // NATS cannot carry CR or LF in a header value.
        let Ok(value) = name.parse::<HeaderValue>() else {
            return;
        };
        headers.insert(EVENT_NAME_HEADER, value);
    }
    let ctx = EncodeContext {
        topic: "t".into(),
        epoch: "e".into(),
        max_event_bytes: 1 << 16,
    };
    let event = Event::encode(
        &ctx,
        7,
        "t.x",
        SystemTime::UNIX_EPOCH,
        Some(&headers),
        payload,
    );
    let (events, fields) = parse_sse(&event.frame);
    assert_eq!(
        events.len(),
        1,
        "{:?}",
        String::from_utf8_lossy(&event.frame)
    );
    assert!(
        fields
            .iter()
            .all(|f| ["event", "data", "id"].contains(&f.as_str()))
    );
    let parsed = &events[0];
    assert_eq!(parsed.id, "t:e:7");
    match event.invalid {
        Some(_) => assert_eq!(parsed.event, "invalid"),
        None => {
            let text = std::str::from_utf8(payload).expect("a valid event is UTF-8");
            assert_eq!(parsed.data, text.replace("\r\n", "\n").replace('\r', "\n"));
            assert_eq!(parsed.event, name.as_deref().unwrap_or("message"));
        }
    }
});
