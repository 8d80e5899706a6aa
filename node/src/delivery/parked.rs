//! Parked streams: caught-up clients whose sockets their feed writes to.
//!
//! Woken once per event, for every client of a topic, a client's own task
//! costs a delivery more than its write: the wake-up, the queue, the poll,
//! and on a multi-threaded runtime the hand-over between threads. So a
//! lean-path stream that is in step with its feed and has nothing of its
//! own to write *parks*: it leaves a shared handle of its socket with its
//! feed and sleeps until one of its own timers or its client needs it. One
//! writer task per feed takes each batch of events once from the feed's
//! broadcast and writes the pre-encoded frames to every parked socket with
//! non-blocking writes, as the benchmark's bare loop does.
//!
//! The writer never waits on a socket. A socket that does not take the whole
//! batch (full, or failed) is given back to its stream, with the position of
//! the last event it took in part and the bytes that did not fit. The stream
//! writes those first, attaches to the feed again and catches up from the
//! feed's history as a resuming client does, then parks again. A writer that
//! falls behind its broadcast queue, or sees the node drain, gives every
//! socket back the same way. A position moves only past bytes the socket
//! took, so nothing is skipped or written twice.
//!
//! A TLS stream parks too: its socket carries the stream's record sealer,
//! and the writer seals each batch for each such socket as the stream would
//! (the same key, the next record sequence). A record the socket does not
//! take at all is dropped and its sequence reused; the rest of one it takes
//! in part waits in the sealer, and the stream writes it before anything
//! else.
//!
//! A stream of several topics parks on one of them, whose events carry its
//! cursor over all its topics: its socket joins the group that takes the
//! same events, and carries the `id:` line around the parked topic's
//! sequence. The writer frames the batch once for each run of such sockets
//! with the same line, so streams of the same topics share their frames,
//! and a thousand users' streams, each at its own place in its own path,
//! cost a frame each but no group, no pacing and no pass of their own. An
//! event of another topic is written through the parked socket by the
//! stream, or takes the socket back (see [`super::park`]).
//!
//! A stream of one topic read with wildcards or several patterns parks too:
//! its socket joins the group of sockets with the same patterns, where each
//! stream's own task would be woken for every event of the topic to match
//! it. The writer finds the groups an event may concern by the literal
//! part of their patterns (`users.42` of `users.42.*`), so a thousand
//! users' wildcards cost each event a few look-ups, not a thousand
//! matches. A socket given back stands past the events its patterns did
//! not match, where its stream would.
//!
//! The writer keeps the pacing rule for its sockets: while events come more
//! than twice per `delivery.write_pacing_ms`, it writes once per window.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use slab::Slab;
use tokio::{
    sync::broadcast::{self, error::RecvError, error::TryRecvError},
    time::Instant,
};

use sse_protocol::topic::SubjectPath;

use super::{BATCH_BYTES, pacing::Pacer};
use crate::{connection::SharedSocket, event::Event, node::Node, tls_records::Sent};

/// The sockets parked on one feed.
#[derive(Default)]
pub(crate) struct ParkedSockets {
    inner: Mutex<Parked>,
    /// The last event the feed sent on the channel its writer reads.
    sent: AtomicU64,
    /// The last event the writer took in; when it started, `sent`.
    taken: AtomicU64,
}

#[derive(Default)]
struct Parked {
    /// Sockets that take every event of the feed.
    all: Group,
    /// Sockets that take one path's events, by path.
    by_path: HashMap<Box<str>, Group>,
    /// Sockets that take the events matching some patterns, by patterns.
    by_patterns: HashMap<Box<str>, Group>,
    /// The keys of `by_patterns` by the literal part of each of their
    /// patterns: the groups an event of a path may concern are found under
    /// the path's leading tokens.
    patterns_by_prefix: HashMap<Box<str>, Vec<Box<str>>>,
    /// Pattern groups that hold events not yet written.
    waiting_patterns: Vec<Box<str>>,
    /// The last event the writer handed on: every socket of a pattern group
    /// with nothing held is past it.
    seen: u64,
    /// Paths whose group holds events not yet written.
    waiting: Vec<Box<str>>,
    /// The pacing window and the feed's queue, once the writer runs.
    pacing: (Duration, usize),
    /// Whether the feed's writer runs.
    writer: bool,
    /// Counts the writers started: a writer whose number is not the last
    /// was replaced, and stops at its next batch without touching a socket.
    generation: u64,
    /// Receivers of the channels the feed moved to (it grew), oldest first:
    /// the writer takes the next when the channel it reads closes.
    handed_over: std::collections::VecDeque<broadcast::Receiver<Arc<Event>>>,
    /// The cursor a stream of several topics last parked with: the next
    /// with the same one shares it, and the writer frames their events once.
    last_cursor: Option<Arc<CursorAround>>,
}

impl Parked {
    fn group(&mut self, place: &Place) -> Option<&mut Group> {
        match place {
            Place::All => Some(&mut self.all),
            Place::Path(path) => self.by_path.get_mut(path),
            Place::Patterns(key) => self.by_patterns.get_mut(key),
        }
    }

    /// Gives every socket back where it stands; events held for them are
    /// dropped, as the streams catch up from the feed's history.
    fn give_all_back(&mut self) {
        let mut groups: Vec<Group> = self.by_path.drain().map(|(_, g)| g).collect();
        groups.extend(self.by_patterns.drain().map(|(_, g)| g));
        self.patterns_by_prefix.clear();
        self.waiting_patterns.clear();
        groups.push(std::mem::take(&mut self.all));
        self.all = Group::new(self.pacing);
        self.waiting.clear();
        for group in groups {
            let passed = group.passed(self.seen);
            for (_, entry) in group.entries {
                let pos = entry.pos.max(passed);
                give_back(entry, pos, None, false);
            }
        }
    }

    /// Forgets the group at `place` if no socket is left in it.
    fn drop_if_empty(&mut self, place: &Place) {
        match place {
            Place::All => {}
            Place::Path(path) => {
                if self.by_path.get(path).is_some_and(|g| g.entries.is_empty()) {
                    self.by_path.remove(path);
                }
            }
            Place::Patterns(key) => {
                if self
                    .by_patterns
                    .get(key)
                    .is_some_and(|g| g.entries.is_empty())
                {
                    self.forget_patterns(key);
                }
            }
        }
    }

    /// The group of `patterns` at `key`, made and indexed if new.
    fn patterns_group(&mut self, key: &str, patterns: &[SubjectPath]) -> &mut Group {
        if !self.by_patterns.contains_key(key) {
            for pattern in patterns {
                let keys = self
                    .patterns_by_prefix
                    .entry(literal_prefix(pattern.as_str()).into())
                    .or_default();
                if !keys.iter().any(|k| **k == *key) {
                    keys.push(key.into());
                }
            }
            let group = Group {
                patterns: Some(patterns.into()),
                // Most patterns are one user's, with one socket: room for
                // one, not the four a first insert makes. (Tried for a
                // path's group too, it measured no better there.)
                entries: Slab::with_capacity(1),
                ..Group::new(self.pacing)
            };
            self.by_patterns.insert(key.into(), group);
        }
        self.by_patterns.get_mut(key).expect("made above")
    }

    /// Drops the pattern group at `key` and its place in the index.
    fn forget_patterns(&mut self, key: &str) {
        let Some(group) = self.by_patterns.remove(key) else {
            return;
        };
        for pattern in group.patterns.iter().flatten() {
            let prefix = literal_prefix(pattern.as_str());
            if let Some(keys) = self.patterns_by_prefix.get_mut(prefix) {
                keys.retain(|k| **k != *key);
                if keys.is_empty() {
                    self.patterns_by_prefix.remove(prefix);
                }
            }
        }
    }

    /// Holds `event` for each pattern group it matches.
    fn hold_for_patterns(&mut self, event: &Arc<Event>) {
        let path = &*event.path;
        let ends = path
            .match_indices('.')
            .map(|(at, _)| at)
            .chain([path.len()]);
        for end in ends {
            let Some(keys) = self.patterns_by_prefix.get(&path[..end]) else {
                continue;
            };
            for key in keys {
                let Some(group) = self.by_patterns.get_mut(key) else {
                    continue;
                };
                // Held already, through another of the group's patterns.
                if group.pending.last().is_some_and(|e| e.seq == event.seq) {
                    continue;
                }
                if group.patterns.iter().flatten().any(|p| p.matches(path)) {
                    if group.pending.is_empty() {
                        self.waiting_patterns.push(key.clone());
                    }
                    group.hold(event);
                }
            }
        }
    }
}

