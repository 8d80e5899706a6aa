//! Where events arrive: one JetStream reader per topic per node.
//!
//! A [`Feed`] reads its topic's stream with an ordered consumer that starts
//! at an explicit sequence (never `DeliverPolicy::New`, which async-nats turns
//! into `All` when it re-creates a consumer that has delivered nothing). Each
//! event is encoded once, appended to the topic's [`History`] and broadcast
//! to the topic's clients, all under one lock, so a client that subscribes
//! sees exactly the events after the head it was given. A feed whose topic
//! is quiet lets its consumer go and listens for publishes instead; while
//! the topic then gets only a few events a second, it reads each one it
//! hears of with a direct get by sequence, without a consumer. A topic's
//! stream made by the admin service republishes each event it stores, with
//! its sequence; a dozing feed listens there and takes such an event in as
//! it comes when it follows the feed's head, and asks JetStream only for
//! what it did not hear.
//!
//! Errors from the consumer (a missed heartbeat, NATS away) are logged and
//! counted and the reader goes on; if the consumer ends, it is re-created at
//! `head + 1`, so an outage loses nothing. A consumer that went silent while
//! JetStream holds newer events (the watchdog in `Reader::read_from`) is
//! replaced while the feed reads on as a dozing one does, so its clients do
//! not also wait for the new consumer to stand. A stream that is gone, or that was
//! recreated under the same name (a new epoch), closes the feed: its clients
//! are disconnected and come back through resume, which sends `reset`.

use std::{
    collections::HashMap,
    sync::{
        Arc, LazyLock, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
    stream::Info,
};
use futures_util::{FutureExt, StreamExt};
use sse_protocol::{
    Access, TopicName, cursor::epoch_from_unix_nanos, grant::ACCESS_METADATA_KEY,
    nats_switch::answered_with_quorum, topic::live_subject,
};
use tokio::sync::broadcast;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, error, info, info_span, warn};

use crate::{
    connection::SharedSocket,
    delivery::parked::{self, ParkedSockets, Ticket},
    event::{EncodeContext, Event, InvalidReason, TRACEPARENT_HEADER, is_delete_marker},
    history::{History, HistoryBudget, Slice},
    metrics::Metrics,
    node::Node,
};

/// Settings a feed needs from the node configuration.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// NATS subject prefix, without the trailing dot.
    pub subject_prefix: String,
    /// History bound in bytes.
    pub max_bytes: usize,
    /// History bound in events.
    pub max_events: usize,
    /// Events loaded from JetStream when the feed starts.
    pub warm_events: u64,
    /// Broadcast capacity: how far a client may lag.
    pub client_queue_events: usize,
    /// The same for a client of one concrete path.
    pub path_queue_events: usize,
    /// Largest payload sent as is.
    pub max_event_bytes: usize,
    /// How long the reader may make no progress while JetStream holds
    /// newer events before its consumer is given up and re-created.
    pub no_progress: Duration,
    /// How long a topic may go without a new event (from its last event's
    /// JetStream timestamp until the feed reads a new one) before its feed
    /// lets its consumer go and waits for the topic's next publish instead;
    /// `None` keeps it always.
    pub doze_after: Option<Duration>,
    /// The same, if shorter, for a topic whose stream allows direct gets: a
    /// dozing feed reads a few events a second with them, so its wakes cost
    /// NATS no consumer ([`Reader::read_directly`]).
    pub direct_doze_after: Option<Duration>,
    /// Counts reconnections to NATS; each one re-creates every feed's
    /// consumer.
    pub reconnections: tokio::sync::watch::Receiver<u64>,
    /// The node-wide bound on history memory.
    pub budget: Arc<HistoryBudget>,
}

/// The live state of one topic on this node.
pub struct Feed {
    /// The topic.
    pub topic: TopicName,
    /// The one concrete path this feed reads, or `None` for the whole topic.
    /// A path feed serves a topic read sparsely (per-user channels): the
    /// node then reads only its clients' paths, not the whole topic.
    pub path: Option<Box<str>>,
    /// The stream incarnation this feed reads.
    pub epoch: String,
    /// What every event of this feed is encoded with; shared by replays.
    pub encode_context: Arc<EncodeContext>,
    stream_name: String,
    private: AtomicBool,
    /// The last sequence processed, readable without the lock: clients
    /// compare their position with it on every wait.
    head: AtomicU64,
    /// The stream's last sequence when the feed started: a client without a
    /// cursor starts here, not at the older events the feed warms up with.
    live_from: u64,
    /// Streams and look-ups holding this feed ([`FeedLease`]s); the registry
    /// stops a feed that has had none for `delivery.feed_linger_seconds`.
    interest: AtomicUsize,
    /// When the last lease was given back.
    idle_since: Mutex<tokio::time::Instant>,
    /// When the feed last read an event, for evicting the coldest history.
    last_event: Mutex<tokio::time::Instant>,
    budget: Arc<HistoryBudget>,
    /// Capacity of the feed's main broadcast: how far its clients may lag.
    queue_events: usize,
    /// Asks the reader to give its consumer up and start a new one.
    renew: tokio::sync::Notify,
    /// Whether the reader dozes: listens for publishes without a consumer.
    dozing: AtomicBool,
    /// Whether the topic's stream republishes its events to the live
    /// subjects ([`republishes_live`]), where a dozing feed listens then.
    republished: AtomicBool,
    /// Asks a dozing reader to look at JetStream now.
    look_now: tokio::sync::Notify,
    /// The highest last sequence of the stream a listing told the dozing
    /// reader of: each one makes it look once.
    listed_last: AtomicU64,
    /// The highest sequence JetStream said the stream holds: when the feed
    /// started, at a listing, or asked about a client's cursor. A cursor up
    /// to here needs no question (see [`Feed::holds_up_to`]).
    known_held: AtomicU64,
    /// Events deleted from within the stream (between its first and last
    /// sequences) as last listed: a subject's purge, a deleted message.
    deleted_within: AtomicU64,
    /// Sockets of caught-up clients, written to by the feed's writer.
    parked: Arc<ParkedSockets>,
    state: Mutex<FeedState>,
    closed: CancellationToken,
    /// The whole topic's feed that took this path feed's clients over (see
    /// [`Feed::retire`]).
    successor: std::sync::OnceLock<Arc<Feed>>,
}

struct FeedState {
    head: u64,
    /// The node is draining: no stream parks any more.
    draining: bool,
    history: History,
    /// Clients of the whole topic, or of several paths or wildcards.
    sender: Channel,
    /// Clients of exactly one concrete path, by path: an event wakes only
    /// the clients of its own path, so many quiet paths in one topic do not
    /// wake every client of the topic for every event.
    paths: HashMap<Box<str>, Channel>,
    path_queue_events: usize,
    attaches: u32,
}

/// Queue slots a feed's main channel starts with.
const FIRST_QUEUE_EVENTS: usize = 64;
/// Queue slots a path's channel starts with.
const FIRST_PATH_QUEUE_EVENTS: usize = 16;

/// One of a feed's broadcast channels, which starts small and grows.
///
/// A tokio broadcast channel allocates its whole queue up front, 32 bytes a
/// slot: a feed with the full lag allowance of `client_queue_events` (1,024)
/// would hold 32 KiB however quiet its topic. So a channel starts with a
/// few slots, and once half of them hold events some receiver has yet to
/// read, it moves to a channel of the whole allowance, `max`: one move at
/// most, as each one has every reader attach again. The old channel's
/// receivers read what it still holds and then find it closed while the
/// feed runs: they attach again and catch up from the feed's history (the
/// feed's writer is handed a receiver of the new channel instead). No
/// receiver can lag in a channel smaller than `max`: it moves at half
/// full, and one event is sent at a time.
struct Channel {
    sender: broadcast::Sender<Arc<Event>>,
    capacity: usize,
    max: usize,
    /// Whether it moved to the whole allowance.
    grown: bool,
    /// The last event sent on it, so that a reader's progress can be
    /// checked against it (see [`Feed::sent_on`]).
    last_sent: u64,
}

