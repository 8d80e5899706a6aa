//! The crate's one error type, and how it becomes an HTTP answer.
//!
//! Every API error is JSON `{"error": <code>, "message": <text>}` with a
//! precise status: 400 bad input, 401 no or wrong token, 404 unknown topic,
//! 408 request body too slow, 409 topic exists, 413 event too large, 503
//! NATS unavailable. Internal details (NATS error texts that mean nothing to
//! a caller) are logged, not sent.

use async_nats::jetstream::{
    self, ErrorCode,
    context::{CreateStreamErrorKind, GetStreamErrorKind, RequestErrorKind},
};
use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// Everything that can go wrong in sse-admin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more configuration values are wrong; each names its key.
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The listener could not be served.
    #[error("http server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The request is malformed or holds a bad value.
    #[error("{0}")]
    BadRequest(String),
    /// No bearer token, or the wrong one.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The publish token, on a route other than publishing.
    #[error(
        "the publish token (admin.publish_token) may only publish events: POST /v1/topics/{{name}}/events; this needs admin.token"
    )]
    PublishTokenOnly,
    /// The topic has no stream.
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    /// A route that does not exist.
    #[error("no such route")]
    RouteNotFound,
    /// A known route, asked with the wrong method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The topic's stream already exists.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// The topic's stream stores nothing published to the subject (a
    /// mirror, or a stream made by hand with other subjects).
    #[error("{0}")]
    NotPublishable(String),
    /// The topic's stream refused to store the event and a retry will not
    /// help until something changes: it is full and discards new events
    /// (a stream made by hand with `discard: new`).
    #[error("{0}")]
    StoreRefused(String),
    /// The event is larger than allowed.
    #[error("event data is {size} bytes; at most {limit} are allowed")]
    PayloadTooLarge {
        /// Bytes given.
        size: u64,
        /// Bytes allowed.
        limit: u64,
    },
    /// JetStream refused the event as larger than the topic allows.
    #[error("event is larger than topic {0:?} allows")]
    TooLargeForTopic(String),
    /// The request body is over the size limit.
    #[error(
        "request body is too large: at most {limit} bytes, six times admin.max_event_bytes (JSON may escape each byte of data as six), plus 64 KiB"
    )]
    BodyTooLarge {
        /// Bytes allowed.
        limit: usize,
    },
    /// The request body did not arrive within the time allowed.
    #[error(
        "the request body did not arrive within {seconds} s of the request head; send the whole body at once"
    )]
    BodyTimeout {
        /// Seconds allowed.
        seconds: u64,
    },
    /// NATS or JetStream did not answer, or is not connected.
    #[error("nats is unavailable: {0}")]
    NatsUnavailable(String),
    /// Too many dashboard streams are open.
    #[error("too many dashboard streams are open; try again later")]
    Busy,
    /// A failure the caller cannot fix; the detail is logged only.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `topic_exists`.
    pub error: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl Error {
    /// The HTTP status and stable code for this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::PublishTokenOnly => (StatusCode::FORBIDDEN, "forbidden"),
            Error::TopicNotFound(_) => (StatusCode::NOT_FOUND, "topic_not_found"),
            Error::RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            Error::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Error::TopicExists(_) => (StatusCode::CONFLICT, "topic_exists"),
            Error::NotPublishable(_) => (StatusCode::CONFLICT, "not_publishable"),
            Error::StoreRefused(_) => (StatusCode::CONFLICT, "store_refused"),
            Error::PayloadTooLarge { .. }
            | Error::TooLargeForTopic(_)
            | Error::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Error::NatsUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "nats_unavailable"),
            Error::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Error::Config(_) | Error::Serve(_) | Error::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }

    /// Maps a JetStream API error answer about `topic`.
    pub fn from_jetstream(err: &jetstream::Error, topic: &str) -> Self {
        match err.error_code() {
            ErrorCode::STREAM_NOT_FOUND => Error::TopicNotFound(topic.to_owned()),
            ErrorCode::STREAM_NAME_EXIST => Error::TopicExists(topic.to_owned()),
            ErrorCode::STREAM_SUBJECT_OVERLAP => Error::BadRequest(format!(
                "topic {topic:?}: its subjects overlap those of another stream"
            )),
            ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => Error::TooLargeForTopic(topic.to_owned()),
            // Answered with code 503, but no retry helps while the stream
            // stays full: its limits discard new events, not old ones.
            ErrorCode::STREAM_STORE_FAILED => Error::StoreRefused(format!(
                "topic {topic:?}'s stream refused the event ({err}); a stream that discards new events when full takes more once older ones expire or are purged, or its limits are raised"
            )),
            ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED
            | ErrorCode::STREAM_REPLICAS_NOT_UPDATABLE
            | ErrorCode::INSUFFICIENT_RESOURCES
            | ErrorCode::CLUSTER_NO_PEERS => Error::BadRequest(format!(
                "topic {topic:?}: the NATS cluster cannot hold these replicas: {err}"
            )),
            // Answered with code 500, but no retry helps: the limits asked
            // for are more than the servers' JetStream may hold.
            // Memory storage off (`max_memory_store: 0`, the nats Helm
            // chart's default) looks the same as memory storage full.
            ErrorCode::MEMORY_RESOURCES_EXCEEDED => Error::BadRequest(format!(
                "topic {topic:?}: the NATS servers' JetStream memory storage cannot hold it (none allowed, or full): give JetStream memory storage (max_memory_store) or make the topic on file storage: {err}"
            )),
            ErrorCode::STORAGE_RESOURCES_EXCEEDED => Error::BadRequest(format!(
                "topic {topic:?}: more than the NATS servers' JetStream may hold; ask for less (max_bytes) or give JetStream more: {err}"
            )),
            // A stream that denies purges (made so by hand) refuses every
            // one, also with code 500.
            ErrorCode::STREAM_PURGE_FAILED => Error::BadRequest(format!(
                "topic {topic:?}: its stream refuses the purge: {err}"
            )),
            _ if err.code() == 400 => {
                // JetStream refused a setting (replicas in a single-server
                // deployment, a limit out of range): the caller can fix it.
                Error::BadRequest(format!("topic {topic:?}: jetstream refused: {err}"))
            }
            _ if err.code() == 503 || err.code() == 500 => Error::NatsUnavailable(err.to_string()),
            _ => Error::Internal(format!("jetstream error for topic {topic:?}: {err}")),
        }
    }

    /// Maps a failed JetStream request (no answer, time-out).
    pub fn from_request(err: &jetstream::context::RequestError) -> Self {
        match err.kind() {
            RequestErrorKind::NoResponders => {
                Error::NatsUnavailable("jetstream did not respond".to_owned())
            }
            RequestErrorKind::TimedOut => {
                Error::NatsUnavailable("jetstream request timed out".to_owned())
            }
            RequestErrorKind::InvalidSubject | RequestErrorKind::Other => {
                Error::NatsUnavailable(format!("jetstream request failed: {err}"))
            }
        }
    }

    /// Maps a failed stream look-up.
    pub fn from_get_stream(err: &jetstream::context::GetStreamError, topic: &str) -> Self {
        match err.kind() {
            GetStreamErrorKind::JetStream(js) => Self::from_jetstream(&js, topic),
            GetStreamErrorKind::Request => {
                Error::NatsUnavailable(format!("stream look-up failed: {err}"))
            }
            GetStreamErrorKind::EmptyName | GetStreamErrorKind::InvalidStreamName => {
                Error::BadRequest(format!("topic {topic:?} is not a valid name"))
            }
        }
    }

    /// Maps a failed create or update of a stream to `config`.
    pub fn from_create_stream(
        err: &jetstream::context::CreateStreamError,
        topic: &str,
        config: &jetstream::stream::Config,
    ) -> Self {
        match err.kind() {
            CreateStreamErrorKind::JetStream(js) if no_storage_for_placement(&js) => {
                Self::no_storage_for(&js, topic, config)
            }
            CreateStreamErrorKind::JetStream(js) => Self::from_jetstream(&js, topic),
            CreateStreamErrorKind::NotFound => Error::TopicNotFound(topic.to_owned()),
            CreateStreamErrorKind::JetStreamUnavailable
            | CreateStreamErrorKind::TimedOut
            | CreateStreamErrorKind::Response => Error::NatsUnavailable(err.to_string()),
            CreateStreamErrorKind::EmptyStreamName | CreateStreamErrorKind::InvalidStreamName => {
                Error::BadRequest(format!("topic {topic:?} is not a valid name"))
            }
            CreateStreamErrorKind::DomainAndExternalSet | CreateStreamErrorKind::ResponseParse => {
                Error::Internal(err.to_string())
            }
        }
    }
}