/// The part of a pattern before its first wildcard token: every path it
/// matches starts with it, up to a dot or the end.
fn literal_prefix(pattern: &str) -> &str {
    let mut end = 0;
    for token in pattern.split('.') {
        if token == "*" || token == ">" {
            break;
        }
        end += if end == 0 {
            token.len()
        } else {
            token.len() + 1
        };
    }
    &pattern[..end]
}

/// The `id:` line that a stream of several topics writes after each event:
/// its cursor over all its topics, around the sequence of the topic it
/// parked on, which the writer fills in for each event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CursorAround {
    /// From `id: ` up to the parked topic's sequence.
    pub(crate) before: Box<str>,
    /// From just after that sequence to the end of the frame.
    pub(crate) after: Box<str>,
}

/// What a parked socket takes of its feed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reads<'a> {
    /// Every event.
    All,
    /// The events of one path.
    Path(&'a str),
    /// The events that match any of these patterns (wildcards, or several).
    Patterns(&'a [SubjectPath]),
}

/// Where a parked socket sits.
enum Place {
    All,
    Path(Box<str>),
    /// Keyed by the patterns, one space between two (no pattern holds one).
    Patterns(Box<str>),
}

impl Place {
    fn of(reads: Reads<'_>) -> Self {
        match reads {
            Reads::All => Self::All,
            Reads::Path(path) => Self::Path(path.into()),
            Reads::Patterns(patterns) => Self::Patterns(
                patterns
                    .iter()
                    .map(SubjectPath::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
                    .into(),
            ),
        }
    }
}

/// The passes of a group's writer that wrote to any of its sockets: how
/// many, and when the latest started (each socket of it was written to
/// then or a little later).
struct GroupWrites {
    passes: AtomicU64,
    /// Milliseconds from `since` to the latest pass, rounded down.
    latest_ms: AtomicU64,
    since: Instant,
}

impl GroupWrites {
    fn new() -> Self {
        Self {
            passes: AtomicU64::new(0),
            latest_ms: AtomicU64::new(0),
            since: Instant::now(),
        }
    }

    fn record(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.since).as_millis();
        self.latest_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
        // Released after the time: whoever sees the pass sees its time.
        self.passes.fetch_add(1, Ordering::Release);
    }

    fn latest(&self) -> Instant {
        self.since + Duration::from_millis(self.latest_ms.load(Ordering::Relaxed))
    }
}

/// Sockets that take the same events, and the events held for them.
///
/// Each group keeps the pacing rule on its own, as a client's task does:
/// one write per window while its events come more than twice per window,
/// at once otherwise. So the quiet path of a busy topic is not held
/// because the topic is busy.
struct Group {
    entries: Slab<Entry>,
    /// Its passes, which its streams read to tell whether a heartbeat is
    /// due, without the lock.
    writes: Arc<GroupWrites>,
    /// Events taken from the feed and not written yet, while paced.
    pending: Vec<Arc<Event>>,
    pending_bytes: usize,
    pacer: Pacer,
    /// The patterns an event must match to be held, for a group of sockets
    /// that take some of the feed's events; `None` for a group of the whole
    /// feed or of one path.
    patterns: Option<Box<[SubjectPath]>>,
}

impl Group {
    fn new((window, queue_events): (Duration, usize)) -> Self {
        Self {
            entries: Slab::new(),
            writes: Arc::new(GroupWrites::new()),
            pending: Vec::new(),
            pending_bytes: 0,
            pacer: Pacer::new(window, queue_events),
            patterns: None,
        }
    }

    /// The last event every socket of a pattern group is past, written to
    /// it or not for it, given `seen`, the last the writer handed on: the
    /// one before the first the group holds, if any. A socket parked later
    /// stands further on already. Zero for the other groups, whose sockets'
    /// own positions say where they stand.
    fn passed(&self, seen: u64) -> u64 {
        if self.patterns.is_none() {
            return 0;
        }
        self.pending.first().map_or(seen, |first| first.seq - 1)
    }

    /// Where `entry`'s socket stands, given `seen` (see [`Self::passed`]).
    fn position(&self, entry: &Entry, seen: u64) -> u64 {
        entry.pos.max(self.passed(seen))
    }

    fn hold(&mut self, event: &Arc<Event>) {
        self.pending_bytes += event.frame.len();
        self.pending.push(event.clone());
    }

    /// Writes what the group holds, unless it is paced (and not `forced`);
    /// returns until when it stays held, if it does.
    fn write_due(&mut self, now: Instant, forced: bool, sweep: &mut Sweep) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        if self.entries.is_empty() {
            self.pending.clear();
            self.pending_bytes = 0;
            return None;
        }
        // A full batch goes out whatever the window: holding more would only
        // make a write that sockets take in part.
        if !forced
            && self.pending_bytes < BATCH_BYTES
            && let Some(until) = self.pacer.hold_until(now)
        {
            return Some(until);
        }
        let frames = Frames::of(&self.pending);
        // What is held is all this batch: the group has nothing else.
        let passed = self.passed(0);
        let wrote = write_frames(&mut self.entries, &frames, passed);
        if wrote.delivered > 0 {
            self.writes.record(now);
        }
        sweep.delivered += wrote.delivered;
        sweep.refusals += wrote.refusals;
        // Only events some socket took: sockets that park at a feed's start
        // have read what the group still holds, and that group's first
        // write reached none of them with it. Counted, such events made a
        // fresh node's lag quantiles read seconds while clients got events
        // in milliseconds.
        sweep.written.extend(
            self.pending[wrote.first_taken..]
                .iter()
                .map(|event| event.published),
        );
        // The window starts when the sweep is done, not when it began: a
        // sweep of many sockets takes a while, and each of them is to get
        // one write per window. It also leaves the writer a window's rest
        // between sweeps, however long a sweep takes.
        let done = Instant::now();
        self.pacer.record_batch(done, self.pending.len() as u64);
        self.pacer
            .record_write(done, self.pending_bytes >= super::PACED_WRITE_MAX);
        self.pending.clear();
        self.pending_bytes = 0;
        None
    }
}

impl Default for Group {
    fn default() -> Self {
        Self::new((Duration::ZERO, 1))
    }
}

/// What one pass of the writer did.
#[derive(Default)]
pub(super) struct Sweep {
    delivered: u64,
    refusals: u64,
    /// The publication time of each event written, once per group.
    written: Vec<SystemTime>,
    /// When the next held group is due.
    pub(super) next_due: Option<Instant>,
}

impl Sweep {
    /// Counts what the pass wrote in the node's metrics.
    pub(super) fn count(&self, node: &Node) {
        let metrics = node.metrics();
        if self.refusals > 0 {
            metrics.parked_refusals.inc_by(self.refusals);
        }
        if self.delivered > 0 {
            metrics.events_delivered.inc_by(self.delivered);
            // Every event written, not one per pass: a pass after a stall
            // carries many events, and the lag's quantiles are to weigh
            // them as clients do. A few observations beside a write to
            // every parked socket cost nothing worth sampling away.
            // By NATS's clock, which stamped the events, when the node's is
            // off; a stamp ahead of it is a lag of zero, not none.
            let now = crate::clock::nats_now();
            for published in &self.written {
                let lag = now.duration_since(*published).unwrap_or_default();
                metrics.delivery_lag.observe(lag.as_secs_f64());
            }
        }
    }
}

struct Entry {
    socket: Arc<SharedSocket>,
    /// The last event the socket took.
    pos: u64,
    handback: Arc<Handback>,
    /// For a stream of several topics, the `id:` line each of its events
    /// ends in; behind a pointer, as most sockets have none.
    cursor: Option<Arc<CursorAround>>,
    /// The events written to the socket since it parked or since its
    /// stream last wrote through it: the parked topic's run.
    run: u32,
}

impl Entry {
    fn note_run(&mut self, events: usize) {
        self.run = self
            .run
            .saturating_add(u32::try_from(events).unwrap_or(u32::MAX));
    }
}

#[derive(Default)]
struct Handback {
    returned: Mutex<Option<Returned>>,
    /// Wakes the parked stream once `returned` is set. Not a `Notify`: a
    /// parked stream waits on this for as long as it stays parked, and a
    /// `Notify`'s wait would be 64 bytes more of every waiting stream's
    /// state, HTTP/2 streams' included, which share the code but never park.
    given_back: AtomicWaker,
}

/// What a parked stream's heartbeat did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Beat {
    /// The heartbeat went out whole; the stream stays parked.
    Sent,
    /// The socket did not take it whole: the stream takes the socket back.
    Refused,
}

/// What a write through a parked socket did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Through {
    /// Nothing: the parked topic's run was short, or the socket took no
    /// byte. The socket stays parked as it was.
    Not,
    /// The socket took the frame whole and stays parked, at `pos` of the
    /// parked topic, after `run` events of it since it parked or since the
    /// last write through it.
    Whole { pos: u64, run: u32 },
    /// The socket took part of the frame and is given back with the rest.
    Partly,
}