impl Channel {
    fn new(first: usize, max: usize) -> Self {
        let capacity = first.min(max).max(1);
        Self {
            sender: broadcast::channel(capacity).0,
            capacity,
            max,
            grown: false,
            last_sent: 0,
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }

    fn receiver_count(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Sends `event`, after moving to the whole allowance if this channel
    /// is half full; `moved` is called with the new channel before the old
    /// one closes and before the event goes on the new one. Returns the
    /// receivers the event went to.
    fn send(
        &mut self,
        event: Arc<Event>,
        moved: impl FnOnce(&broadcast::Sender<Arc<Event>>),
    ) -> usize {
        if self.capacity < self.max && self.sender.len() >= self.capacity.div_ceil(2) {
            self.capacity = self.max;
            self.grown = true;
            let larger = broadcast::channel(self.capacity).0;
            // A reader that takes the new channel without the feed's lock
            // (the parked sockets' writer) looks for it as soon as it sees
            // the old one closed: it must be handed over first, or that
            // reader finds nothing, stops, and the sockets parked on the
            // feed are never written again.
            moved(&larger);
            // Dropping the only sender closes the old channel behind what
            // it holds.
            self.sender = larger;
        }
        // A drain marker (sequence 0) is no event a reader must take in.
        self.last_sent = self.last_sent.max(event.seq);
        self.sender.send(event).unwrap_or(0)
    }
}

/// A client's attachment to a feed.
pub struct Attachment {
    /// The stream incarnation.
    pub epoch: String,
    /// The last sequence the feed had processed when the client attached;
    /// the receiver yields exactly the events after it.
    pub head: u64,
    /// Where a client without a cursor starts: the later of `head` and the
    /// stream's last sequence when the feed started, so events the feed is
    /// still warming up with are not sent to it as new.
    pub live_from: u64,
    /// Live events after `head`.
    pub receiver: broadcast::Receiver<Arc<Event>>,
}

/// Whether every event of a stream comes from a publish on the subjects it
/// stores it under, which a dozing feed's subscriptions see: not so for a
/// stream that mirrors or sources others, or transforms its subjects.
fn fed_by_publishes(info: &Info) -> bool {
    let config = &info.config;
    config.mirror.is_none()
        && config.sources.as_ref().is_none_or(Vec::is_empty)
        && config.subject_transform.is_none()
}

/// Whether a stream republishes every event it stores, headers and data, to
/// the deployment's live subjects under `subject_prefix`, as the admin
/// service makes a topic's stream
/// ([`sse_protocol::topic::live_destination`]).
pub fn republishes_live(info: &Info, subject_prefix: &str) -> bool {
    info.config.republish.as_ref().is_some_and(|republish| {
        !republish.headers_only
            && matches!(republish.source.as_str(), "" | ">")
            && republish.destination == sse_protocol::topic::live_destination(subject_prefix)
    })
}

/// A stream's access, from its metadata key `sse.access`.
pub fn stream_access(info: &Info) -> Access {
    Access::from_metadata_value(
        info.config
            .metadata
            .get(ACCESS_METADATA_KEY)
            .map(String::as_str),
    )
}

/// The epoch of a stream: its creation time in nanoseconds, base36.
pub fn stream_epoch(info: &Info) -> String {
    epoch_from_unix_nanos(info.created.unix_timestamp_nanos())
}

impl Feed {
    /// Starts reading `info`'s stream, the whole topic or only `path`; the
    /// reader stops when the feed closes.
    pub fn start(
        topic: TopicName,
        path: Option<&str>,
        info: &Info,
        js: jetstream::Context,
        settings: &FeedSettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (feed, start) = Self::new(topic, path, info, settings);
        let ctx = feed.encode_context.clone();
        match feed.path.as_deref() {
            // A feed of one path is one user's, often: thousands of lines
            // naming users at the default level would be noise, and more
            // than an operator's logs need to hold about them.
            Some(path) => {
                debug!(topic = %feed.topic, path, epoch = %ctx.epoch, start, "path feed started")
            }
            None => info!(topic = %feed.topic, epoch = %ctx.epoch, start, "topic feed started"),
        }
        let sparse_doze_after = doze_time(settings, info);
        let reader = Reader {
            feed: feed.clone(),
            js,
            ctx,
            path_offset: settings.subject_prefix.len() + 1,
            prefix: format!("{}.", settings.subject_prefix),
            live_prefix: live_subject(&settings.subject_prefix, ""),
            no_progress: settings.no_progress,
            doze_after: sparse_doze_after,
            sparse_doze_after,
            busy_doze_after: settings.doze_after.filter(|_| fed_by_publishes(info)),
            look_every: settings
                .no_progress
                .max(settings.doze_after.unwrap_or_default()),
            nothing_until: 0,
            direct_reads: info.config.allow_direct,
            head_time: None,
            reconnections: settings.reconnections.clone(),
            metrics,
            refusals_logged: None,
        };
        CONSUMER_WORK.spawn(reader.run(start));
        feed
    }

    /// The feed's state, and the first sequence its reader is to read.
    fn new(
        topic: TopicName,
        path: Option<&str>,
        info: &Info,
        settings: &FeedSettings,
    ) -> (Arc<Self>, u64) {
        let epoch = stream_epoch(info);
        let last = info.state.last_sequence;
        let first = info.state.first_sequence.max(1);
        // A topic that has been quiet for the doze time warms nothing up:
        // its clients are almost all where it stands, and what a client
        // from further back misses is read from JetStream for it alone.
        // So its feed needs no consumer until the topic gets busy.
        let quiet =
            doze_time(settings, info).is_some_and(|after| topic_quiet_for(&info.state) >= after);
        let warm_events = if quiet { 0 } else { settings.warm_events };
        let start = last
            .saturating_sub(warm_events)
            .saturating_add(1)
            .max(first);
        // A path feed's clients all read that one path: they get the
        // smaller queue of path clients.
        let queue_events = if path.is_some() {
            settings.path_queue_events
        } else {
            settings.client_queue_events
        };
        let sender = Channel::new(FIRST_QUEUE_EVENTS, queue_events);
        let now = tokio::time::Instant::now();
        let feed = Arc::new(Self {
            path: path.map(Into::into),
            queue_events,
            renew: tokio::sync::Notify::new(),
            dozing: AtomicBool::new(false),
            republished: AtomicBool::new(republishes_live(info, &settings.subject_prefix)),
            look_now: tokio::sync::Notify::new(),
            listed_last: AtomicU64::new(0),
            known_held: AtomicU64::new(last),
            deleted_within: AtomicU64::new(deleted_within(&info.state)),
            parked: Arc::default(),
            stream_name: topic.stream_name(),
            private: AtomicBool::new(stream_access(info) == Access::Private),
            head: AtomicU64::new(start - 1),
            live_from: last,
            interest: AtomicUsize::new(0),
            idle_since: Mutex::new(now),
            last_event: Mutex::new(now),
            budget: settings.budget.clone(),
            epoch: epoch.clone(),
            state: Mutex::new(FeedState {
                head: start - 1,
                draining: false,
                history: History::new(start, settings.max_bytes, settings.max_events),
                sender,
                paths: HashMap::new(),
                path_queue_events: settings.path_queue_events,
                attaches: 0,
            }),
            closed: CancellationToken::new(),
            successor: std::sync::OnceLock::new(),
            encode_context: Arc::new(EncodeContext {
                topic: topic.to_string(),
                epoch,
                max_event_bytes: settings.max_event_bytes,
            }),
            topic,
        });
        (feed, start)
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        // A panic while holding this lock cannot leave the state torn in a way
        // that matters more than losing the node, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a client: the head and a receiver of every later event.
    /// `path` is the one concrete path the client reads, if that is all it
    /// reads of this topic; the client then hears only that path's events.
    pub fn attach(&self, path: Option<&str>) -> Attachment {
        let mut state = self.lock();
        if self.is_closed() {
            // A client that looked the feed up just before it closed must
            // hear at once that it is gone, not wait on a channel that
            // nobody sends on any more.
            let (_, receiver) = broadcast::channel(1);
            return Attachment {
                epoch: self.epoch.clone(),
                head: state.head,
                live_from: state.head.max(self.live_from),
                receiver,
            };
        }
        let receiver = match path {
            None => state.sender.subscribe(),
            Some(path) => {
                state.attaches = state.attaches.wrapping_add(1);
                if state.attaches.is_multiple_of(PATH_SWEEP_EVERY) {
                    state.paths.retain(|_, tx| tx.receiver_count() > 0);
                }
                match state.paths.get(path) {
                    Some(tx) => tx.subscribe(),
                    None => {
                        let tx = Channel::new(FIRST_PATH_QUEUE_EVENTS, state.path_queue_events);
                        let rx = tx.subscribe();
                        state.paths.insert(path.into(), tx);
                        rx
                    }
                }
            }
        };
        Attachment {
            epoch: self.epoch.clone(),
            head: state.head,
            live_from: state.head.max(self.live_from),
            receiver,
        }
    }

    /// Parks a client's socket with the feed's writer, if the client's
    /// `receiver` holds nothing: the client then has every event it reads
    /// up to the head. The socket takes the events after `pos` or the head,
    /// whichever is later (a client may stand ahead of a feed that is still
    /// warming up); that position is returned with the client's ticket.
    /// `reads` is what the client takes of the topic (all of it, one path,
    /// or what matches its patterns); `cursor`, the `id:` line around each
    /// event's sequence for a client of several topics.
    pub(crate) fn park(
        &self,
        receiver: &broadcast::Receiver<Arc<Event>>,
        reads: parked::Reads<'_>,
        cursor: Option<parked::CursorAround>,
        pos: u64,
        socket: &Arc<SharedSocket>,
        node: &Node,
    ) -> Option<(Ticket, u64)> {
        let state = self.lock();
        // A receiver of a channel the feed has moved on from is closed, and
        // empty once read: events went to the new channel since.
        if state.draining || self.is_closed() || !receiver.is_empty() || receiver.is_closed() {
            return None;
        }
        let pos = pos.max(state.head);
        let pacing = (
            Duration::from_millis(node.config().delivery.write_pacing_ms),
            self.queue_events,
        );
        let ticket = self
            .parked
            .park(socket, reads, cursor, pos, pacing, |generation| {
                // Subscribed under the feed's lock, before the first socket
                // parks at the head: the writer sees every later event.
                parked::start_writer(
                    self.parked.clone(),
                    state.sender.subscribe(),
                    generation,
                    node.clone(),
                );
            });
        Some((ticket, pos))
    }

    /// Drops the channel of `path` if no client reads it any more: a client
    /// of one path that parks lets go of its receiver, and an idle path's
    /// channel, whose queue is allocated whole, would otherwise stay until
    /// the path's next event or the next sweep.
    pub(crate) fn forget_path_if_unread(&self, path: &str) {
        let mut state = self.lock();
        if state
            .paths
            .get(path)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            state.paths.remove(path);
        }
    }

    /// Has the reader give its consumer up and start a new one at
    /// `head + 1`: the stream elected a new leader, and the server that
    /// held the consumer may be gone. async-nats was seen to yield nothing
    /// at all from such a consumer, with no error, for as long as it lived.
    pub fn renew_consumer(&self) {
        self.renew.notify_one();
    }

    /// Tells the feed the last sequence a listing of its stream found. A
    /// dozing feed behind it looks at JetStream at once instead of at its
    /// next periodic look: its wake-up is a core NATS subscription, which
    /// can miss a publish (a route between servers down for a moment, say),
    /// and the listing comes every `nats.topic_refresh_seconds` anyway. So
    /// a missed publish is read a listing late, not a doze period late.
    /// Each new last sequence makes the reader look once; a path feed's
    /// look may find that nothing of its path came.
    pub(crate) fn listed(&self, last_sequence: u64) {
        self.held(last_sequence);
        if self.dozing.load(Ordering::Acquire)
            && last_sequence > self.head()
            && self.listed_last.fetch_max(last_sequence, Ordering::AcqRel) < last_sequence
        {
            self.look_now.notify_one();
        }
    }

    /// The highest sequence the stream is known to hold: the feed's head,
    /// or what JetStream last said. A client's cursor past it is asked
    /// about ([`crate::topics::Topics::confirm_cursor`]).
    pub fn holds_up_to(&self) -> u64 {
        self.head().max(self.known_held.load(Ordering::Acquire))
    }

    /// Records that JetStream said the stream holds up to `last_sequence`.
    pub fn held(&self, last_sequence: u64) {
        self.known_held.fetch_max(last_sequence, Ordering::AcqRel);
    }

    /// How many events a client of the feed's main broadcast may lag.
    pub fn queue_events(&self) -> usize {
        self.queue_events
    }

    /// Takes a lease on the feed: it keeps running while any lease is held.
    pub fn lease(self: &Arc<Self>) -> FeedLease {
        self.interest.fetch_add(1, Ordering::AcqRel);
        FeedLease(self.clone())
    }

    /// Leases held: open streams and look-ups under way.
    pub fn interest(&self) -> usize {
        self.interest.load(Ordering::Acquire)
    }

    /// How long the feed has had no lease, if it has none.
    pub fn idle_for(&self, now: tokio::time::Instant) -> Option<Duration> {
        if self.interest() > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        Some(now.saturating_duration_since(since))
    }

    /// When the feed last read an event.
    pub fn last_event(&self) -> tokio::time::Instant {
        *self.last_event.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of history held.
    pub fn history_bytes(&self) -> usize {
        self.lock().history.bytes()
    }

    /// Forgets events below `first`, the stream's first sequence as last
    /// listed: purged or expired events are never served from memory.
    pub fn forget_before(&self, first: u64) {
        let mut state = self.lock();
        let freed = state.history.drop_before(first);
        self.budget.adjust(freed, 0);
    }

    /// Drops the history held in memory when the stream, as last listed
    /// (`info`), holds fewer events between its first and last sequences
    /// than before: a path's events were purged, or a message deleted, and
    /// memory does not say which. Resumes read JetStream until the history
    /// fills again. Not for a stream that deletes events from within as
    /// new ones come (a limit per subject, or a time to live per message):
    /// dropped at every listing, its history would serve no resume, and
    /// what it holds beyond the stream are events superseded, not purged.
    pub fn forget_deleted(&self, info: &Info) {
        let deleted = deleted_within(&info.state);
        let expected = info.config.max_messages_per_subject > 0 || info.config.allow_message_ttl;
        if self.deleted_within.swap(deleted, Ordering::AcqRel) < deleted && !expected {
            let freed = self.evict_history();
            debug!(topic = %self.topic, deleted, freed, "events deleted from within the stream; history dropped");
        }
    }

    /// Drops the history held in memory (the node is over its budget);
    /// resumes that needed it read JetStream. Returns the bytes released.
    pub fn evict_history(&self) -> usize {
        let mut state = self.lock();
        let next = state.head + 1;
        let freed = state.history.clear(next);
        self.budget.adjust(freed, 0);
        freed
    }

    /// Events held in memory after `after` and at most `upto`.
    pub fn history_after(&self, after: u64, upto: u64, limit: usize) -> Slice {
        self.lock().history.after(after, upto, limit)
    }

    /// The last sequence processed.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// The last event sent on the channel a reader of `path` (or of every
    /// event, for `None`) takes in: a reader that is past it has taken in
    /// everything sent before.
    pub(crate) fn sent_on(&self, path: Option<&str>) -> u64 {
        let state = self.lock();
        match path {
            None => state.sender.last_sent,
            Some(path) => state.paths.get(path).map_or(0, |c| c.last_sent),
        }
    }

    /// The JetStream stream name.
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// Who may read the topic, as last listed.
    pub fn access(&self) -> Access {
        if self.private.load(Ordering::Acquire) {
            Access::Private
        } else {
            Access::Public
        }
    }

    /// Records whether the topic's stream republishes to the live subjects
    /// ([`republishes_live`]) after a re-listing. A dozing feed that listens
    /// elsewhere looks at JetStream at once and listens there instead.
    pub(crate) fn set_republished(&self, republished: bool) {
        if self.republished.swap(republished, Ordering::AcqRel) != republished {
            self.look_now.notify_one();
        }
    }

    /// Records the topic's access after a re-listing.
    pub fn set_access(&self, access: Access) {
        self.private
            .store(access == Access::Private, Ordering::Release);
    }

    /// Tells every attached client that the node is draining.
    pub fn announce_drain(&self) {
        let mut state = self.lock();
        state.draining = true;
        let marker = Arc::new(Event::drain_marker());
        let _ = state.sender.sender.send(marker.clone());
        for tx in state.paths.values() {
            let _ = tx.sender.send(marker.clone());
        }
    }

    /// Stops the reader and disconnects every attached client.
    pub fn close(&self) {
        if self.shut() {
            info!(topic = %self.topic, epoch = %self.epoch, "topic feed closed");
        }
    }

    /// Stops this path feed in favour of `whole`, the topic's whole feed:
    /// its clients see the feed close, find `whole` as its [`successor`],
    /// and go on from their positions on `whole`'s channel of their path.
    /// The node then holds one consumer for the topic, not one per path.
    ///
    /// [`successor`]: Feed::successor
    pub fn retire(&self, whole: &Arc<Feed>) {
        // Set before the close, so that no client sees the feed closed
        // without its successor.
        let _ = self.successor.set(whole.clone());
        if self.shut() {
            debug!(topic = %self.topic, path = self.path.as_deref().unwrap_or(""), "path feed retired; its clients move to the whole topic's feed");
        }
    }

    /// The feed that took this retired feed's clients over, if any.
    pub fn successor(&self) -> Option<&Arc<Feed>> {
        self.successor.get()
    }

    /// Closes the feed; returns whether this call closed it.
    fn shut(&self) -> bool {
        if self.closed.is_cancelled() {
            return false;
        }
        self.closed.cancel();
        let mut state = self.lock();
        // Dropping the only sender tells every receiver the feed is gone.
        state.sender = Channel::new(1, 1);
        state.paths.clear();
        let next = state.head + 1;
        let freed = state.history.clear(next);
        self.budget.adjust(freed, 0);
        true
    }

    /// Whether the feed was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Appends and broadcasts an event; returns the history's size.
    fn publish(&self, event: Event) -> usize {
        let event = Arc::new(event);
        let mut state = self.lock();
        if event.seq <= state.head {
            return state.history.bytes();
        }
        state.head = event.seq;
        self.head.store(event.seq, Ordering::Release);
        let before = state.history.bytes();
        state.history.push(event.clone());
        self.budget.adjust(before, state.history.bytes());
        // No receiver is not an error: the event is still held for resumes.
        if let Some(tx) = state.paths.get_mut(&*event.path) {
            // A channel that has just grown has no receiver until its
            // readers attach again: it stays (the sweep drops it if none
            // ever does).
            if tx.receiver_count() > 0 || tx.grown {
                tx.send(event.clone(), |_| {});
            } else {
                state.paths.remove(&*event.path);
            }
        }
        if state.sender.receiver_count() > 0 {
            let parked = &self.parked;
            let seq = event.seq;
            state
                .sender
                .send(event, |moved| parked.hand_over(moved.subscribe()));
            parked.note_sent(seq);
        }
        state.history.bytes()
    }

    fn skip(&self, seq: u64) {
        let mut state = self.lock();
        state.head = state.head.max(seq);
        self.head.store(state.head, Ordering::Release);
    }
}

/// A hold on a feed by a client stream, or by a request on its way to
/// becoming one. While any lease is held the feed keeps running; the last
/// one given back starts the feed's linger time.
pub struct FeedLease(Arc<Feed>);

impl std::ops::Deref for FeedLease {
    type Target = Arc<Feed>;

    fn deref(&self) -> &Arc<Feed> {
        &self.0
    }
}

impl Drop for FeedLease {
    fn drop(&mut self) {
        if self.0.interest.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) =
                tokio::time::Instant::now();
        }
    }
}

/// Every this many path attaches, paths nobody reads any more are dropped.
const PATH_SWEEP_EVERY: u32 = 1024;

/// Longest pull request of a feed's consumer; its idle heartbeat is half.
pub const PULL_EXPIRES: Duration = Duration::from_secs(4);

/// Bytes a consumer of the node asks JetStream for in one pull, about. An
/// ordered consumer pulls 500 events at a time whatever their size, and
/// pulls again at half: resumes of 256 KiB events had 190 MiB each in
/// flight, a node a gigabyte, and NATS cut its connection (every feed and
/// read on it) once 64 MiB waited for it. With at most
/// `history.max_concurrent_jetstream_reads` (32) resume reads, their pulls
/// hold under 48 MiB.
pub const PULL_BYTES: u64 = 1024 * 1024;

/// Events per pull for a stream whose events are as large as its mean
/// ([`PULL_BYTES`]), between 1 and async-nats's 500.
pub fn pull_batch(state: &jetstream::stream::State) -> i64 {
    let mean = state.bytes.checked_div(state.messages).unwrap_or(0).max(1);
    (PULL_BYTES / mean).clamp(1, 500) as i64
}

/// Live events a feed's reader hears between two watchdog ticks for its
/// topic to count as busy: if such a topic then hears nothing for a whole
/// tick, the watchdog in `Reader::read_from` looks at JetStream right away.
/// Ten a tick is several a second, so a silent tick is rare unless the
/// consumer is lost or the publishers paused.
const BUSY_TICK_EVENTS: u32 = 10;

/// Longest time between two looks of a feed's watchdog at its head: a
/// quarter of its period, but no longer than this, so that a busy topic
/// fallen silent is noticed within seconds whatever `no_progress` is.
const WATCHDOG_TICK_MAX: Duration = Duration::from_millis(1500);

/// How long a stream must keep looking gone (or recreated) before the feed
/// acts on it.
const GONE_CONFIRM_DELAY: Duration = Duration::from_secs(2);

/// Longest wait for one JetStream API answer (stream or consumer info,
/// consumer creation). async-nats bounds its requests too; this bound holds
/// whatever it does, so a reader never waits on NATS without a deadline.
pub const NATS_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a stream's info from a copy without a leader holding its quorum is
/// taken as: no answer.
const NO_QUORUM: &str = "the stream's info came from a copy without a leader holding its quorum";

/// A stream's info that ends before an event already read from the stream:
/// no ground to say where the events passed over went.
pub(crate) const STALE_INFO: &str = "the stream's info is older than an event already read from it";

/// How long a feed waits for one JetStream answer while it (re)creates its
/// consumer. Shorter than [`NATS_CALL_TIMEOUT`]: a request sent while a
/// stream elects its leader is never answered, and the next one should go
/// out soon after the election, not seconds later.
const FEED_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// When a dozing feed looks at JetStream a second time: by then every
/// server of the cluster routes the topic's publishes to its subscriptions.
const DOZE_SECOND_LOOK: Duration = Duration::from_secs(1);

/// Most direct gets a dozing feed sends in one [`DIRECT_GETS_WINDOW`]: a
/// topic whose events come one by one more often than that is read with a
/// consumer, which costs NATS less per event. Publishes heard together are
/// read with one get ([`direct_get_batch`]), so a burst needs no consumer.
const DIRECT_GETS_MAX: u32 = 10;

/// See [`DIRECT_GETS_MAX`].
const DIRECT_GETS_WINDOW: Duration = Duration::from_secs(1);

/// Republished events that wake a dozing feed count as one direct get
/// towards [`DIRECT_GETS_MAX`] once this long has passed since the last
/// ones that counted: a burst, which comes over a few wakes, counts once,
/// as it would take a get or a few, while events that keep coming more
/// than ten a second make the topic's consumer.
const LIVE_WAKES_APART: Duration = Duration::from_millis(50);

/// The first pause before a dozing feed asks again for an event it heard of
/// and JetStream did not hold yet; each next one is four times longer.
const DIRECT_READ_RETRY: Duration = Duration::from_millis(1);

/// How many times a dozing feed asks again for an event it heard of before
/// it makes a consumer to read it.
const DIRECT_READ_TRIES: u32 = 4;

/// Most events a dozing feed asks for in one direct get.
const DIRECT_BATCH_MAX: u64 = 64;

/// Most bytes of events one batched direct get is answered with (at least
/// one event, whatever its size).
const DIRECT_BATCH_BYTES: usize = 1 << 20;

/// The subscriptions through which a dozing feed hears of its topic's
/// publishes.
type Publishes = futures_util::stream::SelectAll<async_nats::Subscriber>;

/// What a dozing feed's direct reads have counted ([`Reader::read_directly`]).
struct DirectReads {
    /// Whether the NATS server answers a direct get for several events
    /// ([`direct_get_batch`]).
    batches: bool,
    /// When the current [`DIRECT_GETS_WINDOW`] started.
    since: tokio::time::Instant,
    /// Direct gets sent in it.
    in_window: u32,
    /// The consumer being made, once the topic got busy: direct reads go on
    /// until it stands ([`Reader::doze`]).
    making: Option<tokio::task::JoinHandle<Result<Opening, async_nats::Error>>>,
    /// No consumer is made before this, after one that could not be
    /// ([`Reader::doze`]), and the pause before the next try.
    make_after: Option<tokio::time::Instant>,
    make_backoff: Duration,
    /// When republished events last counted as a direct get.
    live_counted: Option<tokio::time::Instant>,
    /// The topic's event counter and history gauge, looked up once per
    /// doze rather than at every read.
    feed_events: prometheus::IntCounter,
    history_bytes: prometheus::IntGauge,
}

/// What a dozing feed heard and did not take in at once ([`Reader::hear`]).
#[derive(Default)]
struct Heard {
    /// Publishes heard, when the feed listens on the topic's own subjects.
    unread: usize,
    /// The last of them.
    last: Option<async_nats::Message>,
    /// The last sequence of the republished events that did not follow the
    /// head: JetStream holds every event up to it.
    until: u64,
    /// Something came on a live subject that the stream did not republish.
    look: bool,
    /// A republished event numbered at or below the head but stored after
    /// the head's event: the stream may have gone back (see
    /// [`ReadEnd::StreamRewound`]).
    behind_head: bool,
}

/// An event as its stream republished it, from the message's headers.
struct Republished<'a> {
    /// Its stream sequence (`Nats-Sequence`).
    seq: u64,
    /// The sequence of the previous event of its subject, 0 for the first
    /// (`Nats-Last-Sequence`).
    subject_last: u64,
    /// The subject the stream stored it under (`Nats-Subject`).
    subject: &'a str,
    /// When the stream stored it (`Nats-Time-Stamp`).
    published: SystemTime,
}

