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
/// a machine too busy to settle, and a calibration on a busy machine was
/// seen 0.2 % off). So the cache re-anchors the counter to `Instant` about
/// every millisecond (by whichever read finds it due: one `Instant::now`
/// per millisecond of reads), and the calibration's error applies only
/// since the last anchor: expiry follows `Instant` to within tens of
/// microseconds (a step back at an anchor is that small too). Set a
/// custom [`Clock`] if
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
    ///
    /// A cache counts time in nanoseconds from about 146 years before it
    /// was built, so its time stops about 438 years after it was built:
    /// advanced that far, nothing written to it expires any more.
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

/// How often (by the counter) [`Tsc`] re-anchors itself to `Instant`: its
/// error between anchors is the calibration's error times this, about
/// 2 µs for a calibration 0.2 % off (seen on a loaded machine).
const ANCHOR_EVERY: Duration = Duration::from_millis(1);

/// A re-anchoring that took longer than this between its two counter
/// reads (the thread was preempted around its `Instant::now`) is dropped.
const ANCHOR_WITHIN: Duration = Duration::from_micros(20);

/// The process's time-stamp counter, in nanoseconds since its origin
/// (see [`SystemClock`]), kept on `Instant`'s time: `quanta`'s scale
/// (calibrated once, and off by up to 0.2 % when the machine was busy as
/// it calibrated) applies only since the last anchor, an `Instant` read
/// taken about every [`ANCHOR_EVERY`] by whichever read finds it due. A
/// re-anchoring may move the time back by the scale's error over one
/// interval (microseconds), which the cache tolerates (see [`Clock`]).
#[derive(Debug)]
struct Tsc {
    clock: quanta::Clock,
    origin_raw: u64,
    origin: Instant,
    /// Nanoseconds per 2^32 raw units, from `quanta`'s calibration
    /// (applied here as one multiply: through `quanta` a read took about
    /// 10 instructions more).
    scale: u64,
    /// Added to the scaled counter since `origin_raw` (as an `i64`).
    offset: AtomicU64,
    /// The raw counter at the last anchor.
    anchored_raw: AtomicU64,
    /// [`ANCHOR_EVERY`] and [`ANCHOR_WITHIN`] in raw counter units.
    every_raw: u64,
    within_nanos: u64,
}

impl Tsc {
    fn new(clock: quanta::Clock) -> Self {
        let origin = Instant::now();
        let origin_raw = clock.raw();
        let scale = clock.delta_as_nanos(0, 1 << 32).max(1);
        // Raw units per `ANCHOR_EVERY` (a scale a few percent off would
        // only move the interval).
        let every_raw = u64::try_from((ANCHOR_EVERY.as_nanos() << 32) / u128::from(scale))
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            clock,
            origin_raw,
            origin,
            scale,
            offset: AtomicU64::new(0),
            anchored_raw: AtomicU64::new(origin_raw),
            every_raw,
            within_nanos: to_nanos(ANCHOR_WITHIN),
        }
    }

    /// Nanoseconds since the origin by the counter, kept on `Instant`'s.
    #[inline]
    fn nanos(&self) -> u64 {
        let raw = self.clock.raw();
        // Saturating: a core whose counter is a little behind the one that
        // anchored last reads below `anchored_raw`, which is not a due
        // anchor (wrapping, it re-anchored on every such read).
        if raw.saturating_sub(self.anchored_raw.load(Ordering::Relaxed)) > self.every_raw {
            self.anchor();
        }
        self.at(raw)
    }

    /// The time of counter reading `raw`, by the current anchor.
    #[inline]
    fn at(&self, raw: u64) -> u64 {
        let offset = self.offset.load(Ordering::Relaxed) as i64;
        self.scaled(raw).saturating_add_signed(offset)
    }

    /// Nanoseconds from `origin_raw` to `raw` by the calibrated scale;
    /// zero for a reading before it (the counters of two cores may differ
    /// by a little).
    #[inline]
    fn scaled(&self, raw: u64) -> u64 {
        let delta = u128::from(raw.saturating_sub(self.origin_raw));
        u64::try_from((delta * u128::from(self.scale)) >> 32).unwrap_or(u64::MAX)
    }

    /// Re-anchors the counter to `Instant`, unless this thread was
    /// preempted around its `Instant` read. Threads that find the anchor
    /// due at once each take one (every one is a true reading, and the
    /// first to store `anchored_raw` stops the others): a flag that let
    /// only one thread anchor stopped all anchoring for as long as its
    /// holder was preempted, and the counter drifted meanwhile.
    #[cold]
    #[inline(never)]
    fn anchor(&self) {
        let before = self.clock.raw();
        let now = Instant::now();
        let after = self.clock.raw();
        // `after` below `before`: the thread moved to a core whose counter
        // is a little behind; no anchor from that.
        if after >= before
            && self.scaled(after).saturating_sub(self.scaled(before)) <= self.within_nanos
        {
            let middle = before + (after - before) / 2;
            let truth = to_nanos(now.saturating_duration_since(self.origin));
            let scaled = self.scaled(middle);
            let offset = i64::try_from(i128::from(truth) - i128::from(scaled)).unwrap_or(0);
            self.offset.store(offset as u64, Ordering::Relaxed);
        }
        // Also after a preempted try: the next comes an interval later,
        // not from every read until one succeeds.
        self.anchored_raw.store(after, Ordering::Relaxed);
    }
}

