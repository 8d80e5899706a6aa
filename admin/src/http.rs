//! The HTTP surface: routes, the bearer-token gate, JSON bodies, probes.
//!
//! Endpoints:
//! - `GET /` — the dashboard page; `GET /openapi.json` — the API document.
//! - `GET /healthz` — alive; `GET /readyz` — connected to NATS and not
//!   shutting down (503 otherwise).
//! - `GET /metrics` — Prometheus.
//! - `GET /v1/overview`, `GET /v1/dashboard/stream` — read-only cluster
//!   figures for the dashboard.
//! - `/v1/topics…`, `/v1/nodes` — the API proper, bearer token required.
//!
//! Only `GET`/`HEAD` of the read-only paths above pass without
//! `Authorization: Bearer <admin.token>`; everything else, unknown paths
//! included, is checked first (401 before 404, so routes are not probed).

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State},
    http::{Method, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};
use subtle::ConstantTimeEq;

use crate::{cluster, error::Error, metrics, openapi, overview, publish, state::AppState, topics};

/// Paths readable without a token (by `GET` or `HEAD` only).
pub const PUBLIC_PATHS: &[&str] = &[
    "/",
    "/openapi.json",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/overview",
    "/v1/dashboard/stream",
];

/// Room for JSON escaping and the other fields around an event's data.
const BODY_OVERHEAD: usize = 64 * 1024;

/// Builds the whole router.
pub fn router(state: AppState) -> Router {
    let max_event = usize::try_from(state.config.admin.max_event_bytes).unwrap_or(usize::MAX);
    // JSON may escape each byte of data as six (`\u0001`, or an emoji as
    // two such escapes of its four bytes): allow six times the data, which
    // is checked against `max_event_bytes` once decoded.
    let body_limit = max_event.saturating_mul(6).saturating_add(BODY_OVERHEAD);
    Router::new()
        .route("/", get(overview::dashboard_page))
        .route("/openapi.json", get(openapi::document))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/overview", get(overview::get_overview))
        .route("/v1/dashboard/stream", get(overview::dashboard_stream))
        .route(
            "/v1/topics",
            get(topics::list_topics).post(topics::create_topic),
        )
        .route(
            "/v1/topics/{name}",
            get(topics::get_topic)
                .patch(topics::update_topic)
                .delete(topics::delete_topic),
        )
        .route("/v1/topics/{name}/purge", post(topics::purge_topic))
        .route("/v1/topics/{name}/subjects", get(topics::list_subjects))
        .route("/v1/topics/{name}/events", post(publish::publish_event))
        .route("/v1/nodes", get(cluster::list_nodes))
        .fallback(|| async { Error::RouteNotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(BodyLimit(body_limit)))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Whether `given` equals the configured token, in time independent of
/// where they differ.
pub fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

/// The bearer-token gate, in front of every route but the public reads.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let public = matches!(*request.method(), Method::GET | Method::HEAD)
        && PUBLIC_PATHS.contains(&request.uri().path());
    if public {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme's name is case-insensitive (RFC 9110).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let admin = &state.config.admin;
    match given {
        Some(token) if token_matches(token.as_bytes(), admin.token.as_bytes()) => {
            next.run(request).await
        }
        Some(token)
            if !admin.publish_token.is_empty()
                && token_matches(token.as_bytes(), admin.publish_token.as_bytes()) =>
        {
            if request.method() == Method::POST && is_publish_path(request.uri().path()) {
                next.run(request).await
            } else {
                Error::PublishTokenOnly.into_response()
            }
        }
        _ => Error::Unauthorized.into_response(),
    }
}

/// Whether `path` is `/v1/topics/{name}/events`, the one route the publish
/// token opens.
fn is_publish_path(path: &str) -> bool {
    path.strip_prefix("/v1/topics/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// Parses a JSON body, one JSON object, into `T`, as a 400 naming what is
/// wrong.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    if let Some(why) = not_a_json_object(body) {
        return Err(Error::BadRequest(format!("invalid JSON body: {why}")));
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let parsed = deserialize(&mut json)?;
    // serde stops after the first value: a second one (NDJSON), or any
    // other bytes after it, would be dropped without a word.
    json.end().map_err(|err| {
        Error::BadRequest(format!(
            "invalid JSON body: {err}; send one JSON object per request"
        ))
    })?;
    Ok(parsed)
}

/// Why `body` cannot be one JSON object, when its first bytes tell: the
/// encodings and wrappers a client may send by mistake, and JSON values of
/// another kind (serde would take an array for an object, field by field).
fn not_a_json_object(body: &[u8]) -> Option<&'static str> {
    if body.starts_with(b"\xef\xbb\xbf") {
        return Some("it starts with a byte order mark; send UTF-8 without one");
    }
    if body.starts_with(b"\xff\xfe") || body.starts_with(b"\xfe\xff") {
        return Some("it is UTF-16; send UTF-8");
    }
    if body.starts_with(b"\x1f\x8b") {
        return Some("it is gzip-compressed; send it uncompressed");
    }
    match body.trim_ascii_start().first() {
        Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
            Some("the body must be a JSON object")
        }
        _ => None,
    }
}

/// `T` from `json`, as a 400 naming the field that is wrong, if one is.
fn deserialize<'de, T: serde::Deserialize<'de>>(
    json: &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
) -> Result<T, Error> {
    serde_path_to_error::deserialize(json).map_err(|err| {
        let path = err.path().to_string();
        // Where the body ends before a field is named, serde_path_to_error
        // shows `?`.
        let path = if path == "?" { String::new() } else { path };
        // serde names the Rust type it wanted ("expected struct
        // CreateTopic with 9 elements"): a client is told what to send.
        if err.inner().to_string().contains("expected struct ") {
            let place = if path.is_empty() || path == "." {
                "the body".to_owned()
            } else {
                path
            };
            return Error::BadRequest(format!("invalid JSON body: {place} must be a JSON object"));
        }
        if path.is_empty() || path == "." {
            Error::BadRequest(format!("invalid JSON body: {}", err.inner()))
        } else {
            Error::BadRequest(format!("invalid JSON body: {path}: {}", err.inner()))
        }
    })
}

/// The `{name}` of a topic's route; unlike axum's `Path`, a segment that is
/// not UTF-8 once decoded is a JSON 400 like every other error.
pub struct TopicPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for TopicPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(name)| TopicPath(name))
            .map_err(|rejection| {
                Error::BadRequest(format!("topic name in the path: {}", rejection.body_text()))
            })
    }
}

