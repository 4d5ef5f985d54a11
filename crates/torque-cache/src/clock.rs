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
/// the CPU's time-stamp counter instead, through [`quanta`], on Linux when
/// the kernel keeps its own time by that counter (its clocksource is
/// `tsc`: it found the counter stable and in step across cores) and the
/// CPU's counter ticks at a constant rate; elsewhere it reads
/// `Instant::now`. A read costs about a third of `Instant::now` and the
/// subtraction that turns it into nanoseconds since an origin (`clock`
/// group of the crate's `local_cache` bench; docs/benchmarks.md), and a
/// cache with a time-to-live reads the clock on every `get` and `insert`.
///
/// The counter is scaled to nanoseconds by a calibration against the
/// monotonic clock, once per process, on the first read of a cache with
/// expiry (about 0.6 ms here; `quanta` gives up refining after 200 ms on
/// a machine too busy to settle). It then runs a few parts per million
/// apart from `Instant` (1–4 ppm here: a one-hour time-to-live ends within
/// about 15 ms of the hour by `Instant`), and it does not follow the
/// slewing of the monotonic clock by NTP. Set a custom [`Clock`] if
/// expiry must follow `Instant` exactly. Load times in
/// [`CacheStats`](crate::CacheStats) come from [`Clock::now`] (here
/// `Instant::now`), not from the counter.
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
    /// A counter whose origin is now, or `None` where the time-stamp
    /// counter is not to be trusted (see [`SystemClock`]). The first in a
    /// process calibrates the counter; the others copy that clock (a fresh
    /// `quanta::Clock` probes the CPU again, about 30 µs).
    pub(crate) fn new() -> Option<Self> {
        static CLOCK: OnceLock<Option<quanta::Clock>> = OnceLock::new();
        CLOCK
            .get_or_init(|| kernel_keeps_time_by_the_counter().then(quanta::Clock::new))
            .clone()
            .map(Self::with_clock)
    }

    pub(crate) fn with_clock(clock: quanta::Clock) -> Self {
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

/// Whether the kernel keeps time by the CPU's time-stamp counter (Linux's
/// current clocksource is `tsc`): it checked that the counter is stable
/// and in step across cores, which `quanta` (CPUID flags only) does not.
/// Under a hypervisor whose counter it does not trust, or after its
/// watchdog found the counter unstable, it uses another source, and so do
/// we.
fn kernel_keeps_time_by_the_counter() -> bool {
    cfg!(target_os = "linux")
        && std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .is_ok_and(|source| source.trim() == "tsc")
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
    /// calibration's error (a few parts per million here; allowed: one in
    /// a thousand).
    #[test]
    fn the_counter_keeps_time_with_instant() {
        let counter = Counter::with_clock(quanta::Clock::new());
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