/// Nanoseconds since a counter's origin, by the CPU's time-stamp counter
/// (see [`SystemClock`]): what a cache with the default clock reads for
/// expiry.
#[derive(Debug, Clone)]
pub(crate) struct Counter {
    tsc: &'static Tsc,
    origin: u64,
}

impl Counter {
    /// A counter whose origin is now, or `None` where the time-stamp
    /// counter is not to be trusted (see [`SystemClock`]). The first in a
    /// process calibrates the counter.
    pub(crate) fn new() -> Option<Self> {
        static TSC: OnceLock<Option<Tsc>> = OnceLock::new();
        TSC.get_or_init(|| {
            kernel_keeps_time_by_the_counter().then(|| Tsc::new(quanta::Clock::new()))
        })
        .as_ref()
        .map(Self::on)
    }

    fn on(tsc: &'static Tsc) -> Self {
        Self {
            origin: tsc.nanos(),
            tsc,
        }
    }

    /// Nanoseconds since the origin; zero for a reading before it.
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        self.tsc.nanos().saturating_sub(self.origin)
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

    /// A counter that runs 0.2 % fast (as a calibration on a busy machine
    /// can leave it) stays on `Instant`'s time: its reading lies between
    /// the `Instant` readings taken around it (a preempted thread widens
    /// the bracket, it does not break it), give or take the error of one
    /// anchoring interval and one anchoring's window. Without the anchors
    /// it was 100 µs ahead after 50 ms.
    ///
    /// The mocked counter stands still while the thread runs, so an
    /// anchoring cannot see that the thread was preempted between the
    /// mock's update and its own `Instant` reading (a real counter moves
    /// on, and the anchoring drops that reading): its offset is then off by
    /// up to that iteration's span, until the next anchoring. So each read
    /// is also allowed the longest span of the iterations of the last two
    /// anchoring intervals. (Without it the test failed about once in a
    /// few dozen runs of the crate's tests in parallel on two busy cores.)
    #[test]
    fn a_mis_scaled_counter_keeps_instants_time() {
        let (clock, mock) = quanta::Clock::mock();
        let tsc = Tsc::new(clock);
        let slack = 2 * to_nanos(ANCHOR_EVERY) / 500 + to_nanos(ANCHOR_WITHIN);
        // (start, span) of the recent iterations.
        let mut recent = std::collections::VecDeque::new();
        loop {
            let before = to_nanos(tsc.origin.elapsed());
            // The counter's raw value: 1.002 ns per nanosecond.
            let raw = before + before / 500;
            let current = mock.value();
            if raw > current {
                mock.increment(raw - current);
            }
            let read = tsc.nanos();
            let after = to_nanos(tsc.origin.elapsed());
            recent.push_back((before, after - before));
            while recent
                .front()
                .is_some_and(|&(start, _)| start + 2 * to_nanos(ANCHOR_EVERY) < before)
            {
                recent.pop_front();
            }
            let preempted = recent.iter().map(|&(_, span)| span).max().unwrap_or(0);
            let slack = slack + preempted;
            assert!(
                read + slack >= before && read <= after + slack,
                "read {read} ns; Instant says between {before} and {after}"
            );
            if after > 50_000_000 {
                break;
            }
        }
    }

    /// Where the kernel keeps time by the counter, the process's counter
    /// brackets with `Instant` as above, unmocked.
    #[test]
    fn the_counter_keeps_time_with_instant() {
        let Some(counter) = Counter::new() else {
            return;
        };
        let slack = 2 * to_nanos(ANCHOR_EVERY) / 500 + to_nanos(ANCHOR_WITHIN);
        // `start` lies between the two: elapsed time since `first` is an
        // upper bound of the counter's, since `second` a lower one.
        let first = Instant::now();
        let start = counter.nanos();
        let second = Instant::now();
        while second.elapsed() < Duration::from_millis(50) {
            let before = to_nanos(second.elapsed());
            let read = counter.nanos().saturating_sub(start);
            let after = to_nanos(first.elapsed());
            assert!(
                read + slack >= before && read <= after + slack,
                "read {read} ns; Instant says between {before} and {after}"
            );
        }
    }
}