/// What `message`, heard on a live subject, says of itself if the stream
/// `stream_name` republished it; `None` for anything else published there.
fn republished_of<'a>(
    message: &'a async_nats::Message,
    stream_name: &str,
) -> Option<Republished<'a>> {
    let headers = message.headers.as_ref()?;
    let value = |name: &str| headers.get(name).map(|value| value.as_str());
    if value("Nats-Stream")? != stream_name {
        return None;
    }
    Some(Republished {
        seq: value("Nats-Sequence")?.parse().ok()?,
        subject_last: value("Nats-Last-Sequence").map_or(Some(0), |v| v.parse().ok())?,
        subject: value("Nats-Subject")?,
        published: time::OffsetDateTime::parse(
            value("Nats-Time-Stamp")?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?
        .into(),
    })
}

/// Whether a feed at `head` may take `event` in as it comes: nothing it
/// reads lies between. A whole topic's feed reads every sequence, so the
/// event must be the next one; a path feed reads one subject, whose
/// previous event the feed must hold already.
fn takes_in(event: &Republished<'_>, head: u64, filter_subject: &str) -> bool {
    if filter_subject.is_empty() {
        event.seq == head + 1
    } else {
        event.subject == filter_subject && event.subject_last <= head && event.seq > head
    }
}

/// How a doze ends ([`Reader::doze`]).
enum Wake {
    /// The feed closed.
    Closed,
    /// The feed reads on from the head with a new consumer.
    Read,
    /// The feed reads on with the consumer made while it read directly.
    Made(Result<Opening, async_nats::Error>),
}

/// Longest pause between two attempts of a feed to (re)create its consumer.
const FEED_RETRY_MAX: Duration = Duration::from_secs(1);

/// How often a feed refused its consumer again and again says so in the log.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(10);

/// Runs one JetStream call under [`NATS_CALL_TIMEOUT`].
pub fn bounded<T, E: Into<async_nats::Error>>(
    call: impl Future<Output = Result<T, E>>,
) -> impl Future<Output = Result<T, async_nats::Error>> {
    bounded_for(NATS_CALL_TIMEOUT, call)
}

/// Runs one JetStream call under `limit`.
///
/// The call is boxed at once and only while it runs: async-nats's request
/// futures are large, and a caller that holds one inline (a feed's reader,
/// between its consumer's messages) would carry that size in its own state
/// for as long as it lives.
fn bounded_for<T, E: Into<async_nats::Error>>(
    limit: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> impl Future<Output = Result<T, async_nats::Error>> {
    let call = Box::pin(call);
    async move {
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err("jetstream did not answer in time".into()),
        }
    }
}

/// How long a stream's info request goes unanswered before a second one
/// is sent beside it ([`stream_info`]).
const STREAM_INFO_ASK_AGAIN: Duration = Duration::from_secs(1);

/// The stream `name` with its info, under [`NATS_CALL_TIMEOUT`].
///
/// Asked a second time, beside the first, once the first has had no answer
/// for [`STREAM_INFO_ASK_AGAIN`]: in a NATS cluster, a stream being
/// deleted can still be assigned in the meta layer while its own leader
/// has already let it go, and then no server answers (only the stream's
/// leader answers while it is assigned). A moment later the meta leader
/// answers that it does not exist: a client asking for a topic just
/// deleted is told 404 rather than 503 after the whole timeout.
pub async fn stream_info(
    js: &jetstream::Context,
    name: &str,
) -> Result<jetstream::stream::Stream, async_nats::Error> {
    asked_twice(STREAM_INFO_ASK_AGAIN, NATS_CALL_TIMEOUT, || {
        js.get_stream(name)
    })
    .await
}

/// Runs `ask` under `limit`; once the first call has gone `ask_again_after`
/// without an answer, runs it once more beside it and takes whichever
/// answers first.
async fn asked_twice<T, E, F, Asked>(
    ask_again_after: Duration,
    limit: Duration,
    ask: F,
) -> Result<T, async_nats::Error>
where
    F: Fn() -> Asked,
    Asked: Future<Output = Result<T, E>>,
    E: Into<async_nats::Error>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut first = Box::pin(ask());
    tokio::select! {
        answer = &mut first => return answer.map_err(Into::into),
        () = tokio::time::sleep(ask_again_after.min(limit)) => {}
    }
    let mut second = Box::pin(ask());
    let either = async {
        tokio::select! {
            answer = &mut first => answer,
            answer = &mut second => answer,
        }
    };
    match tokio::time::timeout_at(deadline, either).await {
        Ok(answer) => answer.map_err(Into::into),
        Err(_) => Err("jetstream did not answer in time".into()),
    }
}

/// What to do when JetStream refuses a consumer for its stream's limit.
pub(crate) const CONSUMER_LIMIT_HINT: &str = "jetstream refuses a consumer: the topic's stream holds as many as its limit allows (NATS 2.15 allows 1,000 unless the stream sets max_consumers); raise the topic's limit: PATCH /v1/topics/<topic> {\"max_consumers\": N} (docs/deploy.md, \"Consumers per stream\")";

/// Whether `error` is JetStream refusing a new consumer because the stream
/// holds as many as its limit allows (error code 10026).
pub(crate) fn is_consumer_limit(error: &async_nats::Error) -> bool {
    error
        .downcast_ref::<jetstream::stream::ConsumerError>()
        .is_some_and(|e| {
            matches!(e.kind(), jetstream::stream::ConsumerErrorKind::JetStream(js)
                if js.error_code() == jetstream::ErrorCode::MAXIMUM_CONSUMERS_LIMIT)
        })
}

/// An ordered consumer of the node's, deleted from JetStream when dropped.
///
/// NATS keeps an ordered consumer for 30 s after its last pull, and since
/// 2.15 a stream holds at most `default_max_consumers` (1,000) unless told
/// otherwise. Left to expire, the consumers of a burst of resumes, or of
/// feeds that start and stop, pile up to that limit, and every further one
/// is refused with "maximum consumers limit reached". So each one is
/// deleted as soon as it is no longer read. The deletion runs on its own
/// (bounded) and a failed one is left to the 30 s expiry.
pub(crate) struct OwnedConsumer {
    js: jetstream::Context,
    stream: String,
    name: String,
}

