//! What the fuzz targets share: the SSE parser that follows the HTML spec,
//! from `sse-protocol`, to check that encoded frames read back as intended.

pub use sse_protocol::event_stream::{ParsedEvent as Parsed, parse_event_stream as parse_sse};