/// The most bytes a request body may hold, for the 413 to name.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Longest a client may take to send a request body once its head is read:
/// a body declared and never sent, or sent a byte at a time, would hold one
/// of admin's connections for good, and enough of them would fill admin's
/// connection limit. A publish body at the default limit (about 6 MiB) needs
/// 320 KB/s to arrive in time.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A request body, read whole: a `Content-Length` over the limit is answered
/// 413 from the head, without waiting for a body that would be refused, a
/// body that grows past it 413 as it arrives, and one not in within
/// [`BODY_READ_TIMEOUT`] 408.
pub struct BodyBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for BodyBytes {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Error> {
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map_or(0, |limit| limit.0);
        // hyper has refused a `Content-Length` that is no number already.
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > u64::try_from(limit).unwrap_or(u64::MAX)) {
            return Err(Error::BodyTooLarge { limit });
        }
        let read = tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(request, state));
        match read.await {
            Ok(Ok(body)) => Ok(BodyBytes(body)),
            Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Error::BodyTooLarge { limit })
            }
            Ok(Err(rejection)) => Err(Error::BadRequest(rejection.body_text())),
            Err(_) => Err(Error::BodyTimeout {
                seconds: BODY_READ_TIMEOUT.as_secs(),
            }),
        }
    }
}

/// A JSON body; unlike axum's `Json`, every problem is a JSON 400 (or 413
/// for a body over the limit, 408 for one too slow, as [`BodyBytes`]), and
/// no `Content-Type` is demanded.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Error> {
        let BodyBytes(body) = BodyBytes::from_request(request, state).await?;
        if body.is_empty() {
            return Err(Error::BadRequest("a JSON body is required".to_owned()));
        }
        parse_json(&body).map(JsonBody)
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// Liveness: the process answers.
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    nats_connected: bool,
    shutting_down: bool,
}

/// Readiness: NATS connected and not shutting down.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let nats_connected = state.nats_connected();
    let shutting_down = state.shutdown.is_cancelled();
    let ready = nats_connected && !shutting_down;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            nats_connected,
            shutting_down,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of the wrong JSON kind is told to be an object, without the
    /// name of a Rust type.
    #[test]
    fn a_body_that_is_no_object_is_told_so() {
        #[derive(Debug, serde::Deserialize)]
        struct Wanted {
            _name: String,
        }
        for body in [&b"[]"[..], b"\"x\"", b"7"] {
            let Err(Error::BadRequest(message)) = parse_json::<Wanted>(body) else {
                panic!("{body:?} accepted");
            };
            assert_eq!(message, "invalid JSON body: the body must be a JSON object");
        }
    }

    /// A body is one JSON object and nothing after it: a second object
    /// (NDJSON) or other bytes were dropped while the first was published.
    #[test]
    fn a_body_is_one_object_and_nothing_more() {
        #[derive(Debug, serde::Deserialize)]
        struct Wanted {
            _data: String,
        }
        assert!(parse_json::<Wanted>(b" {\"_data\":\"x\"}\n").is_ok());
        for (body, told) in [
            (
                &b"{\"_data\":\"x\"}\n{\"_data\":\"y\"}"[..],
                "trailing characters",
            ),
            (b"{\"_data\":\"x\"} junk", "trailing characters"),
            (b"[null]", "must be a JSON object"),
            (b"\xef\xbb\xbf{\"_data\":\"x\"}", "byte order mark"),
            (b"\xff\xfe{\0", "UTF-16"),
            (b"\x1f\x8b\x08\0", "gzip"),
        ] {
            let Err(Error::BadRequest(message)) = parse_json::<Wanted>(body) else {
                panic!("{body:?} accepted");
            };
            assert!(message.contains(told), "{body:?}: {message}");
        }
        let Err(Error::BadRequest(message)) = parse_json::<Wanted>(b"{\"_data\":") else {
            panic!("a cut body accepted");
        };
        assert!(!message.contains('?'), "{message}");
    }

    #[test]
    fn the_publish_token_opens_the_publish_route_only() {
        assert!(is_publish_path("/v1/topics/orders/events"));
        for other in [
            "/v1/topics/orders",
            "/v1/topics//events",
            "/v1/topics/orders/purge",
            "/v1/topics/a/b/events",
            "/v1/topics/orders/events/x",
            "/v1/nodes",
        ] {
            assert!(!is_publish_path(other), "{other}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secre", b"secret"));
        assert!(!token_matches(b"secret2", b"secret"));
        assert!(!token_matches(b"", b"secret"));
        assert!(!token_matches(b"Secret", b"secret"));
    }
}
