//! A stream's one timer: its next heartbeat and whatever else it waits for
//! by the clock (the end of a pacing window, its deadline, its stall watch).
//!
//! Every waiting stream used to hold a heartbeat `Interval` plus a `Sleep`
//! inside its wait for each other time it watched, over 100 bytes each, in
//! every one of thousands of streams. One boxed `Sleep`, moved to the
//! earliest time the stream watches before each wait, does the same work.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep, sleep_until};

/// What the timer woke for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimerFired {
    /// The heartbeat period is over.
    Heartbeat,
    /// The other time given to the wait came.
    Other,
}

/// The stream's heartbeat and one other time, on a single `Sleep`.
pub(super) struct StreamTimer {
    sleep: Pin<Box<Sleep>>,
    next_heartbeat: Instant,
    period: Duration,
}

impl StreamTimer {
    /// A timer whose first heartbeat is one `period` from now.
    pub(super) fn new(period: Duration) -> Self {
        let next_heartbeat = Instant::now() + period;
        Self {
            sleep: Box::pin(sleep_until(next_heartbeat)),
            next_heartbeat,
            period,
        }
    }

    /// Waits for the next heartbeat or `other`, whichever comes first. A
    /// heartbeat that fires schedules the next one a period later (a late
    /// one delays those after it, as `MissedTickBehavior::Delay` does).
    pub(super) async fn wait(&mut self, other: Option<Instant>) -> TimerFired {
        std::future::poll_fn(|cx| self.poll_wait(cx, other)).await
    }

    /// Moves the next heartbeat to a period after `last_write`, if that is
    /// still to come, and says whether it did: a stream written to less
    /// than a period ago needs no heartbeat yet, and one a period after
    /// that write keeps it from being silent for longer than a period.
    pub(super) fn defer_after(&mut self, last_write: Option<Instant>) -> bool {
        match last_write.map(|at| at + self.period) {
            Some(due) if due > Instant::now() => {
                self.next_heartbeat = due;
                true
            }
            _ => false,
        }
    }

    fn poll_wait(&mut self, cx: &mut Context<'_>, other: Option<Instant>) -> Poll<TimerFired> {
        let other = other.filter(|at| *at < self.next_heartbeat);
        let target = other.unwrap_or(self.next_heartbeat);
        if self.sleep.deadline() != target {
            self.sleep.as_mut().reset(target);
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        if other.is_some() {
            return Poll::Ready(TimerFired::Other);
        }
        self.next_heartbeat = Instant::now() + self.period;
        Poll::Ready(TimerFired::Heartbeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heartbeats come a period apart; an earlier time given to the wait
    /// fires first and does not move the heartbeat.
    #[tokio::test(start_paused = true)]
    async fn the_earlier_of_the_heartbeat_and_the_other_time_fires() {
        let start = Instant::now();
        let mut timer = StreamTimer::new(Duration::from_secs(10));
        assert_eq!(timer.wait(None).await, TimerFired::Heartbeat);
        assert_eq!(start.elapsed(), Duration::from_secs(10));

        let soon = Instant::now() + Duration::from_secs(3);
        assert_eq!(timer.wait(Some(soon)).await, TimerFired::Other);
        assert_eq!(start.elapsed(), Duration::from_secs(13));

        // The heartbeat stays where it was: 10 s after the last one.
        assert_eq!(timer.wait(None).await, TimerFired::Heartbeat);
        assert_eq!(start.elapsed(), Duration::from_secs(20));

        // A time after the next heartbeat waits behind it.
        let late = Instant::now() + Duration::from_secs(15);
        assert_eq!(timer.wait(Some(late)).await, TimerFired::Heartbeat);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert_eq!(timer.wait(Some(late)).await, TimerFired::Other);
        assert_eq!(start.elapsed(), Duration::from_secs(35));
    }

    /// A write less than a period before the heartbeat fires defers the
    /// next one to a period after that write, not a period after the
    /// firing; a write a period ago or more, or none, defers nothing.
    #[tokio::test(start_paused = true)]
    async fn a_recent_write_defers_the_heartbeat_to_a_period_after_it() {
        let start = Instant::now();
        let mut timer = StreamTimer::new(Duration::from_secs(10));
        let wrote = start + Duration::from_secs(1);
        assert_eq!(timer.wait(None).await, TimerFired::Heartbeat);
        assert!(timer.defer_after(Some(wrote)));
        assert_eq!(timer.wait(None).await, TimerFired::Heartbeat);
        assert_eq!(start.elapsed(), Duration::from_secs(11));
        assert!(!timer.defer_after(Some(wrote)), "a period ago");
        assert!(!timer.defer_after(None));
        // Not deferred: the next heartbeat is a period after the last.
        assert_eq!(timer.wait(None).await, TimerFired::Heartbeat);
        assert_eq!(start.elapsed(), Duration::from_secs(21));
    }

    /// A wait dropped before it fires leaves the timer usable.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_wait_leaves_the_timer_usable() {
        let start = Instant::now();
        let mut timer = StreamTimer::new(Duration::from_secs(10));
        let soon = Instant::now() + Duration::from_secs(5);
        let dropped = tokio::time::timeout(Duration::from_secs(1), timer.wait(Some(soon))).await;
        assert!(dropped.is_err());
        assert_eq!(timer.wait(None).await, TimerFired::Heartbeat);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
