//! Recent events of one topic, held in node memory.
//!
//! The feed appends every event it reads, in stream order. The oldest are
//! dropped once the byte or count bound is passed. `complete_from` is the
//! first sequence from which the history holds every event the stream had,
//! so a resume after sequence `s` is served from memory exactly when
//! `s + 1 >= complete_from`; older gaps are read from JetStream.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::event::Event;

/// The node-wide bound on memory held by every topic's history
/// (`history.max_bytes`). Feeds add and release what they hold; the topic
/// registry evicts the coldest topics' histories while the total is over the
/// budget.
#[derive(Debug)]
pub struct HistoryBudget {
    max_bytes: usize,
    held: AtomicUsize,
}

impl HistoryBudget {
    /// A budget of `max_bytes`, nothing held.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            held: AtomicUsize::new(0),
        }
    }

    /// The bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes held by every history together.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether the histories hold more than the bound.
    pub fn over(&self) -> bool {
        self.held() > self.max_bytes
    }

    /// Records a change in one history's size.
    pub fn adjust(&self, before: usize, after: usize) {
        if after >= before {
            self.held.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.held.fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

/// A bounded window of the most recent events, oldest first.
#[derive(Debug)]
pub struct History {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    max_bytes: usize,
    max_events: usize,
    complete_from: u64,
}

/// What the history can give a client that has seen up to some sequence.
#[derive(Debug)]
pub enum Slice {
    /// Events after the position, up to the limit asked for (maybe none).
    Events(Vec<Arc<Event>>),
    /// The history starts later: read JetStream for sequences below `until`.
    Missing {
        /// First sequence the history holds completely.
        until: u64,
    },
}

impl History {
    /// An empty history complete from `start` on.
    pub fn new(start: u64, max_bytes: usize, max_events: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_events,
            complete_from: start,
        }
    }

    /// Appends an event (sequences must rise) and drops the oldest past the
    /// bounds.
    pub fn push(&mut self, event: Arc<Event>) {
        self.bytes += event.weight();
        self.events.push_back(event);
        while self.bytes > self.max_bytes || self.events.len() > self.max_events {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.weight();
            self.complete_from = old.seq + 1;
        }
    }

    /// Events with a sequence above `after` and at most `upto`, at most
    /// `limit` of them.
    pub fn after(&self, after: u64, upto: u64, limit: usize) -> Slice {
        if after.saturating_add(1) < self.complete_from {
            return Slice::Missing {
                until: self.complete_from,
            };
        }
        let start = self.events.partition_point(|e| e.seq <= after);
        Slice::Events(
            self.events
                .range(start..)
                .take_while(|e| e.seq <= upto)
                .take(limit)
                .cloned()
                .collect(),
        )
    }

    /// Drops the events below `first`, the stream's first sequence after a
    /// purge or expiry: they are gone from the stream, so a resume that
    /// needs them must learn so from JetStream (`reset`), not from memory.
    /// Returns the bytes released.
    pub fn drop_before(&mut self, first: u64) -> usize {
        let mut freed = 0;
        while self.events.front().is_some_and(|e| e.seq < first) {
            if let Some(old) = self.events.pop_front() {
                freed += old.weight();
            }
        }
        self.bytes -= freed;
        self.complete_from = self.complete_from.max(first);
        freed
    }

    /// Drops every event held; the history is complete again only from
    /// `next` on. Returns the bytes released.
    pub fn clear(&mut self, next: u64) -> usize {
        let freed = self.bytes;
        self.events.clear();
        self.bytes = 0;
        self.complete_from = next;
        freed
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::event::EncodeContext;

    fn ev(seq: u64) -> Arc<Event> {
        let ctx = EncodeContext {
            topic: "t".into(),
            epoch: "e".into(),
            max_event_bytes: 100,
        };
        Arc::new(Event::encode(
            &ctx,
            seq,
            "t",
            SystemTime::UNIX_EPOCH,
            None,
            b"x",
        ))
    }

    fn seqs(slice: Slice) -> Vec<u64> {
        match slice {
            Slice::Events(v) => v.iter().map(|e| e.seq).collect(),
            Slice::Missing { until } => panic!("missing until {until}"),
        }
    }

    #[test]
    fn serves_from_memory_when_complete() {
        let mut h = History::new(5, usize::MAX, 3);
        for s in [5, 6, 8, 9] {
            h.push(ev(s));
        }
        // 5 was dropped by the count bound: complete from 6.
        assert!(matches!(h.after(4, 100, 10), Slice::Missing { until: 6 }));
        assert_eq!(seqs(h.after(5, 100, 10)), vec![6, 8, 9]);
        assert_eq!(seqs(h.after(6, 100, 10)), vec![8, 9]);
        assert_eq!(seqs(h.after(6, 8, 10)), vec![8]);
        assert_eq!(seqs(h.after(5, 100, 2)), vec![6, 8]);
        assert_eq!(seqs(h.after(9, 100, 10)), Vec::<u64>::new());
    }

    #[test]
    fn byte_bound_holds() {
        let one = ev(1).weight();
        let mut h = History::new(1, one * 2, usize::MAX);
        for s in 1..=9 {
            h.push(ev(s));
        }
        assert_eq!(h.len(), 2);
        assert!(h.bytes() <= one * 2);
        assert!(matches!(h.after(6, 100, 10), Slice::Missing { until: 8 }));
    }

    #[test]
    fn a_cleared_history_is_complete_only_from_where_it_was_cleared() {
        let mut h = History::new(1, usize::MAX, 100);
        for s in 1..=5 {
            h.push(ev(s));
        }
        let budget = HistoryBudget::new(1);
        budget.adjust(0, h.bytes());
        assert!(budget.over());
        let freed = h.clear(6);
        budget.adjust(freed, 0);
        assert_eq!(budget.held(), 0);
        assert!(h.is_empty());
        assert!(matches!(h.after(3, 100, 10), Slice::Missing { until: 6 }));
        assert_eq!(seqs(h.after(5, 100, 10)), Vec::<u64>::new());
        h.push(ev(6));
        assert_eq!(seqs(h.after(5, 100, 10)), vec![6]);
    }

    #[test]
    fn events_gone_from_the_stream_are_not_served() {
        let mut h = History::new(1, usize::MAX, 100);
        for s in 1..=5 {
            h.push(ev(s));
        }
        let before = h.bytes();
        let freed = h.drop_before(4);
        assert_eq!(h.bytes(), before - freed);
        assert_eq!(h.len(), 2);
        assert!(matches!(h.after(1, 100, 10), Slice::Missing { until: 4 }));
        assert_eq!(seqs(h.after(3, 100, 10)), vec![4, 5]);
    }

    #[test]
    fn zero_capacity_always_reads_jetstream() {
        let mut h = History::new(1, usize::MAX, 0);
        h.push(ev(1));
        h.push(ev(2));
        assert!(h.is_empty());
        assert!(matches!(h.after(0, 100, 10), Slice::Missing { until: 3 }));
        assert_eq!(seqs(h.after(2, 100, 10)), Vec::<u64>::new());
    }
}
