//! The HTTP surface of a node.
//!
//! - `GET /v1/events?topic=<path>[&topic=<path>…][&lastEventId=<id>]`: the
//!   SSE stream; resume with `Last-Event-ID` or `lastEventId`.
//! - `GET /healthz`: the process is alive (does not look at NATS).
//! - `GET /readyz`: 200 only when NATS is connected, topics are loaded and
//!   the node is not draining; 503 with the latches otherwise.
//! - `GET /metrics`: Prometheus text.
//!
//! Every refusal is a JSON body `{"error": <code>, "message": <text>}` with a
//! precise status: 400 for a malformed request, 401 (with
//! `WWW-Authenticate: Bearer`) for a private topic without a valid token, 403
//! for a path the token does not grant, 404 for an unknown topic, 503 with
//! `Retry-After` when the node is full, draining or without NATS.
//!
//! Order of checks: the request's shape, the topics' existence, then the
//! token for the private ones (see [`crate::auth`]), then the node's room.
//! Browsers from other origins are let in by the `[cors]` settings.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{FromRef, RawQuery, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use sse_protocol::{Access, Cursor, SubjectPath, TopicName};
use tower_http::cors::{AllowCredentials, AllowOrigin, CorsLayer};
use tracing::{debug, warn};

use crate::{
    auth::{self, AuthError, Verifier},
    config::{CorsConfig, HttpConfig},
    delivery::{ClientStream, TopicRequest},
    node::Node,
    topics::LookupError,
};

/// A refused request: status, machine-readable code and a message naming the
/// bad value.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    www_authenticate: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            www_authenticate: None,
        }
    }

    fn limit(node: &Node, limit: &'static str, error: Self) -> Self {
        node.metrics().limit_hit(limit);
        error
    }

    fn auth(node: &Node, error: AuthError) -> Self {
        node.metrics()
            .auth_failures
            .with_label_values(&[error.reason()])
            .inc();
        debug!(reason = error.reason(), "stream refused by auth");
        let (status, code) = match error {
            AuthError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AuthError::Missing => (StatusCode::UNAUTHORIZED, "missing_token"),
            AuthError::Expired => (StatusCode::UNAUTHORIZED, "token_expired"),
            _ => (StatusCode::UNAUTHORIZED, "invalid_token"),
        };
        let mut challenge = String::from("Bearer realm=\"sse\"");
        if let Some(bearer_error) = error.bearer_error() {
            // The description is one of our fixed messages, quoted safely.
            let description = error.to_string().replace(['"', '\\'], "'");
            challenge.push_str(&format!(
                ", error=\"{bearer_error}\", error_description=\"{description}\""
            ));
        }
        Self {
            www_authenticate: Some(challenge),
            ..Self::new(status, code, error.to_string())
        }
    }

    /// A request line whose target holds bytes HTTP does not allow there
    /// (`>` unencoded, as curl sends `topic=orders.>`).
    pub(crate) fn bad_request_line() -> Self {
        Self::bad_request(
            "bad_request_line",
            "the request target holds characters HTTP does not allow unencoded: percent-encode them (`>` as %3E, `*` may stay), e.g. topic=orders.%3E",
        )
    }

    /// A request head HTTP/1.1 cannot read, with the part that is wrong.
    pub(crate) fn malformed_head(part: MalformedPart) -> Self {
        let message = match part {
            MalformedPart::RequestLine => {
                "the request line is not `METHOD /target HTTP/1.1`: a character HTTP does not allow in the method or the target, or another version"
            }
            MalformedPart::HeaderName => {
                "a header's name holds a character HTTP does not allow, or a header is folded over two lines: send each header as `Name: value` on one line"
            }
            MalformedPart::HeaderValue => {
                "a header's value holds a byte HTTP does not allow: a NUL, or another control byte but tab"
            }
            MalformedPart::LineEnd => "a line of the request head does not end with CRLF",
            MalformedPart::Host => {
                "a request names its host in one `Host` header, `host[:port]`, which HTTP/1.1 requires (RFC 9112, section 3.2): none came, more than one, or a value that is no host"
            }
            MalformedPart::Http2WithoutAlpn => {
                "the HTTP/2 preface came over TLS on a connection that agreed on HTTP/1.1 (or on no protocol): a client speaks HTTP/2 over TLS after agreeing on it by ALPN (`h2`), else HTTP/1.1"
            }
            MalformedPart::BodyFraming => {
                "the request's Content-Length and Transfer-Encoding leave its body's length unknown (RFC 9112, section 6.3): a Content-Length that is not one number, both headers at once, or codings that do not end with chunked"
            }
        };
        Self::bad_request("bad_request_head", message)
    }

    /// A request head over `http.max_header_bytes`, or with more than
    /// `http.max_headers` fields; counted as the `request_head` limit.
    pub(crate) fn request_head_too_large(node: &Node) -> Self {
        let http = &node.config().http;
        let message = format!(
            "the request line and headers are over {} bytes or {} fields (http.max_header_bytes, http.max_headers): send fewer or smaller headers, cookies included",
            http.max_header_bytes, http.max_headers
        );
        Self::limit(
            node,
            "request_head",
            Self::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_head_too_large",
                message,
            ),
        )
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.code, "message": self.message }));
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = self.www_authenticate
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// What every request handler shares: the node, the token verifier and the
/// CORS rules, built once at start-up ([`crate::startup`]).
#[derive(Clone)]
pub struct HttpState {
    node: Node,
    verifier: Arc<Verifier>,
    cors: Option<CorsLayer>,
}