/// A socket given back to its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Returned {
    /// The last event the socket took, whole or, with `remainder`, in part.
    pub(crate) pos: u64,
    /// The bytes of a partial write that the socket did not take: written
    /// before anything else.
    pub(crate) remainder: Option<Bytes>,
    /// Whether the socket itself refused bytes (full or failed), rather than
    /// the writer giving every socket back.
    pub(crate) refused: bool,
    /// The events the writer wrote to the socket since it parked or since
    /// the stream last wrote through it.
    pub(crate) run: u32,
}

/// A stream's claim on its parked socket.
pub(crate) struct Ticket {
    sockets: Arc<ParkedSockets>,
    place: Place,
    key: usize,
    handback: Arc<Handback>,
    held: bool,
    /// The group's passes, and how many it had made when the stream
    /// parked.
    writes: Arc<GroupWrites>,
    passes_at_park: u64,
    /// What the feed had sent its writer at the last look for a stuck
    /// writer.
    sent_at_last_look: AtomicU64,
}

impl Ticket {
    /// Resolves once the writer has given the socket back (at once if it
    /// has and the stream has not yet taken it).
    pub(crate) fn given_back(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            // Registered before looking, so that a hand-back between the
            // two still wakes this task.
            self.handback.given_back.register(cx.waker());
            if self
                .handback
                .returned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
            {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    /// When the feed's writer last wrote to the socket, if it has since
    /// the stream parked, as far as the stream can tell without the lock:
    /// the start of the group's latest pass, from its second pass on. The
    /// writer skips a socket only for events it already has, which happens
    /// at most in the first pass after it parked, so that pass does not
    /// count: a heartbeat may then come early, never late.
    pub(crate) fn writer_wrote_at(&self) -> Option<Instant> {
        let passes = self.writes.passes.load(Ordering::Acquire);
        (passes > self.passes_at_park + 1).then(|| self.writes.latest())
    }

    /// Writes `beat` (a heartbeat's comment line) to the parked socket
    /// between two of the writer's batches, so that the stream stays
    /// parked. If the socket does not take it whole, the stream takes the
    /// socket back: a part of `beat` the socket did not take comes back
    /// with it, and a socket that took none is written to as any other.
    pub(crate) fn heartbeat(&self, beat: &'static [u8]) -> Beat {
        self.sockets
            .heartbeat(&self.place, self.key, &self.handback, beat)
    }

    /// Whether the feed's writer has not taken in an event the feed had
    /// sent it at the last call: a writer that stopped or hangs. A stream
    /// parked on a topic's writer asks once per heartbeat interval, far
    /// longer than a working writer takes to read its channel, which
    /// holds a bounded number of events.
    pub(crate) fn writer_stuck(&self) -> bool {
        let sent = self.sockets.sent.load(Ordering::Relaxed);
        let before = self.sent_at_last_look.swap(sent, Ordering::Relaxed);
        self.sockets.taken.load(Ordering::Relaxed) < before
    }

    /// Gives every socket of the feed back and forgets its writer, which
    /// stops at its next batch if it ever gets there: the next stream to
    /// park starts a new one.
    pub(crate) fn replace_writer(&self) {
        self.sockets.stop_writing(None);
    }

    /// Writes an event of another of the stream's topics through the
    /// parked socket, between two of the writer's batches, if the writer
    /// has written the socket a run of at least `min_run` events since it
    /// parked or since the last such write: `body` (the event's frame up to
    /// its `id:` line), then
    /// `cursor` around the parked topic's position. From then on the writer
    /// ends the socket's events in `cursor`. A socket that takes part of
    /// the frame is given back with the rest, for the stream to write.
    pub(crate) fn write_through(&self, body: &[u8], cursor: CursorAround, min_run: u32) -> Through {
        self.sockets
            .write_through(&self.place, self.key, &self.handback, body, cursor, min_run)
    }

    /// Takes the socket back, with the position the writer left it at.
    /// `None` only if the writer lost track of it, which it never does.
    pub(crate) fn take_back(mut self) -> Option<Returned> {
        self.held = false;
        self.sockets
            .take_back(&self.place, self.key, &self.handback)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.held {
            self.sockets
                .take_back(&self.place, self.key, &self.handback);
        }
    }
}

impl ParkedSockets {
    fn lock(&self) -> MutexGuard<'_, Parked> {
        // Entries are only added and removed whole under the lock: a panic
        // cannot leave one half-written.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the writer, if it runs, `events`: a receiver of the channel
    /// the feed moved to, subscribed before the feed's first event on it.
    /// The caller holds the feed's lock, as the writer's start does.
    pub(crate) fn hand_over(&self, events: broadcast::Receiver<Arc<Event>>) {
        let mut parked = self.lock();
        if parked.writer {
            parked.handed_over.push_back(events);
        }
    }

    /// Notes that the feed sent the event `seq` on its channel of every
    /// event, the one its writer reads.
    pub(crate) fn note_sent(&self, seq: u64) {
        self.sent.store(seq, Ordering::Relaxed);
    }

    /// The lock, if writer `generation` is still the feed's writer.
    fn lock_as(&self, generation: u64) -> Option<MutexGuard<'_, Parked>> {
        let parked = self.lock();
        (parked.writer && parked.generation == generation).then_some(parked)
    }

    /// The receiver for writer `generation` to read once the current one is
    /// closed, if the feed moved to a larger channel rather than closing.
    fn next_events(&self, generation: u64) -> Option<broadcast::Receiver<Arc<Event>>> {
        self.lock_as(generation)?.handed_over.pop_front()
    }

    /// Parks `socket` at `pos`, for the events of the feed it `reads`, each
    /// followed by `cursor` if the stream reads several topics. `start_writer` is called, under the lock, if the
    /// feed has no writer yet. The caller holds the feed's lock, so no event
    /// is published between its check of the client's queue and this.
    pub(crate) fn park(
        self: &Arc<Self>,
        socket: &Arc<SharedSocket>,
        reads: Reads<'_>,
        cursor: Option<CursorAround>,
        pos: u64,
        pacing: (Duration, usize),
        start_writer: impl FnOnce(u64),
    ) -> Ticket {
        let mut parked = self.lock();
        if !parked.writer {
            parked.writer = true;
            parked.generation += 1;
            parked.pacing = pacing;
            parked.all = Group::new(pacing);
            // The caller holds the feed's lock: nothing is sent meanwhile,
            // and the writer's channel holds only what is sent after this.
            self.taken
                .store(self.sent.load(Ordering::Relaxed), Ordering::Relaxed);
            start_writer(parked.generation);
        }
        let handback = Arc::new(Handback::default());
        let entry = Entry {
            socket: socket.clone(),
            pos,
            handback: handback.clone(),
            cursor: cursor.map(|cursor| match &parked.last_cursor {
                Some(last) if **last == cursor => last.clone(),
                _ => parked.last_cursor.insert(Arc::new(cursor)).clone(),
            }),
            run: 0,
        };
        let pacing = parked.pacing;
        let place = Place::of(reads);
        let group = match (&place, reads) {
            (Place::Path(path), _) => parked
                .by_path
                .entry(path.clone())
                .or_insert_with(|| Group::new(pacing)),
            (Place::Patterns(key), Reads::Patterns(patterns)) => {
                parked.patterns_group(key, patterns)
            }
            _ => &mut parked.all,
        };
        let key = group.entries.insert(entry);
        let writes = group.writes.clone();
        let passes_at_park = writes.passes.load(Ordering::Acquire);
        Ticket {
            sockets: self.clone(),
            place,
            key,
            handback,
            held: true,
            writes,
            passes_at_park,
            sent_at_last_look: AtomicU64::new(0),
        }
    }

    fn take_back(&self, place: &Place, key: usize, handback: &Arc<Handback>) -> Option<Returned> {
        let mut parked = self.lock();
        let seen = parked.seen;
        if let Some(group) = parked.group(place)
            && group
                .entries
                .get(key)
                .is_some_and(|e| Arc::ptr_eq(&e.handback, handback))
        {
            let entry = group.entries.remove(key);
            let pos = group.position(&entry, seen);
            parked.drop_if_empty(place);
            return Some(Returned {
                pos,
                remainder: None,
                refused: false,
                run: entry.run,
            });
        }
        // The writer gave it back already, and left word under this lock.
        drop(parked);
        handback
            .returned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Runs `act` on the socket's entry while the writer is between
    /// batches, if the socket is still parked: every parked socket then
    /// stands at the end of a whole frame. If `act` wrote part of its bytes
    /// and returns the rest, the socket is given back with them (`Err`).
    fn between_batches<T>(
        &self,
        place: &Place,
        key: usize,
        handback: &Arc<Handback>,
        act: impl FnOnce(&mut Entry) -> Result<T, Bytes>,
    ) -> Option<Result<T, ()>> {
        let mut parked = self.lock();
        let seen = parked.seen;
        let group = parked.group(place)?;
        let entry = group
            .entries
            .get_mut(key)
            .filter(|e| Arc::ptr_eq(&e.handback, handback))?;
        let rest = match act(entry) {
            Ok(done) => return Some(Ok(done)),
            Err(rest) => rest,
        };
        let entry = group.entries.remove(key);
        let pos = group.position(&entry, seen);
        parked.drop_if_empty(place);
        give_back(entry, pos, Some(rest), true);
        Some(Err(()))
    }

    fn heartbeat(
        &self,
        place: &Place,
        key: usize,
        handback: &Arc<Handback>,
        beat: &'static [u8],
    ) -> Beat {
        let sent = self.between_batches(place, key, handback, |entry| {
            match entry.socket.try_send(&Bytes::from_static(beat), 0) {
                Sent::Whole => Ok(Beat::Sent),
                Sent::Refused => Ok(Beat::Refused),
                Sent::Partly(rest) => Err(rest),
            }
        });
        match sent {
            Some(Ok(beat)) => beat,
            Some(Err(())) | None => Beat::Refused,
        }
    }

    fn write_through(
        &self,
        place: &Place,
        key: usize,
        handback: &Arc<Handback>,
        body: &[u8],
        cursor: CursorAround,
        min_run: u32,
    ) -> Through {
        let written = self.between_batches(place, key, handback, |entry| {
            let (pos, run) = (entry.pos, entry.run);
            if run < min_run {
                return Ok(Through::Not);
            }
            let around = cursor.before.len() + cursor.after.len() + 20;
            let mut frame = Vec::with_capacity(body.len() + around);
            frame.extend_from_slice(body);
            frame.extend_from_slice(cursor.before.as_bytes());
            frame.extend_from_slice(itoa::Buffer::new().format(pos).as_bytes());
            frame.extend_from_slice(cursor.after.as_bytes());
            match entry.socket.try_send_slice(&frame) {
                Sent::Whole => {
                    entry.cursor = Some(Arc::new(cursor));
                    entry.run = 0;
                    Ok(Through::Whole { pos, run })
                }
                Sent::Refused => Ok(Through::Not),
                Sent::Partly(rest) => Err(rest),
            }
        });
        match written {
            Some(Ok(through)) => through,
            Some(Err(())) => Through::Partly,
            None => Through::Not,
        }
    }

    /// Gives every socket back where it stands; events held for them are
    /// dropped, as the streams catch up from the feed's history.
    pub(super) fn give_all_back(&self) {
        self.lock().give_all_back();
    }

    /// Gives every socket back, as writer `generation` (if it is still the
    /// feed's writer).
    fn give_all_back_as(&self, generation: u64) {
        if let Some(mut parked) = self.lock_as(generation) {
            parked.give_all_back();
        }
    }

    /// Gives every socket back and forgets the writer (`generation`, or
    /// whichever runs), under one lock: a socket parked after this starts a
    /// new writer, and none is left with a writer that has stopped.
    fn stop_writing(&self, generation: Option<u64>) {
        let mut parked = match generation {
            Some(generation) => match self.lock_as(generation) {
                Some(parked) => parked,
                None => return,
            },
            None => self.lock(),
        };
        parked.give_all_back();
        parked.writer = false;
        parked.handed_over.clear();
    }

    /// As [`take_in`](Self::take_in), by writer `generation`; `None`, and
    /// nothing written, if it is no longer the feed's writer.
    fn take_in_as(&self, generation: u64, incoming: &[Arc<Event>], forced: bool) -> Option<Sweep> {
        let mut parked = self.lock_as(generation)?;
        let sweep = Self::take_in_locked(&mut parked, incoming, forced);
        if let Some(last) = incoming.last() {
            self.taken.store(last.seq, Ordering::Relaxed);
        }
        Some(sweep)
    }

    /// Hands `incoming` to the groups it concerns, then writes every group
    /// that is due (all of them if `forced`).
    pub(super) fn take_in(&self, incoming: &[Arc<Event>], forced: bool) -> Sweep {
        Self::take_in_locked(&mut self.lock(), incoming, forced)
    }

    fn take_in_locked(parked: &mut Parked, incoming: &[Arc<Event>], forced: bool) -> Sweep {
        if !parked.all.entries.is_empty() {
            for event in incoming {
                parked.all.hold(event);
            }
        }
        if !parked.by_patterns.is_empty() {
            for event in incoming {
                parked.hold_for_patterns(event);
            }
        }
        if let Some(last) = incoming.last() {
            parked.seen = last.seq;
        }
        if !parked.by_path.is_empty() {
            for event in incoming {
                if let Some(group) = parked.by_path.get_mut(&*event.path) {
                    if group.pending.is_empty() {
                        parked.waiting.push(event.path.clone());
                    }
                    group.hold(event);
                }
            }
        }
        let now = Instant::now();
        let mut sweep = Sweep::default();
        let mut due = parked.all.write_due(now, forced, &mut sweep);
        let by_patterns = &mut parked.by_patterns;
        let mut emptied = Vec::new();
        parked.waiting_patterns.retain(|key| {
            let Some(group) = by_patterns.get_mut(key) else {
                return false;
            };
            let held = group.write_due(now, forced, &mut sweep);
            if group.entries.is_empty() {
                emptied.push(key.clone());
                return false;
            }
            if let Some(until) = held {
                due = Some(due.map_or(until, |d| d.min(until)));
            }
            held.is_some()
        });
        for key in emptied {
            parked.forget_patterns(&key);
        }
        let by_path = &mut parked.by_path;
        parked.waiting.retain(|path| {
            let Some(group) = by_path.get_mut(path) else {
                return false;
            };
            let held = group.write_due(now, forced, &mut sweep);
            if group.entries.is_empty() {
                by_path.remove(path);
                return false;
            }
            if let Some(until) = held {
                due = Some(due.map_or(until, |d| d.min(until)));
            }
            held.is_some()
        });
        sweep.next_due = due;
        sweep
    }
}

/// Leaves `entry`'s stream word of where its socket stands and wakes it.
fn give_back(entry: Entry, pos: u64, remainder: Option<Bytes>, refused: bool) {
    *entry
        .handback
        .returned
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(Returned {
        pos,
        remainder,
        refused,
        run: entry.run,
    });
    entry.handback.given_back.wake();
}

/// A batch's frames, back to back, and where each event ends in them.
struct Frames<'a> {
    bytes: Bytes,
    /// Each event's sequence and the offset just past its frame.
    ends: Vec<(u64, usize)>,
    /// The events themselves, for sockets whose `id:` lines differ.
    events: &'a [Arc<Event>],
}

impl<'a> Frames<'a> {
    /// The frames of `events`, each with its own `id:` line.
    fn of(events: &'a [Arc<Event>]) -> Self {
        let mut ends = Vec::with_capacity(events.len());
        let bytes = match events {
            // One frame is written as it is, without a copy.
            [one] => {
                ends.push((one.seq, one.frame.len()));
                one.frame.clone()
            }
            many => {
                let mut joined = BytesMut::with_capacity(many.iter().map(|e| e.frame.len()).sum());
                for event in many {
                    joined.put_slice(&event.frame);
                    ends.push((event.seq, joined.len()));
                }
                joined.freeze()
            }
        };
        Self {
            bytes,
            ends,
            events,
        }
    }