impl OwnedConsumer {
    /// Takes charge of `name`, a consumer of `stream`.
    pub(crate) fn new(js: &jetstream::Context, stream: &str, name: &str) -> Self {
        Self {
            js: js.clone(),
            stream: stream.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Follows the consumer a message came from (its JetStream info's
    /// `consumer`). async-nats re-creates an ordered consumer under a new
    /// name (`<name>_1`, `_2`…) when a pull finds no responder, as on a NATS
    /// cluster whose servers have not all heard of a consumer just made,
    /// and deletes the old one; the one to delete is then the new one.
    pub(crate) fn follow(&mut self, consumer: &str) {
        if self.name != consumer {
            consumer.clone_into(&mut self.name);
        }
    }
}

impl Drop for OwnedConsumer {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let js = self.js.clone();
        let (stream, name) = (
            std::mem::take(&mut self.stream),
            std::mem::take(&mut self.name),
        );
        CONSUMER_WORK.spawn_on(
            async move {
                if let Err(error) = bounded(js.delete_consumer_from_stream(&name, &stream)).await {
                    debug!(%stream, consumer = %name, %error, "cannot delete consumer; it expires on its own");
                }
            },
            &runtime,
        );
    }
}

/// The feeds' readers, and the deletions of consumers that were dropped:
/// what a node that stops waits for ([`finish_consumer_work`]). A reader
/// that ends drops its consumer, so its deletion is tracked before the
/// reader's own task is done. One node runs per process, and a consumer
/// dropped anywhere (a feed, a resume) has no node at hand, hence a static.
static CONSUMER_WORK: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Waits, up to `limit`, for the readers of closed feeds to end and for
/// every dropped consumer's deletion; returns whether all were done.
///
/// A process that exits first leaves its consumers to NATS's 30 s expiry,
/// and meanwhile they count against their streams' consumer limits and
/// gather pending events while the nodes that replace it make their own:
/// a rolling update of many nodes piled them up.
pub async fn finish_consumer_work(limit: Duration) -> bool {
    CONSUMER_WORK.close();
    tokio::time::timeout(limit, CONSUMER_WORK.wait())
        .await
        .is_ok()
}

struct Reader {
    feed: Arc<Feed>,
    js: jetstream::Context,
    ctx: Arc<EncodeContext>,
    path_offset: usize,
    /// `<subject prefix>.`, to build a path feed's filter subject.
    prefix: String,
    /// `<subject prefix>.LIVE.`, before a subject the topic's stream
    /// republishes ([`live_subject`]).
    live_prefix: String,
    no_progress: Duration,
    doze_after: Option<Duration>,
    /// `doze_after` for a feed whose last wake it read directly: the
    /// shorter `delivery.feed_direct_doze_seconds` on a stream that allows
    /// direct gets ([`doze_time`]).
    sparse_doze_after: Option<Duration>,
    /// `doze_after` for a feed whose last wake needed a consumer (its topic
    /// got busy): `delivery.feed_doze_seconds`. A topic that gets bursts
    /// of events keeps its consumer between them, where a consumer made
    /// and deleted per burst cost a NATS cluster half as much CPU again,
    /// and the node three times as much.
    busy_doze_after: Option<Duration>,
    /// How often a dozing feed looks at JetStream, past its first looks.
    look_every: Duration,
    /// Up to this sequence the stream held nothing for the reader when its
    /// last consumer was made (deleted messages, other paths).
    nothing_until: u64,
    /// Whether a dozing feed reads its topic's events with direct gets
    /// ([`Reader::read_directly`]): one on a stream that allows them.
    direct_reads: bool,
    /// The JetStream time of the event at the head, once the reader read one.
    head_time: Option<SystemTime>,
    reconnections: tokio::sync::watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    /// When a refused consumer was last logged, and the refusals counted
    /// and not logged since ([`Reader::consumer_refused`]).
    refusals_logged: Option<(std::time::Instant, u64)>,
}

/// A reader's consumer, as [`Reader::open_consumer`] made it.
struct Opened {
    /// The stream, without its info.
    stream: jetstream::stream::Stream<()>,
    messages: jetstream::consumer::pull::Ordered,
    /// Deletes the consumer when dropped: after `messages` (fields drop in
    /// order), so that the consumer is deleted once nothing pulls from it.
    owned: OwnedConsumer,
    /// Up to this sequence the stream holds nothing for the reader.
    nothing_until: u64,
    /// How long the topic had gone without an event when the consumer was
    /// made, while the feed had read none of its live events yet (zero
    /// once it has): such a feed dozes once it has read what was pending,
    /// not `doze_after` after it started.
    quiet_before: Duration,
    /// Whether the consumer had nothing pending when it was made.
    caught_up: bool,
    /// The sequence the consumer was made to start at.
    starts_at: u64,
    /// Whether the stream removes events from within as new ones come (a
    /// limit per subject, a time to live per message): a sequence the
    /// consumer passes over is then mostly one superseded or expired.
    removes_within: bool,
}

/// Where events a whole topic's consumer passed over went
/// ([`Reader::left_unread`]).
enum Left {
    /// Removed from within the stream: a message deleted.
    FromWithin,
    /// Removed from the stream's start before the feed read them.
    FromTheStart,
    /// The stream is another one of the same name.
    Recreated,
}

/// What [`open_consumer`] found.
enum Opening {
    /// A consumer, ready to read.
    Opened(Box<Opened>),
    /// Nothing to read, on a topic already quiet for the doze time: no
    /// consumer, and up to this sequence the stream holds nothing for the
    /// reader.
    Quiet { nothing_until: u64 },
    /// The stream is gone or was recreated.
    End(ReadEnd),
}

enum ReadEnd {
    Closed,
    StreamGone,
    StreamRecreated,
    /// The stream, of the same epoch, holds less than the feed has read: a
    /// server's disk restored from a backup keeps a stream's creation time.
    StreamRewound,
    Ended,
    /// JetStream holds events after the head, and the consumer delivered
    /// none of them for a whole watchdog period.
    Stalled,
    /// The NATS connection was re-established.
    Reconnected,
    /// No event for `doze_after`: the consumer is let go.
    Quiet,
    /// Events after the head left the stream's start (its limits, an
    /// expiry, a purge) before the feed read them.
    HistoryPassed,
}

impl Reader {
    async fn run(mut self, start: u64) {
        self.reconnections.borrow_and_update();
        let mut backoff = Duration::from_millis(100);
        // "Not found" or another creation time may be a transient answer
        // during a leader election: act on it only when it holds twice.
        let mut doubted = false;
        // A consumer made while the feed dozed and read directly.
        let mut made = None;
        // The head at the last re-creation after a reconnection or a stall,
        // and how many came in a row at that head.
        let mut stuck: Option<(u64, u32)> = None;
        // Whether the last consumer could not be made or read.
        let mut bridge = false;
        loop {
            let next = self.feed.head() + 1;
            let feed = self.feed.clone();
            let outcome = tokio::select! {
                _ = feed.closed.cancelled() => Ok(ReadEnd::Closed),
                outcome = self.read_from(next.max(start), made.take()) => outcome,
            };
            match outcome {
                Ok(ReadEnd::Closed) => return,
                Ok(ReadEnd::StreamGone | ReadEnd::StreamRecreated | ReadEnd::StreamRewound)
                    if !doubted =>
                {
                    doubted = true;
                    backoff = GONE_CONFIRM_DELAY;
                    debug!(topic = %self.feed.topic, "stream looks gone or recreated; checking again");
                }
                Ok(ReadEnd::StreamGone) => {
                    info!(topic = %self.feed.topic, "stream is gone; closing topic feed");
                    self.feed.close();
                    return;
                }
                Ok(ReadEnd::StreamRecreated) => {
                    info!(topic = %self.feed.topic, "stream was recreated; closing old topic feed");
                    self.feed.close();
                    return;
                }
                Ok(ReadEnd::HistoryPassed) => {
                    // Its clients would go on past those events without a
                    // word. Ended, they come back with their ids, and the
                    // resume tells each of them what it lost with a
                    // `reset`, as it does for history gone before it.
                    warn!(topic = %self.feed.topic, head = self.feed.head(), "the topic's oldest events left its stream before this feed read them (its limits keep fewer events than the feed was behind); closing the feed, so that its clients resume and are told with a reset");
                    self.feed.close();
                    return;
                }
                Ok(ReadEnd::StreamRewound) => {
                    // Its clients come back, and those past the stream's
                    // last event are told so (`Topics::confirm_cursor`).
                    warn!(topic = %self.feed.topic, head = self.feed.head(), "stream holds less than the feed has read (restored from a backup?); closing topic feed");
                    self.feed.close();
                    return;
                }
                Ok(ReadEnd::Ended) => {
                    doubted = false;
                    backoff = Duration::from_millis(100);
                    debug!(topic = %self.feed.topic, "consumer ended; re-creating");
                }
                Ok(end @ (ReadEnd::Stalled | ReadEnd::Reconnected)) => {
                    let stalled = matches!(end, ReadEnd::Stalled);
                    doubted = false;
                    backoff = Duration::from_millis(100);
                    let head = self.feed.head();
                    let in_a_row = match stuck {
                        Some((at, count)) if at == head => count + 1,
                        _ => 1,
                    };
                    stuck = Some((head, in_a_row));
                    // The second in a row at the same head: is the next
                    // stored event one whose delivery drops the connection?
                    if in_a_row >= 2 && self.pass_unreadable(head + 1).await {
                        stuck = None;
                    }
                    if in_a_row == 1 && stalled && self.direct_reads {
                        // A new consumer may take seconds to stand (NATS
                        // can place it on a server that is gone, and its
                        // creation then waits out `FEED_CALL_TIMEOUT`):
                        // the feed reads on as a dozing one meanwhile, the
                        // events missed by direct gets and those to come as
                        // the stream republishes them, and makes its
                        // consumer while it reads, as a topic that wakes
                        // busy does. Clients wait for the stall to be
                        // noticed, not also for the new consumer.
                        match self.doze(false).await {
                            Wake::Closed => return,
                            Wake::Read => {}
                            Wake::Made(opening) => made = Some(opening),
                        }
                        continue;
                    }
                }
                Ok(ReadEnd::Quiet) => {
                    doubted = false;
                    backoff = Duration::from_millis(100);
                    // Until a wake shows the topic busy, the feed reads it
                    // as a sparse one.
                    self.doze_after = self.sparse_doze_after;
                    match self.doze(false).await {
                        Wake::Closed => return,
                        Wake::Read => {}
                        Wake::Made(opening) => {
                            self.doze_after = self.busy_doze_after;
                            made = Some(opening);
                        }
                    }
                    continue;
                }
                Err(error) => {
                    doubted = false;
                    self.consumer_refused(&error);
                    bridge = self.direct_reads;
                }
            }
            tokio::select! {
                _ = self.feed.closed.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(FEED_RETRY_MAX);
            if std::mem::take(&mut bridge) {
                // Without a consumer, the events are read as a dozing feed
                // reads them, by direct gets and as the stream republishes
                // them, which need no meta leader nor a free consumer
                // slot: after a partition heals, NATS elected its meta
                // leader again for 11-16 s, and clients waited that long.
                // The doze makes the consumer once JetStream allows it.
                match self.doze(true).await {
                    Wake::Closed => return,
                    Wake::Read => {}
                    Wake::Made(opening) => made = Some(opening),
                }
            }
        }
    }

    /// Counts and logs a consumer that could not be made or read.
    ///
    /// Logged once in [`REFUSALS_LOGGED_EVERY`] per feed, with the number
    /// counted meanwhile: the feed asks again every second for as long as
    /// JetStream refuses, which is minutes at a stream's consumer limit.
    fn consumer_refused(&mut self, error: &async_nats::Error) {
        let limit = is_consumer_limit(error);
        self.metrics
            .feed_errors
            .with_label_values(&[if limit { "consumer_limit" } else { "consumer" }])
            .inc();
        let now = std::time::Instant::now();
        let unlogged = match &mut self.refusals_logged {
            Some((at, unlogged)) if now.duration_since(*at) < REFUSALS_LOGGED_EVERY => {
                *unlogged += 1;
                return;
            }
            Some((_, unlogged)) => std::mem::take(unlogged),
            None => 0,
        };
        self.refusals_logged = Some((now, 0));
        if limit && self.direct_reads {
            error!(topic = %self.feed.topic, %error, refused_since_last_logged = unlogged, "{CONSUMER_LIMIT_HINT}; reading on without it and retrying");
        } else if limit {
            error!(topic = %self.feed.topic, %error, refused_since_last_logged = unlogged, "{CONSUMER_LIMIT_HINT}; retrying");
        } else {
            warn!(topic = %self.feed.topic, %error, refused_since_last_logged = unlogged, "topic feed cannot read with a consumer; retrying");
        }
    }

    /// Where the events after `head` that the consumer passed over, to
    /// deliver `seq`, went, by the stream's info from a leader holding its
    /// quorum. An error without one, or with an info older than `seq` (seen
    /// in bursts: a stream whose info said it ended before the event just
    /// read, and started before the head, as if nothing had left it): the
    /// feed reads them again from a new consumer, and asks again.
    async fn left_unread(&self, head: u64, seq: u64) -> Result<Left, async_nats::Error> {
        let stream = stream_info(&self.js, self.feed.stream_name()).await?;
        let info = stream.cached_info();
        if !answered_with_quorum(info) {
            return Err(NO_QUORUM.into());
        }
        Ok(if stream_epoch(info) != self.feed.epoch {
            Left::Recreated
        } else if info.state.first_sequence > head + 1 {
            Left::FromTheStart
        } else if info.state.last_sequence < seq {
            return Err(STALE_INFO.into());
        } else {
            Left::FromWithin
        })
    }

    /// The subject a path feed reads; empty for a whole topic's feed.
    fn filter_subject(&self) -> String {
        self.feed
            .path
            .as_deref()
            .map(|path| format!("{}{path}", &self.prefix))
            .unwrap_or_default()
    }

    /// Reads with a consumer from `next`, or with `made`, one made while
    /// the feed dozed, until the consumer ends or is let go.
    async fn read_from(
        &mut self,
        next: u64,
        made: Option<Result<Opening, async_nats::Error>>,
    ) -> Result<ReadEnd, async_nats::Error> {
        let filter_subject = self.filter_subject();
        let opening = match made {
            Some(opening) => opening?,
            None => {
                Box::pin(open_consumer(
                    self.js.clone(),
                    self.feed.clone(),
                    self.doze_after,
                    next,
                    filter_subject.clone(),
                ))
                .await?
            }
        };
        let mut opened = match opening {
            Opening::Opened(opened) => opened,
            Opening::Quiet { nothing_until } => {
                self.nothing_until = nothing_until;
                return Ok(ReadEnd::Quiet);
            }
            Opening::End(end) => return Ok(end),
        };
        self.nothing_until = opened.nothing_until;
        let mut caught_up = opened.caught_up;
        let _held = self.metrics.consumer_held();
        let topic_label = [self.feed.topic.as_str()];
        let feed_events = self.metrics.feed_events.with_label_values(&topic_label);
        let history_bytes = self.metrics.history_bytes.with_label_values(&topic_label);
        // The watchdog. After the NATS server holding an ordered consumer
        // dies, async-nats may yield nothing at all from it: no error, no
        // missed heartbeat, and its own re-creation retries without end.
        // This was seen on a node whose connection moved to another server
        // while the stream's leader was killed: the feed went silent and its
        // clients got heartbeats only. So a reader whose head has not moved
        // for `no_progress` while the stream holds newer events gives its
        // consumer up and starts a new one at `head + 1`. JetStream is asked
        // at most once per `no_progress` while the feed is quiet, and once
        // more when a busy topic falls silent for a whole tick: a consumer
        // lost without a word (its server back with an empty disk, say)
        // is then re-created after a tick or two, not after `no_progress`,
        // while a topic whose events come now and then is not looked at
        // after each of its pauses: one look per ten events heard at most.
        let period = self
            .doze_after
            .map_or(self.no_progress, |after| after.min(self.no_progress));
        let mut tick = tokio::time::interval((period / 4).min(WATCHDOG_TICK_MAX));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut head_seen = self.feed.head();
        let mut quiet_since = tokio::time::Instant::now();
        // When the head last moved; `quiet_since` restarts at every check.
        let mut moved_at = quiet_since;
        // Looks at JetStream in a row that got no answer.
        let mut unanswered = 0u32;
        // Live events heard since the last tick; whether the topic was busy
        // up to the last tick that saw the head move (that tick or the one
        // before heard enough: a consumer lost just after a tick leaves the
        // next one few events); whether the tick before that last one was.
        let mut heard_this_tick = 0u32;
        let mut busy_last_tick = false;
        let mut busy_tick_before = false;
        loop {
            let item = tokio::select! {
                item = opened.messages.next() => item,
                _ = self.feed.renew.notified() => {
                    info!(topic = %self.feed.topic, head = self.feed.head(), "stream elected a new leader; re-creating the topic feed's consumer");
                    return Ok(ReadEnd::Reconnected);
                }
                Ok(()) = self.reconnections.changed() => {
                    // The consumer may have lived on a server that is gone,
                    // and async-nats may never say so: start a new one.
                    info!(topic = %self.feed.topic, head = self.feed.head(), "reconnected to nats; re-creating the topic feed's consumer");
                    return Ok(ReadEnd::Reconnected);
                }
                _ = tick.tick() => {
                    let head = self.feed.head();
                    let now = tokio::time::Instant::now();
                    let busy = std::mem::take(&mut heard_this_tick) >= BUSY_TICK_EVENTS;
                    if head != head_seen {
                        head_seen = head;
                        quiet_since = now;
                        busy_last_tick = busy || busy_tick_before;
                        busy_tick_before = busy;
                        // Events older than the feed, read to warm its
                        // history up, are not the topic's news.
                        if head > self.feed.live_from {
                            moved_at = now;
                        }
                        continue;
                    }
                    // A feed that has read only events older than itself
                    // counts the topic's quiet time from its last event,
                    // so a feed that started on a topic already quiet for
                    // a while lets its consumer go that much sooner, once
                    // it has read what was pending.
                    let quiet_before = if caught_up && head <= self.feed.live_from {
                        opened.quiet_before
                    } else {
                        Duration::ZERO
                    };
                    let quiet_for = now.duration_since(moved_at).saturating_add(quiet_before);
                    if self.doze_after.is_some_and(|after| quiet_for >= after) {
                        return Ok(ReadEnd::Quiet);
                    }
                    let fell_silent = std::mem::take(&mut busy_last_tick);
                    busy_tick_before = false;
                    if !fell_silent && now.duration_since(quiet_since) < self.no_progress {
                        continue;
                    }
                    // Quiet for a whole period: is JetStream ahead? No
                    // answer proves nothing (NATS may be away; then the
                    // consumer reports errors itself): look again next tick.
                    match last_stored(&opened.stream, &filter_subject).await {
                        // A path's last event may be older than the head;
                        // the whole stream's never is.
                        Ok(last) if filter_subject.is_empty() && last < head => {
                            return Ok(ReadEnd::StreamRewound);
                        }
                        // Asked while NATS was away, answered once the
                        // client is back: the reconnection's doing, which
                        // re-creates the consumer anyway, not a stall.
                        Ok(last)
                            if last > head.max(self.nothing_until)
                                && self.reconnections.has_changed().unwrap_or(false) =>
                        {
                            self.reconnections.borrow_and_update();
                            info!(topic = %self.feed.topic, head, "reconnected to nats; re-creating the topic feed's consumer");
                            return Ok(ReadEnd::Reconnected);
                        }
                        Ok(last) if last > head.max(self.nothing_until) => {
                            self.metrics.feed_stalls.inc();
                            warn!(topic = %self.feed.topic, head, stream_last = last, quiet_seconds = now.duration_since(quiet_since).as_secs(), "topic feed made no progress while jetstream holds newer events; re-creating its consumer");
                            return Ok(ReadEnd::Stalled);
                        }
                        Ok(_) => {
                            // A quiet topic: ask again after another period.
                            quiet_since = now;
                            unanswered = 0;
                        }
                        Err(error) => {
                            // Asked again each tick; a watchdog that cannot
                            // look for a whole period says so, once a period.
                            // Counted each time: a consumer on a stream that
                            // is offline (its only server down) may report
                            // nothing itself, and its clients get nothing.
                            self.metrics.feed_errors.with_label_values(&["unanswered"]).inc();
                            unanswered += 1;
                            if unanswered.is_multiple_of(4) {
                                warn!(topic = %self.feed.topic, head, %error, unanswered, "topic feed's watchdog gets no answer from jetstream");
                            }
                        }
                    }
                    continue;
                }
            };
            let Some(item) = item else { break };
            let message = match item {
                Ok(message) => message,
                Err(error) => {
                    // A missed heartbeat or a failed pull is reported as an
                    // item; the ordered consumer recovers by itself.
                    self.metrics
                        .feed_errors
                        .with_label_values(&[&error.kind().to_string()])
                        .inc();
                    warn!(topic = %self.feed.topic, %error, "topic feed read error");
                    continue;
                }
            };
            let (seq, published) = match message.info() {
                Ok(info) => {
                    opened.owned.follow(info.consumer);
                    caught_up = info.pending == 0;
                    (info.stream_sequence, SystemTime::from(info.published))
                }
                Err(error) => {
                    warn!(topic = %self.feed.topic, %error, "message without JetStream info");
                    continue;
                }
            };
            if seq < opened.starts_at {
                // async-nats re-creates an ordered consumer that has
                // delivered nothing (after missed heartbeats, say) from the
                // stream's first event, whatever it was made to start at:
                // the feed would read the whole stream again to get to its
                // head. A new consumer from the head costs one creation.
                debug!(topic = %self.feed.topic, seq, starts_at = opened.starts_at, "the consumer was re-created from the stream's start; making one from the head");
                return Ok(ReadEnd::Ended);
            }
            // A consumer made while the feed read directly delivers again
            // what those reads took in.
            let head = self.feed.head();
            if seq <= head {
                continue;
            }
            // A consumer of the whole topic delivers every event the stream
            // holds, so a sequence passed over was removed before the feed
            // read it: from within (a deleted message, which nobody is told
            // of), or from the stream's start, by its limits or a purge
            // while the feed was behind, which its clients must be told of.
            if seq > head + 1 && filter_subject.is_empty() && !opened.removes_within {
                match self.left_unread(head, seq).await? {
                    Left::FromTheStart => return Ok(ReadEnd::HistoryPassed),
                    Left::Recreated => return Ok(ReadEnd::StreamRecreated),
                    Left::FromWithin => {}
                }
            }
            if seq > self.feed.live_from {
                heard_this_tick = heard_this_tick.saturating_add(1);
            }
            let headers = message.headers.as_ref();
            self.deliver(
                seq,
                published,
                message.subject.as_str(),
                headers,
                &message.payload,
                &feed_events,
                &history_bytes,
            );
        }
        Ok(ReadEnd::Ended)
    }

    /// Hands one stored message, read by the consumer or by a direct get, to
    /// the feed: a delete marker moves the head on, anything else is encoded
    /// and published to the feed's clients. False for a marker.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        seq: u64,
        published: SystemTime,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        feed_events: &prometheus::IntCounter,
        history_bytes: &prometheus::IntGauge,
    ) -> bool {
        self.head_time = Some(published);
        if is_delete_marker(headers, payload) {
            self.feed.skip(seq);
            return false;
        }
        // Events older than the feed, read to warm its history up, were
        // not late: only live ones count.
        if seq > self.feed.live_from {
            let lag = crate::clock::nats_now()
                .duration_since(published)
                .unwrap_or_default();
            self.metrics.feed_read_lag.observe(lag.as_secs_f64());
        }
        let path = subject.get(self.path_offset..).unwrap_or_default();
        let event = Event::encode(&self.ctx, seq, path, published, headers, payload);
        // Counted as the feed reads it live, once: read again to warm a new
        // feed's history up (after the last one stopped, or on another
        // node start), it would count again and wake the alert on it for
        // an event long known.
        if let Some(reason) = event.invalid
            && seq > self.feed.live_from
        {
            self.metrics
                .invalid_events
                .with_label_values(&[reason.as_str()])
                .inc();
            warn!(topic = %self.feed.topic, subject = path, seq, reason = reason.as_str(), "event cannot be sent as is; delivering an invalid event");
        }
        feed_events.inc();
        // Events older than the feed, read to warm its history up, were
        // delivered when they were news: a span of their own each time a
        // feed starts would show them delivered again.
        let traced = headers.filter(|h| {
            crate::telemetry::tracing_enabled()
                && seq > self.feed.live_from
                && h.get(TRACEPARENT_HEADER).is_some()
        });
        let bytes = match traced {
            Some(headers) => {
                // Numbers as integers (a trace backend compares them, where
                // it only matches strings), and the span a consumer's, as
                // messaging's conventions have it.
                let span = info_span!(
                    "sse.deliver",
                    otel.kind = "consumer",
                    topic = %self.feed.topic,
                    seq = i64::try_from(seq).unwrap_or(i64::MAX),
                    subject = path,
                    subscribers = i64::try_from(self.feed.interest()).unwrap_or(i64::MAX),
                );
                crate::telemetry::continue_trace(&span, headers);
                let _entered = span.enter();
                self.feed.publish(event)
            }
            None => self.feed.publish(event),
        };
        history_bytes.set(bytes as i64);
        *self
            .feed
            .last_event
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
        true
    }

    /// Passes the next stored event from `next` on (of the feed's path, if
    /// any) as an `invalid` event when NATS clients cannot read its header
    /// block or subject ([`next_unreadable`]): delivered by a consumer or a direct get,
    /// it drops the node's NATS connection, and the feed would read it again
    /// after each reconnection. True when an event was passed.
    async fn pass_unreadable(&mut self, next: u64) -> bool {
        let filter_subject = self.filter_subject();
        let filters: &[String] = if filter_subject.is_empty() {
            &[]
        } else {
            std::slice::from_ref(&filter_subject)
        };
        let Some(unreadable) =
            next_unreadable(&self.js, self.feed.stream_name(), next, filters).await
        else {
            return false;
        };
        if unreadable.seq <= self.feed.head() {
            return false;
        }
        let path = unreadable
            .subject
            .get(self.path_offset..)
            .unwrap_or_default();
        let reason = unreadable.reason;
        self.metrics
            .invalid_events
            .with_label_values(&[reason.as_str()])
            .inc();
        warn!(topic = %self.feed.topic, subject = path, seq = unreadable.seq, reason = reason.as_str(), "a stored event's NATS headers or subject cannot be read, and its delivery drops the connection; delivering an invalid event in its place");
        self.head_time = Some(unreadable.published);
        let event = Event::replaced(
            &self.ctx,
            unreadable.seq,
            path,
            unreadable.published,
            reason,
        );
        let topic_label = [self.feed.topic.as_str()];
        self.metrics
            .feed_events
            .with_label_values(&topic_label)
            .inc();
        let bytes = self.feed.publish(event);
        self.metrics
            .history_bytes
            .with_label_values(&topic_label)
            .set(bytes as i64);
        true
    }

    /// Whether the event at the head is still the one the feed read, at the
    /// same JetStream time; true for a feed that has read none. A stream
    /// deleted and recreated while the feed dozed is then not read by
    /// sequence as the old one: its feed makes a consumer, which sees the
    /// new epoch.
    async fn head_still_read(&self, stream: &jetstream::stream::Stream<()>) -> bool {
        let Some(head_time) = self.head_time else {
            return true;
        };
        let head = self.feed.head();
        match bounded_for(FEED_CALL_TIMEOUT, stream.direct_get(head)).await {
            Ok(message) => message.sequence == head && SystemTime::from(message.time) == head_time,
            Err(_) => false,
        }
    }

    /// Reads, with direct gets from the head on, the events of `heard`
    /// publishes a dozing feed heard of, up to the last of them, `last_heard`
    /// (by its subject and payload), and at least up to sequence `until`;
    /// true once it has, false when the feed is to read with a consumer:
    /// the stream does not hold (or not yet, after a few tries) what was
    /// heard of, or JetStream does not answer. A topic that got busy gets
    /// its consumer made meanwhile (`direct.making`), and is read directly
    /// until it stands.
    ///
    /// Why: making a consumer is a JetStream API request, and so is the
    /// stream info before it. NATS serves them from one queue per server,
    /// stream infos last, so when many quiet topics get events at once
    /// (after a deployment, at the top of the hour) each topic's first event
    /// waited for its consumer behind all the others: 50–94 ms at the 99th
    /// percentile over 1,000 fresh topics. A direct get is answered by the
    /// stream itself, beside the API queue, and a topic that gets an event
    /// now and then needs no consumer at all. Publishes heard together
    /// (a burst) are read with one get of as many events, where each took a
    /// round trip of its own, so that the burst's last event does not wait
    /// for all the others' gets. A topic that needs more than
    /// [`DIRECT_GETS_MAX`] gets in a window (its events come one by one) is
    /// read by a consumer, which costs NATS less per event; its events are
    /// read directly until that consumer stands, so that none of them waits
    /// for it.
    ///
    /// Nothing can be stepped over. A whole topic's feed takes only the
    /// sequences right after the head, one after the other; a path feed its
    /// path's events after the head, which a replica answers from what it
    /// holds, a prefix of the stream. A deleted sequence, or a replica that
    /// has not stored the newest event yet (after a few tries), ends the
    /// reads and the consumer reads on from the head. Publishes not heard
    /// of (NATS away for a moment) are read with the next one heard of: the
    /// reads go on until the last one heard of. (One with the same subject
    /// and payload as an earlier one stops them early; the feed's next wake
    /// or look reads on.)
    #[allow(clippy::too_many_arguments)]
    async fn read_directly(
        &mut self,
        stream: &jetstream::stream::Stream<()>,
        publishes: &mut Publishes,
        live: bool,
        heard: usize,
        mut last_heard: Option<async_nats::Message>,
        mut until: u64,
        direct: &mut DirectReads,
    ) -> bool {
        let mut unread = heard;
        let filter_subject = self.filter_subject();
        let mut tries = 0u32;
        while unread > 0 || last_heard.is_some() || self.feed.head() < until {
            if self.feed.is_closed() || direct.making.as_ref().is_some_and(|m| m.is_finished()) {
                // A consumer that stands reads on from where the direct
                // reads began.
                return true;
            }
            // Publishes heard while the last request was answered are read
            // with the next one; republished events say up to where.
            while let Some(Some(message)) = publishes.next().now_or_never() {
                if !live {
                    unread += 1;
                    last_heard = Some(message);
                } else if let Some(event) = republished_of(&message, self.feed.stream_name()) {
                    until = until.max(event.seq);
                }
            }
            self.make_consumer_if_busy(direct, &filter_subject);
            let head = self.feed.head();
            let next = head + 1;
            // As many events as publishes were heard of, so that no event
            // is read before its publish is heard of and counted.
            let wanted = (unread.max(1) as u64)
                .max(until.saturating_sub(head))
                .min(DIRECT_BATCH_MAX);
            direct.in_window += 1;
            let read = if wanted > 1 && direct.batches {
                bounded_for(
                    FEED_CALL_TIMEOUT,
                    direct_get_batch(
                        &self.js.client(),
                        self.feed.stream_name(),
                        next,
                        &filter_subject,
                        wanted,
                        DIRECT_BATCH_BYTES,
                    ),
                )
                .await
            } else {
                let mut get = stream.direct_get_builder().sequence(next);
                if !filter_subject.is_empty() {
                    get = get.next_by_subject(filter_subject.as_str());
                }
                match bounded_for(FEED_CALL_TIMEOUT, get.send()).await {
                    Ok(message) => Ok(vec![message]),
                    Err(e)
                        if e.downcast_ref::<jetstream::stream::DirectGetError>()
                            .is_some_and(|e| {
                                e.kind() == jetstream::stream::DirectGetErrorKind::NotFound
                            }) =>
                    {
                        Ok(Vec::new())
                    }
                    Err(e) => Err(e),
                }
            };
            let Ok(messages) = read else {
                return false;
            };
            if messages.is_empty() {
                if tries < DIRECT_READ_TRIES {
                    // A publish is heard of as soon as the stream has it,
                    // not once it has stored it: ask again a moment later.
                    tokio::time::sleep(DIRECT_READ_RETRY * 4u32.pow(tries)).await;
                    tries += 1;
                    continue;
                }
                return false;
            }
            tries = 0;
            for message in messages {
                let expected = self.feed.head() + 1;
                let follows = message.sequence == expected
                    || (!filter_subject.is_empty()
                        && message.sequence > expected
                        && message.subject.as_str() == filter_subject);
                if !follows {
                    // A deleted sequence (or a gap in what a replica holds)
                    // is the consumer's to read past.
                    return false;
                }
                self.metrics.feed_direct_reads.inc();
                let event = self.deliver(
                    message.sequence,
                    SystemTime::from(message.time),
                    message.subject.as_str(),
                    Some(&message.headers),
                    &message.payload,
                    &direct.feed_events,
                    &direct.history_bytes,
                );
                // A delete marker is stored without a publish.
                if event {
                    unread = unread.saturating_sub(1);
                }
                if last_heard.as_ref().is_some_and(|last| {
                    last.subject.as_str() == message.subject.as_str()
                        && last.payload == message.payload
                }) {
                    last_heard = None;
                }
            }
        }
        true
    }

    /// Starts making a consumer, once, before a direct get past
    /// [`DIRECT_GETS_MAX`] in the current window: the topic got busy.
    fn make_consumer_if_busy(&self, direct: &mut DirectReads, filter_subject: &str) {
        let now = tokio::time::Instant::now();
        if now.duration_since(direct.since) >= DIRECT_GETS_WINDOW {
            direct.since = now;
            direct.in_window = 0;
        }
        if direct.in_window >= DIRECT_GETS_MAX
            && direct.making.is_none()
            && direct.make_after.is_none_or(|at| now >= at)
        {
            debug!(topic = %self.feed.topic, head = self.feed.head(), "topic is busy; making a consumer");
            direct.making = Some(tokio::spawn(open_consumer(
                self.js.clone(),
                self.feed.clone(),
                self.doze_after,
                self.feed.head() + 1,
                filter_subject.to_owned(),
            )));
        }
    }

    /// Waits, without a consumer, until the topic (or the feed's path) may
    /// hold an event past the head, and says how the feed reads on.
    ///
    /// An idle consumer costs NATS some 50 KiB and a pull every few seconds,
    /// so a feed whose topic had no event for `doze_after` lets it go and listens
    /// to the topic's subjects instead. A publish there only tells the feed
    /// that an event came: core NATS delivery is at most once, so the events
    /// themselves are read from JetStream from `head + 1`, by direct gets
    /// while the topic gets a few a second ([`Reader::read_directly`]: a
    /// feed on a stream that allows them), else by a new consumer (which a
    /// feed reading directly makes while it reads on). JetStream is asked whether it holds anything past the head
    /// right after the subscriptions stand, a second later, after each
    /// reconnection to NATS, when a listing finds the stream past the head
    /// ([`Feed::listed`]), and then every `doze_after` (or `no_progress`, if
    /// longer), so a publish the subscriptions missed is read late, never
    /// lost.
    ///
    /// `bridging`: the feed was refused its consumer, and dozes only while
    /// JetStream answers it otherwise (a direct get of its head, its
    /// looks): a stream that does not answer at all is asked for a
    /// consumer again within a second, each refusal counted, as before it
    /// dozed.
    async fn doze(&mut self, bridging: bool) -> Wake {
        let feed = self.feed.clone();
        let _dozing = DozingGauge::hold(&self.metrics.feeds_dozing, &feed.dozing);
        let client = self.js.client();
        let filter_subject = self.filter_subject();
        let mut live = self.feed.republished.load(Ordering::Acquire);
        // No subscription, no doze: read with a consumer again.
        let Some(mut publishes) = self.listen(&client, &filter_subject, live).await else {
            return Wake::Read;
        };
        let Ok(stream) = self.js.get_stream_no_info(self.feed.stream_name()).await else {
            return Wake::Read;
        };
        debug!(topic = %self.feed.topic, path = self.feed.path.as_deref().unwrap_or(""), head = self.feed.head(), "topic feed is quiet; letting its consumer go");
        // The first look comes once the server has the subscriptions, and a
        // second a moment later, once other servers of the cluster have
        // heard of them too.
        let mut look_at = tokio::time::Instant::now()
            + match bounded(client.flush()).await {
                Ok(()) => Duration::ZERO,
                Err(_) => DOZE_SECOND_LOOK,
            };
        let mut looks = 0u32;
        // Looks in a row that got no answer.
        let mut unanswered = 0u32;
        let direct_works = self.direct_reads && self.head_still_read(&stream).await;
        if bridging && !direct_works {
            return Wake::Read;
        }
        let mut direct = direct_works.then(|| {
            let topic_label = [self.feed.topic.as_str()];
            DirectReads {
                batches: answers_batched_gets(&client.server_info().version),
                since: tokio::time::Instant::now(),
                in_window: 0,
                making: None,
                make_after: None,
                make_backoff: Duration::from_millis(100),
                live_counted: None,
                feed_events: self.metrics.feed_events.with_label_values(&topic_label),
                history_bytes: self.metrics.history_bytes.with_label_values(&topic_label),
            }
        });
        loop {
            tokio::select! {
                // The consumer, once it stands, before more direct reads.
                biased;
                _ = self.feed.closed.cancelled() => return Wake::Closed,
                made = async {
                    match direct.as_mut().and_then(|direct| direct.making.as_mut()) {
                        Some(making) => making.await,
                        None => std::future::pending().await,
                    }
                } => {
                    match made {
                        Ok(Err(error)) => {
                            // JetStream refuses a consumer (electing its
                            // meta leader, which a consumer needs and a
                            // direct get does not; at the stream's limit
                            // of consumers): the feed reads on directly
                            // and tries again later.
                            self.consumer_refused(&error);
                            if let Some(direct) = direct.as_mut() {
                                direct.making = None;
                                direct.make_after = Some(tokio::time::Instant::now() + direct.make_backoff);
                                direct.make_backoff = (direct.make_backoff * 2).min(FEED_RETRY_MAX);
                            }
                            continue;
                        }
                        Ok(opening) => return Wake::Made(opening),
                        Err(_) => return Wake::Read,
                    }
                }
                heard = publishes.next() => {
                    let (Some(first), Some(direct)) = (heard, direct.as_mut()) else {
                        return Wake::Read;
                    };
                    let now = tokio::time::Instant::now();
                    if live && direct.live_counted.is_none_or(|at| now.duration_since(at) >= LIVE_WAKES_APART) {
                        // Events taken in as they come count as a direct
                        // get each time they wake the feed: a topic that
                        // gets busy is read with a consumer all the same.
                        direct.live_counted = Some(now);
                        self.make_consumer_if_busy(direct, &filter_subject);
                        direct.in_window += 1;
                    }
                    let mut heard = Heard::default();
                    self.hear(first, live, &filter_subject, direct, &mut heard);
                    while let Some(Some(message)) = publishes.next().now_or_never() {
                        self.hear(message, live, &filter_subject, direct, &mut heard);
                    }
                    if heard.behind_head {
                        return Wake::Read;
                    }
                    if heard.unread > 0 || heard.until > self.feed.head() {
                        // Boxed: the reads' state is not kept in the reader's
                        // own while it reads with a consumer.
                        if !Box::pin(self.read_directly(&stream, &mut publishes, live, heard.unread, heard.last, heard.until, direct)).await {
                            return self.consumer_made(direct.making.take()).await;
                        }
                    }
                    // Something on a live subject that the stream did not
                    // republish: JetStream says what it holds.
                    if !heard.look {
                        continue;
                    }
                }
                Ok(()) = self.reconnections.changed() => {}
                _ = self.feed.renew.notified() => {}
                _ = self.feed.look_now.notified() => {}
                _ = tokio::time::sleep_until(look_at) => {}
            }
            if self.feed.republished.load(Ordering::Acquire) != live {
                // The stream's republish came or went: listen where its
                // events are announced now; the look below reads what came
                // in between.
                live = !live;
                debug!(topic = %self.feed.topic, live, "topic's republish changed; listening anew");
                let Some(listening) = self.listen(&client, &filter_subject, live).await else {
                    return Wake::Read;
                };
                publishes = listening;
            }
            // A deleted or recreated topic is the registry's to act on: it
            // closes the feed.
            let answered = match self.look(&stream, &filter_subject).await {
                Ok(Some(last)) if last > self.feed.head().max(self.nothing_until) => {
                    let Some(direct) = direct.as_mut() else {
                        return Wake::Read;
                    };
                    if !Box::pin(self.read_directly(
                        &stream,
                        &mut publishes,
                        live,
                        0,
                        None,
                        last,
                        direct,
                    ))
                    .await
                    {
                        return self.consumer_made(direct.making.take()).await;
                    }
                    true
                }
                // Another epoch, or a stream that went back: the consumer's
                // reader sees it and closes the feed.
                Ok(None) => return Wake::Read,
                Ok(Some(last)) if filter_subject.is_empty() && last < self.feed.head() => {
                    return Wake::Read;
                }
                Ok(Some(_)) => true,
                Err(_) => false,
            };
            if !answered {
                self.metrics
                    .feed_errors
                    .with_label_values(&["unanswered"])
                    .inc();
                if bridging {
                    return Wake::Read;
                }
            }
            looks += 1;
            unanswered = if answered { 0 } else { unanswered + 1 };
            look_at = tokio::time::Instant::now()
                + if unanswered > 0 {
                    // No answer proves nothing: NATS may be away, or
                    // electing the stream's leader, and publishes made
                    // meanwhile may not be heard. Look again soon, less
                    // often the longer it lasts.
                    (DOZE_SECOND_LOOK * 2u32.pow(unanswered.min(6))).min(self.look_every)
                } else if looks == 1 {
                    DOZE_SECOND_LOOK
                } else {
                    // A look costs NATS a request: at most one per configured
                    // doze time per quiet feed (not the shorter direct one),
                    // and not more often than the watchdog's.
                    self.look_every
                };
        }
    }

    /// Subscribes to where a dozing feed hears of its topic's (or its
    /// path's) events: the subjects themselves, or with `live` the subjects
    /// the stream republishes them to. `None` if NATS refuses.
    async fn listen(
        &self,
        client: &async_nats::Client,
        filter_subject: &str,
        live: bool,
    ) -> Option<Publishes> {
        let subjects = if filter_subject.is_empty() {
            vec![
                format!("{}{}", &self.prefix, self.feed.topic),
                format!("{}{}.>", &self.prefix, self.feed.topic),
            ]
        } else {
            vec![filter_subject.to_owned()]
        };
        let mut publishes = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let subject = if live {
                format!("{}{subject}", self.live_prefix)
            } else {
                subject
            };
            match client.subscribe(subject).await {
                Ok(subscriber) => publishes.push(subscriber),
                Err(error) => {
                    debug!(topic = %self.feed.topic, %error, "cannot listen for publishes; reading on");
                    return None;
                }
            }
        }
        Some(futures_util::stream::select_all(publishes))
    }

    /// Takes in what a dozing feed heard: a republished event that follows
    /// the head is delivered at once ([`takes_in`]); anything else is noted
    /// in `heard` for [`Reader::read_directly`].
    fn hear(
        &mut self,
        message: async_nats::Message,
        live: bool,
        filter_subject: &str,
        direct: &DirectReads,
        heard: &mut Heard,
    ) {
        if !live {
            heard.unread += 1;
            heard.last = Some(message);
            return;
        }
        let Some(event) = republished_of(&message, self.feed.stream_name()) else {
            heard.look = true;
            return;
        };
        if heard.behind_head {
            // The doze ends without taking anything else in.
            return;
        }
        let head = self.feed.head();
        if event.seq <= head {
            // Read already, by a direct get for an earlier gap; unless the
            // stream stored it after the head's event, or the feed has read
            // nothing since it started past it: then JetStream says.
            heard.behind_head |= self.head_time.is_none_or(|at| event.published > at);
            return;
        }
        if heard.until == 0 && takes_in(&event, head, filter_subject) {
            self.metrics.feed_live_reads.inc();
            self.deliver(
                event.seq,
                event.published,
                event.subject,
                message.headers.as_ref(),
                &message.payload,
                &direct.feed_events,
                &direct.history_bytes,
            );
        } else {
            // Something between the head and this event was not heard.
            heard.until = heard.until.max(event.seq);
        }
    }

    /// How a doze whose direct reads failed ends: with the consumer being
    /// made, if the topic had got busy (it reads from where they began),
    /// else with a new one.
    async fn consumer_made(
        &self,
        making: Option<tokio::task::JoinHandle<Result<Opening, async_nats::Error>>>,
    ) -> Wake {
        let Some(making) = making else {
            return Wake::Read;
        };
        tokio::select! {
            _ = self.feed.closed.cancelled() => Wake::Closed,
            made = making => match made {
                Ok(opening) => Wake::Made(opening),
                Err(_) => Wake::Read,
            },
        }
    }

    /// A dozing feed's look at JetStream: the last sequence the stream holds
    /// of `filter_subject` (of any subject when empty), or `None` when the
    /// stream is of another epoch than the feed's.
    async fn look(
        &self,
        stream: &jetstream::stream::Stream<()>,
        filter_subject: &str,
    ) -> Result<Option<u64>, async_nats::Error> {
        if !filter_subject.is_empty() {
            return last_stored(stream, filter_subject).await.map(Some);
        }
        let info = bounded(stream.get_info()).await?;
        if !answered_with_quorum(&info) {
            return Err(NO_QUORUM.into());
        }
        Ok((stream_epoch(&info) == self.feed.epoch).then_some(info.state.last_sequence))
    }
}

/// Reads up to `batch` events of the stream `stream_name` from the sequence
/// `from` (of `filter_subject` only, when not empty) with one direct get,
/// as many as fit in `max_bytes` (at least one): NATS 2.11 and later answer it with each event and then an end-of-batch
/// status, where one get per event took a round trip each. Empty when the
/// stream holds nothing there yet.
///
/// A server before 2.11 would answer one event and no end: the feed asks
/// for batches only of a server that announces 2.11 or later
/// ([`answers_batched_gets`]), and stops at `batch` events without waiting
/// for the end.
pub(crate) async fn direct_get_batch(
    client: &async_nats::Client,
    stream_name: &str,
    from: u64,
    filter_subject: &str,
    batch: u64,
    max_bytes: usize,
) -> Result<Vec<jetstream::message::StreamMessage>, async_nats::Error> {
    let mut request = serde_json::json!({
        "seq": from,
        "batch": batch,
        "max_bytes": max_bytes,
    });
    if !filter_subject.is_empty() {
        request["next_by_subj"] = filter_subject.into();
    }
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream_name}"),
            inbox,
            serde_json::to_vec(&request)?.into(),
        )
        .await?;
    let mut messages = Vec::new();
    while (messages.len() as u64) < batch {
        let Some(answer) = answers.next().await else {
            return Err("the direct get's subscription ended".into());
        };
        match answer.status.map(|status| status.as_u16()) {
            None => messages.push(jetstream::message::StreamMessage::try_from(answer)?),
            // Nothing at or past `from`, or the end of the batch.
            Some(404 | 204) => break,
            Some(status) => {
                return Err(format!(
                    "direct get answered {status} {}",
                    answer.description.as_deref().unwrap_or("")
                )
                .into());
            }
        }
    }
    Ok(messages)
}

