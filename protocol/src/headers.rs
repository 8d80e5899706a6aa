//! NATS message headers that publishers, admin and the nodes agree on, and
//! their limits.
//!
//! - [`EVENT_NAME_HEADER`] (`Sse-Event`): the SSE event name. At most
//!   [`MAX_EVENT_NAME_BYTES`] (128) bytes, not empty, no control character
//!   (so no line break), no leading or trailing space, not one of the
//!   names the nodes give their own events ([`RESET_EVENT_NAME`],
//!   [`INVALID_EVENT_NAME`], [`TOPIC_DELETED_EVENT_NAME`]), so a client
//!   can tell those from a publisher's, and not one of the names a
//!   browser's `EventSource` gives its own ([`EVENTSOURCE_EVENT_NAMES`]),
//!   which would reach a page's `onopen` and `onerror` as if the stream
//!   had opened or failed: [`valid_event_name`].
//!   This one limit holds for every path an event takes. Admin refuses a
//!   name that breaks it with 400; a node that reads one published straight
//!   to NATS sends an `invalid` event in its place.
//! - [`TRACEPARENT_HEADER`] (`traceparent`): W3C trace context, continued
//!   into the node's delivery span.
//! - [`MSG_ID_HEADER`] (`Nats-Msg-Id`): JetStream de-duplication; a retried
//!   publish carries the same id.
//! - [`MARKER_HEADER`] (`Nats-Marker-Reason`): set by JetStream on subject
//!   delete markers, which are stored messages but not events.

/// NATS header naming the SSE event type.
pub const EVENT_NAME_HEADER: &str = "Sse-Event";
/// W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// JetStream de-duplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header JetStream puts on subject delete markers.
pub const MARKER_HEADER: &str = "Nats-Marker-Reason";
/// Longest event name, in bytes, on every path.
pub const MAX_EVENT_NAME_BYTES: usize = 128;
/// The event a node sends when the history a client needs is gone.
pub const RESET_EVENT_NAME: &str = "reset";
/// The event a node sends in place of one it cannot send as is.
pub const INVALID_EVENT_NAME: &str = "invalid";
/// The event a node sends before it ends a stream whose topic was deleted.
pub const TOPIC_DELETED_EVENT_NAME: &str = "topic_deleted";

/// The events a browser's `EventSource` fires of its own: an event of
/// that name on the stream is dispatched to the same handlers (`onopen`,
/// `onerror`), where a page takes it for the stream's opening or failure.
pub const EVENTSOURCE_EVENT_NAMES: [&str; 2] = ["open", "error"];

/// Whether an `Sse-Event` value may be written as an event name: it fits in
/// one `event:` line, reads back the same, and is none of the nodes' own
/// nor of a browser's `EventSource`.
pub fn valid_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EVENT_NAME_BYTES
        && !name.chars().any(char::is_control)
        && name.trim() == name
        && name != RESET_EVENT_NAME
        && name != INVALID_EVENT_NAME
        && name != TOPIC_DELETED_EVENT_NAME
        && !EVENTSOURCE_EVENT_NAMES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_follow_one_limit() {
        assert!(valid_event_name("order.created"));
        assert!(valid_event_name(&"x".repeat(MAX_EVENT_NAME_BYTES)));
        assert!(!valid_event_name(&"x".repeat(MAX_EVENT_NAME_BYTES + 1)));
        assert!(!valid_event_name(""));
        assert!(!valid_event_name("a\nb"));
        assert!(!valid_event_name("a\rb"));
        assert!(!valid_event_name(" padded"));
        assert!(!valid_event_name("reset"), "the nodes' own");
        assert!(!valid_event_name("invalid"), "the nodes' own");
        assert!(!valid_event_name("topic_deleted"), "the nodes' own");
        assert!(!valid_event_name("open"), "EventSource's own");
        assert!(!valid_event_name("error"), "EventSource's own");
        assert!(valid_event_name("Reset"));
        assert!(valid_event_name("Error"), "event types are case-sensitive");
        assert!(valid_event_name("message"), "the default, as unnamed");
    }
}
