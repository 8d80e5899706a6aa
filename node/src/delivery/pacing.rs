//! Pacing: a busy client gets one write per window instead of one per
//! event; any other client is written to at once.

use std::time::Duration;

use tokio::time::Instant;

/// Decides when a client may be written to again.
///
/// A write costs a system call whatever it carries, so a busy client (one
/// whose events come more than twice per window) gets one write per window;
/// any other client is written to at once, and pays no latency for it.
#[derive(Debug, Clone)]
pub(super) struct Pacer {
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
    pub(super) fn new(window: Duration, queue_events: usize) -> Self {
        Self {
            window,
            max_held_events: u32::try_from(queue_events / 4).unwrap_or(u32::MAX).max(1),
            last_write: None,
            event_gap: None,
            last_live_batch: None,
        }
    }

    /// Until when the next live batch waits, if it must.
    pub(super) fn hold_until(&self, now: Instant) -> Option<Instant> {
        let gap = self.event_gap.filter(|gap| *gap < self.window / 2)?;
        let hold = self.window.min(gap * self.max_held_events);
        self.last_write
            .map(|t| t + hold)
            .filter(|until| *until > now)
    }

    /// Records a live batch of `delivered` events taken at `now`.
    pub(super) fn record_batch(&mut self, now: Instant, delivered: u64) {
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
    pub(super) fn record_write(&mut self, now: Instant, full: bool) {
        self.last_write = (!self.window.is_zero() && !full).then_some(now);
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
