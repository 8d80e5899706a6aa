//! Merged feeds: one writer for the parked streams of one set of topics
//! whose events take turns, each read whole or at one path.
//!
//! A stream of several topics writes its cursor over all of them after each
//! event, so one topic's writer can take its socket only while that topic
//! alone speaks (see [`super::park`]). A stream whose topics take turns
//! parks on a merged feed instead: one relay task per set of topics, in the
//! stream's order, reads each topic's broadcast, frames each event once with
//! the set's cursor after it, numbers it in a sequence of its own, and hands
//! it to the same [`ParkedSockets`] a topic's writer uses. All of a set's
//! parked sockets get the relay's one order of events, so one frame serves
//! them all. A relay starts only for a set that two streams share; a stream
//! alone on its set keeps its own task, which costs no more per event.
//!
//! A stream parks only while its positions are exactly the relay's cursor,
//! checked under the relay's lock, so every event after that cursor is one
//! the relay writes to the socket and none before it is. A topic read at
//! one path is the exception: its position is the last event of the path
//! the stream wrote, or the head when it attached, and the relay's may be
//! later with no event of the path in between; a stream that has taken
//! every event its receiver got may then park behind it. When the socket is
//! given back, the merged sequence it stands at is turned back into the
//! cursor the stream then resumes from.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, Weak},
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::{BufMut, BytesMut};
use sse_protocol::cursor::write_position;
use tokio::{sync::Notify, time::Instant};

use super::{
    BATCH_BYTES,
    live::{LiveItem, LiveReceivers},
    parked::{ParkedSockets, Reads, Ticket},
};
use crate::{
    connection::SharedSocket,
    event::Event,
    feed::{Feed, FeedLease},
    node::Node,
};

/// What a merged feed reads of one topic: its feed, and the one path's
/// channel of it, or `None` for every event of the feed.
type Read = (usize, Option<Box<str>>);

/// The merged feeds of a node, by what they read in a stream's order.
///
/// A merged feed starts only for a set of topics that two streams share:
/// a stream alone on its set saves nothing by a relay (one wake per event
/// either way) and would hold one more task and its cursor's last seconds.
/// The first stream of a set waits; the second starts the relay, and both
/// park on it.
#[derive(Default)]
pub(crate) struct MergedFeeds {
    sets: Mutex<Sets>,
}

#[derive(Default)]
struct Sets {
    by_reads: HashMap<Box<[Read]>, Set>,
    /// How many sets there were at the last sweep of those gone: sweeping
    /// again only once they have doubled keeps each start cheap.
    swept_at: usize,
}

/// One set's relay, or the stream waiting for a second one.
struct Set {
    merged: Weak<MergedFeed>,
    waiting: Weak<MergeWait>,
}

impl Sets {
    fn sweep(&mut self) {
        if self.by_reads.len() < 2 * self.swept_at.max(32) {
            return;
        }
        self.by_reads
            .retain(|_, set| set.merged.strong_count() > 0 || set.waiting.strong_count() > 0);
        self.swept_at = self.by_reads.len();
    }
}

/// A stream's wait for a second stream of its set to start the set's
/// merged feed. The stream holds it; dropping it gives up the wait.
#[derive(Default)]
pub(crate) struct MergeWait {
    state: Mutex<WaitState>,
}

#[derive(Default)]
struct WaitState {
    started: Option<Weak<MergedFeed>>,
    /// The waiting stream's task, woken when the merged feed starts: the
    /// second stream may start it while handling the last event both get,
    /// and the first would otherwise stay on its own task until its next
    /// event or heartbeat.
    waker: Option<Waker>,
}

/// Where a stream's wait for its set's merged feed stands.
pub(crate) enum Waited {
    /// No second stream yet.
    Waiting,
    /// The merged feed a second stream started.
    Started(Arc<MergedFeed>),
    /// That merged feed has ended: the stream asks again.
    Ended,
}

impl MergeWait {
    /// Whether a second stream has started the set's merged feed.
    pub(crate) fn waited(&self) -> Waited {
        match &self.lock().started {
            None => Waited::Waiting,
            Some(merged) => match merged.upgrade() {
                Some(merged) if !merged.is_closed() => Waited::Started(merged),
                _ => Waited::Ended,
            },
        }
    }

