//! Latency histograms for `stats()`: the limiter's own and the `Async` and
//! `Hybrid` strategies'.
//!
//! Log-linear buckets in nanoseconds, the layout of HdrHistogram (Tene,
//! <https://github.com/HdrHistogram/HdrHistogram>) with three bits of
//! precision: below 8 ns one bucket per nanosecond, then every power of two
//! split into 8 equal buckets, up to 2^64 ns (about 584 years, the most a
//! `u64` of nanoseconds holds: a request holding its permit for days, a
//! stream or a connection, is still within its bucket; only a `Duration`
//! beyond that counts in the last one). A percentile is reported as the
//! largest latency of its bucket, so it is never below the true value and
//! at most 12.5 % above it (a bucket spans at most an eighth of its lower
//! bound). 496 buckets: about 4 KiB per histogram, and recording a latency
//! is a count and a few shifts.

#[cfg(feature = "tokio")]
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Bits of precision: 2^3 = 8 buckets per power of two.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// The longest latency a bucket tells apart: longer `Duration`s count as
/// this.
const MAX_NANOS: u64 = u64::MAX;
/// Number of buckets: 8 exact ones, then 8 for each power of two from 2^3
/// to 2^63.
pub(crate) const BUCKETS: usize = (SUB + (u64::BITS - SUB_BITS) as u64 * SUB) as usize;

/// The bucket that counts `latency`.
#[inline]
pub(crate) fn bucket(latency: Duration) -> usize {
    let nanos = u64::try_from(latency.as_nanos()).unwrap_or(MAX_NANOS);
    if nanos < SUB {
        return nanos as usize;
    }
    // nanos in [2^k, 2^(k+1)), k >= 3: the top four bits say which eighth.
    let k = u64::from(u64::BITS - 1 - nanos.leading_zeros());
    let eighth = (nanos >> (k - u64::from(SUB_BITS))) - SUB;
    (SUB + (k - u64::from(SUB_BITS)) * SUB + eighth) as usize
}

/// The largest latency bucket `i` counts.
pub(crate) fn bucket_max(i: usize) -> Duration {
    let i = i.min(BUCKETS - 1) as u64;
    if i < SUB {
        return Duration::from_nanos(i);
    }
    let shift = (i - SUB) / SUB;
    let eighth = (i - SUB) % SUB;
    // In u128: the last bucket ends at 2^64 - 1, whose `+ 1` a u64 lacks.
    let end = (u128::from(SUB + eighth + 1) << shift) - 1;
    Duration::from_nanos(u64::try_from(end).unwrap_or(u64::MAX))
}

/// The 50th, 90th and 99th percentiles of the latencies counted in
/// `counts` (one per bucket), each the largest latency of the bucket that
/// holds it; `None` when nothing was counted.
pub(crate) fn percentiles(counts: &[u64]) -> [Option<Duration>; 3] {
    // In u128: a u64 of counts times 99 overflows from u64::MAX / 99 (and
    // several buckets' sum from u64::MAX).
    let total: u128 = counts.iter().map(|&c| u128::from(c)).sum();
    [50u128, 90, 99].map(|p| {
        if total == 0 {
            return None;
        }
        // The smallest bucket holding the ceil(p% × total)-th latency.
        let rank = (total * p).div_ceil(100).max(1);
        let mut seen = 0u128;
        counts.iter().enumerate().find_map(|(i, &c)| {
            seen += u128::from(c);
            (seen >= rank).then(|| bucket_max(i))
        })
    })
}

/// A histogram written under a lock of its own.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Box<[u64; BUCKETS]>,
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
        }
    }

    #[inline]
    pub(crate) fn record(&mut self, latency: Duration) {
        let count = &mut self.counts[bucket(latency)];
        *count = count.saturating_add(1);
    }

    pub(crate) fn percentiles(&self) -> [Option<Duration>; 3] {
        percentiles(&self.counts[..])
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [p50, p90, p99] = self.percentiles();
        f.debug_struct("Histogram")
            .field(
                "count",
                &self.counts.iter().map(|&c| u128::from(c)).sum::<u128>(),
            )
            .field("p50", &p50)
            .field("p90", &p90)
            .field("p99", &p99)
            .finish()
    }
}

/// A histogram written by many threads at once, with relaxed atomics.
#[cfg(feature = "tokio")]
pub(crate) struct AtomicHistogram {
    counts: Box<[AtomicU64; BUCKETS]>,
}

