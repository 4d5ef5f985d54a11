//! Time source of the cache, injectable so that expiry is testable without
//! sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Converts a duration to the cache's internal nanosecond ticks, saturating.
pub(crate) fn to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
