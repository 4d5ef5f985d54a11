//! The pool's state machine: which connection goes to whom, when to create one,
//! when to retire one. No runtime, socket or clock of its own — every call takes
//! `now` — so its tests drive it deterministically in memory. The async
//! [`Pool`](crate::Pool) wraps it in one mutex.
//!
//! Invariants (checked by the tests after every step):
//! - `size() = idle + in_use + connecting + maintaining <= max_size`;
//! - idle connections and waiters never coexist: a connection that comes back
//!   while someone waits goes straight to the oldest waiter (no barging).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// About 30 years (tokio's own "far future"): where `later` puts an instant
/// that would not fit in the clock.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `t + d`, or a far-off instant when that overflows the clock. Settings
/// accept any duration, and a caller who means "as long as it takes" may
/// write `Duration::MAX`: that must mean "never", not a panic.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or_else(|| t + FAR)
}

/// The state machine's settings, taken from [`PoolConfig`](crate::PoolConfig).
#[derive(Debug, Clone)]
pub(crate) struct CoreConfig {
    pub(crate) max_size: usize,
    pub(crate) min_idle: usize,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) check_bypass: Duration,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) max_connecting: usize,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// The backoff's cap while callers wait (at most `backoff_max`).
    pub(crate) backoff_max_waiting: Duration,
    pub(crate) seed: u64,
}

/// What the pool knows about one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub(crate) id: u64,
    /// Retire when returned or found idle after this instant (lifetime minus jitter).
    pub(crate) expires: Option<Instant>,
    /// When it last went idle (created or returned); drives `idle_timeout`.
    pub(crate) idle_since: Instant,
    /// When it was last known to work (created, returned, checked); drives the
    /// check bypass window and keepalive.
    pub(crate) last_alive: Instant,
}

/// A connection with its metadata.
#[derive(Debug)]
pub(crate) struct Entry<C> {
    pub(crate) conn: C,
    pub(crate) meta: Meta,
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// `is_broken` said so at checkout or return, or `reset` failed.
    Broken,
    /// Past its maximum lifetime.
    Lifetime,
    /// Idle longer than `idle_timeout` above `min_idle`.
    Idle,
    /// A health check (at checkout or keepalive) failed or timed out.
    CheckFailed,
    /// The caller went away in the middle of a check: the connection's state is unknown.
    Cancelled,
    /// The pool was closed.
    PoolClosed,
}

impl CloseReason {
    pub(crate) const ALL: [CloseReason; 6] = [
        CloseReason::Broken,
        CloseReason::Lifetime,
        CloseReason::Idle,
        CloseReason::CheckFailed,
        CloseReason::Cancelled,
        CloseReason::PoolClosed,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Event counts kept by the state machine.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub(crate) created: u64,
    pub(crate) create_failures: u64,
    pub(crate) closed: [u64; CloseReason::ALL.len()],
}

/// What a returned or new connection should become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Return {
    /// Healthy: hand to a waiter or keep idle (unless past its lifetime).
    Reuse,
    /// Close it for this reason.
    Close(CloseReason),
}

/// The pool's state.
#[derive(Debug)]
pub(crate) struct Core<C, W> {
    cfg: CoreConfig,
    /// Front: idle longest. Checkouts take from the back (most recently used),
    /// so surplus connections age at the front and retire by `idle_timeout`.
    idle: VecDeque<Entry<C>>,
    /// Front: waiting longest. Each with the instant it gives up.
    waiters: VecDeque<(u64, Instant, W)>,
    in_use: usize,
    connecting: usize,
    maintaining: usize,
    next_waiter: u64,
    next_conn: u64,
    rng: u64,
    /// Consecutive failed creates; non-zero means "the backend looks down".
    failures: u32,
    /// When the next create may start after failures: the first while
    /// nobody waits, the second (sooner, capped lower) while someone does.
    retry_at: Option<(Instant, Instant)>,
    /// The first connect after failures succeeded: open connections for the
    /// whole backlog at once (up to `max_size`) instead of `max_connecting`
    /// at a time, until the waiters are covered.
    surge: bool,
    closed: bool,
    pub(crate) counters: Counters,
}

