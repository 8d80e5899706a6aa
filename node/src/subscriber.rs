//! Where events are written to a client: one SSE stream per connection.
//!
//! A stream goes through two phases.
//!
//! 1. **Catch-up.** For each topic, the client's position is brought up to
//!    the feed's head at the moment the client attached: from node memory
//!    when the history reaches back far enough, otherwise from JetStream
//!    through a short-lived ordered consumer, behind a semaphore that caps
//!    concurrent reads. History that is gone yields one `reset` event.
//! 2. **Live.** Events from the topics' broadcast channels, which have been
//!    buffering since the client attached. A client that falls more than
//!    `delivery.client_queue_events` behind is disconnected (`slow`) and
//!    resumes from its last id when it reconnects.
//!
//! Per topic the client keeps `pos`: every event of that topic up to `pos`
//! has been delivered or did not match the subscription. Events at or below
//! `pos` are never written again, which is what makes resume exact.
//!
//! The stream ends on shutdown (at a random moment in the drain window, with
//! a `retry:` hint), at the end of its lifetime if one is configured, when
//! the token that opened it expires, when a topic's feed closes, or when the
//! client goes away.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use sse_protocol::{SubjectPath, TopicName, cursor::write_position};
use tokio::{
    net::TcpStream,
    sync::{
        OwnedSemaphorePermit, broadcast,
        broadcast::error::{RecvError, TryRecvError},
    },
    time::{Instant, Interval, MissedTickBehavior},
};
use tracing::{Span, debug, info_span, warn};

use crate::{
    event::{Event, MARKER_HEADER},
    feed::{FeedLease, bounded, stream_epoch},
    history::Slice,
    node::Node,
    telemetry,
};

/// Most bytes gathered into one write.
const BATCH_BYTES: usize = 64 * 1024;
/// A write at least this large starts no pacing window: it already spreads
/// its system call over many bytes, and holding the client would only add
/// latency and fill its queue (large events arrive faster than a window).
const PACED_WRITE_MAX: usize = 8 * 1024;
/// One live batch in this many records its delivery lag.
const LAG_SAMPLE_EVERY: u32 = 8;
/// Longest wait for the next message of a resume read.
const JETSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most events taken from memory per step of catch-up.
const MEMORY_CHUNK: usize = 512;

/// The one concrete path a subscription reads of a topic, if that is all
/// it reads: such a client hears only that path's events.
pub fn only_path(patterns: &[SubjectPath]) -> Option<&str> {
    match patterns {
        [one] if !one.has_wildcard() && !one.is_whole_topic() => Some(one.as_str()),
        _ => None,
    }
}

/// One topic of a subscription.
pub struct TopicRequest {
    /// The topic.
    pub topic: TopicName,
    /// The paths asked for within it.
    pub patterns: Vec<SubjectPath>,
    /// Where the client says it stands, if it gave an id naming this topic.
    pub resume: Option<(String, u64)>,
}

struct ClientTopic {
    feed: FeedLease,
    patterns: Vec<SubjectPath>,
    pos: u64,
    catch_up_to: u64,
    reset_sent: bool,
    /// Whether the client hears only its one path's events (so `pos` does
    /// not follow the topic's head).
    by_path: bool,
}

impl ClientTopic {
    fn matches(&self, path: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(path))
    }

    /// Subject filters for a JetStream read. Several patterns may overlap,
    /// which JetStream refuses, so they fall back to the whole topic and
    /// are filtered here.
    fn filters(&self, prefix: &str) -> Vec<String> {
        match self.patterns.as_slice() {
            [one] if !one.is_whole_topic() => vec![one.nats_subject(prefix)],
            _ => self.feed.topic.stream_subjects(prefix),
        }
    }
}

/// What a client's live receivers yield.
enum LiveItem {
    /// An event of the topic at this index.
    Event(usize, Arc<Event>),
    /// The client fell behind its queue by this many events.
    Lagged(u64),
    /// A topic's feed closed.
    Closed,
}

/// A client's live receivers, one per topic, in the client's topic order.
///
/// Polled by hand rather than through `BroadcastStream` and `SelectAll`:
/// a batch drains them with `try_recv`, and only an empty queue waits, on
/// a `recv` future held inside the caller's own future. That keeps the
/// per-event path free of boxed futures and task re-queueing.
struct LiveReceivers {
    receivers: Vec<broadcast::Receiver<Arc<Event>>>,
    // Where the next drain starts, so one busy topic cannot starve another.
    next: usize,
}

impl LiveReceivers {
    /// An item that is already waiting, if any.
    fn try_next(&mut self) -> Option<LiveItem> {
        let count = self.receivers.len();
        for offset in 0..count {
            let index = (self.next + offset) % count;
            match self.receivers[index].try_recv() {
                Ok(event) => {
                    self.next = (index + 1) % count;
                    return Some(LiveItem::Event(index, event));
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Lagged(missed)) => return Some(LiveItem::Lagged(missed)),
                Err(TryRecvError::Closed) => return Some(LiveItem::Closed),
            }
        }
        None
    }

