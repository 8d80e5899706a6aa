//! Publishing over HTTP: `POST /v1/topics/{name}/events`.
//!
//! The event is published to JetStream and answered only once JetStream has
//! acknowledged it, with the exact id a client subscribed to the topic will
//! see: `<topic>:<epoch>:<seq>`. `seq` comes from the acknowledgement;
//! `epoch` from the stream's creation time, cached per stream in
//! [`StreamFacts`] and dropped when a stream advisory (created, deleted,
//! updated) names the stream, when the cache entry is older than
//! [`FACTS_TTL`], or when an acknowledged sequence goes backwards (the stream
//! was recreated).
//!
//! During a JetStream leader election a publish may time out or find no
//! responder; it is retried with the same `Nats-Msg-Id`, so JetStream stores
//! it once.

use std::time::{Duration, Instant};

use async_nats::{
    HeaderMap,
    jetstream::{context::PublishErrorKind, publish::PublishAck},
};
use axum::{Json, extract::State, http::HeaderMap as HttpHeaders};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sse_protocol::{
    Cursor, SubjectPath, TopicName, TopicPosition,
    cursor::epoch_from_unix_nanos,
    headers::{
        EVENT_NAME_HEADER, EVENTSOURCE_EVENT_NAMES, INVALID_EVENT_NAME, MAX_EVENT_NAME_BYTES,
        RESET_EVENT_NAME, TOPIC_DELETED_EVENT_NAME, TRACEPARENT_HEADER, valid_event_name,
    },
};
use tracing::Instrument;
use utoipa::ToSchema;

use crate::{
    error::Error,
    http::{JsonBody, TopicPath},
    state::AppState,
    topics,
};

/// Longest caller-given de-duplication id.
pub const MAX_MSG_ID: usize = 128;
/// How long cached stream facts are trusted without an advisory.
pub const FACTS_TTL: Duration = Duration::from_secs(10);
/// Publish attempts before giving up with 503.
const PUBLISH_ATTEMPTS: u32 = 8;
/// Pause between stream look-ups while NATS is unavailable.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Body of `POST /v1/topics/{name}/events`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishEvent {
    /// Full subject path inside the topic, e.g. `orders.42` or `orders`;
    /// absent: the topic itself (`orders`).
    pub subject: Option<String>,
    /// SSE event name: 1 to 128 bytes, no control character, no leading or
    /// trailing space, not `reset`, `invalid` or `topic_deleted` (the nodes'
    /// own) nor `open` or `error` (`EventSource`'s own); absent: a plain
    /// `message`.
    pub event: Option<String>,
    /// The event's data, UTF-8 text; several lines become several `data:`.
    pub data: String,
    /// De-duplication id (`Nats-Msg-Id`), `[!-~]{1,128}`; generated if absent.
    pub id: Option<String>,
}

/// Answer to a publish.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Published {
    /// The event id clients of a single-topic subscription see.
    pub id: String,
    /// The JetStream stream sequence.
    pub sequence: u64,
    /// True when JetStream had already stored an event with this `Nats-Msg-Id`;
    /// `id` is then that event's id.
    pub duplicate: bool,
}

/// What publishing needs to know about a stream.
#[derive(Debug, Clone)]
pub struct StreamFacts {
    /// The stream incarnation, for event ids.
    pub epoch: String,
    /// The stream's own message size limit; 0 or less: none.
    pub max_message_size: i64,
    /// When these facts were read.
    pub fetched: Instant,
    /// The highest sequence acknowledged in this incarnation.
    pub high_water: u64,
    /// The stream a mirror copies from: JetStream stores nothing published
    /// to a mirror.
    pub mirror_of: Option<String>,
    /// The subjects the stream stores; a publish to another is answered by
    /// no one.
    pub subjects: Vec<String>,
}