    /// The bytes a socket at `pos` still needs, from which event on.
    fn after(&self, pos: u64) -> Option<(usize, usize)> {
        let first = self.ends.partition_point(|(seq, _)| *seq <= pos);
        if first == self.ends.len() {
            return None;
        }
        let start = first.checked_sub(1).map_or(0, |i| self.ends[i].1);
        Some((first, start))
    }

    /// Writes into `out` the frames of the events from the `first` on,
    /// each ending in `cursor` around its sequence rather than in its own
    /// `id:` line.
    fn with_cursor(&self, first: usize, cursor: &CursorAround, out: &mut Vec<u8>) {
        out.clear();
        for event in &self.events[first..] {
            out.extend_from_slice(&event.frame[..event.body_len]);
            out.extend_from_slice(cursor.before.as_bytes());
            out.extend_from_slice(sequence_in_frame(event));
            out.extend_from_slice(cursor.after.as_bytes());
        }
    }
}

/// The digits of `event`'s sequence, at the end of its own frame's `id:`
/// line (`…:<seq>\n\n`).
fn sequence_in_frame(event: &Event) -> &[u8] {
    let digits = event.seq.checked_ilog10().map_or(1, |d| d as usize + 1);
    let end = event.frame.len() - 2;
    &event.frame[end - digits..end]
}

/// Sockets whose state is read ahead of their sends, together.
const WARM_RUN: usize = 16;

/// Writes `frames` to each socket of `slab`; gives back those that do not
/// take all they need, a socket that took none of them standing at least at
/// `passed` (see [`Group::passed`]).
fn write_frames(slab: &mut Slab<Entry>, frames: &Frames<'_>, passed: u64) -> Wrote {
    let Some(&(last, _)) = frames.ends.last() else {
        return Wrote::default();
    };
    let mut delivered = 0u64;
    let mut first_taken = frames.ends.len();
    let mut refused: Vec<(usize, u64, Option<Bytes>)> = Vec::new();
    // The frames with a stream's cursor, for as long as the next sockets
    // share it and stand at the same place: streams of the same topics
    // park one after another as a rule, and share their cursor then.
    let mut with_cursor: Option<(Arc<CursorAround>, usize)> = None;
    let mut cursor_frames = Vec::new();
    let mut entries: Vec<(usize, &mut Entry)> = slab.iter_mut().collect();
    for run in entries.chunks_mut(WARM_RUN) {
        // Each socket's state sits in an allocation of its own that the
        // sends in between have pushed out of the cache. Read with no
        // system call between them, a run's sockets miss the cache together
        // rather than one after another, each behind a send.
        std::hint::black_box(run.iter().fold(0, |acc, (_, e)| acc ^ e.socket.warm()));
        for (key, entry) in run.iter_mut() {
            let Some((first, start)) = frames.after(entry.pos) else {
                continue;
            };
            let sent = match &entry.cursor {
                None => entry.socket.try_send(&frames.bytes, start),
                Some(cursor) => {
                    let built = with_cursor
                        .as_ref()
                        .is_some_and(|(built, from)| *from == first && Arc::ptr_eq(built, cursor));
                    if !built {
                        frames.with_cursor(first, cursor, &mut cursor_frames);
                        with_cursor = Some((cursor.clone(), first));
                    }
                    entry.socket.try_send_slice(&cursor_frames)
                }
            };
            match sent {
                Sent::Whole => {
                    entry.pos = last;
                    entry.note_run(frames.ends.len() - first);
                    delivered += (frames.ends.len() - first) as u64;
                    first_taken = first_taken.min(first);
                }
                Sent::Partly(rest) => {
                    // The socket took part of the batch: the stream writes the
                    // rest itself, and owns every event of it from here.
                    entry.note_run(frames.ends.len() - first);
                    delivered += (frames.ends.len() - first) as u64;
                    first_taken = first_taken.min(first);
                    refused.push((*key, last, Some(rest)));
                }
                // Full, or failed: the stream finds out which when it writes.
                Sent::Refused => refused.push((*key, entry.pos.max(passed), None)),
            }
        }
    }
    drop(entries);
    let refusals = refused.len() as u64;
    for (key, pos, remainder) in refused {
        give_back(slab.remove(key), pos, remainder, true);
    }
    Wrote {
        delivered,
        refusals,
        first_taken,
    }
}

/// What [`write_frames`] wrote.
#[derive(Default)]
struct Wrote {
    /// Deliveries: events times the sockets that took them.
    delivered: u64,
    /// Sockets given back to their streams.
    refusals: u64,
    /// The first of the frames that some socket took (the number of frames
    /// when none did).
    first_taken: usize,
}

/// Starts the writer of a feed: it reads `events` (a receiver of the feed's
/// broadcast of every event, subscribed before any socket parked) and writes
/// them to `sockets` until the feed closes.
pub(crate) fn start_writer(
    sockets: Arc<ParkedSockets>,
    events: broadcast::Receiver<Arc<Event>>,
    generation: u64,
    node: Node,
) {
    tokio::spawn(write_parked(sockets, events, generation, node));
}

/// A writer's hold on its sockets: however the writer ends, a panic
/// included, they are given back and the writer is forgotten, so that the
/// next stream to park starts another.
struct WriterEnd {
    sockets: Arc<ParkedSockets>,
    generation: u64,
}

impl Drop for WriterEnd {
    fn drop(&mut self) {
        self.sockets.stop_writing(Some(self.generation));
    }
}

async fn write_parked(
    sockets: Arc<ParkedSockets>,
    mut events: broadcast::Receiver<Arc<Event>>,
    generation: u64,
    node: Node,
) {
    let _end = WriterEnd {
        sockets: sockets.clone(),
        generation,
    };
    let mut incoming: Vec<Arc<Event>> = Vec::new();
    let mut next_due: Option<Instant> = None;
    loop {
        let (mut lagged, mut closed) = (false, false);
        // New events, or the end of a held group's window.
        let received = tokio::select! {
            biased;
            received = events.recv() => Some(received),
            _ = super::sleep_until_opt(next_due), if next_due.is_some() => None,
        };
        match received {
            Some(Ok(event)) => incoming.push(event),
            Some(Err(RecvError::Lagged(_))) => lagged = true,
            Some(Err(RecvError::Closed)) => closed = true,
            None => {}
        }
        let mut bytes = incoming.first().map_or(0, |e| e.frame.len());
        while !incoming.is_empty() && !lagged && !closed && bytes < BATCH_BYTES {
            match events.try_recv() {
                Ok(event) => {
                    bytes += event.frame.len();
                    incoming.push(event);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(_)) => lagged = true,
                Err(TryRecvError::Closed) => closed = true,
            }
        }
        // A drain marker ends the batch: what came before it is written,
        // held or not, then every stream is handed its socket back to drain
        // itself.
        let drain = incoming.iter().position(|e| e.is_drain_marker());
        if let Some(at) = drain {
            incoming.truncate(at);
        }
        let Some(sweep) = sockets.take_in_as(generation, &incoming, drain.is_some()) else {
            // Replaced: the sockets are the new writer's.
            return;
        };
        incoming.clear();
        next_due = sweep.next_due;
        sweep.count(&node);
        if closed && let Some(next) = sockets.next_events(generation) {
            // The feed moved to a larger channel: every event after this
            // one's last goes there, and the writer goes on from it.
            events = next;
            closed = false;
        }
        if closed {
            // The feed is gone: each stream takes it from here (the
            // writer's end gives every socket back).
            return;
        }
        if lagged || drain.is_some() {
            // Behind the queue, or the node draining: each stream takes it
            // from here, from where its socket stands.
            sockets.give_all_back_as(generation);
            next_due = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(seqs: &[(u64, &'static str)]) -> Frames<'static> {
        let mut ends = Vec::new();
        let mut bytes = BytesMut::new();
        for (seq, frame) in seqs {
            bytes.put_slice(frame.as_bytes());
            ends.push((*seq, bytes.len()));
        }
        Frames {
            bytes: bytes.freeze(),
            ends,
            events: &[],
        }
    }

    #[test]
    fn a_socket_gets_only_the_events_after_its_position() {
        let batch = frames(&[(4, "aa"), (5, "bbb"), (9, "c")]);
        assert_eq!(batch.after(3), Some((0, 0)));
        assert_eq!(batch.after(4), Some((1, 2)));
        // Sequences of a path may skip: a position between two events.
        assert_eq!(batch.after(6), Some((2, 5)));
        assert_eq!(batch.after(9), None);
        assert_eq!(batch.after(40), None);
    }
}

/// Sockets for the tests below: a connected client and the server's side
/// of it, as the writer holds it.
#[cfg(test)]
pub(super) mod test_sockets {
    use std::{sync::Arc, time::Duration};

    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
    };

    use crate::connection::SharedSocket;

    pub(in crate::delivery) async fn pair() -> (TcpStream, Arc<SharedSocket>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, Arc::new(SharedSocket::plain(server)))
    }

    pub(super) async fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut got = vec![0u8; len];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .expect("the bytes never came")
            .unwrap();
        got
    }
}

#[cfg(test)]
mod heartbeat_tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::test_sockets::pair;
    use super::*;

    /// A heartbeat goes out through the parked socket and the stream stays
    /// parked where it was.
    #[tokio::test]
    async fn a_heartbeat_leaves_the_stream_parked() {
        let (mut client, server) = pair().await;
        let sockets = Arc::new(ParkedSockets::default());
        let ticket = sockets.park(
            &server,
            Reads::Path("a"),
            None,
            7,
            (Duration::ZERO, 16),
            |_| {},
        );
        assert_eq!(ticket.heartbeat(b": hb\n\n"), Beat::Sent);
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b": hb\n\n");
        assert_eq!(sockets.lock().by_path["a"].entries.len(), 1);
        let returned = ticket.take_back().unwrap();
        assert_eq!(returned.pos, 7);
        assert_eq!(returned.remainder, None);
    }

    /// A writer that ends however it ends, a panic included, gives every
    /// socket back and is forgotten: the next socket to park starts another.
    #[tokio::test]
    async fn a_writer_that_panics_gives_its_sockets_back_and_is_forgotten() {
        let (_client, server) = pair().await;
        let sockets = Arc::new(ParkedSockets::default());
        let mut generations = Vec::new();
        let ticket = sockets.park(&server, Reads::All, None, 3, (Duration::ZERO, 16), |g| {
            generations.push(g)
        });
        let end = WriterEnd {
            sockets: sockets.clone(),
            generation: generations[0],
        };
        let writer = tokio::spawn(async move {
            let _end = end;
            panic!("a writer's bug");
        });
        assert!(writer.await.unwrap_err().is_panic());
        tokio::time::timeout(Duration::from_secs(5), ticket.given_back())
            .await
            .expect("the parked socket was not given back");
        assert_eq!(ticket.take_back().map(|r| r.pos), Some(3));
        let _again = sockets.park(&server, Reads::All, None, 3, (Duration::ZERO, 16), |g| {
            generations.push(g)
        });
        assert_eq!(generations.len(), 2, "no writer started after the panic");
    }

    /// A writer that stops gives every socket back and is forgotten: the
    /// next socket to park starts another, rather than waiting on it.
    #[tokio::test]
    async fn a_socket_parked_after_the_writer_stopped_starts_another() {
        let (_client, server) = pair().await;
        let sockets = Arc::new(ParkedSockets::default());
        let mut starts = 0;
        let first = sockets.park(&server, Reads::All, None, 3, (Duration::ZERO, 16), |_| {
            starts += 1
        });
        let (_, events) = broadcast::channel::<Arc<Event>>(1);
        sockets.hand_over(events);
        sockets.stop_writing(None);
        tokio::time::timeout(Duration::from_secs(5), first.given_back())
            .await
            .expect("the parked socket was not given back");
        assert_eq!(first.take_back().map(|r| r.pos), Some(3));
        assert!(
            sockets.lock().handed_over.is_empty(),
            "a stopped writer's hand-over is kept"
        );
        let _second = sockets.park(&server, Reads::All, None, 3, (Duration::ZERO, 16), |_| {
            starts += 1
        });
        assert_eq!(
            starts, 2,
            "no writer started for the socket parked after the stop"
        );
    }

    /// The delivery lag is timed on the events a socket took: a socket that
    /// parks at a feed's start stands past the older events the feed warms
    /// its history up with, which reach its writer after it, and no client
    /// waited for those.
    #[tokio::test]
    async fn only_events_a_socket_took_are_timed() {
        let (mut client, server) = pair().await;
        let sockets = Arc::new(ParkedSockets::default());
        let mut generations = Vec::new();
        let _ticket = sockets.park(&server, Reads::All, None, 5, (Duration::ZERO, 16), |g| {
            generations.push(g)
        });
        let incoming: Vec<Arc<Event>> = (3..=7).map(|seq| Arc::new(test_event(seq))).collect();
        let sweep = sockets
            .take_in_as(generations[0], &incoming, true)
            .expect("the writer's sockets");
        let taken: usize = incoming[3..].iter().map(|e| e.frame.len()).sum();
        let got = super::test_sockets::read_exactly(&mut client, taken).await;
        assert!(got.ends_with(&incoming[4].frame), "{got:?}");
        assert_eq!(sweep.delivered, 2);
        assert_eq!(sweep.written.len(), 2, "events 3 to 5 were timed too");
    }

    fn test_event(seq: u64) -> Event {
        let ctx = crate::event::EncodeContext {
            topic: "t".into(),
            epoch: "e".into(),
            max_event_bytes: 1024,
        };
        Event::encode(&ctx, seq, "t", std::time::SystemTime::now(), None, b"x")
    }

    /// A writer that takes in what the feed sends it is never found stuck;
    /// one that has not taken in, at a look, what the feed had sent it by
    /// the look before is.
    #[tokio::test]
    async fn a_writer_is_stuck_when_it_took_no_event_sent_before_the_last_look() {
        let (_client, server) = pair().await;
        let sockets = Arc::new(ParkedSockets::default());
        sockets.note_sent(4);
        let mut generation = 0;
        let ticket = sockets.park(&server, Reads::All, None, 4, (Duration::ZERO, 16), |g| {
            generation = g
        });
        assert!(!ticket.writer_stuck(), "stuck at the first look");
        // Sent and taken in between two looks.
        sockets.note_sent(5);
        let event = Arc::new(test_event(5));
        assert!(sockets.take_in_as(generation, &[event], false).is_some());
        assert!(!ticket.writer_stuck());
        // Sent, not yet taken in: a writer may be behind at one look.
        sockets.note_sent(6);
        assert!(
            !ticket.writer_stuck(),
            "a writer busy at the look is not stuck"
        );
        // Still not taken in at the next look.
        assert!(
            ticket.writer_stuck(),
            "a writer that took nothing for a whole interval is stuck"
        );
    }

    /// A replaced writer stops at its next batch without writing to any
    /// socket: the new writer's sockets get each event once.
    #[tokio::test]
    async fn a_replaced_writer_writes_nothing() {
        let (mut client, server) = pair().await;
        let sockets = Arc::new(ParkedSockets::default());
        let mut generations = Vec::new();
        let first = sockets.park(&server, Reads::All, None, 4, (Duration::ZERO, 16), |g| {
            generations.push(g)
        });
        first.replace_writer();
        assert_eq!(first.take_back().map(|r| r.pos), Some(4));
        let _second = sockets.park(&server, Reads::All, None, 4, (Duration::ZERO, 16), |g| {
            generations.push(g)
        });
        let [old, new] = generations[..] else {
            panic!("writers started: {generations:?}");
        };
        let event = Arc::new(test_event(5));
        assert!(
            sockets
                .take_in_as(old, std::slice::from_ref(&event), false)
                .is_none()
        );
        assert!(sockets.next_events(old).is_none());
        sockets.give_all_back_as(old);
        sockets.stop_writing(Some(old));
        assert_eq!(
            sockets.lock().all.entries.len(),
            1,
            "the old writer moved the new one's socket"
        );
        assert!(
            sockets
                .take_in_as(new, std::slice::from_ref(&event), false)
                .is_some()
        );
        let mut got = vec![0u8; event.frame.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, event.frame, "the new writer's event, once");
    }

    /// The stream learns when the feed's writer last wrote to its socket
    /// from the writer's second pass after it parked on: the first may
    /// have skipped the socket, for events the stream had written itself.
    #[tokio::test(start_paused = true)]
    async fn the_writer_tells_when_it_last_wrote_from_its_second_pass_on() {
        let (mut client, server) = pair().await;
        let sockets = Arc::new(ParkedSockets::default());
        let ticket = sockets.park(&server, Reads::All, None, 0, (Duration::ZERO, 16), |_| {});
        let ctx = crate::event::EncodeContext {
            topic: "t".into(),
            epoch: "e".into(),
            max_event_bytes: 1024,
        };
        let event = |seq| {
            Arc::new(Event::encode(
                &ctx,
                seq,
                "t",
                std::time::SystemTime::now(),
                None,
                b"x",
            ))
        };
        let (first, second) = (event(1), event(2));
        assert_eq!(ticket.writer_wrote_at(), None);
        assert_eq!(
            sockets
                .take_in(std::slice::from_ref(&first), false)
                .delivered,
            1
        );
        assert_eq!(ticket.writer_wrote_at(), None, "the first pass");
        tokio::time::advance(Duration::from_secs(3)).await;
        let second_pass = Instant::now();
        assert_eq!(
            sockets
                .take_in(std::slice::from_ref(&second), false)
                .delivered,
            1
        );
        let wrote_at = ticket.writer_wrote_at().expect("the second pass");
        assert!(
            wrote_at <= second_pass && second_pass - wrote_at < Duration::from_millis(2),
            "{:?}",
            second_pass - wrote_at
        );
        assert_eq!(ticket.heartbeat(b": hb\n\n"), Beat::Sent);
        let frames = first.frame.len() + second.frame.len();
        let mut got = vec![0u8; frames + 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[frames..], b": hb\n\n");
        assert_eq!(ticket.take_back().unwrap().pos, 2);
    }

    /// A socket that takes no bytes is left to its stream: the heartbeat is
    /// refused and the socket is still parked, untouched, for the stream to
    /// take back and write to itself.
    #[tokio::test]
    async fn a_full_socket_refuses_the_heartbeat() {
        let (_client, server) = pair().await;
        let filler = vec![b'x'; 1 << 20];
        while server.tcp().try_write(&filler).is_ok_and(|n| n > 0) {}
        let sockets = Arc::new(ParkedSockets::default());
        let ticket = sockets.park(&server, Reads::All, None, 3, (Duration::ZERO, 16), |_| {});
        assert_eq!(ticket.heartbeat(b": hb\n\n"), Beat::Refused);
        assert_eq!(sockets.lock().all.entries.len(), 1);
        let returned = ticket.take_back().unwrap();
        assert_eq!((returned.pos, returned.remainder), (3, None));
    }
}

#[cfg(test)]
mod pacing_tests {
    use std::time::{Duration, SystemTime};