impl HttpState {
    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The CORS rules, `None` when no origin is allowed. The router wraps
    /// every response in this layer, and the lean path runs its responses
    /// through the same layer ([`crate::fastpath`]), so both answer a
    /// browser alike.
    pub fn cors(&self) -> Option<&CorsLayer> {
        self.cors.as_ref()
    }
}

impl FromRef<HttpState> for Node {
    fn from_ref(state: &HttpState) -> Node {
        state.node.clone()
    }
}

/// The state shared by the router and the HTTP/1.1 fast path.
pub fn state(node: Node, verifier: Verifier, cors: Option<CorsLayer>) -> HttpState {
    if !verifier.has_keys() {
        debug!("no JWT key configured: private topics are refused to everyone");
    }
    HttpState {
        node,
        verifier: Arc::new(verifier),
        cors,
    }
}

/// The router over an existing state.
pub fn router_with(state: HttpState) -> Router {
    let cors = state.cors.clone();
    let router = Router::new()
        .route("/v1/events", get(events))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "only GET (and HEAD) is served here",
            )
        })
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for browsers on other origins: simple `GET`s and preflights for
/// `GET` with `Authorization` or `Last-Event-ID`; `WWW-Authenticate` and
/// `Retry-After` readable by the page. `None` when no origin is
/// allowed, so no CORS header is ever sent.
pub fn cors_layer(config: &CorsConfig) -> Option<CorsLayer> {
    if config.allowed_origins.is_empty() {
        return None;
    }
    let any_origin = config.allowed_origins.iter().any(|o| o == "*");
    // Scheme and host are compared without regard to case (RFC 6454), as
    // the configuration says; browsers send them in lowercase.
    let allowed: Arc<[String]> = config.allowed_origins.iter().cloned().collect();
    let is_allowed = move |origin: &HeaderValue| {
        allowed
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    };
    let origin = if any_origin {
        AllowOrigin::any()
    } else {
        let is_allowed = is_allowed.clone();
        AllowOrigin::predicate(move |origin, _| is_allowed(origin))
    };
    // Said only beside an allowed origin: an answer to any other origin
    // carries no CORS grant at all, not half of one.
    let credentials = if config.allow_credentials {
        AllowCredentials::predicate(move |origin, _| is_allowed(origin))
    } else {
        AllowCredentials::default()
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET])
            .allow_headers([
                header::AUTHORIZATION,
                header::HeaderName::from_static("last-event-id"),
                header::CACHE_CONTROL,
                header::ACCEPT,
            ])
            // A `fetch`-based client on another origin reads why it was
            // refused and when to come back.
            .expose_headers([header::WWW_AUTHENTICATE, header::RETRY_AFTER])
            .allow_credentials(credentials)
            .max_age(Duration::from_secs(config.max_age_seconds)),
    )
}

