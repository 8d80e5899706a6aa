//! The time by NATS's clock, for a node whose own clock is off.
//!
//! JetStream stamps every event with its server's clock, and the node
//! compares those stamps with its own clock: a delivery's lag, how long a
//! topic has been quiet. Tokens are judged by a clock too, and behind a load
//! balancer every node must judge one token alike. A node whose clock is
//! off (no NTP, a host clock stepped) would report its skew as lag, or as
//! none at all, and refuse tokens the other nodes accept.
//!
//! So the node measures how far its clock is from NATS's at each cluster
//! report ([`crate::report`]): it writes its entry, reads back when the
//! bucket's leader stored it, and takes the middle of the write's round trip
//! as its own time for the same instant. Off by [`CORRECTED_FROM`] or more,
//! the node goes by NATS's clock ([`nats_now`]) and says so in its log;
//! closer than that, by its own, which NTP keeps far closer than a round
//! trip can measure.

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::{Duration, SystemTime},
};

/// How far the node's clock must be from NATS's for the node to go by
/// NATS's: well past a write's round trip, well within a token's leeway.
pub const CORRECTED_FROM: Duration = Duration::from_secs(1);

/// NATS's clock minus the node's, in microseconds, as applied; 0 while the
/// node goes by its own clock. Process-wide: every node in a process reads
/// one system clock.
static APPLIED_OFFSET_MICROS: AtomicI64 = AtomicI64::new(0);

/// Now, by NATS's clock when the node's own is off by [`CORRECTED_FROM`]
/// or more, else by the node's.
pub fn nats_now() -> SystemTime {
    shift(
        SystemTime::now(),
        APPLIED_OFFSET_MICROS.load(Ordering::Relaxed),
    )
}

/// One measurement of NATS's clock against the node's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// NATS's clock minus the node's, in seconds: positive when the node's
    /// clock is behind.
    pub offset_seconds: f64,
    /// Half the write's round trip: the offset is known to within this.
    pub uncertainty_seconds: f64,
}

impl Measurement {
    /// The offset of a write sent at `sent` and answered at `answered` (the
    /// node's clock) that NATS stored at `stored` (NATS's clock).
    pub fn of_write(sent: SystemTime, answered: SystemTime, stored: SystemTime) -> Self {
        let round_trip = answered.duration_since(sent).unwrap_or_default();
        let middle = sent + round_trip / 2;
        Self {
            offset_seconds: seconds_between(middle, stored),
            uncertainty_seconds: round_trip.as_secs_f64() / 2.0,
        }
    }

    /// Whether the node should go by NATS's clock: off by at least
    /// [`CORRECTED_FROM`], and by more than the measurement can be wrong.
    pub fn calls_for_correction(&self) -> bool {
        let off = self.offset_seconds.abs();
        off >= CORRECTED_FROM.as_secs_f64() && off > self.uncertainty_seconds
    }
}

/// What applying a measurement changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The node goes by NATS's clock from now on.
    Corrected,
    /// Already corrected; the offset moved by a second or more.
    Moved,
    /// The node goes by its own clock again.
    Restored,
    /// Nothing worth a line.
    Unchanged,
}

/// Makes [`nats_now`] follow `measurement`; says what changed.
pub fn apply(measurement: Measurement) -> Change {
    let micros = if measurement.calls_for_correction() {
        (measurement.offset_seconds * 1e6) as i64
    } else {
        0
    };
    let before = APPLIED_OFFSET_MICROS.swap(micros, Ordering::Relaxed);
    classify(before, micros)
}

fn classify(before: i64, after: i64) -> Change {
    match (before, after) {
        (0, 0) => Change::Unchanged,
        (0, _) => Change::Corrected,
        (_, 0) => Change::Restored,
        (before, after) if before.abs_diff(after) >= CORRECTED_FROM.as_micros() as u64 => {
            Change::Moved
        }
        _ => Change::Unchanged,
    }
}

/// `later - earlier` in seconds, negative when `later` is earlier.
fn seconds_between(earlier: SystemTime, later: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    }
}

fn shift(time: SystemTime, micros: i64) -> SystemTime {
    let by = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        time.checked_add(by).unwrap_or(time)
    } else {
        time.checked_sub(by).unwrap_or(time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: f64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(1_800_000_000.0 + seconds)
    }

    #[test]
    fn a_node_behind_measures_a_positive_offset_known_to_half_the_round_trip() {
        // Sent at 10.0, answered at 10.2 by the node's clock; NATS stored
        // it at 190.1 by its own: the node is 180 s behind.
        let m = Measurement::of_write(at(10.0), at(10.2), at(190.1));
        assert!((m.offset_seconds - 180.0).abs() < 1e-6, "{m:?}");
        assert!((m.uncertainty_seconds - 0.1).abs() < 1e-6, "{m:?}");
        assert!(m.calls_for_correction());
        let ahead = Measurement::of_write(at(190.0), at(190.2), at(10.1));
        assert!((ahead.offset_seconds + 180.0).abs() < 1e-6, "{ahead:?}");
        assert!(ahead.calls_for_correction());
    }

    #[test]
    fn an_offset_under_a_second_or_under_the_round_trip_is_left_alone() {
        assert!(!Measurement::of_write(at(0.0), at(0.01), at(0.6)).calls_for_correction());
        // 1.5 s off, but the write took 4 s: the store could have happened
        // anywhere in it.
        assert!(!Measurement::of_write(at(0.0), at(4.0), at(3.5)).calls_for_correction());
    }

    #[test]
    fn changes_worth_a_line() {
        assert_eq!(classify(0, 0), Change::Unchanged);
        assert_eq!(classify(0, 180_000_000), Change::Corrected);
        assert_eq!(classify(180_000_000, 180_400_000), Change::Unchanged);
        assert_eq!(classify(180_000_000, -180_000_000), Change::Moved);
        assert_eq!(classify(-180_000_000, 0), Change::Restored);
    }

    #[test]
    fn shifting_goes_both_ways_and_never_overflows() {
        assert_eq!(shift(at(0.0), 2_000_000), at(2.0));
        assert_eq!(shift(at(0.0), -2_000_000), at(-2.0));
        let last = SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
        assert_eq!(shift(last, 1_000_000), last);
    }
}