    use tokio::{io::AsyncReadExt, net::TcpListener};

    use super::*;
    use crate::event::EncodeContext;

    /// A busy group is written to once per window, with every event of it
    /// in that one write; a quiet one at once.
    #[tokio::test(start_paused = true)]
    async fn a_busy_group_gets_one_write_per_window() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let sockets = Arc::new(ParkedSockets::default());
        let pacing = (Duration::from_millis(10), 1024);
        let _ticket = sockets.park(
            &Arc::new(SharedSocket::plain(server)),
            Reads::All,
            None,
            0,
            pacing,
            |_| {},
        );
        let ctx = EncodeContext {
            topic: "t".into(),
            epoch: "e".into(),
            max_event_bytes: 1024,
        };
        let mut writes = 0;
        let mut seq = 0;
        let mut held = None;
        for _ in 0..200 {
            tokio::time::advance(Duration::from_millis(1)).await;
            seq += 1;
            let event = Arc::new(Event::encode(&ctx, seq, "t", SystemTime::now(), None, b"x"));
            if held.is_some_and(|until| until <= Instant::now()) {
                let sweep = sockets.take_in(&[], false);
                writes += u64::from(sweep.delivered > 0);
            }
            let sweep = sockets.take_in(&[event], false);
            writes += u64::from(sweep.delivered > 0);
            held = sweep.next_due;
        }
        let mut buf = vec![0u8; 1 << 20];
        let read = client.read(&mut buf).await.unwrap();
        assert!(read > 0);
        assert!(
            (15..=30).contains(&writes),
            "{writes} writes for 200 events over 200 ms"
        );
    }
}

