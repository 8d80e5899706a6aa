//! The wire contracts that `sse-node` and `sse-admin` must agree on.
//!
//! - [`topic`]: topic names, subject paths (with NATS wildcards) and how they
//!   map onto JetStream stream names and NATS subjects.
//! - [`grant`]: a topic's access (public or private) and the subject
//!   patterns a token grants.
//! - [`cursor`]: the event id, `<topic>:<epoch>:<seq>` joined with `,`, that
//!   clients send back as `Last-Event-ID` to resume.
//! - [`headers`]: the NATS header names and their limits (`Sse-Event`,
//!   `traceparent`, `Nats-Msg-Id`).
//! - [`node_report`]: the report each node writes to the cluster view and the
//!   key-value bucket that holds it (opening the bucket needs the `nats`
//!   feature).
//! - `nats_url`: the credentials a NATS server URL carries, sent as
//!   async-nats's connect options (the `nats` feature).
//! - `nats_credentials`: a NATS credentials file or nkey seed (the `nats`
//!   feature).
//! - `nats_tls`: TLS to NATS with authorities of one's own and a client
//!   certificate (the `nats` feature).
//! - `nats_switch`: leaving a NATS server that answers but cannot reach
//!   JetStream, cut off from its peers (the `nats` feature).
//! - `nats_unreachable`: saying why NATS cannot be reached, with the cause
//!   async-nats's own reports leave out (the `nats` feature).
//! - `stream_list`: every stream's info, listed page by page while NATS
//!   servers are down (the `nats` feature).
//! - `config_errors`: every problem of a layered configuration at once (the
//!   `config` feature).
//! - [`event_stream`]: the `text/event-stream` parser tests read frames with.
//! - [`log_level`]: what `log.level` may say beyond tracing's own syntax.
//! - `otel`: OTLP/HTTP trace export, set up alike by node and admin (the
//!   `otel` feature).
//!
//! Everything but the bucket opener is pure and allocation-light, so both
//! binaries, the fuzz targets and the property tests share one definition.

#[cfg(feature = "config")]
pub mod config_errors;
pub mod cursor;
pub mod event_stream;
pub mod grant;
pub mod headers;
pub mod log_level;
#[cfg(feature = "nats")]
pub mod nats_credentials;
#[cfg(feature = "nats")]
pub mod nats_switch;
#[cfg(feature = "nats")]
pub mod nats_tls;
#[cfg(feature = "nats")]
pub mod nats_unreachable;
#[cfg(feature = "nats")]
pub mod nats_url;
pub mod node_report;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "nats")]
pub mod stream_list;
pub mod topic;

pub use cursor::{Cursor, CursorError, TopicPosition};
pub use grant::{Access, GrantPattern, Grants};
pub use node_report::NodeReport;
pub use topic::{SubjectPath, TopicError, TopicName};
