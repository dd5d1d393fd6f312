//! A small log-scale histogram with fading memory, the tuner's and the allocator's record of
//! measured values (run times, CPU time, memory, idle gaps).
//!
//! Buckets grow by a quarter octave (about 19 %), which keeps any quantile within a fifth of the
//! true value over the whole range of `u64` with 252 counters. Counts are `f64` so that the whole
//! histogram can fade: [`LogHistogram::fade`] multiplies every count by a factor, which lets old
//! behaviour lose weight without keeping a window of samples.

/// Values below this have a bucket each.
const EXACT: u64 = 8;
/// Sub-buckets per power of two above [`EXACT`].
const STEPS: usize = 4;
const BUCKETS: usize = EXACT as usize + 61 * STEPS;

#[derive(Debug, Clone, PartialEq)]
pub struct LogHistogram {
    counts: Vec<f64>,
    total: f64,
    /// Largest value recorded since the last [`LogHistogram::fade`] that dropped it.
    max: u64,
}

impl Default for LogHistogram {
    fn default() -> Self {
        LogHistogram {
            counts: vec![0.0; BUCKETS],
            total: 0.0,
            max: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let octave = 63 - v.leading_zeros() as usize;
    // The two bits below the leading one pick the quarter octave.
    let frac = ((v >> (octave - 2)) & 0b11) as usize;
    EXACT as usize + (octave - 3) * STEPS + frac
}

/// The largest value that falls in bucket `b`.
fn bucket_upper(b: usize) -> u64 {
    if b < EXACT as usize {
        return b as u64;
    }
    let octave = (b - EXACT as usize) / STEPS + 3;
    let frac = ((b - EXACT as usize) % STEPS) as u128;
    let lower = (4 + frac) << (octave - 2);
    let upper = lower + (1u128 << (octave - 2)) - 1;
    upper.min(u64::MAX as u128) as u64
}

impl LogHistogram {
    pub fn record(&mut self, v: u64) {
        self.record_weighted(v, 1.0);
    }

    pub fn record_weighted(&mut self, v: u64, weight: f64) {
        self.counts[bucket_of(v).min(BUCKETS - 1)] += weight;
        self.total += weight;
        self.max = self.max.max(v);
    }

    /// The (faded) number of values recorded.
    pub fn weight(&self) -> f64 {
        self.total
    }

    /// The largest value recorded, 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value below which a share `q` of the recorded weight lies (a bucket's upper end,
    /// capped at the largest value seen); `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total <= 0.0 {
            return None;
        }
        let want = q.clamp(0.0, 1.0) * self.total;
        let mut seen = 0.0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if *c > 0.0 && seen >= want - 1e-9 {
                return Some(bucket_upper(b).min(self.max));
            }
        }
        Some(self.max)
    }

    /// Multiplies every count by `factor` (0..=1); counts that become negligible are dropped,
    /// and the maximum follows what is left.
    pub fn fade(&mut self, factor: f64) {
        let factor = factor.clamp(0.0, 1.0);
        self.total = 0.0;
        let mut top = None;
        for (b, c) in self.counts.iter_mut().enumerate() {
            *c *= factor;
            if *c < 1e-3 {
                *c = 0.0;
            } else {
                self.total += *c;
                top = Some(b);
            }
        }
        self.max = top.map_or(0, |b| bucket_upper(b).min(self.max));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order() {
        let mut last = 0;
        for v in [0u64, 1, 2, 3, 4, 5, 7, 8, 100, 1000, 1 << 40, u64::MAX] {
            let b = bucket_of(v);
            assert!(b >= last, "{v}");
            assert!(bucket_upper(b) >= v, "{v} above bucket {b}'s end");
            last = b;
        }
    }

    #[test]
    fn quantiles_are_within_a_fifth() {
        let mut h = LogHistogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() < 0.2, "{p50}");
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.2, "{p99}");
        assert_eq!(h.quantile(1.0), Some(1_000_000));
    }

    #[test]
    fn fading_lets_new_values_take_over() {
        let mut h = LogHistogram::default();
        for _ in 0..100 {
            h.record(10);
        }
        for _ in 0..10 {
            h.fade(0.5);
        }
        for _ in 0..20 {
            h.record(1000);
        }
        assert!(h.quantile(0.5).unwrap() >= 900);
        for _ in 0..40 {
            h.fade(0.5);
        }
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.max(), 0);
    }
}
