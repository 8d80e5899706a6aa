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
//! The writer keeps the pacing rule for its sockets: while events come more
//! than twice per `delivery.write_pacing_ms`, it writes once per window.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::{BufMut, Bytes, BytesMut};
use slab::Slab;
use tokio::{
    net::TcpStream,
    sync::{
        Notify,
        broadcast::{self, error::RecvError, error::TryRecvError},
    },
    time::Instant,
};

use super::{BATCH_BYTES, LAG_SAMPLE_EVERY, pacing::Pacer};
use crate::{event::Event, node::Node};

/// The sockets parked on one feed.
#[derive(Default)]
pub(crate) struct ParkedSockets {
    inner: Mutex<Parked>,
}

#[derive(Default)]
struct Parked {
    /// Sockets that take every event of the feed.
    all: Slab<Entry>,
    /// Sockets that take one path's events, by path.
    by_path: HashMap<Box<str>, Slab<Entry>>,
    /// Whether the feed's writer runs.
    writer: bool,
}

impl Parked {
    fn slab(&mut self, path: Option<&str>) -> Option<&mut Slab<Entry>> {
        match path {
            None => Some(&mut self.all),
            Some(path) => self.by_path.get_mut(path),
        }
    }
}

struct Entry {
    socket: Arc<TcpStream>,
    /// The last event the socket took.
    pos: u64,
    handback: Arc<Handback>,
}

#[derive(Default)]
struct Handback {
    returned: Mutex<Option<Returned>>,
    given_back: Notify,
    /// Set on each write, cleared by the stream's heartbeat.
    wrote: AtomicBool,
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
}

/// A stream's claim on its parked socket.
pub(crate) struct Ticket {
    sockets: Arc<ParkedSockets>,
    path: Option<Box<str>>,
    key: usize,
    handback: Arc<Handback>,
    held: bool,
}

impl Ticket {
    /// Resolves once the writer has given the socket back.
    pub(crate) async fn given_back(&self) {
        self.handback.given_back.notified().await;
    }

    /// Whether the writer wrote to the socket since the last call.
    pub(crate) fn take_wrote(&self) -> bool {
        self.handback.wrote.swap(false, Ordering::Relaxed)
    }

    /// Takes the socket back, with the position the writer left it at.
    /// `None` only if the writer lost track of it, which it never does.
    pub(crate) fn take_back(mut self) -> Option<Returned> {
        self.held = false;
        self.sockets
            .take_back(self.path.as_deref(), self.key, &self.handback)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.held {
            self.sockets
                .take_back(self.path.as_deref(), self.key, &self.handback);
        }
    }
}

impl ParkedSockets {
    fn lock(&self) -> MutexGuard<'_, Parked> {
        // Entries are only added and removed whole under the lock: a panic
        // cannot leave one half-written.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks `socket` at `pos`, for every event of the feed (`path` `None`)
    /// or for one path's. `start_writer` is called, under the lock, if the
    /// feed has no writer yet. The caller holds the feed's lock, so no event
    /// is published between its check of the client's queue and this.
    pub(crate) fn park(
        self: &Arc<Self>,
        socket: &Arc<TcpStream>,
        path: Option<&str>,
        pos: u64,
        start_writer: impl FnOnce(),
    ) -> Ticket {
        let mut parked = self.lock();
        if !parked.writer {
            parked.writer = true;
            start_writer();
        }
        let handback = Arc::new(Handback::default());
        let entry = Entry {
            socket: socket.clone(),
            pos,
            handback: handback.clone(),
        };
        let key = match path {
            None => parked.all.insert(entry),
            Some(path) => parked.by_path.entry(path.into()).or_default().insert(entry),
        };
        Ticket {
            sockets: self.clone(),
            path: path.map(Into::into),
            key,
            handback,
            held: true,
        }
    }

