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
//! 3. **Parked.** A lean-path stream (cleartext or TLS) that is in step
//!    with its feed (with one of its feeds, if it reads several topics and
//!    only that one has been busy) leaves its socket with the feed's writer,
//!    which writes each batch of events to every parked socket from one
//!    task, sealing it per socket under TLS (see [`parked`]). The stream's own task then wakes only for its deadlines,
//!    its heartbeat, its client leaving, or the socket being given back
//!    (full, or the writer behind); it then catches up as in phase 1 and
//!    parks again.
//!
//! Per topic the client keeps `pos`: every event of that topic up to `pos`
//! has been delivered or did not match the subscription. Events at or below
//! `pos` are never written again, which is what makes resume exact.
//!
//! The stream ends on shutdown (at a random moment in the drain window, with
//! a `retry:` hint), at the end of its lifetime if one is configured, when
//! the token that opened it expires, when a topic's feed closes, or when the
//! client goes away.
//!
//! The parts, in the order an event goes through them: [`catch_up`] (memory
//! or JetStream, then `reset` where history is gone), [`live`] (the topics'
//! broadcast receivers), [`framing`] (the bytes written), [`pacing`] (when a
//! busy client is written to), [`park`] and [`parked`] (a stream's side and
//! its feed's side of parking), [`progress`] (the no-progress watchdog) and
//! [`timer`] (the one timer a stream waits on for all of its times). This
//! module holds the stream's state and its loop: what it waits on, and its
//! deadlines (drain, lifetime, token expiry, heartbeat).

mod catch_up;
mod framing;
mod live;
pub(crate) mod merged;
mod pacing;
mod park;
pub(crate) mod parked;
mod progress;
mod timer;

use std::{sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use sse_protocol::{SubjectPath, TopicName, headers::TOPIC_DELETED_EVENT_NAME};
use tokio::{net::TcpStream, sync::OwnedSemaphorePermit, time::Instant};
use tracing::{Span, debug, info_span};

use crate::{feed::FeedLease, node::Node, telemetry};
pub(crate) use catch_up::JETSTREAM_TURN_CHECK;
use catch_up::JetStreamRead;
use framing::write_reset_body;
use live::{LiveItem, LiveReceivers};
use pacing::Pacer;
use park::{ParkTry, ParkedWake};
use progress::Progress;
use timer::{StreamTimer, TimerFired};

/// Most bytes gathered into one write.
const BATCH_BYTES: usize = 64 * 1024;
/// A write at least this large starts no pacing window: it already spreads
/// its system call over many bytes, and holding the client would only add
/// latency and fill its queue (large events arrive faster than a window).
const PACED_WRITE_MAX: usize = 8 * 1024;
/// One live batch in this many records its delivery lag.
const LAG_SAMPLE_EVERY: u32 = 8;

/// A heartbeat: an SSE comment line, which clients ignore.
const HEARTBEAT: &[u8] = b": hb\n\n";

/// Times a stream lets a merged feed's relay run before it, per chunk, when
/// it could park but the relay has not caught up with it yet.
const RELAY_TURNS: u32 = 3;

/// The first wait before a stream tries again to park on its set's merged
/// feed when the relay is still behind it after [`RELAY_TURNS`]; each later
/// wait is twice as long, up to [`PARK_RETRIES`] of them (some 2.5 s in
/// all). Without them a stream whose last event came at such a moment
/// would stay on its own task until its next event or heartbeat.
const PARK_RETRY_FIRST: Duration = Duration::from_millis(10);

/// Most tries again to park after [`PARK_RETRY_FIRST`] since the stream's
/// last event.
const PARK_RETRIES: u8 = 8;

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
    /// The stream's last sequence, when it stands before the client's
    /// cursor of the same epoch (see [`crate::topics::Topics::confirm_cursor`]).
    pub stream_behind: Option<u64>,
}