impl<C, W> Core<C, W> {
    pub(crate) fn new(cfg: CoreConfig) -> Self {
        let rng = cfg.seed;
        Core {
            cfg,
            idle: VecDeque::new(),
            waiters: VecDeque::new(),
            in_use: 0,
            connecting: 0,
            maintaining: 0,
            next_waiter: 0,
            next_conn: 0,
            rng,
            failures: 0,
            retry_at: None,
            surge: false,
            closed: false,
            counters: Counters::default(),
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.idle.len() + self.in_use + self.connecting + self.maintaining
    }
    pub(crate) fn idle(&self) -> usize {
        self.idle.len()
    }
    pub(crate) fn in_use(&self) -> usize {
        self.in_use
    }
    pub(crate) fn connecting(&self) -> usize {
        self.connecting
    }
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.len()
    }
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }
    /// When the next create may be attempted after failures, if it is held
    /// back: sooner while someone waits (the lower `backoff_max_waiting` cap).
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        let (idle, waiting) = self.retry_at?;
        Some(if self.waiters.is_empty() {
            idle
        } else {
            waiting
        })
    }
    #[cfg(test)]
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// splitmix64: a small seeded generator for jitter.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A random number in `[0, 1)`.
    fn random_fraction(&mut self) -> f64 {
        (self.next_random() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A random fraction of `d` in `[0, d]`.
    fn random_part(&mut self, d: Duration) -> Duration {
        let fraction = self.random_fraction();
        d.mul_f64(fraction)
    }

    /// Takes an idle connection if no one is waiting (no barging), closing any
    /// found past their lifetime into `close`. The flag says whether it has been
    /// idle longer than the check bypass window and needs a real check.
    pub(crate) fn take_idle(
        &mut self,
        now: Instant,
        close: &mut Vec<C>,
    ) -> Option<(Entry<C>, bool)> {
        if !self.waiters.is_empty() || self.closed {
            return None;
        }
        while let Some(entry) = self.idle.pop_back() {
            if entry.meta.expires.is_some_and(|t| now >= t) {
                self.count_close(CloseReason::Lifetime);
                close.push(entry.conn);
                continue;
            }
            self.in_use += 1;
            let needs_check =
                now.saturating_duration_since(entry.meta.last_alive) >= self.cfg.check_bypass;
            return Some((entry, needs_check));
        }
        None
    }

    /// Queues a waiter, at the back, or at the front for one that already
    /// waited its turn and got a connection that failed its check.
    pub(crate) fn push_waiter(&mut self, waiter: W, deadline: Instant, front: bool) -> u64 {
        let id = self.next_waiter;
        self.next_waiter += 1;
        if front {
            self.waiters.push_front((id, deadline, waiter));
        } else {
            self.waiters.push_back((id, deadline, waiter));
        }
        id
    }

    /// Removes a waiter that gave up; `None` if it was already served.
    pub(crate) fn remove_waiter(&mut self, id: u64) -> Option<W> {
        let at = self.waiters.iter().position(|(w, _, _)| *w == id)?;
        self.waiters.remove(at).map(|(_, _, w)| w)
    }

    /// Removes and returns the waiters whose deadline has come.
    pub(crate) fn expire_waiters(&mut self, now: Instant) -> Vec<W> {
        if !self.waiters.iter().any(|(_, d, _)| *d <= now) {
            return Vec::new();
        }
        let mut expired = Vec::new();
        let mut kept = VecDeque::with_capacity(self.waiters.len());
        for (id, deadline, w) in self.waiters.drain(..) {
            if deadline <= now {
                expired.push(w);
            } else {
                kept.push_back((id, deadline, w));
            }
        }
        self.waiters = kept;
        expired
    }

    /// The earliest waiter deadline, if anyone waits.
    pub(crate) fn next_waiter_deadline(&self) -> Option<Instant> {
        self.waiters.iter().map(|(_, d, _)| *d).min()
    }

    /// Whether to start one more create now; if so the slot is reserved
    /// (counted in `size`) until [`create_succeeded`](Self::create_succeeded) or
    /// [`create_failed`](Self::create_failed). Creates only cover demand that
    /// connections already on their way do not: waiters beyond the creates in
    /// flight, or idle connections below `min_idle`. After a failure at most one
    /// create is in flight, and none before the backoff has passed.
    pub(crate) fn plan_create(&mut self, now: Instant) -> bool {
        if self.closed || self.size() >= self.cfg.max_size {
            return false;
        }
        let waiting = self.waiters.len() > self.connecting;
        // Idle connections out for a keepalive check count as idle: they come
        // back (a failed one is closed, and that calls for a refill then).
        // Replaced while out, they idled beside their replacements, and each
        // keepalive round grew a quiet pool toward `max_size`.
        let demand =
            waiting || self.idle.len() + self.maintaining + self.connecting < self.cfg.min_idle;
        if !waiting {
            // The backlog the surge was for is covered.
            self.surge = false;
        }
        let limit = if self.failures > 0 {
            1
        } else if self.surge {
            self.cfg.max_size
        } else {
            self.cfg.max_connecting
        };
        if !demand || self.connecting >= limit || self.retry_at().is_some_and(|t| now < t) {
            return false;
        }
        self.connecting += 1;
        true
    }

    /// Every create [`plan_create`](Self::plan_create) allows now.
    pub(crate) fn plan_creates(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while self.plan_create(now) {
            n += 1;
        }
        n
    }

    /// A create finished: the connection goes to the oldest waiter that takes it
    /// (through `send`, which hands it back if that waiter has gone) or idles.
    pub(crate) fn create_succeeded(
        &mut self,
        conn: C,
        now: Instant,
        send: impl FnMut(W, Entry<C>) -> Result<(), Entry<C>>,
    ) -> Option<C> {
        self.connecting -= 1;
        // The server answers again: whoever queued up meanwhile is served by
        // a burst of connects rather than `max_connecting` at a time.
        self.surge = self.failures > 0;
        self.failures = 0;
        self.retry_at = None;
        self.counters.created += 1;
        let id = self.next_conn;
        self.next_conn += 1;
        let expires = self.cfg.max_lifetime.map(|lifetime| {
            // Up to 2.5% earlier, per connection, so that connections created
            // together do not all retire together (HikariCP's variance).
            let jitter = self.random_part(lifetime / 40);
            later(now, lifetime - jitter)
        });
        let entry = Entry {
            conn,
            meta: Meta {
                id,
                expires,
                idle_since: now,
                last_alive: now,
            },
        };
        if self.closed {
            self.count_close(CloseReason::PoolClosed);
            return Some(entry.conn);
        }
        self.deliver(entry, false, send);
        None
    }

    /// A create failed or timed out: back off, and if the pool has no
    /// connection that could come back to them, fail the waiters now with the
    /// real error rather than let them wait for their timeout.
    pub(crate) fn create_failed(&mut self, now: Instant) -> Vec<W> {
        self.connecting -= 1;
        self.counters.create_failures += 1;
        self.failures = self.failures.saturating_add(1);
        self.surge = false;
        // Exponential backoff with "equal jitter" (half fixed, half random),
        // one random draw for both caps.
        let exp = self
            .cfg
            .backoff_min
            .saturating_mul(1u32 << (self.failures - 1).min(20));
        let fraction = self.random_fraction();
        let jittered = |cap: Duration| {
            let delay = exp.min(cap);
            delay / 2 + (delay / 2).mul_f64(fraction)
        };
        self.retry_at = Some((
            later(now, jittered(self.cfg.backoff_max)),
            later(now, jittered(self.cfg.backoff_max_waiting)),
        ));
        if self.idle.is_empty() && self.in_use == 0 && self.maintaining == 0 && self.connecting == 0
        {
            self.waiters.drain(..).map(|(_, _, w)| w).collect()
        } else {
            Vec::new()
        }
    }

    /// A connection checked out comes back. Returns it if it must be closed.
    pub(crate) fn release(
        &mut self,
        mut entry: Entry<C>,
        how: Return,
        now: Instant,
        send: impl FnMut(W, Entry<C>) -> Result<(), Entry<C>>,
    ) -> Option<C> {
        self.in_use -= 1;
        let reason = match how {
            Return::Close(reason) => Some(reason),
            Return::Reuse if self.closed => Some(CloseReason::PoolClosed),
            Return::Reuse if entry.meta.expires.is_some_and(|t| now >= t) => {
                Some(CloseReason::Lifetime)
            }
            Return::Reuse => None,
        };
        if let Some(reason) = reason {
            self.count_close(reason);
            return Some(entry.conn);
        }
        entry.meta.idle_since = now;
        entry.meta.last_alive = now;
        self.deliver(entry, false, send);
        None
    }

    /// Gives `entry` to the oldest waiter still there, or idles it.
    fn deliver(
        &mut self,
        mut entry: Entry<C>,
        idle_at_front: bool,
        mut send: impl FnMut(W, Entry<C>) -> Result<(), Entry<C>>,
    ) {
        while let Some((_, _, waiter)) = self.waiters.pop_front() {
            self.in_use += 1;
            match send(waiter, entry) {
                Ok(()) => return,
                Err(back) => {
                    self.in_use -= 1;
                    entry = back;
                }
            }
        }
        if idle_at_front {
            self.idle.push_front(entry);
        } else {
            self.idle.push_back(entry);
        }
    }

    fn count_close(&mut self, reason: CloseReason) {
        self.counters.closed[reason.index()] += 1;
    }

    /// Periodic work: closes idle connections past their lifetime or idle too
    /// long above `min_idle` (into `close`), and takes out the idle connections
    /// due for a keepalive check (counted in `size` until
    /// [`keepalive_done`](Self::keepalive_done)).
    pub(crate) fn maintain(&mut self, now: Instant, close: &mut Vec<C>) -> Vec<Entry<C>> {
        let mut kept = VecDeque::with_capacity(self.idle.len());
        let mut surplus = self.idle.len().saturating_sub(self.cfg.min_idle);
        let mut due = Vec::new();
        while let Some(entry) = self.idle.pop_front() {
            if entry.meta.expires.is_some_and(|t| now >= t) {
                self.count_close(CloseReason::Lifetime);
                surplus = surplus.saturating_sub(1);
                close.push(entry.conn);
            } else if surplus > 0
                && self
                    .cfg
                    .idle_timeout
                    .is_some_and(|t| now.saturating_duration_since(entry.meta.idle_since) >= t)
            {
                self.count_close(CloseReason::Idle);
                surplus -= 1;
                close.push(entry.conn);
            } else if self
                .cfg
                .keepalive
                .is_some_and(|k| now.saturating_duration_since(entry.meta.last_alive) >= k)
            {
                self.maintaining += 1;
                due.push(entry);
            } else {
                kept.push_back(entry);
            }
        }
        self.idle = kept;
        due
    }

    /// A keepalive check finished. A healthy connection goes back where it
    /// was in idle order (or to a waiter); a failed one is returned to close.
    pub(crate) fn keepalive_done(
        &mut self,
        mut entry: Entry<C>,
        ok: bool,
        now: Instant,
        send: impl FnMut(W, Entry<C>) -> Result<(), Entry<C>>,
    ) -> Option<C> {
        self.maintaining -= 1;
        if !ok {
            self.count_close(CloseReason::CheckFailed);
            return Some(entry.conn);
        }
        if self.closed {
            self.count_close(CloseReason::PoolClosed);
            return Some(entry.conn);
        }
        // Its lifetime may have run out during the check.
        if entry.meta.expires.is_some_and(|t| now >= t) {
            self.count_close(CloseReason::Lifetime);
            return Some(entry.conn);
        }
        entry.meta.last_alive = now;
        self.deliver(entry, true, send);
        None
    }

    /// Closes the pool: no more checkouts or creates; idle connections and
    /// waiters are handed back to be closed and failed.
    pub(crate) fn close(&mut self) -> (Vec<C>, Vec<W>) {
        self.closed = true;
        let idle: Vec<C> = self.idle.drain(..).map(|e| e.conn).collect();
        for _ in &idle {
            self.count_close(CloseReason::PoolClosed);
        }
        let waiters = self.waiters.drain(..).map(|(_, _, w)| w).collect();
        (idle, waiters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> CoreConfig {
        CoreConfig {
            max_size: 4,
            min_idle: 1,
            max_lifetime: Some(Duration::from_secs(100)),
            idle_timeout: Some(Duration::from_secs(10)),
            check_bypass: Duration::from_millis(500),
            keepalive: Some(Duration::from_secs(30)),
            max_connecting: 2,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(250),
            backoff_max_waiting: Duration::from_millis(50),
            seed: 7,
        }
    }

    type TestCore = Core<u32, &'static str>;

    /// A waiter deadline that never comes in these tests.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(1_000_000)
    }

    /// `send` that always succeeds and records who got what.
    fn record<'a>(
        log: &'a mut Vec<(&'static str, u32)>,
    ) -> impl FnMut(&'static str, Entry<u32>) -> Result<(), Entry<u32>> + 'a {
        |w, e| {
            log.push((w, e.conn));
            Ok(())
        }
    }

    fn check_invariants(core: &TestCore) {
        assert!(
            core.size() <= core.cfg.max_size,
            "size {} > max",
            core.size()
        );
        assert!(
            core.idle() == 0 || core.waiting() == 0,
            "idle connections while someone waits"
        );
    }

    #[test]
    fn refills_to_min_idle_then_stops() {
        let mut core = TestCore::new(cfg());
        let t = Instant::now();
        assert_eq!(core.plan_creates(t), 1);
        assert_eq!(core.create_succeeded(10, t, |_, e| Err(e)), None);
        assert_eq!(core.plan_creates(t), 0);
        assert_eq!((core.size(), core.idle()), (1, 1));
    }

    #[test]
    fn waiters_are_served_in_arrival_order() {
        let mut core = TestCore::new(CoreConfig {
            min_idle: 0,
            ..cfg()
        });
        let t = Instant::now();
        core.push_waiter("a", far(), false);
        core.push_waiter("b", far(), false);
        core.push_waiter("c", far(), false);
        // Three waiters but only two creates at once.
        assert_eq!(core.plan_creates(t), 2);
        let mut log = Vec::new();
        core.create_succeeded(1, t, record(&mut log));
        core.create_succeeded(2, t, record(&mut log));
        assert_eq!(log, [("a", 1), ("b", 2)]);
        // "a" returns its connection: it goes to "c", not to idle.
        let (entry, _) = (
            Entry {
                conn: 1,
                meta: Meta {
                    id: 0,
                    expires: None,
                    idle_since: t,
                    last_alive: t,
                },
            },
            (),
        );
        assert_eq!(
            core.release(entry, Return::Reuse, t, record(&mut log)),
            None
        );
        assert_eq!(log.last(), Some(&("c", 1)));
        assert_eq!((core.in_use(), core.idle(), core.waiting()), (2, 0, 0));
        check_invariants(&core);
    }

    #[test]
    fn a_returned_connection_elides_a_create() {
        let mut core = TestCore::new(CoreConfig {
            min_idle: 0,
            ..cfg()
        });
        let t = Instant::now();
        core.push_waiter("first", far(), false);
        assert!(core.plan_create(t));
        let mut held = None;
        core.create_succeeded(1, t, |_, e| {
            held = Some(e);
            Ok(())
        });
        let entry = held.unwrap();
        core.push_waiter("w", far(), false);
        assert!(core.plan_create(t), "one waiter, no create in flight");
        // A second waiter while one create is in flight: one more create.
        core.push_waiter("x", far(), false);
        assert!(core.plan_create(t));
        assert!(!core.plan_create(t), "two creates cover two waiters");
        let mut log = Vec::new();
        core.release(entry, Return::Reuse, t, record(&mut log));
        assert_eq!(log, [("w", 1)]);
        // The creates in flight still land, but no new one starts for "x".
        assert!(!core.plan_create(t));
    }

    #[test]
    fn a_gone_waiter_is_skipped_in_hand_off() {
        let mut core = TestCore::new(CoreConfig {
            min_idle: 0,
            ..cfg()
        });
        let t = Instant::now();
        core.push_waiter("gone", far(), false);
        core.push_waiter("here", far(), false);
        assert_eq!(core.plan_creates(t), 2);
        let mut got = Vec::new();
        core.create_succeeded(5, t, |w, e| {
            if w == "gone" {
                Err(e)
            } else {
                got.push((w, e.conn));
                Ok(())
            }
        });
        assert_eq!(got, [("here", 5)]);
        assert_eq!(core.in_use(), 1);
    }

    #[test]
    fn removed_waiter_is_not_served() {
        let mut core = TestCore::new(cfg());
        let a = core.push_waiter("a", far(), false);
        core.push_waiter("b", far(), false);
        assert_eq!(core.remove_waiter(a), Some("a"));
        assert_eq!(core.remove_waiter(a), None);
        assert_eq!(core.waiting(), 1);
    }

    #[test]
    fn waiters_expire_at_their_own_deadline() {
        let mut core = TestCore::new(cfg());
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        core.push_waiter("a", ms(100), false);
        core.push_waiter("b", ms(200), false);
        core.push_waiter("retry", ms(50), true);
        assert_eq!(core.next_waiter_deadline(), Some(ms(50)));
        assert!(core.expire_waiters(ms(49)).is_empty());
        assert_eq!(core.expire_waiters(ms(100)), ["retry", "a"]);
        assert_eq!(core.next_waiter_deadline(), Some(ms(200)));
        assert_eq!(core.waiting(), 1);
    }

    #[test]
    fn check_needed_only_after_bypass_window() {
        let mut core = TestCore::new(cfg());
        let t = Instant::now();
        core.plan_create(t);
        core.create_succeeded(1, t, |_, e| Err(e));
        let mut close = Vec::new();
        let (e, needs) = core
            .take_idle(t + Duration::from_millis(499), &mut close)
            .unwrap();
        assert!(!needs);
        core.release(e, Return::Reuse, t + Duration::from_millis(499), |_, e| {
            Err(e)
        });
        let (_, needs) = core
            .take_idle(t + Duration::from_millis(999), &mut close)
            .unwrap();
        assert!(needs);
    }

    #[test]
    fn lifetime_has_jitter_and_never_closes_in_use() {
        let mut core = TestCore::new(CoreConfig {
            min_idle: 0,
            max_size: 50,
            max_connecting: 50,
            ..cfg()
        });
        let t = Instant::now();
        for i in 0..50 {
            core.push_waiter("w", far(), false);
            assert!(core.plan_create(t));
            core.create_succeeded(i, t, |_, _| Ok(()));
        }
        // We cannot see the metas through send (moved), so look at expiries by
        // returning all at once after the lifetime's earliest possible expiry.
        assert_eq!(core.in_use(), 50);
        let lifetime = Duration::from_secs(100);
        let mut expiries = std::collections::BTreeSet::new();
        let mut core2 = TestCore::new(CoreConfig {
            min_idle: 0,
            max_size: 50,
            ..cfg()
        });
        for i in 0..50 {
            core2.push_waiter("w", far(), false);
            assert!(core2.plan_create(t));
            core2.create_succeeded(i, t, |_, e| {
                expiries.insert(e.meta.expires.unwrap());
                Ok(())
            });
        }
        assert!(expiries.len() > 40, "expiries spread: {}", expiries.len());
        assert!(
            expiries
                .iter()
                .all(|&x| x <= t + lifetime && x >= t + lifetime - lifetime / 40)
        );
        // In use past its lifetime: still counted, closed only when returned.
        let late = t + lifetime * 2;
        let mut close = Vec::new();
        let due = core.maintain(late, &mut close);
        assert!(due.is_empty() && close.is_empty());
        assert_eq!(core.in_use(), 50);
        let entry = Entry {
            conn: 0,
            meta: Meta {
                id: 0,
                expires: Some(t + lifetime),
                idle_since: t,
                last_alive: t,
            },
        };
        assert_eq!(
            core.release(entry, Return::Reuse, late, |_, e| Err(e)),
            Some(0)
        );
        assert_eq!(core.counters.closed[CloseReason::Lifetime.index()], 1);
    }

    #[test]
    fn idle_timeout_keeps_min_idle() {
        let mut core = TestCore::new(CoreConfig {
            min_idle: 2,
            ..cfg()
        });
        let t = Instant::now();
        for i in 0..4 {
            core.push_waiter("w", far(), false);
            assert!(core.plan_create(t), "{i}");
            core.create_succeeded(i, t, |_, _| Ok(()));
        }
        for i in 0..4 {
            let e = Entry {
                conn: i,
                meta: Meta {
                    id: i as u64,
                    expires: None,
                    idle_since: t,
                    last_alive: t,
                },
            };
            core.release(e, Return::Reuse, t, |_, e| Err(e));
        }
        assert_eq!(core.idle(), 4);
        let mut close = Vec::new();
        core.maintain(t + Duration::from_secs(9), &mut close);
        assert!(close.is_empty());
        core.maintain(t + Duration::from_secs(10), &mut close);
        assert_eq!(close.len(), 2, "surplus above min_idle retired");
        assert_eq!(core.idle(), 2);
        assert_eq!(core.counters.closed[CloseReason::Idle.index()], 2);
    }

    #[test]
    fn keepalive_takes_idle_out_and_puts_it_back() {
        let mut core = TestCore::new(cfg());
        let t = Instant::now();
        core.plan_create(t);
        core.create_succeeded(1, t, |_, e| Err(e));
        let mut close = Vec::new();
        let due = core.maintain(t + Duration::from_secs(30), &mut close);
        assert_eq!(due.len(), 1);
        assert_eq!((core.size(), core.idle()), (1, 0));
        // While it is out it still counts toward min_idle: no refill starts
        // for it, and it comes back healthy.
        assert_eq!(core.plan_creates(t + Duration::from_secs(30)), 0);
        let e = due.into_iter().next().unwrap();
        assert_eq!(
            core.keepalive_done(e, true, t + Duration::from_secs(31), |_, e| Err(e)),
            None
        );
        assert_eq!(core.idle(), 1);
        let due = core.maintain(t + Duration::from_secs(31), &mut close);
        assert!(due.is_empty(), "just checked");
        let due = core.maintain(t + Duration::from_secs(61), &mut close);
        let e = due.into_iter().next().unwrap();
        assert_eq!(
            core.keepalive_done(e, false, t + Duration::from_secs(61), |_, e| Err(e)),
            Some(1)
        );
        assert_eq!(core.size(), 0);
    }

    /// A connection whose lifetime runs out while keepalive checks it is
    /// retired when the check comes back, not handed to a waiter (nor put
    /// back idle): "retired after `max_lifetime`, never while in use" holds
    /// for every way back into the pool.
    #[test]
    fn a_connection_whose_lifetime_ends_during_keepalive_is_retired_not_handed_over() {
        let mut core = TestCore::new(CoreConfig {
            idle_timeout: None,
            ..cfg()
        });
        let t = Instant::now();
        let s = |n| t + Duration::from_secs(n);
        assert!(core.plan_create(t));
        core.create_succeeded(1, t, |_, e| Err(e));
        // Lifetime 100 s minus at most 2.5 s of jitter: alive at 97 s, when
        // keepalive takes it out; gone by 101 s, when its check comes back.
        let mut close = Vec::new();
        let due = core.maintain(s(97), &mut close);
        assert!(close.is_empty());
        let e = due.into_iter().next().expect("due for keepalive");
        core.push_waiter("w", far(), false);
        let mut log = Vec::new();
        assert_eq!(
            core.keepalive_done(e, true, s(101), record(&mut log)),
            Some(1)
        );
        assert!(log.is_empty(), "handed over past its lifetime: {log:?}");
        assert_eq!(core.counters.closed[CloseReason::Lifetime.index()], 1);
        assert_eq!((core.size(), core.waiting()), (0, 1));
        assert_eq!(core.plan_creates(s(101)), 1, "a connect for the waiter");
    }

    #[test]
    fn backoff_after_failure_one_attempt_at_a_time() {
        let mut core = TestCore::new(CoreConfig {
            min_idle: 3,
            ..cfg()
        });
        let t = Instant::now();
        core.push_waiter("a", far(), false);
        core.push_waiter("b", far(), false);
        assert_eq!(core.plan_creates(t), 2);
        assert!(core.create_failed(t).is_empty(), "another create in flight");
        let failed = core.create_failed(t);
        assert_eq!(failed, ["a", "b"], "nothing can serve them: fail fast");
        let retry = core.retry_at().unwrap();
        assert!(retry > t && retry <= t + Duration::from_millis(20));
        core.push_waiter("c", far(), false);
        assert_eq!(core.plan_creates(retry - Duration::from_nanos(1)), 0);
        assert_eq!(core.plan_creates(retry), 1, "one attempt while down");
        // Backoff grows, capped at backoff_max_waiting while "c" waits...
        let mut now = retry;
        let mut longest = Duration::ZERO;
        for _ in 0..20 {
            // The failure fails the caller waiting for it; another comes.
            assert_eq!(core.create_failed(now), ["c"]);
            core.push_waiter("c", far(), false);
            let next = core.retry_at().unwrap();
            longest = longest.max(next - now);
            now = next;
            assert_eq!(core.plan_creates(now), 1);
            assert_eq!(core.plan_creates(now), 0, "one attempt in flight");
        }
        assert!(longest <= Duration::from_millis(50), "{longest:?}");
        assert!(longest >= Duration::from_millis(25), "{longest:?}");
        // ...and at backoff_max once nobody waits.
        let mut longest = Duration::ZERO;
        for _ in 0..20 {
            core.create_failed(now);
            let next = core.retry_at().unwrap();
            longest = longest.max(next - now);
            now = next;
            assert_eq!(core.plan_creates(now), 1, "min_idle refill");
        }
        assert!(longest <= Duration::from_millis(250), "{longest:?}");
        assert!(longest > Duration::from_millis(125), "{longest:?}");
        core.create_succeeded(9, now, |_, e| Err(e));
        assert_eq!(core.consecutive_failures(), 0);
        assert_eq!(core.plan_creates(now), 2, "back to full speed");
    }

    #[test]
    fn a_waiter_brings_the_next_attempt_forward() {
        let mut core = TestCore::new(CoreConfig {
            min_idle: 1,
            ..cfg()
        });
        let t = Instant::now();
        let mut now = t;
        // Ten failures with nobody waiting: the backoff reaches its cap.
        for _ in 0..10 {
            assert_eq!(core.plan_creates(now), 1);
            core.create_failed(now);
            now = core.retry_at().unwrap();
        }
        core.plan_creates(now);
        core.create_failed(now);
        let idle_retry = core.retry_at().unwrap();
        assert!(idle_retry - now > Duration::from_millis(125));
        core.push_waiter("w", far(), false);
        let waiting_retry = core.retry_at().unwrap();
        assert!(waiting_retry - now <= Duration::from_millis(50));
        assert_eq!(core.plan_creates(waiting_retry), 1);
    }

    #[test]
    fn the_first_connect_after_failures_opens_connections_for_the_backlog() {
        let mut core = TestCore::new(CoreConfig {
            min_idle: 0,
            max_size: 8,
            ..cfg()
        });
        let t = Instant::now();
        core.push_waiter("first", far(), false);
        assert_eq!(core.plan_creates(t), 1);
        assert_eq!(core.create_failed(t), ["first"]);
        for _ in 0..12 {
            core.push_waiter("w", far(), false);
        }
        let retry = core.retry_at().unwrap();
        assert_eq!(core.plan_creates(retry), 1, "one attempt while down");
        let mut log = Vec::new();
        core.create_succeeded(1, retry, record(&mut log));
        assert_eq!(log.len(), 1);
        // 11 still wait: a burst up to max_size (7 more), not max_connecting.
        assert_eq!(core.plan_creates(retry), 7);
        for i in 0..7 {
            core.create_succeeded(2 + i, retry, record(&mut log));
        }
        assert_eq!((core.in_use(), core.waiting()), (8, 4));
        // The burst is over once the backlog is covered: back to max_connecting.
        let mut core = TestCore::new(CoreConfig {
            min_idle: 0,
            max_size: 8,
            ..cfg()
        });
        core.push_waiter("first", far(), false);
        core.plan_creates(t);
        core.create_failed(t);
        core.push_waiter("a", far(), false);
        core.push_waiter("b", far(), false);
        let retry = core.retry_at().unwrap();
        core.plan_creates(retry);
        core.create_succeeded(1, retry, record(&mut log));
        assert_eq!(core.plan_creates(retry), 1, "one waiter left");
        core.create_succeeded(2, retry, record(&mut log));
        for _ in 0..5 {
            core.push_waiter("later", far(), false);
        }
        assert_eq!(core.plan_creates(retry), 2, "max_connecting again");
    }

    #[test]
    fn close_drains_everything_and_stops_creates() {
        let mut core = TestCore::new(cfg());
        let t = Instant::now();
        core.plan_create(t);
        core.create_succeeded(1, t, |_, e| Err(e));
        let (idle, waiters) = core.close();
        assert_eq!((idle, waiters), (vec![1], vec![]));
        assert!(!core.plan_create(t));
        let mut close = Vec::new();
        assert!(core.take_idle(t, &mut close).is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Get,
        Return(usize, bool),
        CreateOk,
        CreateFail,
        CancelWaiter(usize),
        Tick(u64),
        KeepaliveDone(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Get),
            3 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Op::Return(i, ok)),
            2 => Just(Op::CreateOk),
            1 => Just(Op::CreateFail),
            1 => any::<usize>().prop_map(Op::CancelWaiter),
            1 => (0u64..40_000).prop_map(Op::Tick),
            1 => any::<bool>().prop_map(Op::KeepaliveDone),
        ]
    }

    proptest! {
        /// Against a simple model: sizes add up, never above max_size, FIFO
        /// hand-off, no idle connection while someone waits.
        #[test]
        fn state_machine_keeps_its_invariants(ops in proptest::collection::vec(op(), 1..200)) {
            let mut core: Core<u32, u64> = Core::new(cfg());
            let t0 = Instant::now();
            let mut now = t0;
            let mut held: Vec<Entry<u32>> = Vec::new();
            let mut waiting: std::collections::VecDeque<u64> = Default::default();
            let mut out: Vec<Entry<u32>> = Vec::new();
            let mut next_conn = 0u32;
            let mut served_order: Vec<u64> = Vec::new();
            for op in ops {
                let mut close = Vec::new();
                match op {
                    Op::Get => {
                        if let Some((e, _)) = core.take_idle(now, &mut close) {
                            held.push(e);
                        } else {
                            let id = core.next_waiter;
                            let got = core.push_waiter(id, far(), false);
                            prop_assert_eq!(got, id);
                            waiting.push_back(id);
                        }
                    }
                    Op::Return(i, ok) if !held.is_empty() => {
                        let e = held.remove(i % held.len());
                        let how = if ok { Return::Reuse } else { Return::Close(CloseReason::Broken) };
                        let mut given = Vec::new();
                        core.release(e, how, now, |w, e| { given.push((w, e)); Ok(()) });
                        for (w, e) in given { served_order.push(w); held.push(e); }
                    }
                    Op::CreateOk if core.connecting() > 0 => {
                        next_conn += 1;
                        let mut given = Vec::new();
                        core.create_succeeded(next_conn, now, |w, e| { given.push((w, e)); Ok(()) });
                        for (w, e) in given { served_order.push(w); held.push(e); }
                    }
                    Op::CreateFail if core.connecting() > 0 => {
                        for w in core.create_failed(now) {
                            prop_assert_eq!(waiting.pop_front(), Some(w));
                        }
                    }
                    Op::CancelWaiter(i) if !waiting.is_empty() => {
                        let id = waiting.remove(i % waiting.len()).unwrap();
                        prop_assert_eq!(core.remove_waiter(id), Some(id));
                    }
                    Op::Tick(ms) => {
                        now += Duration::from_millis(ms);
                        out.extend(core.maintain(now, &mut close));
                    }
                    Op::KeepaliveDone(ok) if !out.is_empty() => {
                        let e = out.remove(0);
                        let mut given = Vec::new();
                        core.keepalive_done(e, ok, now, |w, e| { given.push((w, e)); Ok(()) });
                        for (w, e) in given { served_order.push(w); held.push(e); }
                    }
                    _ => {}
                }
                // Served waiters leave the model's queue in FIFO order.
                for w in served_order.drain(..) {
                    prop_assert_eq!(waiting.pop_front(), Some(w), "FIFO hand-off");
                }
                core.plan_creates(now);
                prop_assert!(core.size() <= core.cfg.max_size);
                prop_assert!(core.idle() == 0 || core.waiting() == 0);
                prop_assert_eq!(core.in_use(), held.len());
                prop_assert_eq!(core.waiting(), waiting.len());
                prop_assert_eq!(core.size(), core.idle() + held.len() + core.connecting() + out.len());
            }
        }
    }
}
