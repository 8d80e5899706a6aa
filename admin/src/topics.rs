//! Topics: one JetStream stream `SSE_<topic>` each, capturing
//! `<prefix>.<topic>` and `<prefix>.<topic>.>`.
//!
//! A topic exists exactly when its stream exists; its settings are the
//! stream's config, and its access (which JetStream has no field for) is the
//! stream metadata key `sse.access` ([`ACCESS_METADATA_KEY`]). There is no second registry.
//!
//! Limits are given as positive numbers; `0` means "no limit" both ways.

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
    response::IntoResponse,
};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
pub use sse_protocol::Access;
use sse_protocol::{SubjectPath, TopicName, grant::ACCESS_METADATA_KEY, topic::live_republish};
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use crate::{
    cluster,
    error::Error,
    http::{BodyBytes, JsonBody, TopicPath},
    state::AppState,
};

/// JetStream's default de-duplication window; shortened to `max_age` when
/// that is smaller, as JetStream requires.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Subject paths returned per page when `limit` is not given.
const DEFAULT_PAGE: usize = 100;
/// Largest page of subject paths.
const MAX_PAGE: usize = 1000;

/// Where a topic's events are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk (the default).
    File,
    /// In memory: lost when the server restarts.
    Memory,
}

/// Body of `POST /v1/topics`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    /// Topic name, `[a-z0-9_-]{1,64}`.
    #[schema(pattern = r"^[a-z0-9_-]{1,64}$")]
    pub name: String,
    /// Events older than this are dropped; 0 or absent: kept forever.
    pub max_age_seconds: Option<u64>,
    /// Oldest events are dropped beyond this many bytes; 0 or absent: no limit.
    pub max_bytes: Option<u64>,
    /// Oldest events are dropped beyond this many; 0 or absent: no limit.
    pub max_messages: Option<u64>,
    /// Events kept per subject path; 0 or absent: no limit.
    pub max_messages_per_subject: Option<u64>,
    /// Largest single event (its data and headers) the topic stores; a
    /// larger publish is refused (by admin with 413). At least 1024; 0 or
    /// absent: the NATS server's `max_payload` (1 MiB by default).
    #[schema(maximum = 2147483647)]
    pub max_message_bytes: Option<u64>,
    /// 1 or 3; default 1.
    #[schema(schema_with = replicas_schema)]
    pub replicas: Option<u64>,
    /// Consumers the topic's stream may hold: each node reading the topic
    /// holds a few (its feeds and the resumes under way). Absent:
    /// `admin.topic_max_consumers`; 0: the NATS server's default.
    #[schema(maximum = 2147483647)]
    pub max_consumers: Option<u64>,
    /// `file` (default) or `memory`.
    pub storage: Option<Storage>,
    /// `public` (default) or `private`.
    pub access: Option<Access>,
}

/// `replicas`: JetStream takes 1 or 3 here (an R2 stream loses its leader
/// with either server), absent or `null` for the default.
fn replicas_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
        .enum_values(Some([
            serde_json::json!(1),
            serde_json::json!(3),
            serde_json::Value::Null,
        ]))
        .description(Some("1 or 3; default 1."))
        .build()
}

/// Body of `PATCH /v1/topics/{name}`: retention and access. Absent fields
/// keep their value; for limits, 0 means no limit.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTopic {
    /// New maximum age in seconds.
    pub max_age_seconds: Option<u64>,
    /// New byte limit.
    pub max_bytes: Option<u64>,
    /// New event-count limit.
    pub max_messages: Option<u64>,
    /// New per-subject-path limit.
    pub max_messages_per_subject: Option<u64>,
    /// New largest single event, at least 1024; 0: the NATS server's
    /// `max_payload`.
    #[schema(maximum = 2147483647)]
    pub max_message_bytes: Option<u64>,
    /// New consumer limit; 0: the NATS server's default.
    #[schema(maximum = 2147483647)]
    pub max_consumers: Option<u64>,
    /// New access.
    pub access: Option<Access>,
}

/// Body of `POST /v1/topics/{name}/purge` (the body is optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeTopic {
    /// Purge only this subject path (wildcards allowed), e.g. `orders.42`.
    pub subject: Option<String>,
}

/// What a purge removed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Purged {
    /// Events removed.
    pub purged: u64,
}

/// A topic's settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicSettings {
    /// Maximum age in seconds; 0: no limit.
    pub max_age_seconds: u64,
    /// Byte limit; 0: no limit.
    pub max_bytes: u64,
    /// Event-count limit; 0: no limit.
    pub max_messages: u64,
    /// Per-subject-path limit; 0: no limit.
    pub max_messages_per_subject: u64,
    /// Largest single event JetStream accepts; 0: the server's limit.
    pub max_message_bytes: u64,
    /// Replicas.
    pub replicas: u64,
    /// Consumers the stream may hold; 0: the NATS server's default (1,000
    /// since NATS 2.15).
    pub max_consumers: u64,
    /// Storage.
    pub storage: Storage,
    /// Access.
    pub access: Access,
}