async fn readyz(State(node): State<Node>) -> Response {
    let readiness = node.readiness();
    let status = if readiness.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

async fn metrics(State(node): State<Node>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        node.metrics().render(),
    )
        .into_response()
}

async fn events(
    State(state): State<HttpState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.as_deref().unwrap_or("");
    if method == Method::HEAD {
        // Answered as a stream request would be, but nothing is opened for
        // a response without a body.
        return match check_stream_request(&state, &headers, query).await {
            Ok(_) => stream_response(Body::empty()),
            Err(error) => reject(&state.node, error),
        };
    }
    match prepare_stream(&state, &headers, query).await {
        Ok(stream) => {
            served_by(&state.node, "router");
            stream_response(Body::from_stream(stream.into_body_stream()))
        }
        Err(error) => reject(&state.node, error),
    }
}

/// Headers of every SSE response.
const STREAM_HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
];

/// The 200 answer to a stream request, before CORS: `body` carries the
/// events (the lean path writes them itself and passes an empty body).
pub fn stream_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    for (name, value) in STREAM_HEADERS {
        headers.insert(*name, HeaderValue::from_static(value));
    }
    response
}

/// Counts an event stream opened on `path` (`lean` or `router`).
pub fn served_by(node: &Node, path: &'static str) {
    node.metrics()
        .streams_served
        .with_label_values(&[path])
        .inc();
}

/// Counts a refused stream request and turns it into its response.
pub fn reject(node: &Node, error: ApiError) -> Response {
    node.metrics()
        .requests_rejected
        .with_label_values(&[error.status.as_str()])
        .inc();
    error.into_response()
}

/// The part of a request head that HTTP/1.1 cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MalformedPart {
    /// The method, the target or the version.
    RequestLine,
    /// A header's name, or a line that is no header (a folded one).
    HeaderName,
    /// A header's value.
    HeaderValue,
    /// A line not ended by CRLF.
    LineEnd,
    /// The `Host` header: missing from an HTTP/1.1 request, given more
    /// than once, or no `host[:port]`.
    Host,
    /// `Content-Length` or `Transfer-Encoding` that leave the body's length
    /// unknown (see [`body_framing_is_wrong`]).
    BodyFraming,
    /// The HTTP/2 preface over TLS on a connection whose ALPN agreed on
    /// HTTP/1.1 or on nothing.
    Http2WithoutAlpn,
}

/// Whether a request's `Content-Length` and `Transfer-Encoding` leave its
/// body's length unknown, which RFC 9112 (section 6.3) has a server answer
/// with 400 and a close, as a smuggled request hides there: a length that
/// is not one number (a list, or the header twice, as hyper refuses them
/// too), both headers at once, or codings that do not end with `chunked`.
pub(crate) fn body_framing_is_wrong<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> bool {
    let mut length = false;
    let mut codings = false;
    let mut last_coding: &[u8] = b"";
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length") {
            let value = value.trim_ascii();
            if length || value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return true;
            }
            length = true;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings = true;
            if let Some(last) = value
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .rfind(|coding| !coding.is_empty())
            {
                last_coding = last;
            }
        }
    }
    codings && (length || !last_coding.eq_ignore_ascii_case(b"chunked"))
}