    /// Ready once a second stream has started the set's merged feed;
    /// until then the task polling it is woken when that happens.
    pub(crate) fn poll_started(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.started.is_some() {
            return Poll::Ready(());
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn start(&self, merged: Weak<MergedFeed>) {
        let waker = {
            let mut state = self.lock();
            state.started = Some(merged);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, WaitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a stream gets when it asks for its set's merged feed.
pub(crate) enum Merge {
    /// The set's merged feed, running.
    Feed(Arc<MergedFeed>),
    /// The stream is the first of its set: it waits for a second.
    Wait(Arc<MergeWait>),
}

impl MergedFeeds {
    /// The merged feed of `feeds`, in this order, each read whole or at the
    /// path's channel given: the running one, one started now if another
    /// stream of the set waits, or else a wait for a second stream.
    pub(crate) fn get_or_start<'a>(
        &self,
        feeds: impl Iterator<Item = (&'a FeedLease, Option<&'a str>)> + Clone,
        node: &Node,
    ) -> Merge {
        // The feeds' own addresses: a merged feed holds its feeds, and a
        // waiting stream its leases, so while either lives no other feed
        // can have one of them.
        let key: Box<[Read]> = feeds
            .clone()
            .map(|(f, path)| (Arc::as_ptr(f) as usize, path.map(Into::into)))
            .collect();
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        let waiting = match sets.by_reads.get(&key) {
            Some(set) => {
                if let Some(merged) = set.merged.upgrade()
                    && !merged.is_closed()
                {
                    return Merge::Feed(merged);
                }
                set.waiting.upgrade()
            }
            None => None,
        };
        sets.sweep();
        let Some(waiting) = waiting else {
            let wait = Arc::new(MergeWait::default());
            let set = Set {
                merged: Weak::new(),
                waiting: Arc::downgrade(&wait),
            };
            sets.by_reads.insert(key, set);
            return Merge::Wait(wait);
        };
        let merged =
            MergedFeed::start(feeds.map(|(f, path)| (Arc::clone(f), path)).collect(), node);
        waiting.start(Arc::downgrade(&merged));
        let set = Set {
            merged: Arc::downgrade(&merged),
            waiting: Weak::new(),
        };
        sets.by_reads.insert(key, set);
        Merge::Feed(merged)
    }
}

/// One set of topics' relay, and the sockets parked on it.
pub(crate) struct MergedFeed {
    /// The set's feeds, held so that none is freed while the relay reads
    /// it; asked what they sent, for the look for a stuck relay.
    feeds: Vec<Arc<Feed>>,
    relayed: Arc<Mutex<Relayed>>,
    sockets: Arc<ParkedSockets>,
    /// Ends the relay once no stream holds the merged feed.
    stop: Arc<Notify>,
    queue_events: usize,
    /// Per topic, whether it is read at one path: a stream's position there
    /// may lag the relay's with nothing of the path in between.
    at_path: Vec<bool>,
    /// Per topic, the path whose channel the relay reads, or `None` for
    /// the channel of every event.
    channels: Vec<Option<Box<str>>>,
    /// The last look for a stuck relay.
    look: Mutex<RelayLook>,
}

/// What the set's topics had sent the relay at the last look for a stuck
/// relay, and when that look was.
#[derive(Default)]
struct RelayLook {
    at: Option<Instant>,
    sent: Vec<u64>,
}

impl RelayLook {
    /// Whether the relay, standing at `relayed`, has not relayed an event
    /// its topics had sent it by the last look, if that look was at least
    /// `interval` before `now`: a relay that stopped or hangs. A look
    /// sooner than that after the last one finds nothing and notes
    /// nothing, so that many streams looking cost one look per interval.
    fn stuck(
        &mut self,
        now: Instant,
        interval: Duration,
        sent_now: impl FnOnce() -> Vec<u64>,
        relayed: &[u64],
    ) -> bool {
        if self.at.is_some_and(|at| now.duration_since(at) < interval) {
            return false;
        }
        let stuck = self.sent.iter().zip(relayed).any(|(sent, at)| at < sent);
        self.at = Some(now);
        self.sent = sent_now();
        stuck
    }
}

/// What the relay has framed so far.
struct Relayed {
    /// Each topic's position after the last event relayed.
    cursor: Vec<u64>,
    /// The merged sequence of the last event relayed.
    seq: u64,
    /// The cursor at `base_seq`, and the topic and sequence of each event
    /// after it: enough to tell the cursor at any recent merged sequence.
    base: Vec<u64>,
    base_seq: u64,
    steps: VecDeque<(usize, u64)>,
    /// The merged sequence reached at about each second, oldest first:
    /// steps older than [`KEEP_STEPS_FOR`] are folded into `base`.
    marks: VecDeque<(Instant, u64)>,
    /// No more parking: the relay ended, or the node drains.
    closed: bool,
}

/// How long the relay can still tell the cursor at a merged sequence.
///
/// A parked socket stands at the last event written to it, and all of a
/// set's sockets are written in each pass, so it is never older than the
/// pass before. What must be remembered longer is a socket given back
/// whose stream has not yet asked where it stands: it asks as soon as it
/// is woken, well within this.
const KEEP_STEPS_FOR: Duration = Duration::from_secs(5);

/// Most steps kept whatever their age, so that a busy set's memory stays
/// bounded; at more than this many events in [`KEEP_STEPS_FOR`], a stream
/// that takes that long to take its socket back ends, and its client
/// resumes from its last id.
const MAX_STEPS: usize = 8192;

impl Relayed {
    fn cursor_at(&self, seq: u64) -> Option<Vec<u64>> {
        let after = usize::try_from(seq.checked_sub(self.base_seq)?).ok()?;
        if after > self.steps.len() {
            return None;
        }
        let mut cursor = self.base.clone();
        for &(topic, pos) in self.steps.iter().take(after) {
            cursor[topic] = pos;
        }
        Some(cursor)
    }

    fn record(&mut self, topic: usize, pos: u64) {
        self.cursor[topic] = pos;
        self.seq += 1;
        self.steps.push_back((topic, pos));
        if self.steps.len() > MAX_STEPS {
            self.fold_one();
        }
    }

    /// Folds the oldest step into `base`.
    fn fold_one(&mut self) -> bool {
        let Some((topic, pos)) = self.steps.pop_front() else {
            return false;
        };
        self.base[topic] = pos;
        self.base_seq += 1;
        true
    }

    /// Marks where the relay stands at `now`, and forgets the steps made
    /// more than [`KEEP_STEPS_FOR`] before it.
    fn fold_old(&mut self, now: Instant) {
        if self
            .marks
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1))
        {
            self.marks.push_back((now, self.seq));
        }
        while let Some(&(at, seq)) = self.marks.front()
            && now.duration_since(at) > KEEP_STEPS_FOR
        {
            self.marks.pop_front();
            while self.base_seq < seq && self.fold_one() {}
        }
    }
}

impl MergedFeed {
    fn start(reads: Vec<(Arc<Feed>, Option<&str>)>, node: &Node) -> Arc<Self> {
        let mut receivers = Vec::with_capacity(reads.len());
        let mut cursor = Vec::with_capacity(reads.len());
        let mut at_path = Vec::with_capacity(reads.len());
        let mut channels = Vec::with_capacity(reads.len());
        let mut queue_events = usize::MAX;
        for (feed, channel) in &reads {
            let attachment = feed.attach(*channel);
            cursor.push(attachment.head);
            receivers.push(attachment.receiver);
            at_path.push(channel.is_some() || feed.path.is_some());
            channels.push(channel.map(Box::from));
            // As for a stream of several topics: the smallest of the
            // queues bounds how long the relay's sockets may be held.
            queue_events = queue_events.min(if channel.is_some() {
                node.config().delivery.path_queue_events
            } else {
                feed.queue_events()
            });
        }
        let feeds: Vec<Arc<Feed>> = reads.into_iter().map(|(feed, _)| feed).collect();
        let relayed = Arc::new(Mutex::new(Relayed {
            base: cursor.clone(),
            cursor,
            seq: 0,
            base_seq: 0,
            steps: VecDeque::new(),
            marks: VecDeque::new(),
            closed: false,
        }));
        let names = feeds
            .iter()
            .map(|f| (f.topic.as_str().into(), f.epoch.as_str().into()))
            .collect();
        let merged = Arc::new(Self {
            feeds,
            relayed: relayed.clone(),
            sockets: Arc::default(),
            stop: Arc::default(),
            queue_events,
            at_path,
            channels,
            look: Mutex::default(),
        });
        let relay = Relay {
            topics: LiveReceivers {
                receivers,
                next: 0,
                parked: None,
                held: None,
            },
            names,
            end: RelayEnd {
                relayed,
                sockets: merged.sockets.clone(),
            },
            stop: merged.stop.clone(),
            node: node.clone(),
        };
        tokio::spawn(relay.run());
        merged
    }

    fn lock(&self) -> MutexGuard<'_, Relayed> {
        lock(&self.relayed)
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Parks `socket` if `positions` are the relay's cursor; returns the
    /// ticket and the merged sequence the socket stands at. Otherwise
    /// returns whether the relay is behind the stream, which it catches up
    /// with in a moment. `nothing_waiting` tells whether the stream's
    /// receivers are still empty.
    pub(crate) fn park(
        &self,
        positions: impl Iterator<Item = u64>,
        nothing_waiting: impl FnOnce() -> bool,
        socket: &Arc<SharedSocket>,
        node: &Node,
    ) -> Result<(Ticket, u64), Behind> {
        let relayed = self.lock();
        if relayed.closed || node.is_shutting_down() {
            return Err(Behind(false));
        }
        let (mut behind, mut trails_at_path) = (false, false);
        for ((own, relay), at_path) in positions.zip(&relayed.cursor).zip(&self.at_path) {
            if own < *relay {
                if !at_path {
                    return Err(Behind(false));
                }
                trails_at_path = true;
            }
            behind |= own > *relay;
        }
        if behind {
            return Err(Behind(true));
        }
        // Every event in the relay's cursor was sent before this lock was
        // taken, so it is in the stream's receiver unless the stream wrote
        // it. With both empty, nothing of a path lies between the stream's
        // position and the relay's.
        if trails_at_path && !nothing_waiting() {
            return Err(Behind(false));
        }
        let pacing = (
            Duration::from_millis(node.config().delivery.write_pacing_ms),
            self.queue_events,
        );
        // Under the relay's lock: no event is numbered between the check
        // and the socket taking its place at `seq`.
        let ticket = self
            .sockets
            .park(socket, Reads::All, None, relayed.seq, pacing, |_| {});
        Ok((ticket, relayed.seq))
    }

    /// The cursor of the set at merged sequence `seq`, if still known.
    pub(crate) fn cursor_at(&self, seq: u64) -> Option<Vec<u64>> {
        self.lock().cursor_at(seq)
    }

    /// Whether the relay has not relayed an event its topics had sent it by
    /// a look at least `interval` ago (see [`RelayLook::stuck`]). A relay
    /// that ended is not stuck: it gave every socket back.
    pub(crate) fn relay_stuck(&self, interval: Duration) -> bool {
        let mut look = self.look.lock().unwrap_or_else(|p| p.into_inner());
        let relayed = {
            let relayed = self.lock();
            if relayed.closed {
                return false;
            }
            relayed.cursor.clone()
        };
        let sent_now = || {
            self.feeds
                .iter()
                .zip(&self.channels)
                .map(|(feed, path)| feed.sent_on(path.as_deref()))
                .collect()
        };
        look.stuck(Instant::now(), interval, sent_now, &relayed)
    }

    /// Ends a stuck relay's hold on the set: no stream parks on it again,
    /// and every parked one takes its socket back; the next to park starts
    /// a new relay. Should the old one ever wake, it writes to no socket.
    pub(crate) fn replace_relay(&self) {
        self.lock().closed = true;
        self.stop.notify_one();
        self.sockets.give_all_back();
    }

    /// The set's topics, for a log line.
    pub(crate) fn topics(&self) -> String {
        let names: Vec<&str> = self.feeds.iter().map(|f| f.topic.as_str()).collect();
        names.join(",")
    }
}

impl Drop for MergedFeed {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

/// Why a stream could not park on a merged feed: `true` if only because
/// the relay has not read the stream's last events yet.
pub(crate) struct Behind(pub(crate) bool);

fn lock(relayed: &Mutex<Relayed>) -> MutexGuard<'_, Relayed> {
    // Whole steps only are made under the lock: a panic cannot tear one.
    relayed.lock().unwrap_or_else(|p| p.into_inner())
}

/// The task of one merged feed.
struct Relay {
    /// A receiver per topic, read as a stream of several topics reads them.
    topics: LiveReceivers,
    /// Each topic's name and epoch, for the cursor.
    names: Vec<(Box<str>, Box<str>)>,
    end: RelayEnd,
    stop: Arc<Notify>,
    node: Node,
}

/// What the relay has framed, and its sockets: closed and given back
/// however the relay ends, a panic included, so that no stream is left
/// parked on a relay that no longer runs.
struct RelayEnd {
    relayed: Arc<Mutex<Relayed>>,
    sockets: Arc<ParkedSockets>,
}

impl Drop for RelayEnd {
    fn drop(&mut self) {
        // Closed first: a stream parks only under this lock, so none parks
        // after the sockets are given back.
        lock(&self.relayed).closed = true;
        self.sockets.give_all_back();
    }
}

impl Relay {
    async fn run(mut self) {
        let mut incoming: Vec<(usize, Arc<Event>)> = Vec::new();
        let mut merged: Vec<Arc<Event>> = Vec::new();
        let mut next_due: Option<Instant> = None;
        loop {
            let first = tokio::select! {
                biased;
                // No stream holds the feed, or the relay was replaced.
                _ = self.stop.notified() => return,
                read = self.topics.next(|_| true) => Some(read),
                _ = super::sleep_until_opt(next_due), if next_due.is_some() => None,
            };
            let (mut lagged, mut closed) = (false, false);
            let mut bytes = 0;
            let mut read = first;
            // The receivers are drained from a moving start, so that one
            // busy topic cannot keep the others out of a batch.
            loop {
                match read {
                    Some(LiveItem::Event(topic, event)) => {
                        bytes += event.frame.len();
                        incoming.push((topic, event));
                    }
                    Some(LiveItem::Lagged(..)) => lagged = true,
                    Some(LiveItem::Closed(_)) => closed = true,
                    None => break,
                }
                if lagged || closed || bytes >= BATCH_BYTES {
                    break;
                }
                read = self.topics.try_next(|_| true);
            }
            let drain = incoming.iter().position(|(_, e)| e.is_drain_marker());
            if let Some(at) = drain {
                incoming.truncate(at);
            }
            let ending = lagged || closed || drain.is_some();
            {
                let mut relayed = lock(&self.end.relayed);
                for (topic, event) in incoming.drain(..) {
                    if event.seq <= relayed.cursor[topic] {
                        continue;
                    }
                    relayed.record(topic, event.seq);
                    merged.push(Arc::new(self.frame(&event, &relayed.cursor, relayed.seq)));
                }
                relayed.fold_old(Instant::now());
                relayed.closed |= ending;
            }
            let sweep = self.end.sockets.take_in(&merged, drain.is_some());
            merged.clear();
            next_due = sweep.next_due;
            sweep.count(&self.node);
            if ending {
                // Behind a topic's queue, a topic gone, or the node
                // draining: each stream takes it from here, from where its
                // socket stands (the relay's end gives every socket back),
                // and a new relay serves those that park again.
                return;
            }
        }
    }

    /// `event` as a stream of the set writes it: its body, then the set's
    /// cursor after it.
    fn frame(&self, event: &Event, cursor: &[u64], seq: u64) -> Event {
        let mut frame = BytesMut::with_capacity(event.body_len + 32 * cursor.len() + 8);
        frame.put_slice(&event.frame[..event.body_len]);
        frame.put_slice(b"id: ");
        for (i, ((topic, epoch), pos)) in self.names.iter().zip(cursor).enumerate() {
            if i > 0 {
                frame.put_u8(b',');
            }
            let _ = write_position(&mut frame, topic, epoch, *pos);
        }
        frame.put_slice(b"\n\n");
        Event {
            seq,
            path: event.path.clone(),
            published: event.published,
            frame: frame.freeze(),
            body_len: event.body_len,
            invalid: event.invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parked::{Reads, test_sockets::pair};
    use super::*;

    fn relayed() -> Relayed {
        Relayed {
            cursor: vec![5, 7],
            seq: 0,
            base: vec![5, 7],
            base_seq: 0,
            steps: VecDeque::new(),
            marks: VecDeque::new(),
            closed: false,
        }
    }

    #[test]
    fn the_cursor_at_each_merged_sequence_is_what_the_relay_had_written_by_then() {
        let mut r = relayed();
        r.record(0, 6);
        r.record(1, 9);
        r.record(0, 8);
        assert_eq!(r.cursor_at(0), Some(vec![5, 7]));
        assert_eq!(r.cursor_at(1), Some(vec![6, 7]));
        assert_eq!(r.cursor_at(2), Some(vec![6, 9]));
        assert_eq!(r.cursor_at(3), Some(vec![8, 9]));
        assert_eq!(r.cursor, vec![8, 9]);
        assert_eq!(r.cursor_at(4), None, "not relayed yet");
    }

    #[tokio::test(start_paused = true)]
    async fn steps_older_than_the_time_kept_are_forgotten_and_later_ones_stay_exact() {
        let mut r = relayed();
        let start = Instant::now();
        for pos in 6..=8 {
            r.record(0, pos);
        }
        r.fold_old(start);
        r.record(1, 8);
        r.fold_old(start + Duration::from_secs(2));
        r.fold_old(start + KEEP_STEPS_FOR);
        assert_eq!(
            r.cursor_at(0),
            Some(vec![5, 7]),
            "kept for {KEEP_STEPS_FOR:?}"
        );
        r.fold_old(start + KEEP_STEPS_FOR + Duration::from_millis(1));
        assert_eq!(r.cursor_at(2), None, "older than what is kept");
        assert_eq!(r.cursor_at(3), Some(vec![8, 7]));
        assert_eq!(r.cursor_at(4), Some(vec![8, 8]));
        r.fold_old(start + 3 * KEEP_STEPS_FOR);
        assert_eq!(r.cursor_at(3), None);
        assert_eq!(r.cursor_at(4), Some(vec![8, 8]), "where the relay stands");
        assert!(r.steps.is_empty());
    }

    /// A relay is stuck when, at a look an interval or more after the
    /// last, it has not relayed what its topics had sent it by then; what
    /// they sent since does not count, and looks closer together than the
    /// interval find nothing.
    #[test]
    fn a_relay_is_stuck_when_it_relayed_nothing_sent_before_the_last_look() {
        let interval = Duration::from_secs(10);
        let start = Instant::now();
        let mut look = RelayLook::default();
        assert!(!look.stuck(start, interval, || vec![5, 9], &[5, 7]));
        assert!(
            !look.stuck(start + interval / 2, interval, || vec![6, 9], &[5, 7]),
            "a look within the interval of the last"
        );
        assert!(
            !look.stuck(start + interval, interval, || vec![6, 9], &[5, 9]),
            "relayed what was sent by the last look"
        );
        assert!(
            !look.stuck(start + 2 * interval, interval, || vec![8, 9], &[6, 9]),
            "event 8 was sent since the last look"
        );
        assert!(
            look.stuck(start + 3 * interval, interval, || vec![8, 9], &[7, 9]),
            "event 8 was sent by the last look and is not relayed yet"
        );
    }

    /// However a relay ends, a panic included, no stream parks on it again
    /// and every parked socket is given back.
    #[tokio::test]
    async fn a_relay_that_panics_closes_and_gives_every_socket_back() {
        let (_client, server) = pair().await;
        let relayed = Arc::new(Mutex::new(relayed()));
        let sockets = Arc::new(ParkedSockets::default());
        let ticket = sockets.park(&server, Reads::All, None, 0, (Duration::ZERO, 16), |_| {});
        let end = RelayEnd {
            relayed: relayed.clone(),
            sockets,
        };
        let relay = tokio::spawn(async move {
            let _end = end;
            panic!("a relay's bug");
        });
        assert!(relay.await.unwrap_err().is_panic());
        tokio::time::timeout(Duration::from_secs(5), ticket.given_back())
            .await
            .expect("the parked socket was not given back");
        assert!(lock(&relayed).closed, "streams would park on it still");
    }

    /// A stream waiting for a second one to start its set's merged feed
    /// is woken when that happens, and no longer finds itself waiting.
    #[tokio::test]
    async fn a_waiting_stream_is_woken_when_its_merged_feed_starts() {
        let wait = Arc::new(MergeWait::default());
        let waiting = tokio::spawn({
            let wait = Arc::clone(&wait);
            async move { std::future::poll_fn(|cx| wait.poll_started(cx)).await }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while wait.lock().waker.is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the waiting task left no waker");
        assert!(matches!(wait.waited(), Waited::Waiting));
        assert!(!waiting.is_finished(), "woken before the start");
        wait.start(Weak::new());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting task was not woken")
            .unwrap();
        assert!(!matches!(wait.waited(), Waited::Waiting));
    }

    #[test]
    fn a_busy_set_keeps_a_bounded_number_of_steps() {
        let mut r = relayed();
        for pos in 6..6 + MAX_STEPS as u64 + 10 {
            r.record(0, pos);
        }
        assert_eq!(r.steps.len(), MAX_STEPS);
        assert_eq!(r.cursor_at(9), None);
        assert_eq!(r.cursor_at(10), Some(vec![15, 7]));
    }
}