impl StreamFacts {
    /// Why the stream stores nothing published to `subject`, if it does not.
    fn refusal(&self, topic: &TopicName, subject: &str) -> Option<Error> {
        if let Some(origin) = &self.mirror_of {
            return Some(Error::NotPublishable(format!(
                "topic {:?} is a mirror of stream {origin:?}, which JetStream fills; publish to the topic of {origin:?}",
                topic.as_str()
            )));
        }
        let stored = self
            .subjects
            .iter()
            .any(|pattern| sse_protocol::topic::subject_matches(pattern, subject));
        (!stored).then(|| {
            Error::NotPublishable(format!(
                "topic {:?}'s stream stores only {:?}, not {subject:?}",
                topic.as_str(),
                self.subjects
            ))
        })
    }
}

impl AppState {
    /// Drops cached facts about a stream.
    pub fn forget_stream(&self, stream: &str) {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(stream);
    }

    fn cached_facts(&self, stream: &str) -> Option<StreamFacts> {
        let cache = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(stream)
            .filter(|f| f.fetched.elapsed() < FACTS_TTL)
            .cloned()
    }

    async fn stream_facts(&self, topic: &TopicName) -> Result<StreamFacts, Error> {
        let stream = topic.stream_name();
        if let Some(facts) = self.cached_facts(&stream) {
            return Ok(facts);
        }
        let info = topics::stream_info(self, topic).await?;
        let facts = StreamFacts {
            epoch: epoch_from_unix_nanos(info.created.unix_timestamp_nanos()),
            max_message_size: i64::from(info.config.max_message_size),
            fetched: Instant::now(),
            high_water: info.state.last_sequence,
            mirror_of: info
                .config
                .mirror
                .as_ref()
                .map(|source| source.name.clone()),
            subjects: info.config.subjects.clone(),
        };
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stream, facts.clone());
        Ok(facts)
    }

    /// Records an acknowledged sequence; false when it went backwards, which
    /// means the stream was recreated under us.
    fn note_sequence(&self, stream: &str, epoch: &str, seq: u64) -> bool {
        let mut cache = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get_mut(stream) {
            Some(f) if f.epoch == epoch => {
                if seq >= f.high_water {
                    f.high_water = seq;
                    true
                } else {
                    false
                }
            }
            _ => true,
        }
    }
}

/// Checks an SSE event name: it goes into the `event:` line of a frame.
/// The rule is the one the nodes apply to every event, however it was
/// published ([`sse_protocol::headers::valid_event_name`]), so admin refuses
/// exactly the names a node would not send as is.
pub fn validate_event_name(name: &str) -> Result<(), Error> {
    if valid_event_name(name) {
        Ok(())
    } else {
        let browsers = EVENTSOURCE_EVENT_NAMES
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(" or ");
        Err(Error::BadRequest(format!(
            "event {} is not a valid event name: 1 to {MAX_EVENT_NAME_BYTES} bytes, no control character, no leading or trailing space, not {RESET_EVENT_NAME:?}, {INVALID_EVENT_NAME:?} or {TOPIC_DELETED_EVENT_NAME:?}, which the nodes send themselves, and not {browsers}, which a browser's EventSource fires itself",
            shown(name)
        )))
    }
}

/// `value` quoted for an error message, cut after 64 characters: a value
/// refused for its length is not sent back whole.
fn shown(value: &str) -> String {
    const SHOWN_CHARS: usize = 64;
    match value.char_indices().nth(SHOWN_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

fn validate_msg_id(id: &str) -> Result<(), Error> {
    let ok = (1..=MAX_MSG_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "id {} is not a valid de-duplication id; use 1 to {MAX_MSG_ID} visible ASCII characters",
            shown(id)
        )))
    }
}

/// A `traceparent` worth forwarding: short visible ASCII; otherwise dropped,
/// as W3C trace context says to do with a malformed one.
fn traceparent(headers: &HttpHeaders) -> Option<String> {
    let value = headers.get(TRACEPARENT_HEADER)?.to_str().ok()?;
    (value.len() <= 128 && !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| value.to_owned())
}