/// Whether a request's `Host` headers break RFC 9112 (section 3.2), which
/// has a server answer 400 to an HTTP/1.1 request without one, to any
/// request with more than one, and to one whose value is no
/// `host[:port]` (empty is allowed). One rule for the lean path and for
/// the requests hyper reads.
pub(crate) fn host_is_wrong<'a>(http_1_1: bool, mut hosts: impl Iterator<Item = &'a [u8]>) -> bool {
    match (hosts.next(), hosts.next()) {
        (None, _) => http_1_1,
        (Some(_), Some(_)) => true,
        (Some(value), None) => {
            !value.is_empty()
                && axum::http::uri::Authority::try_from(value)
                    .ok()
                    .is_none_or(|authority| {
                        authority.as_str().contains('@') || !port_is_a_port(&authority)
                    })
        }
    }
}

/// Whether what follows an authority's host is a port: none, an empty one
/// (RFC 3986 allows `host:`), or digits of a number up to 65535.
/// `http`'s parser takes `x:abc` and `x:-1` in as hosts with no port.
fn port_is_a_port(authority: &axum::http::uri::Authority) -> bool {
    let after_host = &authority.as_str()[authority.host().len()..];
    match after_host.strip_prefix(':') {
        None => after_host.is_empty(),
        Some("") => true,
        Some(port) => port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok(),
    }
}

/// Whether a request hyper read is over `http.max_header_bytes` or, on
/// HTTP/1.x, `http.max_headers`, as the lean path counts them: there the
/// request line and each header line as sent, with `": "` and CRLF, and
/// the empty line that ends the head; on HTTP/2 the header list's size of
/// RFC 9113 (section 6.5.2: each field's name and value and 32 bytes),
/// pseudo-header fields included, as the h2 layer counts it.
pub(crate) fn head_is_over_bounds<B>(http: &HttpConfig, request: &axum::http::Request<B>) -> bool {
    let headers = request.headers();
    let fields = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len());
    let size = if request.version() >= axum::http::Version::HTTP_2 {
        const FIELD_OVERHEAD: usize = 32;
        let uri = request.uri();
        let pseudo = [
            (":method".len(), request.method().as_str().len()),
            (":scheme".len(), uri.scheme_str().map_or(0, str::len)),
            (
                ":authority".len(),
                uri.authority().map_or(0, |a| a.as_str().len()),
            ),
            (
                ":path".len(),
                uri.path_and_query().map_or(0, |p| p.as_str().len()),
            ),
        ];
        pseudo
            .iter()
            .map(|(name, value)| name + value + FIELD_OVERHEAD)
            .chain(fields.map(|field| field + FIELD_OVERHEAD))
            .sum::<usize>()
    } else {
        if headers.len() > http.max_headers {
            return true;
        }
        let target = request
            .uri()
            .path_and_query()
            .map_or(1, |target| target.as_str().len());
        let request_line =
            request.method().as_str().len() + " ".len() + target + " HTTP/1.1\r\n".len();
        request_line + fields.map(|field| field + ": \r\n".len()).sum::<usize>() + "\r\n".len()
    };
    size > http.max_header_bytes
}

/// The parameter `name` was most likely meant to be, when it differs from
/// one only in case, `-` or `_` (`lastEventID`, `last_event_id`,
/// `Topic`): ignored, a misspelt resume would start the stream live and
/// lose what the client missed, without a word. Other parameters (a
/// cache-buster, an app's own) are ignored.
fn misspelled_parameter(name: &str) -> Option<&'static str> {
    let folded: String = name
        .chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .flat_map(char::to_lowercase)
        .collect();
    ["topic", "lastEventId", auth::QUERY_PARAMETER]
        .into_iter()
        .find(|known| {
            folded == known.replace('_', "").to_lowercase()
                || folded == format!("{}s", known.to_lowercase())
        })
}

/// What a stream request asks for, once validated.
struct StreamRequest {
    topics: BTreeMap<TopicName, Vec<SubjectPath>>,
    order: Vec<TopicName>,
    cursor: Option<Cursor>,
    query_token: Option<String>,
}