    /// The next item, waiting for one if none is queued.
    async fn next(&mut self) -> LiveItem {
        if let Some(item) = self.try_next() {
            return item;
        }
        let (result, index) = match self.receivers.as_mut_slice() {
            [one] => (one.recv().await, 0),
            many => {
                // Several topics: rare, so a boxed future per topic is fine.
                let waits = many.iter_mut().map(|r| Box::pin(r.recv()));
                let (result, index, _) = futures_util::future::select_all(waits).await;
                (result, index)
            }
        };
        match result {
            Ok(event) => LiveItem::Event(index, event),
            Err(RecvError::Lagged(missed)) => LiveItem::Lagged(missed),
            Err(RecvError::Closed) => LiveItem::Closed,
        }
    }
}

/// Why a stream ended; the label of `sse_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client went away.
    Client,
    /// The client fell too far behind.
    Slow,
    /// The node is shutting down.
    Shutdown,
    /// The configured connection lifetime passed.
    Lifetime,
    /// A topic was deleted or recreated.
    TopicClosed,
    /// Reading JetStream failed during catch-up.
    Error,
    /// The token that authorised the stream expired.
    TokenExpired,
    /// The stream was behind its topic and made no progress for
    /// `delivery.no_progress_seconds`.
    Stalled,
}

impl CloseReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Slow => "slow",
            Self::Shutdown => "shutdown",
            Self::Lifetime => "lifetime",
            Self::TopicClosed => "topic_closed",
            Self::Error => "error",
            Self::TokenExpired => "token_expired",
            Self::Stalled => "stalled",
        }
    }
}

enum Work {
    Permit(OwnedSemaphorePermit),
    Live(LiveItem),
}

enum Wake {
    Shutdown,
    Deadline,
    NoProgress,
    Heartbeat,
    PeerClosed,
    Work(Work),
}

struct JetStreamRead {
    messages: jetstream::consumer::pull::Ordered,
    end: u64,
    _held: crate::metrics::ConsumerHeld,
}

/// The state of one client's SSE stream.
pub struct ClientStream {
    node: Node,
    topics: Vec<ClientTopic>,
    single_topic: bool,
    prelude: Option<Bytes>,
    catching_up: usize,
    jetstream_read: Option<Box<JetStreamRead>>,
    jetstream_permit: Option<OwnedSemaphorePermit>,
    catch_up_started: Instant,
    live: LiveReceivers,
    heartbeat: Option<Interval>,
    wrote_since_heartbeat: bool,
    close_at: Option<(Instant, CloseReason)>,
    lifetime_end: Option<Instant>,
    token_expiry: Option<Instant>,
    done: bool,
    reason: CloseReason,
    span: Span,
    resume_span: Span,
    replayed: [u64; 2],
    batches: u32,
    lone_frame: Option<Bytes>,
    pacer: Pacer,
    progress: Progress,
}

/// The no-progress watchdog of one client stream.
///
/// Heartbeats keep a stream looking alive to the browser, so a stream that
/// waits on something that never comes (a JetStream read, a feed gone
/// quiet) would stall its client forever: `EventSource` only reconnects when
/// the stream ends. A stream that is behind (catching up, or its topic's
/// head is past its position) and whose positions have not moved for
/// `delivery.no_progress_seconds` is closed with a retry hint instead; the
/// client resumes from its cursor, on any node.
#[derive(Debug)]
struct Progress {
    limit: Duration,
    /// The sum of the client's positions when they last moved.
    mark: u64,
    since: Instant,
}

impl Progress {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            mark: 0,
            since: Instant::now(),
        }
    }

    /// Records the positions' sum at `now`; returns the moment the stream
    /// counts as stalled if it stays behind without moving.
    fn observe(&mut self, mark: u64, now: Instant) -> Instant {
        if mark != self.mark {
            self.mark = mark;
            self.since = now;
        }
        self.since + self.limit
    }
}

/// Decides when a client may be written to again.
///
/// A write costs a system call whatever it carries, so a busy client (one
/// whose events come more than twice per window) gets one write per window;
/// any other client is written to at once, and pays no latency for it.
#[derive(Debug, Clone)]
struct Pacer {
    window: Duration,
    // A hold never lets more than this many events pile up in the client's
    // bounded queue, so pacing alone cannot make a client overflow it.
    max_held_events: u32,
    last_write: Option<Instant>,
    // A smoothed estimate of the time between this client's live events,
    // taken at each live batch; none until two batches have been seen.
    event_gap: Option<Duration>,
    last_live_batch: Option<Instant>,
}

impl Pacer {
    fn new(window: Duration, queue_events: usize) -> Self {
        Self {
            window,
            max_held_events: u32::try_from(queue_events / 4).unwrap_or(u32::MAX).max(1),
            last_write: None,
            event_gap: None,
            last_live_batch: None,
        }
    }