/// A topic with its current state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Topic {
    /// Topic name.
    pub name: String,
    /// The JetStream stream.
    pub stream: String,
    /// The NATS subjects the stream captures.
    pub subjects: Vec<String>,
    /// When the stream was created, RFC 3339.
    pub created: String,
    /// The stream incarnation, as used in event ids.
    pub epoch: String,
    /// Settings.
    pub settings: TopicSettings,
    /// Events held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Sequence of the oldest event held.
    pub first_sequence: u64,
    /// Sequence of the newest event.
    pub last_sequence: u64,
    /// Distinct subject paths holding events.
    pub subject_paths: u64,
    /// Clients subscribed to the topic, summed over live nodes.
    pub subscribers: u64,
    /// Where JetStream keeps the topic: its stream's leader, and each other
    /// replica with its health. Absent when NATS did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// The NATS servers that hold a topic's stream.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Placement {
    /// The server that leads the stream's Raft group; absent while there
    /// is none (an election, or too few servers up for a quorum).
    pub leader: Option<String>,
    /// The other servers with a copy (none for one replica).
    pub replicas: Vec<Replica>,
}

/// A follower of a topic's stream, as its leader sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Replica {
    /// The NATS server's name.
    pub server: String,
    /// Up to date with the leader.
    pub current: bool,
    /// Known to be down.
    pub offline: bool,
    /// Milliseconds since the leader last heard from it.
    pub last_seen_ms: u64,
    /// Operations it is behind the leader.
    pub lag: u64,
}

impl Placement {
    fn from_cluster(cluster: &stream::ClusterInfo) -> Self {
        Self {
            leader: cluster.leader.clone().filter(|l| !l.is_empty()),
            replicas: cluster
                .replicas
                .iter()
                .map(|peer| Replica {
                    server: peer.name.clone(),
                    current: peer.current,
                    offline: peer.offline,
                    last_seen_ms: u64::try_from(peer.active.as_millis()).unwrap_or(u64::MAX),
                    lag: peer.lag.unwrap_or(0),
                })
                .collect(),
        }
    }
}

/// `GET /v1/topics`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicList {
    /// The topics, by name: all of them, or the page asked for.
    pub topics: Vec<Topic>,
    /// Topics that exist but whose streams did not answer (their NATS
    /// servers down, no leader), by name: not in `topics` until they do.
    /// Never paged.
    #[serde(default)]
    pub unavailable: Vec<String>,
    /// Topics listed before paging.
    #[serde(default)]
    pub total: u64,
    /// The page's size, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Topics skipped before the page, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
}

/// Paging of `GET /v1/topics/{name}/subjects`, and of `GET /v1/topics`,
/// which without either lists every topic.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Entries per page, 1 to 1000; default 100 (`GET /v1/topics` with
    /// neither `limit` nor `offset`: every topic).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Entries to skip; default 0.
    pub offset: Option<usize>,
}

/// One subject path and its event count.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubjectCount {
    /// The path, e.g. `orders.42`.
    pub subject: String,
    /// Events held under it.
    pub messages: u64,
}

/// A page of subject paths, sorted by path.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubjectPage {
    /// This page.
    pub subjects: Vec<SubjectCount>,
    /// Paths in the topic.
    pub total: u64,
    /// The limit applied.
    pub limit: usize,
    /// The offset applied.
    pub offset: usize,
}

/// Parses a topic name from a path or body, as a 400 when bad.
pub fn parse_topic(name: &str) -> Result<TopicName, Error> {
    TopicName::parse(name).map_err(|err| Error::BadRequest(err.to_string()))
}

fn limit_to_i64(key: &str, value: u64) -> Result<i64, Error> {
    match value {
        0 => Ok(-1),
        v => i64::try_from(v).map_err(|_| Error::BadRequest(format!("{key} is too large"))),
    }
}

fn limit_from_i64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The smallest `max_message_bytes` a topic may have: below it, the
/// headers of an event published through admin leave no room for its data.
const MIN_MESSAGE_BYTES: u64 = 1024;

/// A largest event as JetStream takes it: -1 leaves the server's
/// `max_payload` as the bound.
fn message_size_limit(value: u64) -> Result<i32, Error> {
    match value {
        0 => Ok(-1),
        v if v < MIN_MESSAGE_BYTES => Err(Error::BadRequest(format!(
            "max_message_bytes is {v}; at least {MIN_MESSAGE_BYTES}, as an event's NATS headers (its id for de-duplication, its name, a trace context) count too, or 0 for the NATS server's max_payload"
        ))),
        v => i32::try_from(v).map_err(|_| {
            Error::BadRequest(format!(
                "max_message_bytes is {v}; at most {} (0: the NATS server's max_payload)",
                i32::MAX
            ))
        }),
    }
}

/// Refuses a `max_bytes` below the largest event the topic takes: such an
/// event is stored, acknowledged and dropped at once to keep the stream
/// within `max_bytes`, and its subscribers never see it nor hear of it.
/// `max_payload` is the NATS server's (0 before it first answered: the
/// bound is then NATS's default, 1 MiB).
fn check_room(config: &stream::Config, max_payload: usize) -> Result<(), Error> {
    let Ok(max_bytes @ 1..) = u64::try_from(config.max_bytes) else {
        return Ok(());
    };
    let (largest, whose) = match u64::try_from(config.max_message_size) {
        Ok(size @ 1..) => (size, "its max_message_bytes"),
        _ => (
            match max_payload {
                0 => 1 << 20,
                bytes => bytes as u64,
            },
            "the NATS server's max_payload, as max_message_bytes is not set",
        ),
    };
    if max_bytes < largest {
        return Err(Error::BadRequest(format!(
            "max_bytes is {max_bytes}, below the largest event the topic takes ({largest} bytes, {whose}): such an event would be dropped as soon as it is stored, unseen by subscribers; raise max_bytes, or set max_message_bytes to at most {max_bytes}"
        )));
    }
    Ok(())
}