fn parse_request(node: &Node, headers: &HeaderMap, query: &str) -> Result<StreamRequest, ApiError> {
    let http = &node.config().http;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|e| {
        ApiError::bad_request("bad_query", format!("query string is malformed: {e}"))
    })?;
    let mut paths = Vec::new();
    let mut query_id = None;
    let mut query_token = None;
    for (key, value) in pairs {
        match key.as_str() {
            // The same path twice asks for nothing more.
            "topic" if !paths.contains(&value) => paths.push(value),
            "topic" => {}
            "lastEventId" if query_id.as_ref().is_some_and(|id| *id != value) => {
                return Err(ApiError::bad_request(
                    "bad_last_event_id",
                    "the lastEventId parameter is given more than once, with different ids: give the last id seen, once",
                ));
            }
            "lastEventId" => query_id = Some(value),
            auth::QUERY_PARAMETER if query_token.as_ref().is_some_and(|t| *t != value) => {
                return Err(ApiError::bad_request(
                    "bad_query",
                    "the access_token parameter is given more than once, with different tokens: give one",
                ));
            }
            auth::QUERY_PARAMETER => query_token = Some(value),
            other => {
                if let Some(meant) = misspelled_parameter(other) {
                    return Err(ApiError::bad_request(
                        "bad_query",
                        format!(
                            "there is no parameter {other:?}: did you mean {meant:?}? (names are case-sensitive)"
                        ),
                    ));
                }
            }
        }
    }
    if paths.is_empty() {
        return Err(ApiError::bad_request(
            "missing_topic",
            "give at least one topic: /v1/events?topic=<path>",
        ));
    }
    if paths.len() > http.max_topics_per_connection {
        return Err(ApiError::limit(
            node,
            "max_topics_per_connection",
            ApiError::bad_request(
                "too_many_topics",
                format!(
                    "{} different topic paths given; at most {} are allowed",
                    paths.len(),
                    http.max_topics_per_connection
                ),
            ),
        ));
    }
    let mut topics: BTreeMap<TopicName, Vec<SubjectPath>> = BTreeMap::new();
    let mut order = Vec::new();
    for path in &paths {
        let parsed = SubjectPath::parse_pattern(path)
            .map_err(|e| ApiError::bad_request("bad_topic", e.to_string()))?;
        let topic = parsed.topic().clone();
        let entry = topics.entry(topic.clone()).or_default();
        if entry.is_empty() {
            order.push(topic);
        }
        if !entry.contains(&parsed) {
            entry.push(parsed);
        }
    }
    let mut header_ids = headers.get_all("last-event-id").iter();
    let first_header_id = header_ids.next();
    if header_ids.any(|other| Some(other) != first_header_id) {
        return Err(ApiError::bad_request(
            "bad_last_event_id",
            "Last-Event-ID is given more than once, with different ids: send the last id seen, once",
        ));
    }
    let mut authorizations = headers.get_all(header::AUTHORIZATION).iter();
    let first_authorization = authorizations.next();
    if authorizations.any(|other| Some(other) != first_authorization) {
        // Which one a server or a proxy takes differs: the answer would
        // depend on the headers' order.
        return Err(ApiError::bad_request(
            "bad_request_head",
            "Authorization is given more than once, with different values: send one",
        ));
    }
    let header_id = match first_header_id {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| {
                    ApiError::bad_request("bad_last_event_id", "Last-Event-ID is not ASCII text")
                })?
                .to_owned(),
        ),
        None => None,
    };
    // Errors name where the id came from: the header wins over the query.
    let (id, source) = match header_id.filter(|id| !id.trim().is_empty()) {
        Some(id) => (Some(id), "Last-Event-ID"),
        None => (
            query_id.filter(|id| !id.trim().is_empty()),
            "the lastEventId parameter",
        ),
    };
    let cursor =
        match id {
            None => None,
            Some(id) if id.len() > http.max_last_event_id_bytes => {
                return Err(ApiError::limit(
                    node,
                    "max_last_event_id_bytes",
                    ApiError::bad_request(
                        "last_event_id_too_long",
                        format!(
                            "{source} is {} bytes long; at most {} are allowed",
                            id.len(),
                            http.max_last_event_id_bytes
                        ),
                    ),
                ));
            }
            Some(id) => Some(Cursor::parse(id.trim()).map_err(|e| {
                ApiError::bad_request("bad_last_event_id", format!("{source}: {e}"))
            })?),
        };
    Ok(StreamRequest {
        topics,
        order,
        cursor,
        query_token,
    })
}

