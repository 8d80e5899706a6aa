//! The read-only overview and the dashboard.
//!
//! - `GET /` is the dashboard: one HTML page embedded in the binary, plain
//!   JavaScript, no build step.
//! - `GET /v1/overview` is a JSON [`Overview`] snapshot: topics with their
//!   counts, live nodes, cluster totals.
//! - `GET /v1/dashboard/stream` is an SSE stream sending an `overview` event
//!   with the same snapshot every `admin.dashboard_interval_ms`. The page
//!   reads it with `EventSource`; rates (events per second) are computed in
//!   the page from the change between two snapshots.
//!
//! These three need no token: the dashboard must work without anyone typing
//! one, and they only read figures operators may see anyway. Every write
//! stays behind the token. One snapshot is computed per half interval at
//! most, whatever the number of viewers, and the number of open streams is
//! capped (`admin.max_dashboard_streams`, 503 beyond).

use std::{convert::Infallible, sync::Arc, time::Duration, time::Instant};

use axum::{
    Json,
    extract::State,
    http::header,
    response::{
        Html, IntoResponse,
        sse::{Event, Sse},
    },
};
use futures_util::{Stream, StreamExt, stream};
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use utoipa::ToSchema;

use crate::{
    cluster::{self, NodeReport},
    error::Error,
    state::AppState,
    topics::{self, Access},
};

/// The dashboard page.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// One topic in the overview.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicBrief {
    /// Topic name.
    pub name: String,
    /// Access.
    pub access: Access,
    /// Events held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Newest sequence: its change over time is the publish rate.
    pub last_sequence: u64,
    /// Subscribers summed over live nodes.
    pub subscribers: u64,
}

/// A snapshot of the whole cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    /// When the snapshot was taken, RFC 3339.
    pub generated_at: String,
    /// Whether admin is connected to NATS.
    pub nats_connected: bool,
    /// What could not be read, if anything.
    pub error: Option<String>,
    /// Topics, by name.
    pub topics: Vec<TopicBrief>,
    /// Live nodes, by id.
    pub nodes: Vec<NodeReport>,
    /// Live nodes that are not silent (two reports late: killed, or cut
    /// off from NATS, until their entries expire).
    pub nodes_live: u64,
    /// Live nodes that are silent.
    pub nodes_silent: u64,
    /// Whether the node reports could be read; when not, the node counts,
    /// connections and subscribers are unknown, not zero.
    pub nodes_read: bool,
    /// Open connections over live nodes that are not silent.
    pub connections: u64,
    /// Events delivered over live nodes that are not silent, since each
    /// started.
    pub events_delivered: u64,
}

/// Reads a fresh snapshot; parts that cannot be read are left empty and
/// named in `error`.
pub async fn snapshot(state: &AppState) -> Overview {
    snapshot_and_nodes_read(state).await.0
}

/// A snapshot, and whether the node reports could be read: when not, its
/// count of live nodes is no count at all.
pub async fn snapshot_and_nodes_read(state: &AppState) -> (Overview, bool) {
    let mut errors = Vec::new();
    let (nodes, nodes_read) = match cluster::live_nodes(state).await {
        Ok(nodes) => (nodes, true),
        Err(err) => {
            errors.push(format!("nodes: {err}"));
            (Vec::new(), false)
        }
    };
    let subs = cluster::subscribers_by_topic(&nodes);
    let topics = match topics::list_infos(state).await {
        Ok(listing) => {
            if !listing.unavailable.is_empty() {
                let names: Vec<&str> = listing.unavailable.iter().map(|t| t.as_str()).collect();
                errors.push(format!(
                    "topics: the streams of {} did not answer (their NATS servers down, or no leader)",
                    names.join(", ")
                ));
            }
            listing
                .topics
                .into_iter()
                .map(|(topic, info)| TopicBrief {
                    subscribers: subs.get(topic.as_str()).copied().unwrap_or(0),
                    name: topic.to_string(),
                    access: Access::from_metadata(&info.config.metadata),
                    messages: info.state.messages,
                    bytes: info.state.bytes,
                    last_sequence: info.state.last_sequence,
                })
                .collect()
        }
        Err(err) => {
            errors.push(format!("topics: {err}"));
            Vec::new()
        }
    };
    let now = OffsetDateTime::now_utc();
    let serving: Vec<&NodeReport> = cluster::serving(&nodes, now).collect();
    let overview = Overview {
        generated_at: OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default(),
        nats_connected: state.nats_connected(),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        nodes_live: serving.len() as u64,
        nodes_silent: (nodes.len() - serving.len()) as u64,
        nodes_read,
        connections: serving.iter().map(|n| n.connections).sum(),
        events_delivered: serving.iter().map(|n| n.events_delivered).sum(),
        topics,
        nodes,
    };
    (overview, nodes_read)
}

/// A snapshot no older than `max_age`, shared by concurrent callers.
pub async fn shared_snapshot(state: &AppState, max_age: Duration) -> Arc<Overview> {
    let mut cached = state.overview.lock().await;
    if let Some((at, overview)) = cached.as_ref()
        && at.elapsed() < max_age
    {
        return overview.clone();
    }
    let fresh = Arc::new(snapshot(state).await);
    *cached = Some((Instant::now(), fresh.clone()));
    fresh
}

fn interval(state: &AppState) -> Duration {
    Duration::from_millis(state.config.admin.dashboard_interval_ms)
}

/// Read-only cluster overview (no token needed).
#[utoipa::path(
    get, path = "/v1/overview", tag = "dashboard",
    responses((status = 200, description = "A snapshot", body = Overview))
)]
pub async fn get_overview(State(state): State<AppState>) -> Json<Overview> {
    let overview = shared_snapshot(&state, interval(&state) / 2).await;
    Json((*overview).clone())
}

/// Live overview: an SSE stream of `overview` events (no token needed).
#[utoipa::path(
    get, path = "/v1/dashboard/stream", tag = "dashboard",
    responses(
        (status = 200, description = "`text/event-stream` of `overview` events, each an Overview", content_type = "text/event-stream"),
        (status = 503, description = "Too many streams open", body = crate::error::ErrorBody),
    )
)]
pub async fn dashboard_stream(State(state): State<AppState>) -> Result<impl IntoResponse, Error> {
    let permit = state
        .dashboard_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| Error::Busy)?;
    let every = interval(&state);
    let shutdown = state.shutdown.clone();
    let events = stream::unfold(
        (state, permit, true),
        move |(state, permit, first)| async move {
            if !first {
                tokio::time::sleep(every).await;
            }
            let overview = shared_snapshot(&state, every / 2).await;
            let event = Event::default()
                .event("overview")
                .json_data(&*overview)
                .unwrap_or_else(|_| Event::default().comment("snapshot failed"));
            Some((Ok::<_, Infallible>(event), (state, permit, false)))
        },
    );
    // The stream ends on shutdown, or graceful shutdown would wait forever.
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(events.take_until(shutdown.cancelled_owned()));
    Ok((
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Sse::new(events),
    ))
}

/// The dashboard page.
pub async fn dashboard_page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(DASHBOARD_HTML))
}