    /// Until when the next live batch waits, if it must.
    fn hold_until(&self, now: Instant) -> Option<Instant> {
        let gap = self.event_gap.filter(|gap| *gap < self.window / 2)?;
        let hold = self.window.min(gap * self.max_held_events);
        self.last_write
            .map(|t| t + hold)
            .filter(|until| *until > now)
    }

    /// Records a live batch of `delivered` events taken at `now`.
    fn record_batch(&mut self, now: Instant, delivered: u64) {
        if delivered == 0 {
            return;
        }
        if let Some(previous) = self.last_live_batch {
            let gap = (now - previous) / u32::try_from(delivered).unwrap_or(u32::MAX);
            self.event_gap = Some(match self.event_gap {
                Some(estimate) => (estimate * 3 + gap) / 4,
                None => gap,
            });
        }
        self.last_live_batch = Some(now);
    }

    /// Records a write at `now`; a large write (more may be waiting, or the
    /// events are big) does not start a window.
    fn record_write(&mut self, now: Instant, full: bool) {
        self.last_write = (!self.window.is_zero() && !full).then_some(now);
    }
}

impl ClientStream {
    /// Attaches to every topic's feed and prepares the first bytes: a
    /// comment, the `retry:` hint, any `reset` events, and the id-only frame
    /// carrying the client's cursor.
    pub fn open(node: Node, requests: Vec<(TopicRequest, FeedLease)>) -> Self {
        let config = node.config();
        let mut prelude = BytesMut::with_capacity(256);
        prelude.put_slice(b": ok\n\n");
        let retry = config.http.retry_ms + fastrand::u64(0..=config.http.retry_jitter_ms);
        prelude.put_slice(format!("retry: {retry}\n\n").as_bytes());
        let mut topics = Vec::with_capacity(requests.len());
        let mut resets = Vec::new();
        let mut receivers = Vec::with_capacity(requests.len());
        for (request, feed) in requests {
            // A client of one concrete path hears only that path's events:
            // from a feed of that path alone, or from the path's own channel
            // of the whole topic's feed. Anything else reads the whole topic
            // and filters. Never both: one receiver per topic keeps its
            // events in stream order.
            let on_whole_feed = feed.path.is_none();
            let channel = only_path(&request.patterns).filter(|_| on_whole_feed);
            let attachment = feed.attach(channel);
            let by_path = channel.is_some();
            let (pos, catch_up_to, reset_sent) = match &request.resume {
                None => (attachment.live_from, attachment.head, false),
                Some((epoch, seq)) if *epoch == attachment.epoch => {
                    (*seq, attachment.head.max(*seq), false)
                }
                Some((old_epoch, old_seq)) => {
                    // Another incarnation of the stream: its sequences mean
                    // nothing here. Say so, then start from the oldest held.
                    resets.push(serde_json::json!({
                        "topic": feed.topic.as_str(),
                        "reason": "stream_recreated",
                        "old_epoch": old_epoch,
                        "last_seen": old_seq,
                        "lost_from": null,
                        "lost_to": null,
                        "resume_from": 1,
                    }));
                    (0, attachment.head, true)
                }
            };
            receivers.push(attachment.receiver);
            node.metrics()
                .topic_subscribers
                .with_label_values(&[feed.topic.as_str()])
                .inc();
            topics.push(ClientTopic {
                feed,
                patterns: request.patterns,
                pos,
                catch_up_to,
                reset_sent,
                by_path,
            });
        }
        let single_topic = topics.len() == 1;
        let pacing = Duration::from_millis(config.delivery.write_pacing_ms);
        let no_progress = Duration::from_secs(config.delivery.no_progress_seconds);
        // The smallest of the client's live queues bounds how long it may
        // be held.
        let queue_events = topics
            .iter()
            .map(|t| {
                if t.by_path {
                    config.delivery.path_queue_events
                } else {
                    t.feed.queue_events()
                }
            })
            .min()
            .unwrap_or(config.delivery.path_queue_events);
        let mut stream = Self {
            heartbeat: Some(heartbeat_interval(config.heartbeat())),
            lifetime_end: (config.http.max_connection_lifetime_seconds > 0).then(|| {
                let base = Duration::from_secs(config.http.max_connection_lifetime_seconds);
                Instant::now() + base + base.mul_f64(fastrand::f64() * 0.2)
            }),
            node,
            topics,
            single_topic,
            prelude: None,
            catching_up: 0,
            jetstream_read: None,
            jetstream_permit: None,
            catch_up_started: Instant::now(),
            live: LiveReceivers { receivers, next: 0 },
            wrote_since_heartbeat: false,
            close_at: None,
            done: false,
            token_expiry: None,
            reason: CloseReason::Client,
            span: Span::none(),
            resume_span: Span::none(),
            replayed: [0; 2],
            batches: 0,
            lone_frame: None,
            pacer: Pacer::new(pacing, queue_events),
            progress: Progress::new(no_progress),
        };
        let resuming = stream.topics.iter().any(|t| t.pos < t.catch_up_to);
        if telemetry::tracing_enabled() {
            let names: Vec<&str> = stream
                .topics
                .iter()
                .map(|t| t.feed.topic.as_str())
                .collect();
            stream.span = info_span!(
                "sse.connection",
                topics = %names.join(","),
                resumed = resuming,
                close_reason = tracing::field::Empty,
            );
            if resuming {
                stream.resume_span = info_span!(
                    parent: &stream.span,
                    "sse.resume",
                    memory_events = tracing::field::Empty,
                    jetstream_events = tracing::field::Empty,
                );
            }
        }
        debug!(
            topics = stream.topics.len(),
            resuming,
            connections = stream.node.connections(),
            "client connected"
        );
        for reset in &resets {
            stream.node.metrics().reset_events.inc();
            write_reset_body(&mut prelude, reset);
            stream.write_cursor(&mut prelude);
        }
        if resets.is_empty() {
            // The id-only frame: the browser takes it as lastEventId without
            // firing an event, so even a client that gets no event before
            // its node dies resumes from the moment it connected.
            stream.write_cursor(&mut prelude);
        }
        stream.prelude = Some(prelude.freeze());
        stream
    }