/// Validates a stream request (shape, topics, token, room on the node) and
/// opens the client's stream; the caller writes it out.
pub async fn prepare_stream(
    state: &HttpState,
    headers: &HeaderMap,
    query: &str,
) -> Result<ClientStream, ApiError> {
    let checked = check_stream_request(state, headers, query).await?;
    open_stream(state, headers, checked).await
}

/// A stream request whose topics exist and whose token grants every path
/// it asks for in a private topic. Nothing is started for it yet.
pub struct CheckedRequest {
    request: StreamRequest,
    /// The paths of private topics the token was checked for.
    private: Vec<SubjectPath>,
    /// When the token checked expires: the stream ends then, however long
    /// opening it takes.
    expires: Option<tokio::time::Instant>,
}

/// Checks a stream request's shape, that its topics exist and that its
/// token grants what it asks for, without starting a topic's reader or
/// taking a place on the node: a request refused, or only asked about
/// (`HEAD`), costs the node nothing it keeps.
pub async fn check_stream_request(
    state: &HttpState,
    headers: &HeaderMap,
    query: &str,
) -> Result<CheckedRequest, ApiError> {
    let node = &state.node;
    if node.is_draining() {
        return Err(ApiError::unavailable(
            "draining",
            "this node is shutting down; reconnect to another",
            1,
        ));
    }
    let request = parse_request(node, headers, query)?;
    let mut private = Vec::new();
    for topic in &request.order {
        let access = node.topics().access(topic).await.map_err(lookup_error)?;
        if access == Access::Private {
            private.extend(request.topics.get(topic).into_iter().flatten().cloned());
        }
    }
    let expires = if private.is_empty() {
        None
    } else {
        let remaining = authorize(state, headers, request.query_token.as_deref(), &private)?;
        Some(tokio::time::Instant::now() + remaining)
    };
    Ok(CheckedRequest {
        request,
        private,
        expires,
    })
}

/// A place among the node's `http.max_connections` streams, given back when
/// dropped before a stream takes it over.
struct ConnectionSlot<'a>(Option<&'a Node>);

impl<'a> ConnectionSlot<'a> {
    fn take(node: &'a Node) -> Result<Self, ApiError> {
        if node.try_open_connection() {
            return Ok(Self(Some(node)));
        }
        Err(ApiError::limit(
            node,
            "max_connections",
            ApiError::unavailable(
                "node_full",
                format!(
                    "this node holds its maximum of {} streams; retry, the load balancer will pick another",
                    node.config().http.max_connections
                ),
                1,
            ),
        ))
    }

    /// The slot is the stream's now: it gives it back when it closes.
    fn hand_to_stream(mut self) {
        if let Some(node) = self.0.take() {
            node.connection_opened();
        }
    }
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        if let Some(node) = self.0 {
            node.give_back_connection();
        }
    }
}

