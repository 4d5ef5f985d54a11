//! A snapshot of what the cache has done since it was built.

use std::time::Duration;

/// Counters of a [`LocalCache`](crate::LocalCache), summed over its shards when
/// [`stats`](crate::LocalCache::stats) is called.
///
/// Each read is exactly one hit or one miss (a read that finds an expired
/// entry is a miss). Shards are read one after another, so under concurrent
/// traffic the fields are each exact but not one atomic snapshot.
///
/// With the `serde` feature it is `Serialize` (fields by their names,
/// durations as `{ secs, nanos }`), for a statistics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads that returned a value.
    pub hits: u64,
    /// Reads that returned nothing.
    pub misses: u64,
    /// Writes, including replacements and entries rejected on arrival.
    pub inserts: u64,
    /// Entries that left the cache, by cause.
    pub evictions: Evictions,
    /// Loads (`get_or_load*`) that returned a value: one per loader run,
    /// however many callers shared it.
    pub loads: u64,
    /// Loads that returned an error (errors are not cached), or whose
    /// loader panicked.
    pub load_failures: u64,
    /// Time spent in the loads that returned (a value or an error), by the
    /// cache's clock. A loader that panicked counts as a failure with no
    /// time (the clock is not read while the thread unwinds); a load whose
    /// leader's future was dropped counts nowhere. The load a waiter then
    /// runs instead is counted as any other. Saturates at `u64::MAX`
    /// nanoseconds (about 584 years), should a clock jump that far.
    pub total_load_time: Duration,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or 0 before the first read.
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

/// Entries that left the cache, by [`RemovalCause`](crate::RemovalCause).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Evictions {
    /// Freed because their time-to-live or time-to-idle ran out, or rejected
    /// on arrival with a zero time-to-live.
    pub expired: u64,
    /// Evicted by the policy to keep the cache within capacity, or rejected on
    /// arrival because they weigh more than the whole capacity.
    pub capacity: u64,
    /// Old values overwritten by a write to the same key.
    pub replaced: u64,
    /// Removed by `remove`, `retain` or `invalidate_all`.
    pub removed: u64,
}

impl Evictions {
    /// All causes together.
    pub fn total(&self) -> u64 {
        self.expired + self.capacity + self.replaced + self.removed
    }
}