#[cfg(test)]
mod cursor_tests {
    use std::time::{Duration, SystemTime};

    use super::test_sockets::{pair, read_exactly};
    use super::*;
    use crate::event::EncodeContext;

    fn events(first_seq: u64, count: u64, payload: &[u8]) -> Vec<Arc<Event>> {
        let ctx = EncodeContext {
            topic: "news".into(),
            epoch: "e1".into(),
            max_event_bytes: 1 << 24,
        };
        (first_seq..first_seq + count)
            .map(|seq| {
                Arc::new(Event::encode(
                    &ctx,
                    seq,
                    "news.x",
                    SystemTime::now(),
                    None,
                    payload,
                ))
            })
            .collect()
    }

    fn cursor(user_pos: u64) -> CursorAround {
        CursorAround {
            before: "id: news:e1:".into(),
            after: format!(",users:e2:{user_pos}\n\n").into(),
        }
    }

    /// What a stream with `cursor` writes for `events` itself.
    fn expected(events: &[Arc<Event>], cursor: &CursorAround) -> Vec<u8> {
        let mut out = Vec::new();
        for event in events {
            out.extend_from_slice(&event.frame[..event.body_len]);
            out.extend_from_slice(cursor.before.as_bytes());
            out.extend_from_slice(event.seq.to_string().as_bytes());
            out.extend_from_slice(cursor.after.as_bytes());
        }
        out
    }