    fn take_back(
        &self,
        path: Option<&str>,
        key: usize,
        handback: &Arc<Handback>,
    ) -> Option<Returned> {
        let mut parked = self.lock();
        if let Some(slab) = parked.slab(path)
            && slab
                .get(key)
                .is_some_and(|e| Arc::ptr_eq(&e.handback, handback))
        {
            let entry = slab.remove(key);
            if slab.is_empty()
                && let Some(path) = path
            {
                parked.by_path.remove(path);
            }
            return Some(Returned {
                pos: entry.pos,
                remainder: None,
                refused: false,
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

    /// Gives every socket back where it stands.
    fn give_all_back(&self) {
        let mut parked = self.lock();
        let mut slabs: Vec<Slab<Entry>> = parked.by_path.drain().map(|(_, s)| s).collect();
        slabs.push(std::mem::take(&mut parked.all));
        for entry in slabs.into_iter().flatten().map(|(_, e)| e) {
            let pos = entry.pos;
            give_back(entry, pos, None, false);
        }
    }

    /// Writes `batch` to every socket it concerns; returns the events
    /// delivered and the sockets given back.
    fn write(&self, batch: &[Arc<Event>]) -> (u64, u64) {
        let mut parked = self.lock();
        let (mut delivered, mut refusals) = (0, 0);
        if !parked.all.is_empty() {
            let frames = Frames::of(batch.iter());
            let (d, r) = sweep(&mut parked.all, &frames);
            (delivered, refusals) = (delivered + d, refusals + r);
        }
        if !parked.by_path.is_empty() {
            let mut paths: Vec<&str> = batch.iter().map(|e| &*e.path).collect();
            paths.sort_unstable();
            paths.dedup();
            for path in paths {
                let Some(slab) = parked.by_path.get_mut(path) else {
                    continue;
                };
                let frames = Frames::of(batch.iter().filter(|e| &*e.path == path));
                let (d, r) = sweep(slab, &frames);
                (delivered, refusals) = (delivered + d, refusals + r);
                if slab.is_empty() {
                    parked.by_path.remove(path);
                }
            }
        }
        (delivered, refusals)
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
    });
    entry.handback.given_back.notify_one();
}

/// A batch's frames, back to back, and where each event ends in them.
struct Frames {
    bytes: Bytes,
    /// Each event's sequence and the offset just past its frame.
    ends: Vec<(u64, usize)>,
}

impl Frames {
    fn of<'a>(events: impl Iterator<Item = &'a Arc<Event>>) -> Self {
        let events: Vec<&Arc<Event>> = events.collect();
        let mut ends = Vec::with_capacity(events.len());
        let bytes = match events.as_slice() {
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
        Self { bytes, ends }
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
}

/// Writes `frames` to each socket of `slab`; gives back those that do not
/// take all they need. Returns the events delivered and the sockets given
/// back.
fn sweep(slab: &mut Slab<Entry>, frames: &Frames) -> (u64, u64) {
    let Some(&(last, _)) = frames.ends.last() else {
        return (0, 0);
    };
    let mut delivered = 0u64;
    let mut refused: Vec<(usize, u64, Option<Bytes>)> = Vec::new();
    for (key, entry) in slab.iter_mut() {
        let Some((first, start)) = frames.after(entry.pos) else {
            continue;
        };
        let wanted = &frames.bytes[start..];
        match entry.socket.try_write(wanted) {
            Ok(n) if n == wanted.len() => {
                entry.pos = last;
                entry.handback.wrote.store(true, Ordering::Relaxed);
                delivered += (frames.ends.len() - first) as u64;
            }
            Ok(n) if n > 0 => {
                // The socket took part of the batch: the stream writes the
                // rest itself, and owns every event of it from here.
                let rest = frames.bytes.slice(start + n..);
                delivered += (frames.ends.len() - first) as u64;
                refused.push((key, last, Some(rest)));
            }
            // Full, or failed: the stream finds out which when it writes.
            _ => refused.push((key, entry.pos, None)),
        }
    }
    let refusals = refused.len() as u64;
    for (key, pos, remainder) in refused {
        give_back(slab.remove(key), pos, remainder, true);
    }
    (delivered, refusals)
}

/// Starts the writer of a feed: it reads `events` (a receiver of the feed's
/// broadcast of every event, subscribed before any socket parked) and writes
/// them to `sockets` until the feed closes.
pub(crate) fn start_writer(
    sockets: Arc<ParkedSockets>,
    events: broadcast::Receiver<Arc<Event>>,
    node: Node,
    queue_events: usize,
) {
    tokio::spawn(write_parked(sockets, events, node, queue_events));
}

async fn write_parked(
    sockets: Arc<ParkedSockets>,
    mut events: broadcast::Receiver<Arc<Event>>,
    node: Node,
    queue_events: usize,
) {
    let window = Duration::from_millis(node.config().delivery.write_pacing_ms);
    let mut pacer = Pacer::new(window, queue_events);
    let mut batch: Vec<Arc<Event>> = Vec::new();
    let mut batches = 0u32;
    loop {
        if let Some(until) = pacer.hold_until(Instant::now()) {
            tokio::time::sleep_until(until).await;
        }
        let (mut lagged, mut closed) = (false, false);
        match events.recv().await {
            Ok(event) => batch.push(event),
            Err(RecvError::Lagged(_)) => lagged = true,
            Err(RecvError::Closed) => closed = true,
        }
        let mut bytes = batch.first().map_or(0, |e| e.frame.len());
        while !lagged && !closed && bytes < BATCH_BYTES {
            match events.try_recv() {
                Ok(event) => {
                    bytes += event.frame.len();
                    batch.push(event);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(_)) => lagged = true,
                Err(TryRecvError::Closed) => closed = true,
            }
        }
        // A drain marker ends the batch: what came before it is written,
        // then every stream is handed its socket back to drain itself.
        let drain = batch.iter().position(|e| e.is_drain_marker());
        if let Some(at) = drain {
            batch.truncate(at);
        }
        if !batch.is_empty() {
            let (delivered, refusals) = sockets.write(&batch);
            if refusals > 0 {
                node.metrics().parked_refusals.inc_by(refusals);
            }
            let now = Instant::now();
            pacer.record_batch(now, batch.len() as u64);
            pacer.record_write(now, bytes >= super::PACED_WRITE_MAX);
            if delivered > 0 {
                let metrics = node.metrics();
                metrics.events_delivered.inc_by(delivered);
                batches = batches.wrapping_add(1);
                if batches % LAG_SAMPLE_EVERY == 1
                    && let Ok(lag) = SystemTime::now().duration_since(batch[0].published)
                {
                    metrics.delivery_lag.observe(lag.as_secs_f64());
                }
            }
            batch.clear();
        }
        if lagged || closed || drain.is_some() {
            // Behind the queue, the feed gone, or the node draining: each
            // stream takes it from here, from where its socket stands.
            sockets.give_all_back();
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(seqs: &[(u64, &'static str)]) -> Frames {
        let mut ends = Vec::new();
        let mut bytes = BytesMut::new();
        for (seq, frame) in seqs {
            bytes.put_slice(frame.as_bytes());
            ends.push((*seq, bytes.len()));
        }
        Frames {
            bytes: bytes.freeze(),
            ends,
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