/// The sequence of the first event the stream `stream_name` stores from
/// `from` on, of any of `filters` (NATS subjects), as its leader answers;
/// `None` when it stores none. Asked through JetStream's API, which only
/// the stream's leader answers, where a direct get may be answered by a
/// replica that has not stored the newest events yet.
pub(crate) async fn next_stored(
    js: &jetstream::Context,
    stream_name: &str,
    from: u64,
    filters: &[String],
) -> Result<Option<u64>, async_nats::Error> {
    /// JetStream's code for "no message found".
    const NO_MESSAGE_FOUND: u64 = 10037;
    let asks = filters.iter().map(|filter| async move {
        let request = serde_json::json!({ "seq": from, "next_by_subj": filter });
        let asked = js
            .request::<_, _, serde_json::Value>(format!("STREAM.MSG.GET.{stream_name}"), &request);
        let answer = bounded_for(FEED_CALL_TIMEOUT, asked).await?;
        if let Some(seq) = answer["message"]["seq"].as_u64() {
            Ok(Some(seq))
        } else if answer["error"]["err_code"].as_u64() == Some(NO_MESSAGE_FOUND) {
            Ok(None)
        } else {
            Err(async_nats::Error::from(format!(
                "the stream's next message was not told: {}",
                answer["error"]
            )))
        }
    });
    let answers = futures_util::future::try_join_all(asks).await?;
    Ok(answers.into_iter().flatten().min())
}