/// Opens the stream of a checked request: takes a place on the node, then
/// leases (or starts) its topics' readers.
pub async fn open_stream(
    state: &HttpState,
    headers: &HeaderMap,
    checked: CheckedRequest,
) -> Result<ClientStream, ApiError> {
    let node = &state.node;
    let CheckedRequest {
        mut request,
        private: checked_private,
        mut expires,
    } = checked;
    let slot = ConnectionSlot::take(node)?;
    let mut attached = Vec::with_capacity(request.order.len());
    let mut private = Vec::new();
    for topic in &request.order {
        let claimed_epoch = request
            .cursor
            .as_ref()
            .and_then(|c| c.position(topic))
            .map(|p| p.epoch.as_str());
        let patterns = request.topics.remove(topic).unwrap_or_default();
        let only_path = crate::delivery::only_path(&patterns);
        let feed = node
            .topics()
            .get_current(topic, only_path, claimed_epoch)
            .await
            .map_err(lookup_error)?;
        if feed.access() == Access::Private {
            private.extend(patterns.iter().cloned());
        }
        let resume = request
            .cursor
            .as_ref()
            .and_then(|c| c.position(topic))
            .map(|p| (p.epoch.clone(), p.seq));
        attached.push((
            TopicRequest {
                topic: topic.clone(),
                patterns,
                resume,
                stream_behind: None,
            },
            feed,
        ));
    }
    // A topic made private since the check (created again, or changed
    // before this node heard of it) is checked now.
    if private.iter().any(|path| !checked_private.contains(path)) {
        let remaining = authorize(state, headers, request.query_token.as_deref(), &private)?;
        expires = Some(tokio::time::Instant::now() + remaining);
    }
    // Only once the client may read these topics: a cursor past what the
    // stream is known to hold costs JetStream a question, and one the
    // stream does not hold waits 2 s for a second answer. The topics are
    // asked about together, so that a stream of many such topics waits
    // that once, not once per topic.
    let confirmed = futures_util::future::try_join_all(attached.into_iter().map(
        |(mut request, feed)| async move {
            let feed = match &request.resume {
                Some((epoch, seq)) if *epoch == feed.epoch && *seq > feed.holds_up_to() => {
                    let only_path = crate::delivery::only_path(&request.patterns);
                    let (feed, behind) = node
                        .topics()
                        .confirm_cursor(&request.topic, only_path, feed, *seq)
                        .await
                        .map_err(lookup_error)?;
                    request.stream_behind = behind;
                    feed
                }
                _ => feed,
            };
            Ok::<_, ApiError>((request, feed))
        },
    ))
    .await?;
    let mut stream = ClientStream::open(node.clone(), confirmed);
    slot.hand_to_stream();
    if let Some(at) = expires {
        stream.close_at_token_expiry(at);
    }
    Ok(stream)
}

/// The answer to a topic that cannot be looked up.
fn lookup_error(error: LookupError) -> ApiError {
    match error {
        LookupError::NotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_topic", error.to_string())
        }
        LookupError::Unavailable(_) => {
            ApiError::unavailable("nats_unavailable", error.to_string(), 2)
        }
    }
}

/// Most tokens of one request tried (cookies of one name).
const MAX_TOKENS_TRIED: usize = 8;

/// Checks the request's token against every path it asks for in a private
/// topic; returns the time left before the token expires.
fn authorize(
    state: &HttpState,
    headers: &HeaderMap,
    query_token: Option<&str>,
    private: &[SubjectPath],
) -> Result<Duration, ApiError> {
    let node = &state.node;
    let tokens = auth::tokens_from_request(&node.config().auth, headers, query_token)
        .map_err(|e| ApiError::auth(node, e))?;
    if !state.verifier.has_keys() {
        warn!("a private topic was asked for, but no JWT key is configured");
    }
    // The first token that grants every path wins. Refused by all: a valid
    // token's missing grant says more than another's expiry, else the
    // first token's error.
    let mut refusal: Option<AuthError> = None;
    // Bounded: each costs a signature check.
    for token in tokens.iter().take(MAX_TOKENS_TRIED) {
        let error = match state.verifier.verify(token) {
            Ok(authorized) => match private.iter().find(|p| !authorized.allows(p)) {
                None => return Ok(authorized.remaining()),
                Some(path) => AuthError::Forbidden(path.to_string()),
            },
            Err(error) => error,
        };
        if refusal.is_none() || matches!(error, AuthError::Forbidden(_)) {
            refusal = Some(error);
        }
    }
    Err(ApiError::auth(node, refusal.unwrap_or(AuthError::Missing)))
}
