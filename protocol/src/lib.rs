//! The wire contracts that `sse-node` and `sse-admin` must agree on.
//!
//! - [`topic`]: topic names, subject paths (with NATS wildcards) and how they
//!   map onto JetStream stream names and NATS subjects.
//! - [`grant`]: a topic's access (public or private) and the subject
//!   patterns a token grants.
//! - [`cursor`]: the event id, `<topic>:<epoch>:<seq>` joined with `,`, that
//!   clients send back as `Last-Event-ID` to resume.
//!
//! Everything here is pure and allocation-light so both binaries, the fuzz
//! targets and the property tests share one definition.

pub mod cursor;
pub mod event_stream;
pub mod grant;
pub mod topic;

pub use cursor::{Cursor, CursorError, TopicPosition};
pub use grant::{Access, GrantPattern, Grants};
pub use topic::{SubjectPath, TopicError, TopicName};