/// A stored event that NATS clients cannot read.
pub(crate) struct Unreadable {
    /// Why: its header block ([`InvalidReason::BadHeaders`]) or its subject
    /// ([`InvalidReason::BadSubject`]).
    pub(crate) reason: InvalidReason,
    /// Its stream sequence.
    pub(crate) seq: u64,
    /// Its NATS subject.
    pub(crate) subject: String,
    /// When JetStream stored it.
    pub(crate) published: SystemTime,
}

/// The first event of `stream_name` from sequence `from` on (of any of
/// `filters`, NATS subjects, when given), if NATS clients cannot read it:
/// its header block ([`readable_header_block`]: a header value that is not
/// UTF-8 or a name with a space) or its subject (not UTF-8), which a
/// publisher that does not check what it sends (the raw protocol, a Go
/// client) can store. Asked through JetStream's JSON API, which carries the
/// header block in base64 and writes a subject's bytes that are not UTF-8
/// as U+FFFD, since delivering it as a message drops the connection.
/// `None` when the next event is readable, or on no answer.
pub(crate) async fn next_unreadable(
    js: &jetstream::Context,
    stream_name: &str,
    from: u64,
    filters: &[String],
) -> Option<Unreadable> {
    use base64::Engine as _;
    let ask = |filter: Option<&String>| {
        let mut request = serde_json::json!({ "seq": from });
        if let Some(filter) = filter {
            request["next_by_subj"] = filter.as_str().into();
        }
        async move {
            let asked = js.request::<_, _, serde_json::Value>(
                format!("STREAM.MSG.GET.{stream_name}"),
                &request,
            );
            bounded_for(FEED_CALL_TIMEOUT, asked).await.ok()
        }
    };
    let answers = if filters.is_empty() {
        vec![ask(None).await]
    } else {
        futures_util::future::join_all(filters.iter().map(|f| ask(Some(f)))).await
    };
    // The first of the filters' next events is the one a consumer of all
    // of them delivers next.
    let message = answers
        .iter()
        .flatten()
        .map(|answer| &answer["message"])
        .filter(|message| message["seq"].as_u64().is_some())
        .min_by_key(|message| message["seq"].as_u64())?;
    let subject = message["subject"].as_str()?;
    // A subject that holds U+FFFD itself is taken for one that is not UTF-8:
    // the answer cannot tell them apart, and passing such an event beats
    // reconnecting at it for good.
    let reason = if subject.contains(char::REPLACEMENT_CHARACTER) {
        InvalidReason::BadSubject
    } else {
        let block = base64::engine::general_purpose::STANDARD
            .decode(message["hdrs"].as_str()?)
            .ok()?;
        if readable_header_block(&block) {
            return None;
        }
        InvalidReason::BadHeaders
    };
    let published = message["time"]
        .as_str()
        .and_then(|time| {
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or_else(crate::clock::nats_now, SystemTime::from);
    Some(Unreadable {
        reason,
        seq: message["seq"].as_u64()?,
        subject: subject.to_owned(),
        published,
    })
}

/// Whether async-nats reads a message with the header block `block`
/// (`NATS/1.0` line, fields, blank line) without dropping its connection:
/// UTF-8, a version line, and every field a `name: value` whose name it
/// accepts.
fn readable_header_block(block: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(block) else {
        return false;
    };
    let mut lines = text.lines().peekable();
    let Some(status) = lines
        .next()
        .and_then(|line| line.strip_prefix("NATS/1.0"))
        .map(|rest| {
            rest.trim()
                .split_once(' ')
                .map_or(rest.trim(), |(code, _)| code)
        })
    else {
        return false;
    };
    if !status.is_empty()
        && !status
            .parse::<u16>()
            .is_ok_and(|code| (100..1000).contains(&code))
    {
        return false;
    }
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let Some((name, _)) = line.split_once(':') else {
            return false;
        };
        if name.parse::<async_nats::header::HeaderName>().is_err() {
            return false;
        }
        // Lines that go on the value before them.
        while lines
            .next_if(|next| next.starts_with(char::is_whitespace))
            .is_some()
        {}
    }
    true
}

/// Whether a NATS server of `version` (as its INFO announces it, say
/// "2.11.0" or "2.12.0-RC.1") answers a direct get for a batch of events.
pub(crate) fn answers_batched_gets(version: &str) -> bool {
    let mut numbers = version
        .split(['.', '-'])
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= (2, 11)
}

/// Creates a consumer for `feed`'s reader from `next`, reading
/// `filter_subject` (or the whole stream), unless the stream is gone or was
/// recreated. Boxed or spawned by the caller: what it holds on the way (the
/// stream's and the consumer's info, some 2 KiB) is not kept while the
/// reader reads, and it owns what it uses, so that a dozing feed can read
/// on directly while it runs.
async fn open_consumer(
    js: jetstream::Context,
    feed: Arc<Feed>,
    doze_after: Option<Duration>,
    next: u64,
    filter_subject: String,
) -> Result<Opening, async_nats::Error> {
    // Taken before the stream's info is asked for: a feed that dozes reads
    // on while this runs, and what it reads meanwhile may be newer than
    // the info's last sequence without the stream having gone back.
    let head_before = feed.head();
    let stream = match bounded_for(FEED_CALL_TIMEOUT, js.get_stream(feed.stream_name())).await {
        Ok(stream) => stream,
        Err(e) => {
            return match e.downcast_ref::<jetstream::context::GetStreamError>() {
                Some(e) if is_stream_not_found(e) => Ok(Opening::End(ReadEnd::StreamGone)),
                _ => Err(e),
            };
        }
    };
    if !answered_with_quorum(stream.cached_info()) {
        // A copy cut off from its leader (the node on a NATS server cut off
        // from its peers) answers with what it has: no ground to think the
        // stream went back, nor to start a consumer there.
        return Err(NO_QUORUM.into());
    }
    if stream_epoch(stream.cached_info()) != feed.epoch {
        return Ok(Opening::End(ReadEnd::StreamRecreated));
    }
    let stream_last = stream.cached_info().state.last_sequence;
    if stream_last < head_before {
        // A consumer from `head + 1` would skip what the stream stores
        // next, under numbers the feed has already read.
        return Ok(Opening::End(ReadEnd::StreamRewound));
    }
    let quiet_before = if feed.head() <= feed.live_from {
        topic_quiet_for(&stream.cached_info().state)
    } else {
        Duration::ZERO
    };
    if next > stream_last && doze_after.is_some_and(|after| quiet_before >= after) {
        // Nothing to read, and the topic was already quiet when the
        // feed started: no consumer at all until its next publish.
        return Ok(Opening::Quiet {
            nothing_until: stream_last.max(next - 1),
        });
    }
    let consumer = bounded_for(
        FEED_CALL_TIMEOUT,
        stream.create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: next,
            },
            filter_subject,
            // Short pulls mean idle heartbeats every couple of seconds, so
            // a consumer lost with a stream leader is noticed and
            // re-created in seconds, not after the 30 s default.
            max_expires: PULL_EXPIRES,
            max_batch: pull_batch(&stream.cached_info().state),
            ..Default::default()
        }),
    )
    .await?;
    let config = &stream.cached_info().config;
    let removes_within = config.max_messages_per_subject > 0 || config.allow_message_ttl;
    let owned = OwnedConsumer::new(&js, feed.stream_name(), &consumer.cached_info().name);
    // Sequences up to here hold nothing for this reader (deleted
    // messages, say): a stream whose last sequence is no higher is not
    // ahead of it.
    let caught_up = consumer.cached_info().num_pending == 0;
    let nothing_until = if caught_up {
        stream_last.max(next - 1)
    } else {
        next - 1
    };
    let messages = bounded_for(FEED_CALL_TIMEOUT, consumer.messages()).await?;
    // A handle without the stream's info, for the watchdog's questions.
    let stream = js.get_stream_no_info(feed.stream_name()).await?;
    Ok(Opening::Opened(Box::new(Opened {
        stream,
        messages,
        owned,
        nothing_until,
        quiet_before,
        caught_up,
        starts_at: next,
        removes_within,
    })))
}