/// Whether a clustered JetStream found no servers for a stream because none
/// could reserve its storage: it then answers "no suitable peers for
/// placement, insufficient storage", whatever the replicas.
fn no_storage_for_placement(err: &jetstream::Error) -> bool {
    err.error_code() == ErrorCode::CLUSTER_NO_PEERS
        && err.to_string().contains("insufficient storage")
}

impl Error {
    /// The refusal of a placement for want of storage, naming what asked for
    /// it: JetStream reserves a stream's `max_bytes` on each of its replicas'
    /// servers, so a `max_bytes` over a server's `max_file_store` (or
    /// `max_memory_store`) is refused even for one replica.
    fn no_storage_for(
        err: &jetstream::Error,
        topic: &str,
        config: &jetstream::stream::Config,
    ) -> Self {
        let (kind, limit) = match config.storage {
            jetstream::stream::StorageType::Memory => ("memory", "max_memory_store"),
            jetstream::stream::StorageType::File => ("file", "max_file_store"),
        };
        let replicas = config.num_replicas.max(1);
        let (servers, their, fix) = if replicas > 1 {
            (
                format!("no {replicas} NATS servers (replicas is {replicas}) can each"),
                "their",
                "ask for a smaller max_bytes or fewer replicas",
            )
        } else {
            (
                "no NATS server can".to_owned(),
                "its",
                "ask for a smaller max_bytes",
            )
        };
        let message = if config.max_bytes > 0 {
            format!(
                "topic {topic:?}: {servers} reserve max_bytes ({} bytes) of JetStream {kind} storage, more than {their} {limit} has free; {fix}, or give the servers more ({limit}): {err}",
                config.max_bytes
            )
        } else {
            // Without max_bytes nothing is reserved: the storage is used up.
            format!(
                "topic {topic:?}: {servers} take it, {their} JetStream {kind} storage ({limit}) being reserved by other streams or used up; give the servers more, or set max_bytes on the other topics: {err}"
            )
        };
        Error::BadRequest(message)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Error::Internal(detail) => {
                tracing::error!(%detail, "request failed");
                "internal error; see the admin log".to_owned()
            }
            Error::NatsUnavailable(detail) => {
                tracing::warn!(%detail, "nats unavailable");
                // What NATS said, for the operator: "JetStream system
                // temporarily unavailable (10008)" is a server out of
                // storage as often as one electing a leader.
                format!("nats is unavailable ({detail}); try again")
            }
            other => other.to_string(),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: code,
                message,
            }),
        )
            .into_response();
        if matches!(self, Error::BodyTooLarge { .. } | Error::BodyTimeout { .. }) {
            // The rest of the body was never read, so the connection cannot
            // carry another request: say so, or a client may send its next
            // request on a connection the server is closing.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
