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
/// the stream ends. A stream that is behind (catching up, or its topic's
/// head is past its position) and whose positions have not moved for
/// `delivery.no_progress_seconds` is closed with a retry hint instead; the
/// client resumes from its cursor, on any node.
#[derive(Debug)]
pub(super) struct Progress {
    limit: Duration,
    /// The sum of the client's positions when they last moved.
    mark: u64,
    since: Instant,
}

impl Progress {
    pub(super) fn new(limit: Duration) -> Self {
        Self {
            limit,
            mark: 0,
            since: Instant::now(),
        }
    }

    /// Records the positions' sum at `now`; returns the moment the stream
    /// counts as stalled if it stays behind without moving.
    pub(super) fn observe(&mut self, mark: u64, now: Instant) -> Instant {
        if mark != self.mark {
            self.mark = mark;
            self.since = now;
        }
        self.since + self.limit
    }
}

impl ClientStream {
    /// When the stream counts as stalled, if it is behind: catching up, a
    /// topic's head past its position, or events queued for it.
    pub(super) fn stalled_at(&mut self) -> Option<Instant> {
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