/// A consumer limit as JetStream takes it: -1 leaves the server's default.
fn consumer_limit(value: u64) -> Result<i32, Error> {
    match value {
        0 => Ok(-1),
        v => i32::try_from(v)
            .map_err(|_| Error::BadRequest(format!("max_consumers is {v}; at most {}", i32::MAX))),
    }
}

/// Applies a maximum age, keeping the duplicate window inside it. A
/// window longer than the default, set on the stream by hand, is kept as far
/// as the age allows; a shorter one (an earlier, shorter age's) grows back
/// to the default.
fn set_max_age(config: &mut stream::Config, seconds: u64) -> Result<(), Error> {
    if seconds > 100 * 365 * 24 * 3600 {
        return Err(Error::BadRequest(
            "max_age_seconds is too large (at most 100 years)".to_owned(),
        ));
    }
    config.max_age = Duration::from_secs(seconds);
    let window = config.duplicate_window.max(DUPLICATE_WINDOW);
    config.duplicate_window = if seconds == 0 {
        window
    } else {
        window.min(config.max_age)
    };
    Ok(())
}

/// The stream config for a new topic.
fn stream_config(
    topic: &TopicName,
    prefix: &str,
    body: &CreateTopic,
    default_max_consumers: u64,
) -> Result<stream::Config, Error> {
    let replicas = match body.replicas.unwrap_or(1) {
        r @ (1 | 3) => r as usize,
        other => {
            return Err(Error::BadRequest(format!(
                "replicas is {other}; it must be 1 or 3"
            )));
        }
    };
    let mut config = stream::Config {
        name: topic.stream_name(),
        subjects: topic.stream_subjects(prefix),
        description: Some(format!("sse-cluster topic {topic}")),
        max_bytes: limit_to_i64("max_bytes", body.max_bytes.unwrap_or(0))?,
        max_messages: limit_to_i64("max_messages", body.max_messages.unwrap_or(0))?,
        max_messages_per_subject: limit_to_i64(
            "max_messages_per_subject",
            body.max_messages_per_subject.unwrap_or(0),
        )?,
        max_message_size: message_size_limit(body.max_message_bytes.unwrap_or(0))?,
        num_replicas: replicas,
        max_consumers: consumer_limit(body.max_consumers.unwrap_or(default_max_consumers))?,
        storage: match body.storage.unwrap_or(Storage::File) {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        },
        discard: DiscardPolicy::Old,
        // Nodes read recent history with direct get.
        allow_direct: true,
        republish: Some(live_republish(prefix)),
        metadata: HashMap::from([
            (
                ACCESS_METADATA_KEY.to_owned(),
                body.access.unwrap_or(Access::Public).as_str().to_owned(),
            ),
            // JetStream answers a create whose config equals the stream's as
            // a success; a mark of its own makes each create's config
            // differ, so of two at once one gets "exists".
            (
                CREATE_ID_METADATA_KEY.to_owned(),
                format!("{:016x}", fastrand::u64(..)),
            ),
        ]),
        ..Default::default()
    };
    set_max_age(&mut config, body.max_age_seconds.unwrap_or(0))?;
    Ok(config)
}

/// Stream metadata key marking the create request that made the stream.
pub const CREATE_ID_METADATA_KEY: &str = "sse.create_id";