#[cfg(feature = "tokio")]
impl AtomicHistogram {
    pub(crate) fn new() -> Self {
        Self {
            counts: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    #[inline]
    pub(crate) fn record(&self, latency: Duration) {
        self.counts[bucket(latency)].fetch_add(1, Relaxed);
    }

    pub(crate) fn percentiles(&self) -> [Option<Duration>; 3] {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        percentiles(&counts)
    }
}

#[cfg(feature = "tokio")]
impl std::fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [p50, p90, p99] = self.percentiles();
        f.debug_struct("AtomicHistogram")
            .field("p50", &p50)
            .field("p90", &p90)
            .field("p99", &p99)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_is_within_its_bucket_and_an_eighth_of_it() {
        let mut previous = 0;
        let mut samples: Vec<u64> = (0..5_000).collect();
        samples.extend((3..64).flat_map(|k| {
            let p = 1u64 << k;
            [p - 1, p, p + 1, p + p / 3, p + p / 2 + 7]
        }));
        samples.extend([MAX_NANOS - 1, MAX_NANOS]);
        samples.sort_unstable();
        for nanos in samples {
            let d = Duration::from_nanos(nanos);
            let i = bucket(d);
            assert!(i < BUCKETS, "{nanos} ns: bucket {i}");
            assert!(i >= previous, "{nanos} ns: buckets must not go down");
            previous = i;
            let max = bucket_max(i);
            assert!(max >= d, "{nanos} ns: bucket {i} ends at {max:?}");
            // At most 12.5 % above the true value.
            assert!(
                max.as_nanos() * 8 <= u128::from(nanos) * 9,
                "{nanos} ns: bucket {i} ends at {max:?}"
            );
            if i > 0 {
                assert!(bucket_max(i - 1) < d, "{nanos} ns: belongs lower");
            }
        }
        assert_eq!(bucket(Duration::MAX), BUCKETS - 1);
        assert_eq!(bucket(Duration::from_nanos(MAX_NANOS)), BUCKETS - 1);
        assert_eq!(bucket_max(BUCKETS - 1), Duration::from_nanos(MAX_NANOS));
    }

    #[test]
    fn percentiles_follow_the_counts() {
        let mut h = Histogram::new();
        assert_eq!(h.percentiles(), [None, None, None]);
        for _ in 0..98 {
            h.record(Duration::from_millis(1));
        }
        h.record(Duration::from_millis(30));
        h.record(Duration::from_millis(100));
        let [p50, p90, p99] = h.percentiles();
        let ms = Duration::from_millis;
        let within = |p: Option<Duration>, d: Duration| {
            let p = p.expect("counted");
            p >= d && p.as_nanos() * 8 <= d.as_nanos() * 9
        };
        assert!(within(p50, ms(1)), "{p50:?}");
        assert!(within(p90, ms(1)), "{p90:?}");
        // The 99th of 100 is the 30 ms one.
        assert!(within(p99, ms(30)), "{p99:?}");
    }

    /// Counts past u64::MAX / 100 in all (the saturating `total * p`
    /// took the rank for a much smaller one and reported a bucket far
    /// below the percentile), or past u64::MAX (the sum overflowed: a
    /// panic in a debug build), are ranked exactly.
    #[test]
    fn regression_percentiles_of_huge_counts_do_not_overflow() {
        let mut counts = [0u64; BUCKETS];
        counts[0] = 1 << 60;
        counts[100] = 1 << 62;
        let at_100 = Some(bucket_max(100));
        assert_eq!(percentiles(&counts), [at_100; 3]);
        counts[0] = u64::MAX;
        counts[100] = u64::MAX;
        counts[200] = u64::MAX;
        let at_200 = Some(bucket_max(200));
        assert_eq!(percentiles(&counts), [at_100, at_200, at_200]);
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn the_atomic_histogram_reports_the_same_way() {
        let a = AtomicHistogram::new();
        assert_eq!(a.percentiles(), [None, None, None]);
        a.record(Duration::from_micros(250));
        let [p50, _, p99] = a.percentiles();
        let p50 = p50.expect("counted");
        let d = Duration::from_micros(250);
        assert!(p50 >= d && p50 * 8 <= d * 9, "{p50:?}");
        assert_eq!(Some(p50), p99);
    }
}