struct ClientTopic {
    feed: FeedLease,
    patterns: Vec<SubjectPath>,
    pos: u64,
    catch_up_to: u64,
    reset_sent: bool,
    /// The `resume_from` of the `history_gone` reset just written from
    /// JetStream, until the topic's next live event: a whole topic's feed
    /// that starts as the stream drops its oldest events may read past it,
    /// and the stream then looks again ([`ClientTopic::passes_over_resume`]).
    resume_from: Option<u64>,
    /// A `reset` for a cursor this stream's sequences cannot serve (another
    /// epoch, or past the stream's end), written at the topic's catch-up,
    /// where its `resume_from`, the oldest event still held, is known.
    /// Boxed: most streams never carry one.
    pending_reset: Option<Box<serde_json::Value>>,
    /// Whether the client hears only its one path's events (so `pos` does
    /// not follow the topic's head).
    by_path: bool,
    /// Whether one of the patterns is the whole topic, which every event
    /// of the topic matches: no per-event comparison of paths.
    whole_topic: bool,
    /// Whether JetStream refused this stream's catch-up a consumer, so that
    /// it reads the rest by direct gets ([`ClientStream::read_directly`])
    /// rather than ask for one at each step.
    reads_directly: bool,
}

impl ClientTopic {
    /// Whether the topic's receiver may hold an event the stream has not
    /// read: its feed has read past the stream's position. The feed moves
    /// its head before it sends, so an event sent before this look is seen;
    /// a drain marker or a closed channel is not, and is read by the wait.
    fn may_hold_news(&self) -> bool {
        self.feed.head() > self.pos
    }

    /// What a merged feed reads of this topic for the stream, if the
    /// stream takes every event its receiver gets: `Some(None)` for the
    /// whole of its feed (the whole topic, or the one path a path feed
    /// reads), `Some(Some(path))` for the path's channel of the whole
    /// topic's feed. `None` when the stream filters (wildcards, several
    /// patterns), which a merged feed does not.
    fn merge_read(&self) -> Option<Option<&str>> {
        if self.by_path {
            return only_path(&self.patterns).map(Some);
        }
        let whole = match self.patterns.as_slice() {
            [one] => match self.feed.path.as_deref() {
                None => one.is_whole_topic(),
                own => only_path(&self.patterns) == own,
            },
            _ => false,
        };
        whole.then_some(None)
    }

    /// Moves the topic onto the feed that took over from its own, if its
    /// feed was retired (see [`crate::feed::Feed::retire`]): the whole
    /// topic's feed, where the client hears its path's channel. Positions
    /// carry over, as both feeds read the same stream. Returns whether it
    /// moved; the caller attaches to the new feed.
    fn follow_successor(&mut self) -> bool {
        let Some(successor) = self.feed.successor() else {
            return false;
        };
        if successor.epoch != self.feed.epoch {
            // The stream was recreated meanwhile: positions mean nothing on
            // the new one, and the client resumes with a reset instead.
            return false;
        }
        let lease = successor.lease();
        self.by_path = lease.path.is_none() && only_path(&self.patterns).is_some();
        self.feed = lease;
        true
    }

    /// The path whose channel of its feed the client hears, if any.
    fn channel(&self) -> Option<&str> {
        if self.by_path {
            only_path(&self.patterns)
        } else {
            None
        }
    }

    fn matches(&self, path: &str) -> bool {
        self.whole_topic || self.patterns.iter().any(|p| p.matches(path))
    }

    /// Whether `seq`, the topic's next live event, passes over the
    /// `resume_from` of the reset just sent, on a feed of the whole topic
    /// (which hands on every event it reads); the next live event ends the
    /// question either way.
    fn passes_over_resume(&mut self, seq: u64) -> bool {
        let Some(resume_from) = self.resume_from.take() else {
            return false;
        };
        self.feed.path.is_none() && self.pos < resume_from && seq > resume_from
    }

