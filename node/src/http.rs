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
//! precise status: 400 for a malformed request, 404 for an unknown topic,
//! 503 with `Retry-After` when the node is full, draining or without NATS.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use sse_protocol::{Cursor, SubjectPath, TopicName};

use crate::{
    node::Node,
    subscriber::{ClientStream, TopicRequest},
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
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
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
        response
    }
}

/// The node's router.
pub fn router(node: Node) -> Router {
    Router::new()
        .route("/v1/events", get(events))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(node)
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
    State(node): State<Node>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match open_stream(&node, &headers, query.as_deref().unwrap_or("")).await {
        Ok(response) => response,
        Err(error) => {
            node.metrics()
                .requests_rejected
                .with_label_values(&[error.status.as_str()])
                .inc();
            error.into_response()
        }
    }
}

/// What a stream request asks for, once validated.
struct StreamRequest {
    topics: BTreeMap<TopicName, Vec<SubjectPath>>,
    order: Vec<TopicName>,
    cursor: Option<Cursor>,
}

fn parse_request(node: &Node, headers: &HeaderMap, query: &str) -> Result<StreamRequest, ApiError> {
    let http = &node.config().http;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|e| {
        ApiError::bad_request("bad_query", format!("query string is malformed: {e}"))
    })?;
    let mut paths = Vec::new();
    let mut query_id = None;
    for (key, value) in pairs {
        match key.as_str() {
            "topic" => paths.push(value),
            "lastEventId" => query_id = Some(value),
            _ => {}
        }
    }
    if paths.is_empty() {
        return Err(ApiError::bad_request(
            "missing_topic",
            "give at least one topic: /v1/events?topic=<path>",
        ));
    }
    if paths.len() > http.max_topics_per_connection {
        return Err(ApiError::bad_request(
            "too_many_topics",
            format!(
                "{} topic parameters given; at most {} are allowed",
                paths.len(),
                http.max_topics_per_connection
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
    let header_id = match headers.get("last-event-id") {
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
    let id = header_id.or(query_id).filter(|id| !id.trim().is_empty());
    let cursor = match id {
        None => None,
        Some(id) if id.len() > http.max_last_event_id_bytes => {
            return Err(ApiError::bad_request(
                "last_event_id_too_long",
                format!(
                    "Last-Event-ID is {} bytes long; at most {} are allowed",
                    id.len(),
                    http.max_last_event_id_bytes
                ),
            ));
        }
        Some(id) => Some(
            Cursor::parse(id.trim())
                .map_err(|e| ApiError::bad_request("bad_last_event_id", e.to_string()))?,
        ),
    };
    Ok(StreamRequest {
        topics,
        order,
        cursor,
    })
}

async fn open_stream(node: &Node, headers: &HeaderMap, query: &str) -> Result<Response, ApiError> {
    if node.is_draining() {
        return Err(ApiError::unavailable(
            "draining",
            "this node is shutting down; reconnect to another",
            1,
        ));
    }
    let mut request = parse_request(node, headers, query)?;
    let mut attached = Vec::with_capacity(request.order.len());
    for topic in &request.order {
        let feed = node.topics().get(topic).await.map_err(|e| match e {
            LookupError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_topic", e.to_string())
            }
            LookupError::Unavailable(_) => {
                ApiError::unavailable("nats_unavailable", e.to_string(), 2)
            }
        })?;
        let patterns = request.topics.remove(topic).unwrap_or_default();
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
            },
            feed,
        ));
    }
    if !node.try_open_connection() {
        return Err(ApiError::unavailable(
            "node_full",
            format!(
                "this node holds its maximum of {} streams; retry, the load balancer will pick another",
                node.config().http.max_connections
            ),
            1,
        ));
    }
    let stream = ClientStream::open(node.clone(), attached);
    let mut response = Response::new(Body::from_stream(stream.into_body_stream()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
