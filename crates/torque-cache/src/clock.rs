//! Time source of the cache, injectable so that expiry is testable without
//! sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A source of monotonic time for expiry and load-time statistics.
///
/// The cache reads the clock only when some entry can expire (a time-to-live
/// or time-to-idle is configured, or `insert_with_ttl` was used) and around
/// loads, so a cache without expiry never pays for a clock read on `get`.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use torque_cache::{Clock, MockClock};
///
/// let clock = MockClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now() - t0, Duration::from_secs(5));
/// ```
///
/// The cache never reads the clock while it holds a lock of its own, so a
/// clock may use the cache it serves; but that use reads the clock again
/// (any operation of a cache with expiry does), so such a clock must not
/// recurse without end, e.g. by skipping the cache when re-entered on the
/// same thread.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant. Must never go backwards. If it does, nothing
    /// panics or overflows and a read never moves an entry's last use back
    /// (its time-to-idle is not shortened); a write sets the entry's times
    /// from the instant it reads, as always, and a load's time counts as
    /// zero.
    fn now(&self) -> Instant;
}

/// The real clock: [`Instant::now`].
///
/// A cache with this clock (the default) reads the time for expiry from
/// the CPU's time-stamp counter instead, through [`quanta`], where the CPU
/// has one that ticks at a constant rate (else `quanta` reads the OS's
/// monotonic clock, as `Instant::now` does). Scaled to nanoseconds by a
/// calibration against the monotonic clock, once per process (under a
/// millisecond), it agreed with `Instant` to about one part in a million
/// here, and a read costs about a third of `Instant::now` and the
/// subtraction that turns it into nanoseconds since an origin (`clock`
/// group of the crate's `local_cache` bench; docs/benchmarks.md). A cache
/// with a time-to-live reads the clock on every `get` and `insert`.
/// Load times in [`CacheStats`](crate::CacheStats) still come from
/// `Instant::now`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for deterministic tests of expiry.
///
/// Clones share the same time, so a test keeps one clone and hands another to
/// [`LocalCacheBuilder::clock`](crate::LocalCacheBuilder::clock).
#[derive(Debug, Clone)]
pub struct MockClock {
    base: Instant,
    offset_nanos: Arc<AtomicU64>,
}

impl MockClock {
    /// A mock clock standing at an arbitrary fixed instant.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            offset_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves the clock forward by `by` (saturating at about 584 years).
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .offset_nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                Some(cur.saturating_add(nanos))
            });
    }
}

impl Default for MockClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MockClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.offset_nanos.load(Ordering::Acquire))
    }
}

/// Nanoseconds since a counter's origin, by the CPU's time-stamp counter
/// (see [`SystemClock`]): what a cache with the default clock reads for
/// expiry.
#[derive(Debug, Clone)]
pub(crate) struct Counter {
    clock: quanta::Clock,
    origin: u64,
}

impl Counter {
    /// A counter whose origin is now. The first in a process calibrates
    /// the time-stamp counter (under a millisecond); the others copy that
    /// clock (a fresh `quanta::Clock` probes the CPU again, about 30 µs).
    pub(crate) fn new() -> Self {
        static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
        let clock = CLOCK.get_or_init(quanta::Clock::new).clone();
        Self {
            origin: clock.raw(),
            clock,
        }
    }

    /// Nanoseconds since the origin; zero for a reading before it (the
    /// counters of two cores may differ by a little).
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

/// Converts a duration to the cache's internal nanosecond ticks, saturating.
pub(crate) fn to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counter's nanoseconds agree with `Instant`'s: its reading lies
    /// between the `Instant` readings taken around it (a preempted thread
    /// widens the bracket, it does not break it), to within the
    /// calibration's error (about one part in a million here; allowed:
    /// one in a thousand).
    #[test]
    fn the_counter_keeps_time_with_instant() {
        let counter = Counter::new();
        let before = Instant::now();
        let start = counter.nanos();
        let after_start = Instant::now();
        while after_start.elapsed() < Duration::from_millis(50) {
            std::hint::spin_loop();
        }
        let before_end = Instant::now();
        let end = counter.nanos();
        let after_end = Instant::now();
        let counted = end - start;
        let shortest = to_nanos(before_end - after_start);
        let longest = to_nanos(after_end - before);
        assert!(
            counted >= shortest - shortest / 1000 && counted <= longest + longest / 1000,
            "counted {counted} ns; Instant says between {shortest} and {longest}"
        );
    }
}