    /// Turns the state into the byte stream of the response body.
    pub fn into_body_stream(self) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
        futures_util::stream::unfold(self, |mut state| async move {
            state.next_chunk().await.map(|bytes| (Ok(bytes), state))
        })
    }

    /// Closes the stream at `at`, when the token that authorised it
    /// expires; the client reconnects with a fresh one and resumes.
    pub fn close_at_token_expiry(&mut self, at: Instant) {
        self.token_expiry = Some(at);
    }

    /// The earliest planned end: the lifetime or the token's expiry.
    fn planned_end(&self) -> Option<(Instant, CloseReason)> {
        let lifetime = self.lifetime_end.map(|t| (t, CloseReason::Lifetime));
        let token = self.token_expiry.map(|t| (t, CloseReason::TokenExpired));
        match (lifetime, token) {
            (Some(l), Some(t)) => Some(if t.0 <= l.0 { t } else { l }),
            (l, t) => l.or(t),
        }
    }

    fn write_cursor(&self, out: &mut BytesMut) {
        out.put_slice(b"id: ");
        self.write_id_value(out);
        out.put_slice(b"\n\n");
    }

    fn write_id_value(&self, out: &mut BytesMut) {
        let mut text = String::with_capacity(48 * self.topics.len());
        for (i, t) in self.topics.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let _ = write_position(&mut text, t.feed.topic.as_str(), &t.feed.epoch, t.pos);
        }
        out.put_slice(text.as_bytes());
    }

    /// Writes an event if it is new for this client and matches; returns
    /// whether it was written.
    fn deliver(&mut self, index: usize, event: &Event, out: &mut BytesMut) -> bool {
        let topic = &mut self.topics[index];
        if event.seq <= topic.pos {
            return false;
        }
        topic.pos = event.seq;
        if !topic.matches(&event.path) {
            return false;
        }
        if self.single_topic {
            // A lone frame is handed on as is, without a copy; a second one
            // in the same write joins it in the buffer.
            if out.is_empty() && self.lone_frame.is_none() {
                self.lone_frame = Some(event.frame.clone());
            } else {
                if let Some(first) = self.lone_frame.take() {
                    out.put_slice(&first);
                }
                out.put_slice(&event.frame);
            }
        } else {
            out.put_slice(&event.frame[..event.body_len]);
            out.put_slice(b"id: ");
            self.write_id_value(out);
            out.put_slice(b"\n\n");
        }
        true
    }

    /// Records that the client's socket stopped taking bytes.
    pub fn mark_slow(&mut self) {
        self.reason = CloseReason::Slow;
    }

    /// The next bytes to write, or `None` when the stream is over.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        self.next_chunk_watching(None).await
    }

    /// Like [`Self::next_chunk`], and also ends the stream (returns `None`)
    /// when `peer` shows the client closed its side.
    pub async fn next_chunk_watching(&mut self, peer: Option<&TcpStream>) -> Option<Bytes> {
        if let Some(prelude) = self.prelude.take() {
            return Some(prelude);
        }
        loop {
            if self.done {
                return None;
            }
            if !self.draining() && self.node.is_shutting_down() {
                self.start_drain();
            }
            let draining = self.draining();
            let close_at = self.close_at.or(self.planned_end());
            let deadline = close_at.map(|(t, _)| t);
            let catching_up = self.catching_up < self.topics.len();
            let mut out = BytesMut::new();
            let mut step_now = false;
            if catching_up {
                let needs = self.needs_jetstream();
                if !needs {
                    self.jetstream_permit = None;
                }
                step_now = !needs || self.jetstream_permit.is_some();
            }
            let stalled_at = self.stalled_at();
            if step_now {
                // A catch-up step moves positions and writes the matching
                // bytes together, so it runs to its end rather than being
                // raced against timers that could drop it half-way.
                if deadline.is_some_and(|d| d <= Instant::now()) {
                    let reason = close_at.map(|(_, r)| r).unwrap_or(CloseReason::Shutdown);
                    return Some(self.finish(reason));
                }
                if stalled_at.is_some_and(|at| at <= Instant::now()) {
                    return Some(self.stalled());
                }
                if let Err(reason) = Box::pin(self.catch_up_step(&mut out)).await {
                    return Some(self.finish(reason));
                }
                if let Some(bytes) = self.take_output(out) {
                    return Some(bytes);
                }
                continue;
            }
            let mut heartbeat = self
                .heartbeat
                .take()
                .expect("heartbeat is put back after each wait");
            // Cloned only while catching up: live wakes of every client would
            // otherwise all touch the node's shared reference count.
            let node = catching_up.then(|| self.node.clone());
            let pace_until = self.pacer.hold_until(Instant::now());
            let wake = {
                // Both kinds of work are safe to drop before they complete:
                // a permit not yet granted, an event not yet taken.
                let work = async {
                    if let Some(node) = &node {
                        Work::Permit(node.jetstream_read_permit().await)
                    } else {
                        // A client that was written to a moment ago waits out
                        // the rest of the pacing window first, so a busy
                        // stream gets one write per window instead of one per
                        // event; a quiet one is written to at once.
                        if let Some(until) = pace_until {
                            tokio::time::sleep_until(until).await;
                        }
                        Work::Live(self.live.next().await)
                    }
                };
                // Live streams learn of a shutdown from a drain marker on
                // their topics' feeds: waiting on the shared token here would
                // take its lock on every wake of every client.
                let watch_shutdown = catching_up && !draining;
                tokio::select! {
                    biased;
                    _ = shutdown_of(node.as_ref()), if watch_shutdown => Wake::Shutdown,
                    _ = sleep_until_opt(deadline), if deadline.is_some() => Wake::Deadline,
                    _ = sleep_until_opt(stalled_at), if stalled_at.is_some() => Wake::NoProgress,
                    _ = heartbeat.tick() => Wake::Heartbeat,
                    gone = peer_closed(peer), if peer.is_some() => {
                        if gone { Wake::PeerClosed } else { Wake::Heartbeat }
                    }
                    work = work => Wake::Work(work),
                }
            };
            self.heartbeat = Some(heartbeat);
            match wake {
                Wake::Shutdown => {
                    self.start_drain();
                    continue;
                }
                Wake::Deadline => {
                    let reason = close_at.map(|(_, r)| r).unwrap_or(CloseReason::Shutdown);
                    return Some(self.finish(reason));
                }
                Wake::NoProgress => return Some(self.stalled()),
                Wake::PeerClosed => {
                    self.done = true;
                    return None;
                }
                Wake::Heartbeat => {
                    if !self.wrote_since_heartbeat {
                        self.node.metrics().heartbeats.inc();
                        return Some(Bytes::from_static(b": hb\n\n"));
                    }
                    self.wrote_since_heartbeat = false;
                    continue;
                }
                Wake::Work(Work::Permit(permit)) => {
                    self.jetstream_permit = Some(permit);
                    continue;
                }
                Wake::Work(Work::Live(item)) => {
                    if let Err(reason) = self.live_batch(item, &mut out) {
                        return Some(self.finish(reason));
                    }
                }
            }
            if let Some(bytes) = self.take_output(out) {
                return Some(bytes);
            }
        }
    }

    /// What a step wrote, if anything: a lone shared frame or the buffer.
    fn take_output(&mut self, out: BytesMut) -> Option<Bytes> {
        let bytes = match self.lone_frame.take() {
            Some(frame) if out.is_empty() => frame,
            Some(frame) => {
                // Not reached: the buffer is only written after the lone frame
                // has been moved into it. Keep both, in order, regardless.
                let mut joined = BytesMut::with_capacity(frame.len() + out.len());
                joined.put_slice(&frame);
                joined.put_slice(&out);
                joined.freeze()
            }
            None if out.is_empty() => return None,
            None => out.freeze(),
        };
        self.wrote_since_heartbeat = true;
        self.pacer
            .record_write(Instant::now(), bytes.len() >= PACED_WRITE_MAX);
        Some(bytes)
    }

    fn draining(&self) -> bool {
        matches!(self.close_at, Some((_, CloseReason::Shutdown)))
    }

    fn start_drain(&mut self) {
        let window = self.node.config().drain().mul_f64(0.9 * fastrand::f64());
        self.close_at = Some((Instant::now() + window, CloseReason::Shutdown));
    }

    /// Whether the next catch-up step reads JetStream, and so needs a slot.
    fn needs_jetstream(&self) -> bool {
        if self.jetstream_read.is_some() {
            return true;
        }
        let Some(topic) = self.topics.get(self.catching_up) else {
            return false;
        };
        topic.pos < topic.catch_up_to
            && matches!(
                topic.feed.history_after(topic.pos, topic.catch_up_to, 0),
                Slice::Missing { .. }
            )
    }

    /// When the stream counts as stalled, if it is behind: catching up, a
    /// topic's head past its position, or events queued for it.
    fn stalled_at(&mut self) -> Option<Instant> {
        let catching_up = self.catching_up < self.topics.len();
        let behind = catching_up
            || self
                .topics
                .iter()
                .zip(&self.live.receivers)
                .any(|(t, rx)| (!t.by_path && t.feed.head() > t.pos) || !rx.is_empty());
        let mark = self
            .topics
            .iter()
            .fold(0u64, |sum, t| sum.wrapping_add(t.pos));
        let at = self.progress.observe(mark, Instant::now());
        behind.then_some(at)
    }

    /// Ends a stream that made no progress while behind; the client
    /// resumes from its cursor when it reconnects.
    fn stalled(&mut self) -> Bytes {
        let metrics = self.node.metrics();
        metrics.stalled_streams.inc();
        let behind: Vec<String> = self
            .topics
            .iter()
            .map(|t| format!("{}@{}/{}", t.feed.topic, t.pos, t.feed.head()))
            .collect();
        warn!(
            topics = %behind.join(","),
            catching_up = self.catching_up < self.topics.len(),
            waited_seconds = self.progress.limit.as_secs(),
            "client stream made no progress while behind its topic; closing it so the client resumes"
        );
        self.finish(CloseReason::Stalled)
    }

    fn finish(&mut self, reason: CloseReason) -> Bytes {
        self.done = true;
        self.reason = reason;
        let config = self.node.config();
        let retry = config.http.retry_ms.min(1000) + fastrand::u64(0..=config.http.retry_jitter_ms);
        Bytes::from(format!("retry: {retry}\n\n"))
    }

    fn live_batch(&mut self, first: LiveItem, out: &mut BytesMut) -> Result<(), CloseReason> {
        let mut item = first;
        let mut delivered = 0u64;
        let mut oldest: Option<SystemTime> = None;
        loop {
            match item {
                LiveItem::Closed => return Err(CloseReason::TopicClosed),
                LiveItem::Lagged(missed) => {
                    debug!(missed, "client too slow; disconnecting");
                    return Err(CloseReason::Slow);
                }
                LiveItem::Event(_, event) if event.is_drain_marker() => {
                    if !self.draining() {
                        self.start_drain();
                    }
                }
                LiveItem::Event(index, event) => {
                    if self.deliver(index, &event, out) {
                        delivered += 1;
                        oldest.get_or_insert(event.published);
                    }
                }
            }
            if out.len() >= BATCH_BYTES {
                break;
            }
            match self.live.try_next() {
                Some(next) => item = next,
                None => break,
            }
        }
        if delivered > 0 {
            self.pacer.record_batch(Instant::now(), delivered);
            // Shared counters are touched once per batch, and the lag is
            // sampled, so clients on both cores do not fight over them.
            self.batches = self.batches.wrapping_add(1);
            let metrics = self.node.metrics();
            metrics.events_delivered.inc_by(delivered);
            if self.batches % LAG_SAMPLE_EVERY == 1
                && let Some(published) = oldest
                && let Ok(lag) = SystemTime::now().duration_since(published)
            {
                metrics.delivery_lag.observe(lag.as_secs_f64());
            }
        }
        Ok(())
    }

    /// One step of catch-up: some events from memory or JetStream, or the
    /// set-up of a JetStream read. Ends the phase when every topic is done.
    async fn catch_up_step(&mut self, out: &mut BytesMut) -> Result<(), CloseReason> {
        let index = self.catching_up;
        if self.jetstream_read.is_some() {
            return self.jetstream_batch(out).await;
        }
        let topic = &self.topics[index];
        if topic.pos >= topic.catch_up_to {
            self.catching_up += 1;
            if self.catching_up == self.topics.len() {
                let replayed = self.catch_up_started.elapsed();
                self.node
                    .metrics()
                    .replay_duration
                    .observe(replayed.as_secs_f64());
                self.resume_span.record("memory_events", self.replayed[0]);
                self.resume_span
                    .record("jetstream_events", self.replayed[1]);
                // Ends the resume span.
                self.resume_span = Span::none();
            }
            return Ok(());
        }
        match topic
            .feed
            .history_after(topic.pos, topic.catch_up_to, MEMORY_CHUNK)
        {
            Slice::Events(events) => {
                let last = events.last().map(|e| e.seq).unwrap_or(topic.catch_up_to);
                let mut delivered = 0;
                for event in &events {
                    if self.deliver(index, event, out) {
                        delivered += 1;
                    }
                }
                let topic = &mut self.topics[index];
                topic.pos = topic.pos.max(last);
                if events.len() < MEMORY_CHUNK {
                    topic.pos = topic.pos.max(topic.catch_up_to);
                }
                self.count_replay("memory", delivered);
                Ok(())
            }
            Slice::Missing { until } => self.start_jetstream_read(index, until, out).await,
        }
    }

    async fn start_jetstream_read(
        &mut self,
        index: usize,
        until: u64,
        out: &mut BytesMut,
    ) -> Result<(), CloseReason> {
        let js = self.node.jetstream().clone();
        let topic = &self.topics[index];
        let stream = match bounded(js.get_stream(topic.feed.stream_name())).await {
            Ok(stream) => stream,
            Err(error) => {
                warn!(topic = %topic.feed.topic, %error, "cannot read stream for resume");
                return Err(CloseReason::Error);
            }
        };
        let info = stream.cached_info();
        if stream_epoch(info) != topic.feed.epoch {
            return Err(CloseReason::TopicClosed);
        }
        let first = info.state.first_sequence;
        if first > topic.pos + 1 && !topic.reset_sent {
            let data = serde_json::json!({
                "topic": topic.feed.topic.as_str(),
                "reason": "history_gone",
                "last_seen": topic.pos,
                "lost_from": topic.pos + 1,
                "lost_to": first - 1,
                "resume_from": first,
            });
            self.node.metrics().reset_events.inc();
            let topic = &mut self.topics[index];
            topic.pos = first - 1;
            topic.reset_sent = true;
            write_reset_body(out, &data);
            self.write_cursor(out);
        }
        let topic = &mut self.topics[index];
        topic.reset_sent = true;
        let end = until.saturating_sub(1).min(topic.catch_up_to);
        if topic.pos >= end {
            topic.pos = topic.pos.max(end);
            self.jetstream_permit = None;
            return Ok(());
        }
        let prefix = self.node.config().nats.subject_prefix.clone();
        let consumer = bounded(stream.create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: topic.pos + 1,
            },
            filter_subjects: topic.filters(&prefix),
            max_expires: crate::feed::PULL_EXPIRES,
            ..Default::default()
        }))
        .await;
        let consumer = match consumer {
            Ok(c) => c,
            Err(error) => {
                warn!(topic = %topic.feed.topic, %error, "cannot create resume consumer");
                return Err(CloseReason::Error);
            }
        };
        if consumer.cached_info().num_pending == 0 {
            topic.pos = end;
            self.jetstream_permit = None;
            return Ok(());
        }
        match bounded(consumer.messages()).await {
            Ok(messages) => {
                self.jetstream_read = Some(Box::new(JetStreamRead {
                    messages,
                    end,
                    _held: self.node.metrics().consumer_held(),
                }));
                Ok(())
            }
            Err(error) => {
                warn!(topic = %topic.feed.topic, %error, "cannot read resume consumer");
                Err(CloseReason::Error)
            }
        }
    }

    async fn jetstream_batch(&mut self, out: &mut BytesMut) -> Result<(), CloseReason> {
        let index = self.catching_up;
        let mut delivered = 0;
        let mut finished = false;
        let mut first = true;
        while out.len() < BATCH_BYTES {
            let Some(read) = self.jetstream_read.as_mut() else {
                break;
            };
            let item = if first {
                first = false;
                match tokio::time::timeout(JETSTREAM_READ_TIMEOUT, read.messages.next()).await {
                    Ok(item) => item,
                    Err(_) => {
                        warn!("resume read stalled; closing so the client retries");
                        return Err(CloseReason::Error);
                    }
                }
            } else {
                match read.messages.next().now_or_never() {
                    Some(item) => item,
                    None => break,
                }
            };
            let end = read.end;
            let message = match item {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    warn!(%error, "resume read error");
                    continue;
                }
                None => return Err(CloseReason::Error),
            };
            let Ok(info) = message.info() else {
                continue;
            };
            let (seq, pending) = (info.stream_sequence, info.pending);
            let published = SystemTime::from(info.published);
            if seq > end {
                finished = true;
                break;
            }
            let is_marker = message
                .headers
                .as_ref()
                .is_some_and(|h| h.get(MARKER_HEADER).is_some());
            if !is_marker {
                let topic = &self.topics[index];
                let prefix_len = self.node.config().nats.subject_prefix.len() + 1;
                let path = message
                    .subject
                    .as_str()
                    .get(prefix_len..)
                    .unwrap_or_default();
                let event = Event::encode(
                    &topic.feed.encode_context,
                    seq,
                    path,
                    published,
                    message.headers.as_ref(),
                    &message.payload,
                );
                if self.deliver(index, &event, out) {
                    delivered += 1;
                }
            }
            let topic = &mut self.topics[index];
            topic.pos = topic.pos.max(seq);
            if seq >= end || pending == 0 {
                finished = true;
                break;
            }
        }
        self.count_replay("jetstream", delivered);
        if finished && let Some(read) = self.jetstream_read.take() {
            let topic = &mut self.topics[index];
            topic.pos = topic.pos.max(read.end);
            self.jetstream_permit = None;
        }
        Ok(())
    }

    fn count_replay(&mut self, source: &str, delivered: u64) {
        self.replayed[usize::from(source == "jetstream")] += delivered;
        if delivered > 0 {
            let metrics = self.node.metrics();
            metrics
                .replay_events
                .with_label_values(&[source])
                .inc_by(delivered);
            metrics.events_delivered.inc_by(delivered);
        }
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        if self.reason == CloseReason::Client {
            // Dropped from outside (the client left, or its socket stalled):
            // if it was further behind than its queue allows, it was slow.
            if self.topics.iter().any(|t| {
                !t.by_path && t.feed.head().saturating_sub(t.pos) > t.feed.queue_events() as u64
            }) {
                self.reason = CloseReason::Slow;
            }
        }
        let metrics = self.node.metrics();
        for topic in &self.topics {
            metrics
                .topic_subscribers
                .with_label_values(&[topic.feed.topic.as_str()])
                .dec();
        }
        metrics
            .connections_closed
            .with_label_values(&[self.reason.as_str()])
            .inc();
        self.node.connection_closed();
        self.span.record("close_reason", self.reason.as_str());
        debug!(reason = self.reason.as_str(), "client disconnected");
    }
}

