//! The no-progress watchdog of one client stream.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::warn;

use super::{ClientStream, CloseReason};

/// The no-progress watchdog of one client stream.
///
/// Heartbeats keep a stream looking alive to the browser, so a stream that
/// waits on something that never comes (a JetStream read, a feed gone
/// quiet) would stall its client forever: `EventSource` only reconnects when
/// the stream ends. A stream that has been behind (catching up, or its
/// topic's head past its position) for `delivery.no_progress_seconds`, with
/// no move of its positions meanwhile, is closed with a retry hint instead;
/// the client resumes from its cursor, on any node. A stream that was idle
/// and in step with its topic only starts that clock when it falls behind.
#[derive(Debug)]
pub(super) struct Progress {
    limit: Duration,
    /// The sum of the client's positions when they last moved.
    mark: u64,
    /// When they last moved.
    moved: Instant,
    /// Since when the stream has been behind, if it is.
    behind: Option<Instant>,
}

impl Progress {
    pub(super) fn new(limit: Duration) -> Self {
        Self {
            limit,
            mark: 0,
            moved: Instant::now(),
            behind: None,
        }
    }

    /// Records the positions' sum and whether the stream is behind at
    /// `now`; returns the moment it counts as stalled if it stays behind
    /// without moving, or `None` while it is in step.
    pub(super) fn observe(&mut self, mark: u64, behind: bool, now: Instant) -> Option<Instant> {
        if mark != self.mark {
            self.mark = mark;
            self.moved = now;
        }
        if !behind {
            self.behind = None;
            return None;
        }
        let since = *self.behind.get_or_insert(now);
        Some(since.max(self.moved) + self.limit)
    }
}

impl ClientStream {
    /// When the stream counts as stalled, if it is behind: catching up, or a
    /// topic's head past its position.
    pub(super) fn stalled_at(&mut self) -> Option<Instant> {
        let catching_up = self.catching_up < self.topics.len();
        // Atomic loads only: this runs on every wake of every stream. (A
        // broadcast receiver's `is_empty` takes the channel's lock, which
        // thousands of clients of one topic would fight over.) A client of
        // one path on the whole topic's feed is never behind the topic's
        // head; its feed's own watchdog covers it.
        let behind = catching_up
            || self
                .topics
                .iter()
                .any(|t| !t.by_path && t.feed.head() > t.pos);
        let mark = self
            .topics
            .iter()
            .fold(0u64, |sum, t| sum.wrapping_add(t.pos));
        self.progress.observe(mark, behind, Instant::now())
    }

    /// Ends a stream that made no progress while behind; the client
    /// resumes from its cursor when it reconnects.
    pub(super) fn stalled(&mut self) -> Bytes {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(6);

    #[test]
    fn a_stream_in_step_is_never_stalled() {
        let mut p = Progress::new(LIMIT);
        let t0 = Instant::now();
        assert_eq!(p.observe(0, false, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn the_clock_starts_when_the_stream_falls_behind_not_at_its_last_event() {
        // Quiet for a minute, in step; then its topic moves on.
        let mut p = Progress::new(LIMIT);
        let t0 = Instant::now();
        let behind_at = t0 + Duration::from_secs(60);
        assert_eq!(p.observe(0, true, behind_at), Some(behind_at + LIMIT));
        // Still behind and not moving: the same deadline.
        assert_eq!(
            p.observe(0, true, behind_at + Duration::from_secs(3)),
            Some(behind_at + LIMIT)
        );
    }

    #[test]
    fn progress_while_behind_moves_the_deadline() {
        let mut p = Progress::new(LIMIT);
        let t0 = Instant::now();
        p.observe(0, true, t0);
        let later = t0 + Duration::from_secs(4);
        assert_eq!(p.observe(7, true, later), Some(later + LIMIT));
        // Back in step: no deadline; behind again later: a fresh clock.
        assert_eq!(p.observe(9, false, later), None);
        let again = later + Duration::from_secs(30);
        assert_eq!(p.observe(9, true, again), Some(again + LIMIT));
    }
}