/// Gives every topic whose stream does not republish its events the
/// republish ([`live_republish`]), so that topics made by an earlier
/// version read sparse events as cheaply as new ones, without an update
/// each. Runs once NATS answers, again every few seconds (up to 30) until a
/// listing of the topics succeeds; a stream that refuses is logged and left
/// as it is.
pub async fn republish_older_topics(state: AppState) {
    let mut pause = Duration::from_secs(1);
    loop {
        match list_infos(&state).await {
            Ok(listing) => {
                let mut added = 0usize;
                for (topic, info) in listing.topics {
                    if info.config.republish.is_some() {
                        continue;
                    }
                    let mut config = info.config;
                    config.republish = Some(live_republish(state.prefix()));
                    match state.jetstream.update_stream(&config).await {
                        Ok(_) => {
                            added += 1;
                            state.forget_stream(&config.name);
                        }
                        Err(error) => {
                            tracing::warn!(%topic, %error, "cannot give the topic's stream its republish; its feeds read with direct gets")
                        }
                    }
                }
                if added > 0 {
                    tracing::info!(topics = added, "older topics now republish their events");
                }
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "cannot list topics to give older ones their republish yet")
            }
        }
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// Whether a stream is one of this deployment's topics: named `SSE_<topic>`
/// and storing subjects of the topic (`<prefix>.<topic>` or under it), as
/// nodes serve it. A stream made by hand with `<prefix>.<topic>.>` alone is
/// a topic too.
pub fn topic_of_stream(config: &stream::Config, prefix: &str) -> Option<TopicName> {
    let topic = TopicName::from_stream_name(&config.name)?;
    let own = format!("{prefix}.{topic}");
    let under = format!("{own}.");
    let of_topic = |subject: &String| *subject == own || subject.starts_with(&under);
    config.subjects.iter().any(of_topic).then_some(topic)
}

/// The API view of a stream.
pub fn topic_view(topic: &TopicName, info: &stream::Info, subscribers: u64) -> Topic {
    let c = &info.config;
    Topic {
        name: topic.to_string(),
        stream: c.name.clone(),
        subjects: c.subjects.clone(),
        created: info.created.format(&Rfc3339).unwrap_or_default(),
        epoch: sse_protocol::cursor::epoch_from_unix_nanos(info.created.unix_timestamp_nanos()),
        settings: TopicSettings {
            max_age_seconds: c.max_age.as_secs(),
            max_bytes: limit_from_i64(c.max_bytes),
            max_messages: limit_from_i64(c.max_messages),
            max_messages_per_subject: limit_from_i64(c.max_messages_per_subject),
            max_message_bytes: u64::try_from(c.max_message_size).unwrap_or(0),
            replicas: c.num_replicas as u64,
            max_consumers: u64::try_from(c.max_consumers).unwrap_or(0),
            storage: match c.storage {
                StorageType::Memory => Storage::Memory,
                StorageType::File => Storage::File,
            },
            access: Access::from_metadata(&c.metadata),
        },
        messages: info.state.messages,
        bytes: info.state.bytes,
        first_sequence: info.state.first_sequence,
        last_sequence: info.state.last_sequence,
        subject_paths: info.state.subjects_count,
        subscribers,
        placement: info.cluster.as_ref().map(Placement::from_cluster),
    }
}

/// Reads a topic's stream info; 404 when the stream does not exist.
pub async fn stream_info(state: &AppState, topic: &TopicName) -> Result<stream::Info, Error> {
    let stream = state
        .jetstream()?
        .get_stream(topic.stream_name())
        .await
        .map_err(|err| Error::from_get_stream(&err, topic.as_str()))?;
    Ok(stream.cached_info().clone())
}

/// Every topic's stream info, sorted by topic name, and the topics whose
/// streams did not answer.
#[derive(Debug, Default)]
pub struct Listing {
    /// Topics whose streams answered, by name.
    pub topics: Vec<(TopicName, stream::Info)>,
    /// Topics whose streams exist but did not answer (their servers down,
    /// no leader), by name: they are not gone, and a listing says so.
    pub unavailable: Vec<TopicName>,
}

/// How long a stream the listing left out may take to answer on its own.
const MISSING_STREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Lists every topic's stream info. JetStream's listing leaves out streams
/// whose servers do not answer and pages by how many it returned, so a
/// page after such a gap repeats streams: each stream is kept once, and a
/// topic stream that JetStream names but did not list is asked about on its
/// own, then reported as unavailable if it does not answer either.
pub async fn list_infos(state: &AppState) -> Result<Listing, Error> {
    let js = state.jetstream()?;
    let unavailable_nats = |err: &dyn std::fmt::Display| {
        Error::NatsUnavailable(format!("listing streams failed: {err}"))
    };
    // Asked at once: with a server down each may take up to the request
    // time-out, and a listing must answer before a client gives up.
    let (names, infos) = tokio::join!(
        js.stream_names().try_collect::<Vec<String>>(),
        sse_protocol::stream_list::stream_infos(js),
    );
    let names = names.map_err(|err| unavailable_nats(&err))?;
    let infos = infos.map_err(|err| unavailable_nats(&err))?;
    let mut listed: HashMap<String, stream::Info> = HashMap::new();
    for info in infos {
        listed.entry(info.config.name.clone()).or_insert(info);
    }
    let missing: Vec<String> = names
        .into_iter()
        .filter(|name| TopicName::from_stream_name(name).is_some() && !listed.contains_key(name))
        .collect();
    let mut unavailable = Vec::new();
    let answers =
        futures_util::future::join_all(missing.iter().map(|name| {
            tokio::time::timeout(MISSING_STREAM_TIMEOUT, js.get_stream(name.as_str()))
        }))
        .await;
    for (name, answer) in missing.into_iter().zip(answers) {
        match answer {
            Ok(Ok(stream)) => {
                listed.insert(name, stream.cached_info().clone());
            }
            // Named by the cluster's metadata, yet not found: a stream
            // whose servers are all down may be answered so. One deleted
            // in between shows as unavailable for this listing only.
            _ => unavailable.extend(TopicName::from_stream_name(&name)),
        }
    }
    let mut topics: Vec<_> = listed
        .into_values()
        .filter_map(|info| topic_of_stream(&info.config, state.prefix()).map(|t| (t, info)))
        .collect();
    topics.sort_by(|a, b| a.0.cmp(&b.0));
    unavailable.sort();
    if !unavailable.is_empty() {
        tracing::warn!(topics = ?unavailable.iter().map(TopicName::as_str).collect::<Vec<_>>(), "topic streams exist but did not answer; listed as unavailable");
    }
    Ok(Listing {
        topics,
        unavailable,
    })
}

/// Subscribers per topic over live nodes; an unreadable cluster view counts
/// as none rather than failing a topic read.
async fn subscribers(state: &AppState) -> HashMap<String, u64> {
    // Bounded: the node reports' bucket may be electing a leader, and the
    // topics are worth more than their subscriber counts.
    match tokio::time::timeout(SUBSCRIBERS_TIMEOUT, cluster::live_nodes(state)).await {
        Ok(Ok(nodes)) => cluster::subscribers_by_topic(&nodes),
        Ok(Err(err)) => {
            tracing::debug!(%err, "node reports unavailable; subscribers shown as 0");
            HashMap::new()
        }
        Err(_) => {
            tracing::debug!("node reports did not come in time; subscribers shown as 0");
            HashMap::new()
        }
    }
}

/// Longest a topic read waits for the node reports that count subscribers.
const SUBSCRIBERS_TIMEOUT: Duration = Duration::from_secs(3);

/// Create a topic.
#[utoipa::path(
    post, path = "/v1/topics", tag = "topics",
    request_body = CreateTopic,
    responses(
        (status = 201, description = "Topic created", body = Topic),
        (status = 400, description = "Bad name or value", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::error::ErrorBody),
        (status = 403, description = "The publish token, which opens publishing only", body = crate::error::ErrorBody),
        (status = 409, description = "Topic exists", body = crate::error::ErrorBody),
        (status = 408, description = "Request body not sent in time", body = crate::error::ErrorBody),
        (status = 413, description = "Request body too large", body = crate::error::ErrorBody),
        (status = 503, description = "NATS unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_topic(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateTopic>,
) -> Result<impl IntoResponse, Error> {
    let topic = parse_topic(&body.name)?;
    let config = stream_config(
        &topic,
        state.prefix(),
        &body,
        state.config.admin.topic_max_consumers,
    )?;
    check_room(&config, state.client.server_info().max_payload)?;
    let js = state.jetstream()?;
    // JetStream answers a create with an identical config as a success, so
    // an existing stream is looked for first.
    match js.get_stream(topic.stream_name()).await {
        Ok(_) => return Err(Error::TopicExists(topic.to_string())),
        Err(err) => match Error::from_get_stream(&err, topic.as_str()) {
            Error::TopicNotFound(_) => {}
            other => return Err(other),
        },
    }
    let stream = js
        .create_stream(config.clone())
        .await
        .map_err(|err| Error::from_create_stream(&err, topic.as_str(), &config))?;
    tracing::info!(%topic, "topic created");
    Ok((
        StatusCode::CREATED,
        Json(topic_view(&topic, stream.cached_info(), 0)),
    ))
}

/// List topics.
#[utoipa::path(
    get, path = "/v1/topics", tag = "topics",
    params(Page),
    responses(
        (status = 200, description = "All topics, or a page of them", body = TopicList),
        (status = 400, description = "Bad paging", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::error::ErrorBody),
        (status = 403, description = "The publish token, which opens publishing only", body = crate::error::ErrorBody),
        (status = 503, description = "NATS unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_topics(
    State(state): State<AppState>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<TopicList>, Error> {
    let Query(page) = page.map_err(|e| Error::BadRequest(e.body_text()))?;
    let paged = page.limit.is_some() || page.offset.is_some();
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::BadRequest(format!(
            "limit is {limit}; it must be between 1 and {MAX_PAGE}"
        )));
    }
    let offset = page.offset.unwrap_or(0);
    let listing = list_infos(&state).await?;
    let subs = subscribers(&state).await;
    // A nats-server of no cluster lists its streams without a cluster
    // block (a stream's own info has one): each is on that server.
    let standalone = state.jetstream().ok().and_then(|js| {
        let server = js.client().server_info();
        server.cluster.is_none().then_some(server.server_name)
    });
    let total = listing.topics.len() as u64;
    let (skip, take) = if paged {
        (offset, limit)
    } else {
        (0, usize::MAX)
    };
    let topics = listing
        .topics
        .iter()
        .skip(skip)
        .take(take)
        .map(|(t, info)| {
            let mut view = topic_view(t, info, subs.get(t.as_str()).copied().unwrap_or(0));
            if view.placement.is_none()
                && let Some(server) = &standalone
            {
                view.placement = Some(Placement {
                    leader: Some(server.clone()),
                    replicas: Vec::new(),
                });
            }
            view
        })
        .collect();
    Ok(Json(TopicList {
        topics,
        unavailable: listing
            .unavailable
            .iter()
            .map(ToString::to_string)
            .collect(),
        total,
        limit: paged.then_some(limit),
        offset: paged.then_some(offset),
    }))
}

/// Read one topic.
#[utoipa::path(
    get, path = "/v1/topics/{name}", tag = "topics",
    params(("name" = String, Path, description = "Topic name", pattern = r"^[a-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "The topic", body = Topic),
        (status = 400, description = "Bad name", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::error::ErrorBody),
        (status = 403, description = "The publish token, which opens publishing only", body = crate::error::ErrorBody),
        (status = 404, description = "No such topic", body = crate::error::ErrorBody),
        (status = 503, description = "NATS unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_topic(
    State(state): State<AppState>,
    TopicPath(name): TopicPath,
) -> Result<Json<Topic>, Error> {
    let topic = parse_topic(&name)?;
    let info = stream_info(&state, &topic).await?;
    let subs = subscribers(&state).await;
    let count = subs.get(topic.as_str()).copied().unwrap_or(0);
    Ok(Json(topic_view(&topic, &info, count)))
}

/// Change a topic's retention or access.
#[utoipa::path(
    patch, path = "/v1/topics/{name}", tag = "topics",
    params(("name" = String, Path, description = "Topic name", pattern = r"^[a-z0-9_-]{1,64}$")),
    request_body = UpdateTopic,
    responses(
        (status = 200, description = "The updated topic", body = Topic),
        (status = 400, description = "Bad value", body = crate::error::ErrorBody),
        (status = 408, description = "Request body not sent in time", body = crate::error::ErrorBody),
        (status = 413, description = "Request body too large", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::error::ErrorBody),
        (status = 403, description = "The publish token, which opens publishing only", body = crate::error::ErrorBody),
        (status = 404, description = "No such topic", body = crate::error::ErrorBody),
        (status = 503, description = "NATS unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn update_topic(
    State(state): State<AppState>,
    TopicPath(name): TopicPath,
    JsonBody(body): JsonBody<UpdateTopic>,
) -> Result<Json<Topic>, Error> {
    let topic = parse_topic(&name)?;
    let info = stream_info(&state, &topic).await?;
    let mut config = info.config;
    if let Some(secs) = body.max_age_seconds {
        set_max_age(&mut config, secs)?;
    }
    if let Some(v) = body.max_bytes {
        config.max_bytes = limit_to_i64("max_bytes", v)?;
    }
    if let Some(v) = body.max_messages {
        config.max_messages = limit_to_i64("max_messages", v)?;
    }
    if let Some(v) = body.max_messages_per_subject {
        config.max_messages_per_subject = limit_to_i64("max_messages_per_subject", v)?;
    }
    if let Some(v) = body.max_message_bytes {
        config.max_message_size = message_size_limit(v)?;
    }
    if let Some(v) = body.max_consumers {
        config.max_consumers = consumer_limit(v)?;
    }
    check_room(&config, state.client.server_info().max_payload)?;
    if let Some(access) = body.access {
        config
            .metadata
            .insert(ACCESS_METADATA_KEY.to_owned(), access.as_str().to_owned());
    }
    // A topic made before its stream republished gets the republish with
    // its first update.
    if config.republish.is_none() {
        config.republish = Some(live_republish(state.prefix()));
    }
    let jetstream = state.jetstream()?;
    let mut info = jetstream
        .update_stream(&config)
        .await
        .map_err(|err| Error::from_create_stream(&err, topic.as_str(), &config))?;
    // JetStream sends the update's advisory, on which the nodes read the
    // stream again, before it applies the stricter limits: a node could read
    // the stream as it was and go on serving the events the new limits
    // evict until its next topic listing. Once the update is answered it
    // has applied them, and the same config sent again announces the
    // stream as it now is.
    let may_evict = body.max_age_seconds.is_some()
        || body.max_bytes.is_some()
        || body.max_messages.is_some()
        || body.max_messages_per_subject.is_some();
    if may_evict {
        match jetstream.update_stream(&config).await {
            Ok(again) => info = again,
            Err(error) => {
                tracing::warn!(%topic, %error, "limits not announced to the nodes; they drop what the limits evicted at their next topic listing");
            }
        }
    }
    state.forget_stream(&config.name);
    tracing::info!(%topic, "topic updated");
    let subs = subscribers(&state).await;
    let count = subs.get(topic.as_str()).copied().unwrap_or(0);
    Ok(Json(topic_view(&topic, &info, count)))
}

/// Delete a topic and all its events.
#[utoipa::path(
    delete, path = "/v1/topics/{name}", tag = "topics",
    params(("name" = String, Path, description = "Topic name", pattern = r"^[a-z0-9_-]{1,64}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad name", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::error::ErrorBody),
        (status = 403, description = "The publish token, which opens publishing only", body = crate::error::ErrorBody),
        (status = 404, description = "No such topic", body = crate::error::ErrorBody),
        (status = 503, description = "NATS unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_topic(
    State(state): State<AppState>,
    TopicPath(name): TopicPath,
) -> Result<StatusCode, Error> {
    use async_nats::jetstream::context::DeleteStreamErrorKind;
    let topic = parse_topic(&name)?;
    let stream = topic.stream_name();
    let result = state.jetstream()?.delete_stream(&stream).await;
    state.forget_stream(&stream);
    match result {
        Ok(_) => {
            tracing::info!(%topic, "topic deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(err) => Err(match err.kind() {
            DeleteStreamErrorKind::JetStream(js) => Error::from_jetstream(&js, topic.as_str()),
            DeleteStreamErrorKind::Request => Error::NatsUnavailable(err.to_string()),
            _ => Error::BadRequest(format!("topic {topic:?} is not a valid name")),
        }),
    }
}

/// Remove a topic's events, or only those of one subject path.
#[utoipa::path(
    post, path = "/v1/topics/{name}/purge", tag = "topics",
    params(("name" = String, Path, description = "Topic name", pattern = r"^[a-z0-9_-]{1,64}$")),
    request_body(content = Option<PurgeTopic>, description = "Optional: `{\"subject\": \"orders.42\"}`"),
    responses(
        (status = 200, description = "Purged", body = Purged),
        (status = 400, description = "Bad name or subject path", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::error::ErrorBody),
        (status = 403, description = "The publish token, which opens publishing only", body = crate::error::ErrorBody),
        (status = 404, description = "No such topic", body = crate::error::ErrorBody),
        (status = 408, description = "Request body not sent in time", body = crate::error::ErrorBody),
        (status = 413, description = "Request body too large", body = crate::error::ErrorBody),
        (status = 503, description = "NATS unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn purge_topic(
    State(state): State<AppState>,
    TopicPath(name): TopicPath,
    BodyBytes(body): BodyBytes,
) -> Result<Json<Purged>, Error> {
    use async_nats::jetstream::stream::PurgeErrorKind;
    let topic = parse_topic(&name)?;
    // No body, JSON's `null` and JSON's whitespace alone all ask for no
    // option, as the OpenAPI document says.
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let body: PurgeTopic = if body.iter().all(blank) || body.trim_ascii() == b"null" {
        PurgeTopic::default()
    } else {
        crate::http::parse_json(&body)?
    };
    let filter = match &body.subject {
        None => None,
        Some(path) => match SubjectPath::parse_pattern(path) {
            Ok(path) if path.topic() != &topic => {
                return Err(Error::BadRequest(format!(
                    "subject path {:?} is not inside topic {:?}",
                    path.as_str(),
                    topic.as_str()
                )));
            }
            Ok(path) => Some(path.nats_subject(state.prefix())),
            // A subject published straight to NATS outside the subject-path
            // rules (`orders.é`, a 17th token) is stored and listed by
            // `subjects`: it may be purged by the name listed.
            Err(error) if nats_subject_inside(path, &topic) => {
                tracing::debug!(%error, "purging a subject outside the subject-path rules");
                Some(format!("{}.{path}", state.prefix()))
            }
            Err(error) => return Err(Error::BadRequest(error.to_string())),
        },
    };
    let stream = state
        .jetstream()?
        .get_stream_no_info(topic.stream_name())
        .await
        .map_err(|err| Error::from_get_stream(&err, topic.as_str()))?;
    let result = match filter {
        Some(filter) => stream.purge().filter(filter).await,
        None => stream.purge().await,
    };
    let response = result.map_err(|err| match err.kind() {
        PurgeErrorKind::JetStream(js) => Error::from_jetstream(&js, topic.as_str()),
        PurgeErrorKind::Request | PurgeErrorKind::TimedOut => {
            Error::NatsUnavailable(err.to_string())
        }
    })?;
    tracing::info!(%topic, subject = ?body.subject, purged = response.purged, "topic purged");
    if response.purged > 0 {
        match state.jetstream() {
            Ok(jetstream) => announce_purge(jetstream, &topic).await,
            Err(_) => {
                tracing::warn!(%topic, "purge not announced to the nodes (nats disconnected); they drop the purged events at their next topic listing")
            }
        }
    }
    Ok(Json(Purged {
        purged: response.purged,
    }))
}

/// Whether `path` is a NATS subject (or wildcard pattern) inside `topic`:
/// tokens that are not empty and hold no white space or control
/// character, `>` only last, the first the topic's name.
fn nats_subject_inside(path: &str, topic: &TopicName) -> bool {
    let tokens: Vec<&str> = path.split('.').collect();
    tokens.first() == Some(&topic.as_str())
        && tokens.iter().enumerate().all(|(i, token)| {
            !token.is_empty()
                && !token.contains(|c: char| c.is_whitespace() || c.is_control())
                && (*token != ">" || i == tokens.len() - 1)
        })
}

/// Has JetStream announce a purge to the nodes. It announces none of its
/// own, and a node that holds the purged events in memory would serve them
/// to resumes until its next topic listing (`nats.topic_refresh_seconds`).
/// An update of the stream to the config it has changes nothing but
/// publishes the stream's update advisory, on which every node reads the
/// stream again and drops what was purged. Failing that, the listing does
/// it: the purge stands either way.
async fn announce_purge(jetstream: &async_nats::jetstream::Context, topic: &TopicName) {
    let announced = async {
        let stream = jetstream.get_stream(topic.stream_name()).await?;
        jetstream
            .update_stream(stream.cached_info().config.clone())
            .await?;
        Ok::<_, async_nats::Error>(())
    };
    if let Err(error) = announced.await {
        tracing::warn!(%topic, %error, "purge not announced to the nodes; they drop the purged events at their next topic listing");
    }
}

/// List a topic's subject paths with their event counts, a page at a time.
#[utoipa::path(
    get, path = "/v1/topics/{name}/subjects", tag = "topics",
    params(("name" = String, Path, description = "Topic name", pattern = r"^[a-z0-9_-]{1,64}$"), Page),
    responses(
        (status = 200, description = "A page of subject paths", body = SubjectPage),
        (status = 400, description = "Bad name or paging", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::error::ErrorBody),
        (status = 403, description = "The publish token, which opens publishing only", body = crate::error::ErrorBody),
        (status = 404, description = "No such topic", body = crate::error::ErrorBody),
        (status = 503, description = "NATS unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_subjects(
    State(state): State<AppState>,
    TopicPath(name): TopicPath,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<SubjectPage>, Error> {
    let Query(page) = page.map_err(|e| Error::BadRequest(e.body_text()))?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::BadRequest(format!(
            "limit is {limit}; it must be between 1 and {MAX_PAGE}"
        )));
    }
    let offset = page.offset.unwrap_or(0);
    let topic = parse_topic(&name)?;
    // A full look-up first, so a missing topic is a clean 404.
    let stream = state
        .jetstream()?
        .get_stream(topic.stream_name())
        .await
        .map_err(|err| Error::from_get_stream(&err, topic.as_str()))?;
    let prefix = state.prefix();
    let mut all: Vec<(String, u64)> = Vec::new();
    for filter in topic.stream_subjects(prefix) {
        let subjects = stream
            .info_with_subjects(filter)
            .await
            .map_err(|err| Error::from_request(&err))?;
        let mut subjects = std::pin::pin!(subjects);
        while let Some((subject, count)) = subjects
            .try_next()
            .await
            .map_err(|err| Error::from_request(&err))?
        {
            let path = subject
                .strip_prefix(prefix)
                .and_then(|s| s.strip_prefix('.'))
                .unwrap_or(&subject)
                .to_owned();
            all.push((path, count as u64));
        }
    }
    all.sort();
    let total = all.len() as u64;
    let subjects = all
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(subject, messages)| SubjectCount { subject, messages })
        .collect();
    Ok(Json(SubjectPage {
        subjects,
        total,
        limit,
        offset,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> CreateTopic {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn max_bytes_leaves_room_for_the_largest_event() {
        let config =
            |json: &str| stream_config(&parse_topic("t").unwrap(), "sse", &body(json), 0).unwrap();
        // No byte limit, or room enough: taken.
        assert!(check_room(&config(r#"{"name": "t"}"#), 1 << 20).is_ok());
        assert!(check_room(&config(r#"{"name": "t", "max_bytes": 1048576}"#), 1 << 20).is_ok());
        assert!(
            check_room(
                &config(r#"{"name": "t", "max_bytes": 4096, "max_message_bytes": 4096}"#),
                1 << 20
            )
            .is_ok()
        );
        // Less than one event of the topic's largest: refused, whichever
        // bound makes it the largest.
        assert!(check_room(&config(r#"{"name": "t", "max_bytes": 10}"#), 1 << 20).is_err());
        assert!(check_room(&config(r#"{"name": "t", "max_bytes": 2048}"#), 4096).is_err());
        assert!(check_room(&config(r#"{"name": "t", "max_bytes": 4096}"#), 4096).is_ok());
        assert!(
            check_room(
                &config(r#"{"name": "t", "max_bytes": 1024, "max_message_bytes": 65536}"#),
                1 << 20
            )
            .is_err()
        );
        // Before NATS has answered, its default bound stands.
        assert!(check_room(&config(r#"{"name": "t", "max_bytes": 65536}"#), 0).is_err());
    }

    #[test]
    fn stream_config_follows_the_naming_contract() {
        let t = TopicName::parse("orders").unwrap();
        let c = stream_config(&t, "sse", &body(r#"{"name":"orders"}"#), 10_000).unwrap();
        assert_eq!(c.name, "SSE_orders");
        assert_eq!(c.subjects, vec!["sse.orders", "sse.orders.>"]);
        assert_eq!(c.metadata.get(ACCESS_METADATA_KEY).unwrap(), "public");
        assert_eq!(c.max_bytes, -1);
        assert_eq!(c.num_replicas, 1);
        assert_eq!(topic_of_stream(&c, "sse"), Some(t.clone()));
        assert_eq!(topic_of_stream(&c, "other"), None);
        let paths_only = stream::Config {
            subjects: vec!["sse.orders.>".into()],
            ..c.clone()
        };
        assert_eq!(topic_of_stream(&paths_only, "sse"), Some(t.clone()));
        let mirror = stream::Config {
            subjects: vec![],
            ..c.clone()
        };
        assert_eq!(topic_of_stream(&mirror, "sse"), None);
        let prefix_alike = stream::Config {
            subjects: vec!["sse.ordersx".into()],
            ..c.clone()
        };
        assert_eq!(topic_of_stream(&prefix_alike, "sse"), None);
    }

    #[test]
    fn short_max_age_shortens_the_duplicate_window() {
        let t = TopicName::parse("t").unwrap();
        let c = stream_config(
            &t,
            "sse",
            &body(r#"{"name":"t","max_age_seconds":30}"#),
            10_000,
        )
        .unwrap();
        assert_eq!(c.max_age, Duration::from_secs(30));
        assert_eq!(c.duplicate_window, Duration::from_secs(30));
    }

    #[test]
    fn a_longer_duplicate_window_set_by_hand_outlives_a_new_max_age() {
        let mut c = stream::Config {
            duplicate_window: Duration::from_secs(1800),
            ..Default::default()
        };
        set_max_age(&mut c, 3600).unwrap();
        assert_eq!(c.duplicate_window, Duration::from_secs(1800));
        set_max_age(&mut c, 600).unwrap();
        assert_eq!(c.duplicate_window, Duration::from_secs(600));
        set_max_age(&mut c, 0).unwrap();
        assert_eq!(c.duplicate_window, Duration::from_secs(600));
        let mut shortened = stream::Config {
            duplicate_window: Duration::from_secs(30),
            ..Default::default()
        };
        set_max_age(&mut shortened, 3600).unwrap();
        assert_eq!(shortened.duplicate_window, DUPLICATE_WINDOW);
    }

    #[test]
    fn replicas_are_one_or_three() {
        let t = TopicName::parse("t").unwrap();
        let err =
            stream_config(&t, "sse", &body(r#"{"name":"t","replicas":2}"#), 10_000).unwrap_err();
        assert!(err.to_string().contains("replicas"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<CreateTopic>(r#"{"name":"t","ttl":1}"#).is_err());
        assert!(serde_json::from_str::<UpdateTopic>(r#"{"storage":"file"}"#).is_err());
    }
}
