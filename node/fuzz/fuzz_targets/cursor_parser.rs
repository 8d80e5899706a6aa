//! The event-id parser never panics, and what it accepts prints back to an
//! id that parses to the same cursor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_protocol::Cursor;

fuzz_target!(|input: &str| {
    if let Ok(cursor) = Cursor::parse(input) {
        let printed = cursor.to_string();
        assert_eq!(Cursor::parse(&printed).as_ref(), Ok(&cursor), "{printed:?}");
    }
});