/// Events deleted from within a stream: the sequences between its first
/// and last that it no longer holds.
fn deleted_within(state: &jetstream::stream::State) -> u64 {
    if state.messages == 0 {
        return 0;
    }
    (state.last_sequence + 1)
        .saturating_sub(state.first_sequence)
        .saturating_sub(state.messages)
}

/// How long a feed of `info`'s stream reads nothing before it lets its
/// consumer go; `None` if it never does.
fn doze_time(settings: &FeedSettings, info: &Info) -> Option<Duration> {
    // A stream fed otherwise than by publishes on its subjects gets events
    // that no subscription of a dozing feed would see.
    settings
        .doze_after
        .filter(|_| fed_by_publishes(info))
        .map(|after| match settings.direct_doze_after {
            Some(direct) if info.config.allow_direct => after.min(direct),
            _ => after,
        })
}

/// How long the stream had gone without a new event, by its last event's
/// JetStream timestamp against NATS's clock ([`crate::clock`]);
/// `Duration::MAX` for a stream that never held one, zero for a timestamp
/// ahead of the clock.
fn topic_quiet_for(state: &jetstream::stream::State) -> Duration {
    if state.last_sequence == 0 {
        return Duration::MAX;
    }
    crate::clock::nats_now()
        .duration_since(SystemTime::from(state.last_timestamp))
        .unwrap_or_default()
}