/// A fresh de-duplication id for a caller that gave none.
fn generated_msg_id() -> String {
    format!(
        "sse-admin-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// Publish an event to a topic.
#[utoipa::path(
    post, path = "/v1/topics/{name}/events", tag = "publish",
    params(
        ("name" = String, Path, description = "Topic name", pattern = r"^[a-z0-9_-]{1,64}$"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context, forwarded to NATS"),
    ),
    request_body = PublishEvent,
    responses(
        (status = 200, description = "Stored by JetStream", body = Published),
        (status = 400, description = "Bad subject path, event name or id", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::error::ErrorBody),
        (status = 404, description = "No such topic", body = crate::error::ErrorBody),
        (status = 408, description = "Request body not sent in time", body = crate::error::ErrorBody),
        (status = 409, description = "The topic's stream stores nothing published to this subject (a mirror, say: `not_publishable`), or it is full and discards new events (`store_refused`)", body = crate::error::ErrorBody),
        (status = 413, description = "Data too large", body = crate::error::ErrorBody),
        (status = 503, description = "NATS unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn publish_event(
    State(state): State<AppState>,
    TopicPath(name): TopicPath,
    http_headers: HttpHeaders,
    JsonBody(body): JsonBody<PublishEvent>,
) -> Result<Json<Published>, Error> {
    if !crate::telemetry::tracing_enabled() {
        let caller = traceparent(&http_headers);
        return publish(&state, &name, caller, body).await;
    }
    let span = tracing::info_span!(
        "sse.publish",
        otel.kind = "producer",
        topic = %name,
        sequence = tracing::field::Empty,
        duplicate = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, &http_headers);
    // The nodes' spans for this event are children of this one, recorded
    // or not as it is.
    let traceparent = crate::telemetry::traceparent_of(&span);
    let published = publish(&state, &name, traceparent, body)
        .instrument(span.clone())
        .await;
    match &published {
        Ok(Json(published)) => {
            span.record(
                "sequence",
                i64::try_from(published.sequence).unwrap_or(i64::MAX),
            );
            span.record("duplicate", published.duplicate);
        }
        Err(error) => {
            span.record("error", error.status_and_code().1);
        }
    }
    published
}

/// Publishes `body` to topic `name`, with `traceparent` for the nodes.
async fn publish(
    state: &AppState,
    name: &str,
    traceparent: Option<String>,
    body: PublishEvent,
) -> Result<Json<Published>, Error> {
    let topic = topics::parse_topic(name)?;
    let subject = body.subject.as_deref().unwrap_or(topic.as_str());
    let path =
        SubjectPath::parse_concrete(subject).map_err(|e| Error::BadRequest(e.to_string()))?;
    if path.topic() != &topic {
        return Err(Error::BadRequest(format!(
            "subject path {subject:?} is not inside topic {:?}; it must start with \"{topic}\"",
            topic.as_str()
        )));
    }
    if let Some(event) = &body.event {
        validate_event_name(event)?;
    }
    if let Some(id) = &body.id {
        validate_msg_id(id)?;
    }
    let mut headers = HeaderMap::new();
    let msg_id = body.id.clone().unwrap_or_else(generated_msg_id);
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
    if let Some(event) = &body.event {
        headers.insert(EVENT_NAME_HEADER, event.as_str());
    }
    if let Some(tp) = traceparent {
        headers.insert(TRACEPARENT_HEADER, tp.as_str());
    }
    // The limit said is the one that applies: admin's own, or NATS's, which
    // counts the headers above beside the data.
    let size = body.data.len() as u64;
    // Before NATS first answers, its limit is not known (0).
    let nats_limit = match state.client.server_info().max_payload as u64 {
        0 => u64::MAX,
        max_payload => max_payload.saturating_sub(header_block_bytes(&headers)),
    };
    let limit = state.config.admin.max_event_bytes.min(nats_limit);
    if size > limit {
        state.metrics.publish_failed("too_large");
        return Err(Error::PayloadTooLarge { size, limit });
    }
    // One time budget for the whole publish: while NATS reconnects or a
    // leader is elected, the look-up and the publish are retried within it.
    let deadline = Instant::now() + state.config.request_timeout();
    let facts = loop {
        match state.stream_facts(&topic).await {
            Err(Error::NatsUnavailable(_))
                if Instant::now() + RETRY_PAUSE < deadline && !state.shutdown.is_cancelled() =>
            {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(Error::NatsUnavailable(reason)) => {
                state.metrics.publish_failed("unavailable");
                return Err(Error::NatsUnavailable(reason));
            }
            other => break other?,
        }
    };
    // The topic's own limit (`max_message_bytes`) counts the headers too,
    // as NATS does: what is left of it is what the data may take.
    if let Ok(stream_limit) = u64::try_from(facts.max_message_size)
        && stream_limit > 0
    {
        let limit = stream_limit.saturating_sub(header_block_bytes(&headers));
        if size > limit {
            state.metrics.publish_failed("too_large");
            return Err(Error::PayloadTooLarge { size, limit });
        }
    }

    let subject = path.nats_subject(state.prefix());
    if let Some(refusal) = facts.refusal(&topic, &subject) {
        state.metrics.publish_failed("refused");
        return Err(refusal);
    }
    let ack =
        publish_with_retry(state, &topic, deadline, subject, headers, body.data.into()).await?;

    let stream = topic.stream_name();
    let mut epoch = facts.epoch;
    if !ack.duplicate && !state.note_sequence(&stream, &epoch, ack.sequence) {
        // The sequence went backwards: the stream is a new incarnation.
        state.forget_stream(&stream);
        epoch = state.stream_facts(&topic).await?.epoch;
    }
    let id = Cursor::new(vec![TopicPosition {
        topic: topic.clone(),
        epoch,
        seq: ack.sequence,
    }])
    .to_string();
    state.metrics.published();
    tracing::debug!(%topic, %id, duplicate = ack.duplicate, "event published");
    Ok(Json(Published {
        id,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    }))
}

/// Publishes and waits for the acknowledgement, retrying what a leader
/// election causes (time-outs, no responders) with the same headers, so the
/// `Nats-Msg-Id` de-duplicates a retry of an event that was in fact stored.
/// The bytes `headers` take on the wire: the `NATS/1.0` line, a line per
/// value and the blank line that ends them.
fn header_block_bytes(headers: &HeaderMap) -> u64 {
    let fields: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|value| name.len() + 2 + value.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    ("NATS/1.0\r\n".len() + fields + 2) as u64
}

async fn publish_with_retry(
    state: &AppState,
    topic: &TopicName,
    deadline: Instant,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> Result<PublishAck, Error> {
    // Retries stop at the attempt count or at the deadline, whichever comes
    // first; an attempt under way may overrun the deadline by one time-out.
    let mut backoff = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        let may_retry = attempt < PUBLISH_ATTEMPTS
            && Instant::now() + backoff < deadline
            && !state.shutdown.is_cancelled();
        if !state.nats_connected() {
            // Reconnecting: wait for it within the same budget.
            if may_retry {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                attempt += 1;
                continue;
            }
            state.metrics.publish_failed("unavailable");
            return Err(Error::NatsUnavailable("not connected to nats".to_owned()));
        }
        let result = match state
            .jetstream
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await
        {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        let err = match result {
            Ok(ack) => return Ok(ack),
            Err(err) => err,
        };
        let retryable = matches!(
            err.kind(),
            PublishErrorKind::TimedOut
                | PublishErrorKind::StreamNotFound
                | PublishErrorKind::BrokenPipe
                | PublishErrorKind::MaxAckPending
        );
        if retryable && may_retry {
            tracing::debug!(%topic, attempt, %err, "publish failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            attempt += 1;
            continue;
        }
        return Err(match err.kind() {
            PublishErrorKind::MaxPayloadExceeded => {
                state.metrics.publish_failed("too_large");
                // NATS counts the headers admin adds against its limit:
                // what is left of it is what the data may take.
                let max_payload = state.client.server_info().max_payload as u64;
                Error::PayloadTooLarge {
                    size: payload.len() as u64,
                    limit: max_payload.saturating_sub(header_block_bytes(&headers)),
                }
            }
            PublishErrorKind::StreamNotFound => {
                // No responder after every retry: gone, or JetStream down.
                state.forget_stream(&topic.stream_name());
                match topics::stream_info(state, topic).await {
                    Err(Error::TopicNotFound(t)) => Error::TopicNotFound(t),
                    _ => {
                        state.metrics.publish_failed("unavailable");
                        Error::NatsUnavailable(err.to_string())
                    }
                }
            }
            PublishErrorKind::Other
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence => {
                state.metrics.publish_failed("refused");
                // JetStream's own refusal (e.g. over the topic's message
                // size) is the source; map it like any JetStream answer.
                match std::error::Error::source(&err)
                    .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
                {
                    Some(js) => match Error::from_jetstream(js, topic.as_str()) {
                        Error::Internal(_) => {
                            Error::Internal(format!("publish to topic {topic} refused: {js}"))
                        }
                        mapped => mapped,
                    },
                    None => Error::Internal(format!("publish to topic {topic} refused: {err}")),
                }
            }
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending => {
                state.metrics.publish_failed("unavailable");
                Error::NatsUnavailable(err.to_string())
            }
        });
    }
}

/// Drops cached stream facts whenever JetStream announces a stream was
/// created, deleted or updated (other stream advisories are ignored). Ends
/// on shutdown.
pub async fn watch_stream_advisories(state: AppState) {
    let subject = "$JS.EVENT.ADVISORY.STREAM.*.*";
    let mut advisories = match state.client.subscribe(subject).await {
        Ok(sub) => sub,
        Err(err) => {
            tracing::warn!(%err, "cannot watch stream advisories; relying on the cache ttl");
            return;
        }
    };
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            message = advisories.next() => match message {
                Some(message) => {
                    // `$JS.EVENT.ADVISORY.STREAM.<ACTION>.<stream>`. A leader
                    // election changes nothing cached, and a look-up during
                    // one would only wait for the new leader.
                    let mut tokens = message.subject.rsplit('.');
                    if let (Some(stream), Some("CREATED" | "DELETED" | "UPDATED")) =
                        (tokens.next(), tokens.next())
                    {
                        state.forget_stream(stream);
                    }
                }
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_value_is_not_sent_back_whole() {
        let long = "x".repeat(100_000);
        let Err(Error::BadRequest(message)) = validate_msg_id(&long) else {
            panic!("a 100,000-byte id is refused");
        };
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(message.contains("(100000 bytes)"), "{message}");
        let Err(Error::BadRequest(message)) = validate_event_name(&long) else {
            panic!("a 100,000-byte event name is refused");
        };
        assert!(message.len() < 600, "{} bytes", message.len());
        assert_eq!(shown("short"), "\"short\"");
        assert_eq!(
            shown(&"é".repeat(70)),
            format!("{:?}… (140 bytes)", "é".repeat(64))
        );
    }

    #[test]
    fn event_names() {
        // What a node sends as is, admin accepts: one rule for both paths.
        for ok in [
            "message",
            "order.created",
            "a:b-c_d",
            "order created",
            "é",
            &"x".repeat(128),
        ] {
            assert!(validate_event_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a\nb", "a\rb", " a", "a\u{7f}", &"x".repeat(129)] {
            assert!(validate_event_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn msg_ids() {
        assert!(validate_msg_id("order-42/v1").is_ok());
        assert!(validate_msg_id("a b").is_err());
        assert!(validate_msg_id("a\nb").is_err());
        assert!(validate_msg_id("").is_err());
        assert!(generated_msg_id().len() > 20);
    }
}