    /// Sockets of streams of one topic and of several, each at its own place
    /// in its other topics, sit in one group and share its pass; each gets
    /// every event with its own `id:` line.
    #[tokio::test]
    async fn streams_of_several_topics_share_the_group_and_keep_their_own_ids() {
        let sockets = Arc::new(ParkedSockets::default());
        let (mut plain_client, plain) = pair().await;
        // Sockets one after another with the same cursor share its frames;
        // the one that stands further on, or has another cursor, does not.
        let mut with_cursors = Vec::new();
        for (user_pos, from) in [(7, 0), (7, 0), (7, 12), (1234, 0)] {
            let (client, server) = pair().await;
            with_cursors.push((client, server, user_pos, from));
        }
        let pacing = (Duration::ZERO, 64);
        let mut tickets = vec![sockets.park(&plain, Reads::All, None, 0, pacing, |_| {})];
        for (_, server, user_pos, from) in &with_cursors {
            let parked = sockets.park(
                server,
                Reads::All,
                Some(cursor(*user_pos)),
                *from,
                pacing,
                |_| {},
            );
            tickets.push(parked);
        }
        {
            let parked = sockets.lock();
            assert_eq!(parked.all.entries.len(), 5);
            assert!(parked.by_path.is_empty());
        }
        // Two events, then seven whose sequences have more digits.
        let few = events(9, 2, b"hello");
        let many = events(11, 7, b"line one\nline two");
        let sweep = sockets.take_in(&few, false);
        assert_eq!(sweep.delivered, 4 * 2, "the socket at 12 has both");
        let sweep = sockets.take_in(&many, false);
        assert_eq!(sweep.delivered, 4 * 7 + 5);
        let all: Vec<Arc<Event>> = few.iter().chain(&many).cloned().collect();
        let plain_bytes: Vec<u8> = all.iter().flat_map(|e| e.frame.to_vec()).collect();
        assert_eq!(
            read_exactly(&mut plain_client, plain_bytes.len()).await,
            plain_bytes
        );
        for (client, _, user_pos, from) in &mut with_cursors {
            let after: Vec<Arc<Event>> = all.iter().filter(|e| e.seq > *from).cloned().collect();
            let want = expected(&after, &cursor(*user_pos));
            let got = read_exactly(client, want.len()).await;
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
    }

    /// A socket with a cursor that takes part of its frames comes back with
    /// exactly the bytes it did not take.
    #[tokio::test]
    async fn a_socket_with_a_cursor_that_fills_up_gets_the_rest_back_exactly() {
        let (mut client, server) = pair().await;
        socket2::SockRef::from(server.tcp())
            .set_send_buffer_size(4096)
            .unwrap();
        let sockets = Arc::new(ParkedSockets::default());
        let own = cursor(42);
        let ticket = sockets.park(
            &server,
            Reads::All,
            Some(own.clone()),
            0,
            (Duration::ZERO, 64),
            |_| {},
        );
        let batch = events(1, 2, &vec![b'x'; 2 << 20]);
        let sweep = sockets.take_in(&batch, false);
        assert_eq!(sweep.delivered, 2);
        assert_eq!(sweep.refusals, 1, "the socket took the whole batch");
        let returned = ticket.take_back().unwrap();
        assert_eq!(returned.pos, 2);
        let rest = returned.remainder.expect("no remainder");
        let want = expected(&batch, &own);
        assert!(!rest.is_empty() && rest.len() < want.len());
        let taken = read_exactly(&mut client, want.len() - rest.len()).await;
        assert_eq!(taken, want[..taken.len()]);
        assert_eq!(rest, want[taken.len()..]);
    }
}

#[cfg(test)]
mod through_tests {
    use std::time::{Duration, SystemTime};

    use super::test_sockets::{pair, read_exactly};
    use super::*;
    use crate::event::EncodeContext;

    fn event(topic: &str, seq: u64, payload: &[u8]) -> Arc<Event> {
        let ctx = EncodeContext {
            topic: topic.into(),
            epoch: "e".into(),
            max_event_bytes: 1 << 24,
        };
        Arc::new(Event::encode(
            &ctx,
            seq,
            topic,
            SystemTime::now(),
            None,
            payload,
        ))
    }

    /// Parks `server` for a stream of two topics, at 5 of the parked one
    /// and 3 of the other.
    fn park_at_five(server: &Arc<SharedSocket>) -> (Arc<ParkedSockets>, Ticket) {
        let sockets = Arc::new(ParkedSockets::default());
        let ticket = sockets.park(
            server,
            Reads::All,
            Some(cursor(3)),
            5,
            (Duration::ZERO, 64),
            |_| {},
        );
        (sockets, ticket)
    }

    fn cursor(user_pos: u64) -> CursorAround {
        CursorAround {
            before: "id: news:e:".into(),
            after: format!(",user:e:{user_pos}\n\n").into(),
        }
    }