    /// Whether a JetStream read of the topic takes every event of its
    /// stream ([`Self::filters`]).
    fn reads_whole_stream(&self) -> bool {
        !matches!(self.patterns.as_slice(), [one] if !one.is_whole_topic())
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
    /// The pacing window is over: the stream may read its events.
    PaceOver,
    Heartbeat,
    PeerClosed,
    Work(Work),
    /// A second stream of the set started the merged feed this one waits
    /// for: it may park on it.
    MergeStarted,
}

/// A stream's trace spans.
struct StreamSpans {
    connection: Span,
    /// The resume under way, if any; ended when catch-up is done.
    resume: Span,
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
    /// The next heartbeat and the one other time the stream waits for;
    /// taken out during each wait, which borrows the rest of the stream.
    timer: Option<StreamTimer>,
    /// When the stream itself last wrote to its socket, heartbeats
    /// included; the writer of a parked stream's feed keeps its own time
    /// ([`parked::Ticket::writer_wrote_at`]).
    last_wrote: Option<Instant>,
    close_at: Option<(Instant, CloseReason)>,
    lifetime_end: Option<Instant>,
    token_expiry: Option<Instant>,
    done: bool,
    reason: CloseReason,
    /// Only while tracing is on: every stream would otherwise carry two
    /// empty spans.
    spans: Option<Box<StreamSpans>>,
    replayed: [u64; 2],
    batches: u32,
    lone_frame: Option<Bytes>,
    pacer: Pacer,
    progress: Progress,
    /// The stream's claim on its socket while the feed's writer holds it.
    /// Boxed, as the wait below: every stream carries the field, and most
    /// kinds of stream never park.
    parked: Option<Box<park::Parking>>,
    /// Catching up after taking the socket back: not a resume, so it is
    /// not counted as one.
    rejoining: bool,
    /// The topic a stream of several topics last heard from, and how many
    /// of its events came in a row (see [`park::PARK_AFTER_RUN`]).
    run: (u32, u32),
    /// Runs in a row shorter than [`park::PARK_AFTER_RUN`]: topics taking
    /// turns (see [`park::MERGE_AFTER_TURNS`]).
    turns: u32,
    /// The topic of the last run of at least [`park::PARK_AFTER_RUN`]
    /// events, or `u32::MAX`: after one short run of another topic the
    /// stream parks on it again at its next event.
    busy_topic: u32,
    /// The stream's wait for a second stream of its set of topics to start
    /// their merged feed (see [`merged::MergedFeeds`]).
    merge_wait: Option<Arc<merged::MergeWait>>,
    /// When the stream tries again to park on its merged feed, and how many
    /// such tries it has made (see [`PARK_RETRY_FIRST`]).
    park_retry_at: Option<Instant>,
    park_retries: u8,
    /// The sum of the topics' positions when the stream last fell behind a
    /// topic's queue and caught up.
    delivered_at_lag: Option<u64>,
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
            let restart = match &request.resume {
                Some((epoch, seq)) if *epoch == attachment.epoch => {
                    // The stream never held the client's cursor, or went
                    // back from it (restored from a backup): its sequences
                    // cannot be trusted to mean what the client saw, as
                    // with another epoch.
                    request.stream_behind.map(|last| {
                        serde_json::json!({
                            "topic": feed.topic.as_str(),
                            "reason": "ahead_of_stream",
                            "last_seen": seq,
                            "stream_last": last,
                            "lost_from": null,
                            "lost_to": null,
                        })
                    })
                }
                // Another incarnation of the stream: its sequences mean
                // nothing here.
                Some((old_epoch, old_seq)) => Some(serde_json::json!({
                    "topic": feed.topic.as_str(),
                    "reason": "stream_recreated",
                    "old_epoch": old_epoch,
                    "last_seen": old_seq,
                    "lost_from": null,
                    "lost_to": null,
                })),
                None => None,
            };
            let (pos, catch_up_to, reset_sent, pending_reset) = match (restart, &request.resume) {
                // Say so, then start from the oldest event held: at once for
                // a stream that has held none, else at the catch-up, which
                // finds that oldest event.
                (Some(mut reset), _) if attachment.head == 0 => {
                    reset["resume_from"] = 1.into();
                    resets.push(reset);
                    (0, 0, true, None)
                }
                (Some(reset), _) => (0, attachment.head, true, Some(Box::new(reset))),
                (None, Some((_, seq))) => (*seq, attachment.head.max(*seq), false, None),
                (None, None) => (attachment.live_from, attachment.head, false, None),
            };
            receivers.push(attachment.receiver);
            node.metrics()
                .topic_subscribers
                .with_label_values(&[feed.topic.as_str()])
                .inc();
            topics.push(ClientTopic {
                feed,
                whole_topic: request.patterns.iter().any(SubjectPath::is_whole_topic),
                patterns: request.patterns,
                pos,
                catch_up_to,
                reset_sent,
                resume_from: None,
                pending_reset,
                by_path,
                reads_directly: false,
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
            timer: Some(StreamTimer::new(config.heartbeat())),
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
            live: LiveReceivers {
                receivers,
                next: 0,
                parked: None,
                held: None,
            },
            last_wrote: None,
            close_at: None,
            done: false,
            token_expiry: None,
            reason: CloseReason::Client,
            spans: None,
            replayed: [0; 2],
            batches: 0,
            lone_frame: None,
            pacer: Pacer::new(pacing, queue_events),
            progress: Progress::new(no_progress),
            parked: None,
            rejoining: false,
            run: (0, 0),
            turns: 0,
            busy_topic: u32::MAX,
            merge_wait: None,
            park_retry_at: None,
            park_retries: 0,
            delivered_at_lag: None,
        };
        let resuming = stream.topics.iter().any(|t| t.pos < t.catch_up_to);
        if telemetry::tracing_enabled() {
            let names: Vec<&str> = stream
                .topics
                .iter()
                .map(|t| t.feed.topic.as_str())
                .collect();
            let connection = info_span!(
                "sse.connection",
                otel.kind = "server",
                topics = %names.join(","),
                resumed = resuming,
                close_reason = tracing::field::Empty,
            );
            let resume = if resuming {
                info_span!(
                    parent: &connection,
                    "sse.resume",
                    memory_events = tracing::field::Empty,
                    jetstream_events = tracing::field::Empty,
                )
            } else {
                Span::none()
            };
            stream.spans = Some(Box::new(StreamSpans { connection, resume }));
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
    ///
    /// While hyper holds a chunk back (the client takes no more bytes), a
    /// JetStream read turn the stream holds is lent to a watcher, which
    /// ends it when other resumes wait ([`Self::lend_jetstream_turn`]).
    pub fn into_body_stream(self) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
        futures_util::stream::unfold((self, None), |(mut state, mut lent)| async move {
            if lent
                .as_ref()
                .is_some_and(|lent| !state.reclaim_jetstream_turn(lent))
            {
                lent = None;
            }
            let bytes = state.next_chunk().await?;
            let lent = state.lend_jetstream_turn(lent);
            Some((Ok(bytes), (state, lent)))
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
        earliest(token, lifetime)
    }

    /// When and why the stream ends: the earliest of a close decided (the
    /// drain's slot, a give-up) and its planned end. A token that expires
    /// before the stream's slot in a drain still ends it at its expiry.
    fn end(&self) -> Option<(Instant, CloseReason)> {
        earliest(self.close_at, self.planned_end())
    }

    /// Records that the client's socket stopped taking bytes.
    pub fn mark_slow(&mut self) {
        self.reason = CloseReason::Slow;
    }

    /// The next bytes to write, or `None` when the stream is over.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        self.next_chunk_watching(None, None).await
    }

    /// Like [`Self::next_chunk`], and also ends the stream (returns `None`)
    /// when `peer` shows the client closed its side. With `parkable`, a
    /// shared handle of the socket the chunks go to, the stream parks it
    /// with its feed's writer whenever it is caught up (see [`parked`]).
    pub async fn next_chunk_watching(
        &mut self,
        peer: Option<&TcpStream>,
        parkable: Option<&Arc<crate::connection::SharedSocket>>,
    ) -> Option<Bytes> {
        if let Some(prelude) = self.prelude.take() {
            return Some(prelude);
        }
        let mut relay_turns = 0;
        loop {
            if self.done {
                return None;
            }
            if !self.draining() && self.node.is_shutting_down() {
                self.start_drain();
            }
            let draining = self.draining();
            let close_at = self.end();
            let deadline = close_at.map(|(t, _)| t);
            let catching_up = self.catching_up < self.topics.len();
            let mut step_now = false;
            if catching_up {
                self.end_jetstream_turn_if_others_wait();
                let needs = self.needs_jetstream();
                if !needs {
                    self.jetstream_permit = None;
                }
                step_now = !needs || self.jetstream_permit.is_some();
            }
            let stalled_at = self.stalled_at();
            // Checked on every turn, not only by the wait's timer below: a
            // stream with events always ready would never let that fire.
            if deadline.is_some_and(|d| d <= Instant::now()) {
                let reason = close_at.map(|(_, r)| r).unwrap_or(CloseReason::Shutdown);
                return Some(self.finish(reason));
            }
            if step_now {
                // A catch-up step moves positions and writes the matching
                // bytes together, so it runs to its end rather than being
                // raced against timers that could drop it half-way.
                if stalled_at.is_some_and(|at| at <= Instant::now()) {
                    return Some(self.stalled());
                }
                let mut out = BytesMut::new();
                if let Err(reason) = Box::pin(self.catch_up_step(&mut out)).await {
                    return Some(self.finish(reason));
                }
                if let Some(bytes) = self.take_output(out) {
                    return Some(bytes);
                }
                continue;
            }
            // A try that came due is made now if the stream may park, and
            // never left in the past to fire again at once.
            if self.park_retry_at.is_some_and(|at| at <= Instant::now()) {
                self.park_retry_at = None;
            }
            if !catching_up
                && !self.is_parked()
                && let Some(socket) = parkable
            {
                match self.try_park(socket) {
                    ParkTry::RelayBehind if relay_turns < RELAY_TURNS => {
                        // The merged feed's relay was woken by the same
                        // events and has yet to run: let it, then try again.
                        relay_turns += 1;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    ParkTry::RelayBehind => self.park_later(),
                    ParkTry::Parked | ParkTry::No => {
                        self.park_retry_at = None;
                        self.park_retries = 0;
                    }
                }
            }
            if self.is_parked() {
                match self.wait_parked(close_at, peer).await {
                    ParkedWake::Write(bytes) => {
                        self.last_wrote = Some(Instant::now());
                        return Some(bytes);
                    }
                    ParkedWake::Resume => continue,
                    ParkedWake::End(reason) => return Some(self.finish(reason)),
                    ParkedWake::Gone => {
                        self.done = true;
                        return None;
                    }
                }
            }
            let mut timer = self
                .timer
                .take()
                .expect("the timer is put back after each wait");
            // Cloned only while catching up: live wakes of every client would
            // otherwise all touch the node's shared reference count.
            let node = catching_up.then(|| self.node.clone());
            // A client that was written to a moment ago waits out the rest
            // of the pacing window before it reads its events, so a busy
            // stream gets one write per window instead of one per event; a
            // quiet one is written to at once.
            let pace_until = if catching_up {
                None
            } else {
                self.pacer.hold_until(Instant::now())
            };
            // One timer for the deadline, the stall watch and the pacing
            // window, beside the heartbeat: each timer a waiting stream
            // holds costs it over 100 bytes.
            let wake_at = match (deadline, stalled_at) {
                (Some(d), Some(s)) => Some(d.min(s)),
                (d, s) => d.or(s),
            };
            let timer_at = [wake_at, pace_until, self.park_retry_at]
                .into_iter()
                .flatten()
                .min();
            let wake = {
                // Both kinds of work are safe to drop before they complete:
                // a permit not yet granted, an event not yet taken.
                let (live, topics) = (&mut self.live, &self.topics);
                let work = async {
                    if let Some(node) = &node {
                        // Boxed: only a stream catching up waits for one.
                        Work::Permit(Box::pin(node.jetstream_read_permit()).await)
                    } else {
                        Work::Live(live.next(|index| topics[index].may_hold_news()).await)
                    }
                };
                // Live streams learn of a shutdown from a drain marker on
                // their topics' feeds: waiting on the shared token here would
                // take its lock on every wake of every client.
                let watch_shutdown = catching_up && !draining;
                // Boxed, and made only when watched: a live stream would
                // otherwise carry this wait's state for nothing.
                let mut shutdown = watch_shutdown.then(|| Box::pin(shutdown_of(node.as_ref())));
                let shutdown = std::future::poll_fn(|cx| match shutdown.as_mut() {
                    Some(wait) => wait.as_mut().poll(cx),
                    None => std::task::Poll::Pending,
                });
                // Only while no relay has started: one that has, and that
                // the stream could not park on, would wake it at once.
                let merge_wait = self
                    .merge_wait
                    .as_deref()
                    .filter(|wait| matches!(wait.waited(), merged::Waited::Waiting));
                let merge_started = std::future::poll_fn(|cx| match merge_wait {
                    Some(wait) => wait.poll_started(cx),
                    None => std::task::Poll::Pending,
                });
                tokio::select! {
                    biased;
                    () = shutdown, if watch_shutdown => Wake::Shutdown,
                    gone = peer_closed(peer), if peer.is_some() => {
                        if gone { Wake::PeerClosed } else { Wake::Heartbeat }
                    }
                    work = work, if pace_until.is_none() => Wake::Work(work),
                    () = merge_started, if merge_wait.is_some() => Wake::MergeStarted,
                    // After the work: events waiting are progress about to
                    // be made, not a stall (the deadline is met on the next
                    // turn if it is also due), and a stream being written to
                    // needs no heartbeat.
                    fired = timer.wait(timer_at) => {
                        let now = Instant::now();
                        if fired == TimerFired::Heartbeat {
                            Wake::Heartbeat
                        } else if deadline.is_some_and(|d| d <= now) {
                            Wake::Deadline
                        } else if wake_at.is_some_and(|w| w <= now) {
                            Wake::NoProgress
                        } else {
                            Wake::PaceOver
                        }
                    }
                }
            };
            self.timer = Some(timer);
            // Made after the wait, not before: a waiting stream would carry
            // it empty.
            let mut out = BytesMut::new();
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
                Wake::PaceOver => {
                    // What the window held back is written now, before the
                    // stream tries to park: with events waiting it could not
                    // park, and trying takes the lock its feed's writer holds
                    // while it writes.
                    let topics = &self.topics;
                    let Some(item) = self.live.try_next(|index| topics[index].may_hold_news())
                    else {
                        continue;
                    };
                    if let Err(reason) = self.live_batch(item, &mut out) {
                        return Some(self.finish(reason));
                    }
                }
                Wake::PeerClosed => {
                    self.done = true;
                    return None;
                }
                Wake::Heartbeat => {
                    let timer = self.timer.as_mut().expect("the timer was put back");
                    if timer.defer_after(self.last_wrote) {
                        continue;
                    }
                    self.last_wrote = Some(Instant::now());
                    self.node.metrics().heartbeats.inc();
                    return Some(Bytes::from_static(HEARTBEAT));
                }
                Wake::Work(Work::Permit(permit)) => {
                    self.jetstream_permit = Some(permit);
                    continue;
                }
                Wake::MergeStarted => continue,
                Wake::Work(Work::Live(item)) => {
                    // The tries to park again count from the last event.
                    self.park_retries = 0;
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

    /// Sets the time of the stream's next try to park, if it has tries
    /// left; a try that comes due wakes the stream like the end of a
    /// pacing window, and it tries again on its next turn.
    fn park_later(&mut self) {
        let now = Instant::now();
        if self.park_retry_at.is_some_and(|at| at > now) {
            return;
        }
        self.park_retry_at = (self.park_retries < PARK_RETRIES).then(|| {
            self.park_retries += 1;
            now + PARK_RETRY_FIRST * (1 << (self.park_retries - 1))
        });
    }

    fn draining(&self) -> bool {
        matches!(self.close_at, Some((_, CloseReason::Shutdown)))
    }

    fn start_drain(&mut self) {
        let window = self.node.config().drain().mul_f64(0.9 * fastrand::f64());
        self.close_at = Some((Instant::now() + window, CloseReason::Shutdown));
    }

    fn finish(&mut self, reason: CloseReason) -> Bytes {
        self.done = true;
        self.reason = reason;
        let mut last = String::new();
        if reason == CloseReason::TopicClosed {
            // A deleted topic is said, so that a page can open its stream
            // again without it: asked for again, it gets 404, which ends a
            // browser's EventSource for good. A feed closed for another
            // reason (a recreated stream) belongs to a topic still known.
            let mut deleted: Vec<&TopicName> = self
                .topics
                .iter()
                .filter(|t| t.feed.is_closed() && !self.node.topics().knows(&t.feed.topic))
                .map(|t| &t.feed.topic)
                .collect();
            deleted.sort();
            deleted.dedup();
            for topic in deleted {
                last.push_str(&format!(
                    "event: {TOPIC_DELETED_EVENT_NAME}\ndata: {{\"topic\":\"{topic}\"}}\n\n"
                ));
            }
        }
        let config = self.node.config();
        // A stream the node ends is to resume elsewhere at once: a drain
        // spreads its closes over its window, not over the clients' waits.
        let retry = config.http.retry_ms.min(1000) + fastrand::u64(0..=config.http.retry_jitter_ms);
        last.push_str(&format!("retry: {retry}\n\n"));
        Bytes::from(last)
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        if self.reason == CloseReason::Client && self.parked.is_none() {
            // Dropped from outside: the client left, or hyper gave up on a
            // socket that refused bytes for `delivery.write_stall_seconds`
            // (the lean path says so itself: `mark_slow`). Further behind
            // than its queue allows, with nothing handed to the socket for
            // about that long, it was slow. A client that leaves during a
            // catch-up is as far behind, but its writes were moving.
            // An HTTP/2 stream reset for its shut window (`h2_stall`) was
            // as slow, however far behind.
            let stall = Duration::from_secs(self.node.config().delivery.write_stall_seconds);
            let writes_stopped = self.last_wrote.is_none_or(|at| at.elapsed() >= stall / 2);
            let far_behind = writes_stopped
                && self.topics.iter().any(|t| {
                    !t.by_path && t.feed.head().saturating_sub(t.pos) > t.feed.queue_events() as u64
                });
            if crate::h2_stall::resetting_held_stream() || far_behind {
                self.reason = CloseReason::Slow;
            }
        }
        let metrics = self.node.metrics();
        if self.parked.take().is_some() {
            metrics.streams_parked.dec();
        }
        for topic in &self.topics {
            let subscribers = metrics
                .topic_subscribers
                .with_label_values(&[topic.feed.topic.as_str()]);
            subscribers.dec();
            if subscribers.get() == 0 && topic.feed.is_closed() {
                self.node.topics().forget_unread_topic(&topic.feed.topic);
            }
        }
        metrics
            .connections_closed
            .with_label_values(&[self.reason.as_str()])
            .inc();
        self.node.connection_closed();
        if let Some(spans) = &self.spans {
            spans
                .connection
                .record("close_reason", self.reason.as_str());
        }
        debug!(reason = self.reason.as_str(), "client disconnected");
    }
}

/// Most bytes a client may send in one go once its head is read before its
/// stream is closed as gone: an `EventSource` sends nothing more, and a
/// client that floods the socket would otherwise keep the node reading
/// and throwing away its bytes for as long as it liked.
const PEER_BYTES_PER_WAKE: usize = 64 * 1024;

/// Resolves when `peer` is readable: `true` if the client closed its side
/// (or the socket failed, or it sent [`PEER_BYTES_PER_WAKE`] at once),
/// `false` if it merely sent a few bytes, which are discarded: an SSE
/// client has nothing more to say.
async fn peer_closed(peer: Option<&TcpStream>) -> bool {
    let Some(peer) = peer else {
        return std::future::pending().await;
    };
    // `poll_read_ready` keeps no future of its own: every waiting stream
    // carries this wait, and `readable()` would add some 150 bytes to it.
    if std::future::poll_fn(|cx| peer.poll_read_ready(cx))
        .await
        .is_err()
    {
        return true;
    }
    discard_what_the_peer_sent(peer)
}

/// Reads and drops what the client sent, in large reads (a small buffer
/// would cost a system call every few bytes); `true` if it is gone.
/// Not async, so that the buffer is no part of any stream's wait.
fn discard_what_the_peer_sent(peer: &TcpStream) -> bool {
    let mut discard = [0u8; 4096];
    let mut taken = 0;
    loop {
        match peer.try_read(&mut discard) {
            Ok(0) => return true,
            Ok(read) => {
                taken += read;
                if taken >= PEER_BYTES_PER_WAKE {
                    debug!(bytes = taken, "closing a stream whose client sends bytes");
                    return true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
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

/// The earlier of two ends; on a tie, `a`.
fn earliest(
    a: Option<(Instant, CloseReason)>,
    b: Option<(Instant, CloseReason)>,
) -> Option<(Instant, CloseReason)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::CloseReason::{self, *};

    /// `sse_connections_closed_total{reason}` is created at 0 for every
    /// reason a stream can end with.
    #[test]
    fn every_close_reason_is_a_known_metric_label() {
        let all: [CloseReason; 8] = [
            Client,
            Slow,
            Shutdown,
            Lifetime,
            TopicClosed,
            Error,
            TokenExpired,
            Stalled,
        ];
        for reason in all {
            assert!(
                crate::metrics::CLOSE_REASONS.contains(&reason.as_str()),
                "{reason:?}"
            );
        }
    }
}