/// The last sequence `stream` holds of `filter_subject` (of any subject
/// when empty); 0 when it holds none.
async fn last_stored(
    stream: &jetstream::stream::Stream<()>,
    filter_subject: &str,
) -> Result<u64, async_nats::Error> {
    if filter_subject.is_empty() {
        let info = bounded(stream.get_info()).await?;
        if !answered_with_quorum(&info) {
            return Err(NO_QUORUM.into());
        }
        return Ok(info.state.last_sequence);
    }
    // The stream's last sequence says nothing of one path: ask for that
    // path's last event.
    match bounded(stream.get_last_raw_message_by_subject(filter_subject)).await {
        Ok(message) => Ok(message.sequence),
        Err(e)
            if e.downcast_ref::<jetstream::stream::LastRawMessageError>()
                .is_some_and(|e| {
                    e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                }) =>
        {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Counts a dozing feed in `sse_feeds_dozing`, and marks it dozing, while
/// held.
struct DozingGauge<'a>(prometheus::IntGauge, &'a AtomicBool);

impl<'a> DozingGauge<'a> {
    fn hold(gauge: &prometheus::IntGauge, dozing: &'a AtomicBool) -> Self {
        gauge.inc();
        dozing.store(true, Ordering::Release);
        Self(gauge.clone(), dozing)
    }
}

impl Drop for DozingGauge<'_> {
    fn drop(&mut self) {
        self.1.store(false, Ordering::Release);
        self.0.dec();
    }
}

/// Whether a stream lookup failed because the stream does not exist.
pub fn is_stream_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use tokio::sync::broadcast::error::TryRecvError;

    use super::*;

    /// A call that never answers the first time, and answers `Ok(n)` (the
    /// call's number) from the second on; counts its calls.
    fn silent_first(calls: &AtomicU32) -> impl Future<Output = Result<u32, std::io::Error>> + '_ {
        let call = calls.fetch_add(1, Ordering::AcqRel) + 1;
        async move {
            if call == 1 {
                std::future::pending::<()>().await;
            }
            Ok(call)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_left_unanswered_is_asked_again_within_the_bound() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let answer = asked_twice(Duration::from_secs(1), Duration::from_secs(5), || {
            silent_first(&calls)
        })
        .await
        .unwrap();
        assert_eq!(answer, 2, "the second request's answer");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(calls.load(Ordering::Acquire), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_answered_in_time_is_asked_once() {
        let calls = AtomicU32::new(1);
        let answer = asked_twice(Duration::from_secs(1), Duration::from_secs(5), || {
            silent_first(&calls)
        })
        .await
        .unwrap();
        assert_eq!(answer, 2);
        assert_eq!(calls.load(Ordering::Acquire), 2, "one call only");
    }

    #[tokio::test(start_paused = true)]
    async fn two_requests_left_unanswered_end_at_the_bound() {
        let started = tokio::time::Instant::now();
        let answer: Result<(), _> =
            asked_twice(Duration::from_secs(1), Duration::from_secs(5), || {
                std::future::pending::<Result<(), std::io::Error>>()
            })
            .await;
        assert!(answer.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[test]
    fn header_blocks_async_nats_reads_and_those_it_drops_the_connection_for() {
        for good in [
            &b"NATS/1.0\r\nSse-Event: update\r\n\r\n"[..],
            b"NATS/1.0\r\n\r\n",
            b"NATS/1.0\r\nA: 1\r\n folded\r\nB: x\ry\r\n\r\n",
            b"NATS/1.0 503\r\n\r\n",
        ] {
            assert!(
                readable_header_block(good),
                "{:?}",
                String::from_utf8_lossy(good)
            );
        }
        for bad in [
            &b"NATS/1.0\r\nSse-Event: caf\xe9\r\n\r\n"[..],
            b"NATS/1.0\r\nX Y: v\r\n\r\n",
            b"NATS/1.0\r\nno colon\r\n\r\n",
            b"HTTP/1.1\r\n\r\n",
            b"NATS/1.0 abc\r\n\r\n",
        ] {
            assert!(
                !readable_header_block(bad),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn settings() -> FeedSettings {
        FeedSettings {
            subject_prefix: "sse".into(),
            max_bytes: 1 << 20,
            max_events: 100,
            warm_events: 10,
            client_queue_events: 16,
            path_queue_events: 16,
            max_event_bytes: 1024,
            no_progress: Duration::from_secs(8),
            doze_after: None,
            direct_doze_after: None,
            reconnections: tokio::sync::watch::channel(0).1,
            budget: Arc::new(HistoryBudget::new(1 << 30)),
        }
    }

    fn info() -> Info {
        let config = jetstream::stream::Config {
            name: "SSE_t".into(),
            subjects: vec!["sse.t".into(), "sse.t.>".into()],
            ..Default::default()
        };
        serde_json::from_value(serde_json::json!({
            "config": config,
            "created": "2026-01-01T00:00:00Z",
            "state": {
                "messages": 5, "bytes": 50, "first_seq": 1, "first_ts": "2026-01-01T00:00:00Z",
                "last_seq": 5, "last_ts": "2026-01-01T00:00:00Z", "consumer_count": 0
            },
            "cluster": null
        }))
        .expect("a stream info")
    }

    #[test]
    fn events_deleted_within_a_stream_are_the_sequences_it_no_longer_holds() {
        let state = |messages: u64, first: u64, last: u64| {
            let mut state = info().state;
            (state.messages, state.first_sequence, state.last_sequence) = (messages, first, last);
            state
        };
        assert_eq!(deleted_within(&state(5, 1, 5)), 0);
        assert_eq!(deleted_within(&state(3, 1, 5)), 2, "two deleted between");
        assert_eq!(deleted_within(&state(3, 3, 5)), 0, "expired from the front");
        assert_eq!(deleted_within(&state(0, 6, 5)), 0, "purged whole");
    }

    /// A topic quiet for the doze time warms no history up: its feed starts
    /// where the topic stands, with nothing to read until its next publish.
    /// One with a recent event, or whose feeds never doze, warms up.
    /// A message as a stream republishes an event, with `headers`.
    fn republished_message(headers: &[(&str, &str)]) -> async_nats::Message {
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        async_nats::Message {
            subject: "sse.LIVE.sse.notes.alice".into(),
            reply: None,
            payload: "data".into(),
            headers: Some(map),
            status: None,
            description: None,
            length: 0,
        }
    }

    const REPUBLISHED: [(&str, &str); 5] = [
        ("Nats-Stream", "SSE_notes"),
        ("Nats-Subject", "sse.notes.alice"),
        ("Nats-Sequence", "7"),
        ("Nats-Last-Sequence", "4"),
        ("Nats-Time-Stamp", "2026-12-05T03:48:47.68227522Z"),
    ];

    #[test]
    fn pulls_of_large_events_hold_about_a_mebibyte() {
        let state = |messages: u64, bytes: u64| -> jetstream::stream::State {
            serde_json::from_value(serde_json::json!({
                "messages": messages, "bytes": bytes, "first_seq": 0,
                "first_ts": "1970-01-01T00:00:00Z", "last_seq": 0,
                "last_ts": "1970-01-01T00:00:00Z", "consumer_count": 0
            }))
            .unwrap()
        };
        assert_eq!(pull_batch(&state(0, 0)), 500);
        assert_eq!(pull_batch(&state(1_000, 150_000)), 500);
        assert_eq!(pull_batch(&state(115, 115 * 262_200)), 3);
        assert_eq!(pull_batch(&state(20_000, 20_000 * 20_000)), 52);
        assert_eq!(pull_batch(&state(2, 4 * 1024 * 1024)), 1);
    }

    #[test]
    fn a_republished_event_says_its_sequence_subject_and_time() {
        let message = republished_message(&REPUBLISHED);
        let event = republished_of(&message, "SSE_notes").expect("republished");
        assert_eq!(
            (event.seq, event.subject_last, event.subject),
            (7, 4, "sse.notes.alice")
        );
        let nanos = event
            .published
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        assert_eq!(nanos % 1_000_000_000, 682_275_220);
        assert!(
            republished_of(&message, "SSE_other").is_none(),
            "another stream's"
        );
        for missing in [
            "Nats-Stream",
            "Nats-Subject",
            "Nats-Sequence",
            "Nats-Time-Stamp",
        ] {
            let headers: Vec<_> = REPUBLISHED
                .into_iter()
                .filter(|(name, _)| *name != missing)
                .collect();
            assert!(
                republished_of(&republished_message(&headers), "SSE_notes").is_none(),
                "without {missing}"
            );
        }
        let mut bad = REPUBLISHED;
        bad[2].1 = "seven";
        assert!(republished_of(&republished_message(&bad), "SSE_notes").is_none());
    }

    #[test]
    fn only_an_event_with_nothing_unread_before_it_is_taken_in() {
        let message = republished_message(&REPUBLISHED);
        let event = republished_of(&message, "SSE_notes").unwrap();
        // A whole topic's feed reads every sequence: only the next one.
        assert!(takes_in(&event, 6, ""));
        assert!(!takes_in(&event, 5, ""), "sequence 6 unread");
        // A path feed reads its subject: the subject's previous event (4)
        // must be at or before the head.
        assert!(takes_in(&event, 4, "sse.notes.alice"));
        assert!(takes_in(&event, 6, "sse.notes.alice"));
        assert!(!takes_in(&event, 3, "sse.notes.alice"), "event 4 unread");
        assert!(!takes_in(&event, 7, "sse.notes.alice"), "read already");
        assert!(!takes_in(&event, 6, "sse.notes.bob"), "another path");
        assert!(!takes_in(&event, 6, "sse.notes.*"), "a pattern");
    }

    #[test]
    fn only_a_whole_republish_to_the_live_subjects_counts() {
        let republish = |source: &str, destination: &str, headers_only: bool| {
            let mut info = info();
            info.config.republish = Some(async_nats::jetstream::stream::Republish {
                source: source.into(),
                destination: destination.into(),
                headers_only,
            });
            republishes_live(&info, "sse")
        };
        assert!(republish(">", "sse.LIVE.>", false));
        assert!(republish("", "sse.LIVE.>", false));
        assert!(!republish(">", "sse.LIVE.>", true), "headers only");
        assert!(
            !republish("sse.notes.>", "sse.LIVE.>", false),
            "some subjects"
        );
        assert!(!republish(">", "elsewhere.>", false), "elsewhere");
        assert!(!republishes_live(&info(), "sse"), "no republish");
    }

    #[test]
    fn only_a_topic_quiet_for_the_doze_time_warms_nothing_up() {
        let topic = || TopicName::parse("t").unwrap();
        let dozing = FeedSettings {
            doze_after: Some(Duration::from_secs(120)),
            ..settings()
        };
        let (_, start) = Feed::new(topic(), None, &info(), &dozing);
        assert_eq!(start, 6, "the topic's last event is old");
        let (_, start) = Feed::new(topic(), None, &info(), &settings());
        assert_eq!(start, 1, "without dozing the feed warms up");
        let mut recent = info();
        recent.state.last_timestamp = time::OffsetDateTime::now_utc() - time::Duration::seconds(60);
        let (_, start) = Feed::new(topic(), None, &recent, &dozing);
        assert_eq!(start, 1, "the topic's last event is a minute old");
    }

    /// Batched direct gets are asked of NATS 2.11 and later only.
    #[test]
    fn only_nats_2_11_and_later_are_asked_for_batches() {
        for version in ["2.11.0", "2.12.0-RC.1", "2.15.1", "3.0.0"] {
            assert!(answers_batched_gets(version), "{version}");
        }
        for version in ["2.10.24", "2.9.0", "", "garbage"] {
            assert!(!answers_batched_gets(version), "{version}");
        }
    }

    /// A feed of a stream that allows direct gets dozes after the shorter of
    /// the two doze times; one of another stream after the configured one;
    /// none dozes when dozing is off or its stream is fed otherwise than by
    /// publishes.
    #[test]
    fn the_direct_doze_time_applies_only_to_streams_that_allow_direct_gets() {
        let minutes = |m: u64| Some(Duration::from_secs(m * 60));
        let both = FeedSettings {
            doze_after: minutes(2),
            direct_doze_after: Some(Duration::from_secs(10)),
            ..settings()
        };
        let mut direct = info();
        direct.config.allow_direct = true;
        assert_eq!(doze_time(&both, &direct), Some(Duration::from_secs(10)));
        assert_eq!(doze_time(&both, &info()), minutes(2));
        let longer = FeedSettings {
            direct_doze_after: minutes(5),
            ..both.clone()
        };
        assert_eq!(doze_time(&longer, &direct), minutes(2));
        let never = FeedSettings {
            doze_after: None,
            ..both.clone()
        };
        assert_eq!(doze_time(&never, &direct), None);
        let mut relayed = direct.clone();
        relayed.config.mirror = Some(jetstream::stream::Source {
            name: "SSE_other".into(),
            ..Default::default()
        });
        assert_eq!(doze_time(&both, &relayed), None);
    }

    /// The parked sockets' writer takes a grown channel's receiver without
    /// the feed's lock, once the old channel closes: it must find the new
    /// receiver there by then.
    #[test]
    fn a_grown_channel_is_handed_over_before_the_old_one_closes() {
        let mut channel = Channel::new(2, 16);
        let old = channel.subscribe();
        let mut old_closed_when_moved = None;
        for _ in 0..2 {
            channel.send(Arc::new(Event::drain_marker()), |_| {
                old_closed_when_moved = Some(old.is_closed());
            });
        }
        assert_eq!(
            old_closed_when_moved,
            Some(false),
            "the channel never grew, or closed first"
        );
        assert!(old.is_closed(), "the old channel stays open after the move");
        assert!(channel.grown);
    }

    /// A client may look a feed up an instant before it closes and attach
    /// an instant after. It must learn at once that the feed is gone: a
    /// receiver on a channel nobody sends on and nobody closes would leave
    /// it waiting forever, fed only heartbeats.
    #[test]
    fn attaching_to_a_closed_feed_yields_a_closed_receiver() {
        let (feed, start) = Feed::new(TopicName::parse("t").unwrap(), None, &info(), &settings());
        assert_eq!(start, 1);
        let mut before = feed.attach(None).receiver;
        let mut before_path = feed.attach(Some("t.a")).receiver;
        feed.close();
        assert!(matches!(before.try_recv(), Err(TryRecvError::Closed)));
        assert!(matches!(before_path.try_recv(), Err(TryRecvError::Closed)));
        for path in [None, Some("t.a")] {
            let mut after = feed.attach(path).receiver;
            assert!(
                matches!(after.try_recv(), Err(TryRecvError::Closed)),
                "an attachment made after close must be closed ({path:?})"
            );
        }
    }

    /// A path's channel goes as soon as nobody reads it, and not before: its
    /// queue is allocated whole, and idle clients of one path each would
    /// otherwise hold one until the path's next event.
    #[test]
    fn a_path_channel_is_forgotten_once_unread_and_made_again_when_read() {
        let (feed, _) = Feed::new(TopicName::parse("t").unwrap(), None, &info(), &settings());
        let first = feed.attach(Some("t.a")).receiver;
        let second = feed.attach(Some("t.a")).receiver;
        drop(first);
        feed.forget_path_if_unread("t.a");
        assert!(feed.lock().paths.contains_key("t.a"), "still read by one");
        drop(second);
        feed.forget_path_if_unread("t.a");
        assert!(!feed.lock().paths.contains_key("t.a"), "read by none");
        let mut again = feed.attach(Some("t.a")).receiver;
        let ctx = feed.encode_context.clone();
        feed.publish(Event::encode(
            &ctx,
            1,
            "t.a",
            SystemTime::UNIX_EPOCH,
            None,
            b"x",
        ));
        assert_eq!(again.try_recv().expect("the path's event").seq, 1);
    }

    /// Events deleted from within the stream drop the history, unless the
    /// stream deletes some as new ones come (a limit per subject).
    #[test]
    fn events_deleted_from_within_drop_the_history_unless_the_stream_supersedes_events() {
        for per_subject_limit in [false, true] {
            let mut listed = info();
            if per_subject_limit {
                listed.config.max_messages_per_subject = 1;
            }
            let (feed, _) = Feed::new(TopicName::parse("t").unwrap(), None, &listed, &settings());
            let ctx = feed.encode_context.clone();
            for seq in 6..=8 {
                let subject = format!("t.{seq}");
                feed.publish(Event::encode(
                    &ctx,
                    seq,
                    &subject,
                    SystemTime::UNIX_EPOCH,
                    None,
                    b"x",
                ));
            }
            // The same listing as at the start: nothing deleted.
            feed.forget_deleted(&listed);
            assert!(matches!(feed.history_after(5, 8, 10), Slice::Events(e) if e.len() == 3));
            // Sequences 1 to 8 with 7 events: one deleted from within.
            (listed.state.messages, listed.state.last_sequence) = (7, 8);
            feed.forget_deleted(&listed);
            let kept = matches!(feed.history_after(5, 8, 10), Slice::Events(e) if e.len() == 3);
            assert_eq!(
                kept, per_subject_limit,
                "history kept with a per-subject limit only"
            );
        }
    }

    #[test]
    fn the_head_is_readable_without_the_lock_and_follows_published_events() {
        let (feed, _) = Feed::new(TopicName::parse("t").unwrap(), None, &info(), &settings());
        assert_eq!(feed.head(), 0);
        let ctx = feed.encode_context.clone();
        feed.publish(Event::encode(
            &ctx,
            1,
            "t",
            SystemTime::UNIX_EPOCH,
            None,
            b"x",
        ));
        feed.skip(3);
        assert_eq!(feed.head(), 3);
        assert_eq!(feed.lock().head, 3);
    }

    /// A feed's channels start small and grow before any receiver could
    /// lag: a reader of the old channel gets every event sent on it, then
    /// finds it closed while the feed runs, and an attachment then picks up
    /// exactly after its last event (the rest from history). The channel
    /// grows once, to the configured lag allowance, and no further.
    #[test]
    fn a_channel_half_full_moves_to_a_larger_one_without_a_gap() {
        let settings = FeedSettings {
            client_queue_events: 1024,
            path_queue_events: 256,
            max_events: 2000,
            ..settings()
        };
        let (feed, _) = Feed::new(TopicName::parse("t").unwrap(), None, &info(), &settings);
        let ctx = feed.encode_context.clone();
        let publish = |seqs: std::ops::RangeInclusive<u64>| {
            for seq in seqs {
                feed.publish(Event::encode(
                    &ctx,
                    seq,
                    "t.a",
                    SystemTime::UNIX_EPOCH,
                    None,
                    b"x",
                ));
            }
        };
        // Reads `receiver` to its end; returns the last sequence read.
        let read_to_close = |receiver: &mut broadcast::Receiver<Arc<Event>>, from: u64| {
            let mut last = from;
            loop {
                match receiver.try_recv() {
                    Ok(event) => {
                        assert_eq!(event.seq, last + 1, "no gap, no repeat");
                        last = event.seq;
                    }
                    Err(TryRecvError::Closed) => return last,
                    Err(other) => panic!("the channel must close, not {other:?}"),
                }
            }
        };
        let mut whole = feed.attach(None).receiver;
        let mut path = feed.attach(Some("t.a")).receiver;
        assert_eq!(feed.lock().sender.capacity, FIRST_QUEUE_EVENTS);
        assert_eq!(feed.lock().paths["t.a"].capacity, FIRST_PATH_QUEUE_EVENTS);
        publish(1..=200);
        for (receiver, path, first) in [
            (&mut whole, None, FIRST_QUEUE_EVENTS),
            (&mut path, Some("t.a"), FIRST_PATH_QUEUE_EVENTS),
        ] {
            let last = read_to_close(receiver, 0);
            assert!(!feed.is_closed(), "the feed runs on");
            assert!(last as usize <= first / 2 + 1, "moved at half full: {last}");
            let attachment = feed.attach(path);
            assert_eq!(attachment.head, 200);
            let Slice::Events(rest) = feed.history_after(last, attachment.head, 2000) else {
                panic!("the rest is in history");
            };
            assert_eq!(rest.first().map(|e| e.seq), Some(last + 1));
            assert_eq!(rest.last().map(|e| e.seq), Some(200));
            *receiver = attachment.receiver;
        }
        assert_eq!(feed.lock().sender.capacity, 1024);
        assert_eq!(feed.lock().paths["t.a"].capacity, 256);
        // At the allowance it stays: 1,000 behind is within it.
        publish(201..=1200);
        assert_eq!(feed.lock().sender.capacity, 1024, "no further");
        for seq in 201..=1200 {
            assert_eq!(whole.try_recv().expect("within the allowance").seq, seq);
        }
    }
}
