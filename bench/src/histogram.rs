//! A latency histogram with about 0.2 % precision and no dependencies.
//!
//! Values (microseconds) below 1024 have a bucket each; above, each power of
//! two is split into 512 buckets. Workers send theirs to the coordinator as
//! sparse `(bucket, count)` pairs, which are merged before percentiles are
//! read.

use serde::{Deserialize, Serialize};

const LINEAR: u64 = 1024;
const SUB_BITS: u32 = 9;

/// Counts of recorded values per bucket.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

/// The sparse form of a histogram, for JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sparse(pub Vec<(u32, u64)>);

fn bucket(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let shift = 63 - value.leading_zeros() - SUB_BITS;
    ((shift as u64 + 1) * (LINEAR / 2) + (value >> shift) - LINEAR / 2) as usize
}

fn lowest(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let shift = index / (LINEAR / 2) - 1;
    let sub = index % (LINEAR / 2) + LINEAR / 2;
    sub << shift
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, value: u64) {
        let index = bucket(value);
        if index >= self.counts.len() {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.total += 1;
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The value below which a fraction `q` (0..=1) of the values lie.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return lowest(index);
            }
        }
        lowest(self.counts.len().saturating_sub(1))
    }

    /// The sparse form.
    pub fn to_sparse(&self) -> Sparse {
        Sparse(
            self.counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
        )
    }

    /// Adds a sparse histogram into this one.
    pub fn merge(&mut self, other: &Sparse) {
        for &(index, count) in &other.0 {
            let index = index as usize;
            if index >= self.counts.len() {
                self.counts.resize(index + 1, 0);
            }
            self.counts[index] += count;
            self.total += count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_precise() {
        let mut previous = 0;
        for v in (0..5_000_000u64).step_by(7) {
            let b = bucket(v);
            assert!(b >= previous);
            previous = b;
            let low = lowest(b);
            assert!(low <= v, "{v} {low}");
            assert!(v - low <= v / 400 + 1, "{v} {low}");
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Histogram::default();
        for v in 1..=1000 {
            a.record(v);
        }
        let mut b = Histogram::default();
        b.merge(&a.to_sparse());
        assert_eq!(b.len(), 1000);
        assert_eq!(b.quantile(0.5), 500);
        assert_eq!(b.quantile(0.99), 990);
        assert_eq!(b.quantile(1.0), 1000);
    }
}