    /// An event of another topic goes through the parked socket with the
    /// parked topic's position in its id once the writer has written a run
    /// long enough, and the writer's next events carry the new cursor;
    /// before that, nothing is written and nothing changes. The run starts
    /// again after it.
    #[tokio::test]
    async fn another_topics_event_goes_through_the_parked_socket_after_a_run() {
        let (mut client, server) = pair().await;
        let (sockets, ticket) = park_at_five(&server);
        let news = event("news", 6, b"n6");
        assert_eq!(
            sockets
                .take_in(std::slice::from_ref(&news), false)
                .delivered,
            1
        );

        let user = event("user", 4, b"u4");
        let body = &user.frame[..user.body_len];
        assert_eq!(ticket.write_through(body, cursor(4), 2), Through::Not);
        assert_eq!(
            ticket.write_through(body, cursor(4), 1),
            Through::Whole { pos: 6, run: 1 }
        );
        // A new run starts after it.
        let user_again = event("user", 5, b"u5");
        let body_again = &user_again.frame[..user_again.body_len];
        assert_eq!(ticket.write_through(body_again, cursor(5), 1), Through::Not);
        let later = event("news", 7, b"n7");
        assert_eq!(
            sockets
                .take_in(std::slice::from_ref(&later), false)
                .delivered,
            1
        );

        let want = "data: n6\nid: news:e:6,user:e:3\n\n\
                    data: u4\nid: news:e:6,user:e:4\n\n\
                    data: n7\nid: news:e:7,user:e:4\n\n";
        let got = read_exactly(&mut client, want.len()).await;
        assert_eq!(String::from_utf8_lossy(&got), want);
        let returned = ticket.take_back().unwrap();
        assert_eq!((returned.pos, returned.run), (7, 1));
    }

    /// A socket that takes part of the frame is given back with the rest of
    /// it, and nothing else.
    #[tokio::test]
    async fn a_socket_that_takes_part_of_it_comes_back_with_the_rest() {
        let (mut client, server) = pair().await;
        socket2::SockRef::from(server.tcp())
            .set_send_buffer_size(4096)
            .unwrap();
        let (sockets, ticket) = park_at_five(&server);
        let user = event("user", 4, &vec![b'u'; 2 << 20]);
        let body = &user.frame[..user.body_len];
        assert_eq!(ticket.write_through(body, cursor(4), 0), Through::Partly);
        assert!(sockets.lock().all.entries.is_empty());
        let returned = ticket.take_back().unwrap();
        assert!(returned.refused);
        assert_eq!(returned.pos, 5);
        let rest = returned.remainder.expect("no rest");
        let mut want = body.to_vec();
        want.extend_from_slice(b"id: news:e:5,user:e:4\n\n");
        let taken = read_exactly(&mut client, want.len() - rest.len()).await;
        assert_eq!(taken, want[..taken.len()]);
        assert_eq!(rest, want[taken.len()..]);
    }
}

#[cfg(test)]
mod pattern_tests {
    use std::time::{Duration, SystemTime};

    use super::test_sockets::{pair, read_exactly};
    use super::*;
    use crate::event::EncodeContext;

    fn event(seq: u64, path: &str) -> Arc<Event> {
        let ctx = EncodeContext {
            topic: "t".into(),
            epoch: "e".into(),
            max_event_bytes: 1024,
        };
        Arc::new(Event::encode(
            &ctx,
            seq,
            path,
            SystemTime::now(),
            None,
            b"x",
        ))
    }

    fn patterns(paths: &[&str]) -> Vec<SubjectPath> {
        paths
            .iter()
            .map(|p| SubjectPath::parse_pattern(p).unwrap())
            .collect()
    }

    /// One socket parked at `pos` for the events matching `paths`.
    async fn park_one(
        paths: &[&str],
        pos: u64,
    ) -> (Arc<ParkedSockets>, tokio::net::TcpStream, Ticket) {
        let sockets = Arc::new(ParkedSockets::default());
        let (client, server) = pair().await;
        let reads = Reads::Patterns(&patterns(paths));
        let ticket = sockets.park(&server, reads, None, pos, (Duration::ZERO, 16), |_| {});
        (sockets, client, ticket)
    }

    /// Sockets of the same patterns share a group and get exactly the
    /// events that match them; a socket given back stands past the events
    /// that did not, so its stream goes on from where it would stand.
    #[tokio::test]
    async fn sockets_of_patterns_get_the_matching_events_and_stand_past_the_rest() {
        let sockets = Arc::new(ParkedSockets::default());
        let pacing = (Duration::ZERO, 16);
        let wildcard = patterns(&["t.a.*"]);
        let two_paths = patterns(&["t.b", "t.c.>"]);
        let (mut first_client, first) = pair().await;
        let (mut second_client, second) = pair().await;
        let (mut other_client, other) = pair().await;
        let first_ticket =
            sockets.park(&first, Reads::Patterns(&wildcard), None, 0, pacing, |_| {});
        let second_ticket =
            sockets.park(&second, Reads::Patterns(&wildcard), None, 0, pacing, |_| {});
        let other_ticket =
            sockets.park(&other, Reads::Patterns(&two_paths), None, 0, pacing, |_| {});
        assert_eq!(sockets.lock().by_patterns.len(), 2);
        assert_eq!(sockets.lock().by_patterns["t.a.*"].entries.len(), 2);

        let batch = [
            event(1, "t.a.1"),
            event(2, "t.b"),
            event(3, "t.a"),
            event(4, "t.c.x.y"),
            event(5, "t.a.2"),
            event(6, "t.a.2.deeper"),
        ];
        let sweep = sockets.take_in(&batch, false);
        assert_eq!(sweep.delivered, 2 + 2 + 2);
        let wildcard_bytes = [&batch[0].frame[..], &batch[4].frame[..]].concat();
        for client in [&mut first_client, &mut second_client] {
            assert_eq!(
                read_exactly(client, wildcard_bytes.len()).await,
                wildcard_bytes
            );
        }
        let other_bytes = [&batch[1].frame[..], &batch[3].frame[..]].concat();
        assert_eq!(
            read_exactly(&mut other_client, other_bytes.len()).await,
            other_bytes
        );

        // Nothing matches: no write, but every socket is past it.
        let sweep = sockets.take_in(&[event(7, "t.d")], false);
        assert_eq!(sweep.delivered, 0);
        assert_eq!(first_ticket.take_back().unwrap().pos, 7);
        assert_eq!(other_ticket.take_back().unwrap().pos, 7);

        // The group that lost a socket still writes to the one left, and a
        // socket given back with the rest stands past what it passed too.
        let sweep = sockets.take_in(&[event(8, "t.a.3"), event(9, "t.b")], false);
        assert_eq!(sweep.delivered, 1);
        assert_eq!(
            read_exactly(&mut second_client, batch[0].frame.len()).await,
            event(8, "t.a.3").frame[..]
        );
        assert!(!sockets.lock().by_patterns.contains_key("t.b t.c.>"));
        sockets.give_all_back();
        let returned = second_ticket.take_back().unwrap();
        assert_eq!(returned.pos, 9);
        assert!(sockets.lock().by_patterns.is_empty());
    }

    #[test]
    fn a_patterns_literal_part_ends_before_its_first_wildcard() {
        assert_eq!(literal_prefix("t"), "t");
        assert_eq!(literal_prefix("t.a.b"), "t.a.b");
        assert_eq!(literal_prefix("t.a.*"), "t.a");
        assert_eq!(literal_prefix("t.*.b"), "t");
        assert_eq!(literal_prefix("t.>"), "t");
        assert_eq!(literal_prefix("t.ab.*.c.>"), "t.ab");
    }

    /// An event that two patterns of one group match, each found under its
    /// own literal part, is written once; one that only a pattern listed
    /// under a shorter part matches is found too.
    #[tokio::test]
    async fn overlapping_patterns_of_one_group_write_an_event_once() {
        let (sockets, mut client, ticket) = park_one(&["t.a.*", "t.*.b", "t.a.c"], 0).await;
        let batch = [
            event(1, "t.a.b"),
            event(2, "t.a.c"),
            event(3, "t.x.b"),
            event(4, "t.x.c"),
            event(5, "t.a.b.c"),
        ];
        assert_eq!(sockets.take_in(&batch, false).delivered, 3);
        let want = [
            &batch[0].frame[..],
            &batch[1].frame[..],
            &batch[2].frame[..],
        ]
        .concat();
        assert_eq!(read_exactly(&mut client, want.len()).await, want);
        assert_eq!(ticket.take_back().unwrap().pos, 5);
        let parked = sockets.lock();
        assert!(parked.by_patterns.is_empty() && parked.patterns_by_prefix.is_empty());
    }

    /// A socket parked ahead of the writer (the feed's head is further on
    /// than the writer has read) is not written what it already has.
    #[tokio::test]
    async fn a_socket_parked_ahead_of_the_writer_skips_what_it_has() {
        let (sockets, mut client, ticket) = park_one(&["t.>"], 2).await;
        let batch = [event(1, "t.a"), event(2, "t.b"), event(3, "t.c")];
        assert_eq!(sockets.take_in(&batch, false).delivered, 1);
        assert_eq!(
            read_exactly(&mut client, batch[2].frame.len()).await,
            batch[2].frame[..]
        );
        assert_eq!(ticket.take_back().unwrap().pos, 3);
    }
}