fn write_reset_body(out: &mut BytesMut, data: &serde_json::Value) {
    out.put_slice(b"event: reset\ndata: ");
    out.put_slice(data.to_string().as_bytes());
    out.put_u8(b'\n');
}

/// Resolves when `peer` is readable: `true` if the client closed its side
/// (or the socket failed), `false` if it merely sent bytes, which are
/// discarded: an SSE client has nothing more to say.
async fn peer_closed(peer: Option<&TcpStream>) -> bool {
    let Some(peer) = peer else {
        return std::future::pending().await;
    };
    if peer.readable().await.is_err() {
        return true;
    }
    let mut discard = [0u8; 64];
    match peer.try_read(&mut discard) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

fn heartbeat_interval(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

async fn shutdown_of(node: Option<&Node>) {
    match node {
        Some(node) => node.shutdown_cancelled().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(10);
    const QUEUE: usize = 256;

    /// Feeds the pacer one event every `gap`, each written at once unless
    /// held; returns the pacer and the time after the last event.
    fn steady(pacer: &mut Pacer, start: Instant, gap: Duration, events: u32) -> Instant {
        let mut now = start;
        for _ in 0..events {
            now += gap;
            pacer.record_batch(now, 1);
            pacer.record_write(now, false);
        }
        now
    }

    #[test]
    fn a_quiet_client_is_never_held() {
        let mut pacer = Pacer::new(WINDOW, QUEUE);
        let start = Instant::now();
        let now = steady(&mut pacer, start, Duration::from_millis(10), 50);
        assert_eq!(pacer.hold_until(now + Duration::from_millis(1)), None);
    }

    #[test]
    fn a_busy_client_waits_out_the_window_after_a_write() {
        let mut pacer = Pacer::new(WINDOW, QUEUE);
        let start = Instant::now();
        let now = steady(&mut pacer, start, Duration::from_millis(1), 50);
        let soon = now + Duration::from_millis(2);
        assert_eq!(pacer.hold_until(soon), Some(now + WINDOW));
        // Once the window has passed, the next batch goes out at once.
        assert_eq!(pacer.hold_until(now + WINDOW), None);
    }

    #[test]
    fn a_busy_client_that_falls_quiet_is_written_to_at_once_again() {
        let mut pacer = Pacer::new(WINDOW, QUEUE);
        let start = Instant::now();
        let now = steady(&mut pacer, start, Duration::from_millis(1), 50);
        let now = steady(&mut pacer, now, Duration::from_millis(200), 3);
        assert_eq!(pacer.hold_until(now + Duration::from_millis(1)), None);
    }

    #[test]
    fn batches_of_many_events_count_as_busy() {
        // Ten events per 10 ms batch: the client is busy even though it is
        // woken only once per window.
        let mut pacer = Pacer::new(WINDOW, QUEUE);
        let mut now = Instant::now();
        for _ in 0..20 {
            now += WINDOW;
            pacer.record_batch(now, 10);
            pacer.record_write(now, false);
        }
        assert!(pacer.hold_until(now + Duration::from_millis(1)).is_some());
    }

    #[test]
    fn a_very_busy_client_is_held_only_while_its_queue_has_room() {
        // 20 µs between events: a 10 ms hold would pile up 500 events in a
        // queue of 256; the hold stops at a quarter of it, 64 events.
        let mut pacer = Pacer::new(WINDOW, QUEUE);
        let now = steady(&mut pacer, Instant::now(), Duration::from_micros(20), 200);
        let until = pacer.hold_until(now).expect("a busy client is held");
        assert_eq!(until - now, Duration::from_micros(20 * 64));
    }

    #[test]
    fn a_full_write_or_a_zero_window_never_holds() {
        let start = Instant::now();
        let mut pacer = Pacer::new(WINDOW, QUEUE);
        let now = steady(&mut pacer, start, Duration::from_millis(1), 50);
        pacer.record_write(now, true);
        assert_eq!(pacer.hold_until(now), None);

        let mut unpaced = Pacer::new(Duration::ZERO, QUEUE);
        let now = steady(&mut unpaced, start, Duration::from_micros(10), 50);
        assert_eq!(unpaced.hold_until(now), None);
    }
}
