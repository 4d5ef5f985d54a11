//! [`LocalCache`]: shards, the global capacity bound, expiry and the listener.
//!
//! # How capacity stays global
//! Each shard has its own lock, table and policy, but weight is counted once,
//! in one atomic shared by all shards. A write adds its weight there; while
//! the total is over `max_capacity` the writer evicts its own shard's policy
//! victim (so the hot path touches one lock), never evicting the entry it just
//! wrote while the shard holds nothing else, and not below three quarters of
//! the shard's share of the capacity; past that it walks the other shards, one
//! lock at a time, freeing what has expired in each and evicting first from
//! those above their share, until the total fits. (With entries of one
//! weight every shard stays at its share by itself; with varied weights the
//! floor keeps a heavy insert from draining a small shard while others hold
//! stale entries.) So no shard evicts
//! while the cache as a whole has room (unlike a fixed per-shard capacity,
//! quick_cache #55), and the bound holds whenever no write is in flight. During
//! concurrent writes the total can exceed the bound by at most the weight of
//! the writes in flight, and two writers racing to evict can free one entry
//! more than needed.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, RwLock};

use crate::DefaultHasher;
use crate::builder::{ExpiryFn, Listener, LocalCacheBuilder, Weigher};
use crate::clock::{Clock, Counter, to_nanos};
use crate::load::Loads;
use crate::policy::{NEVER, Policy, PolicyState};
use crate::reads::ReadCounters;
use crate::shard::{Counters, Lookup, Removed, Shard, Timing};
use crate::stats::{CacheStats, Evictions};

/// Why an entry left the cache, as told to the
/// [eviction listener](crate::LocalCacheBuilder::eviction_listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemovalCause {
    /// Its time-to-live or time-to-idle ran out (or was zero on arrival).
    Expired,
    /// The policy evicted it to stay within capacity, or it weighed more
    /// than the whole capacity and was never stored.
    Capacity,
    /// A write to the same key overwrote it.
    Replaced,
    /// `remove`, `retain` or `invalidate_all` removed it.
    Removed,
}

/// What [`LocalCache::prepare`] took from user code for one write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prepared {
    weight: u32,
    hash: u64,
    timing: Timing,
    /// The entry's time-to-live in ticks ([`NEVER`] without one).
    ttl: u64,
}

/// `Inner::unexpiring_reads`: entries can expire, or reads take the
/// exclusive lock.
const NOT_UNEXPIRING: u8 = 0;
/// `Inner::unexpiring_reads`: the shared-lock read with nothing to expire,
/// for a policy that counts hits per entry.
const UNEXPIRING_COUNTED: u8 = 1;
/// `Inner::unexpiring_reads`: the same, for a policy that does not.
const UNEXPIRING_UNCOUNTED: u8 = 2;

/// A shard's writes sweep another shard for expired entries every this many
/// writes, each of the other shards in turn, so shards that see no traffic
/// still free their expired entries.
const HELP_SWEEP_EVERY: u32 = 64;

/// Likewise about one read (`get`, `contains_key`) in this many, of a cache
/// whose entries can expire: one shard, picked at random, so a cache that
/// is only read still frees the expired entries of shards nobody reads.
/// The gaps between a thread's helps vary at random (from 1 to twice
/// this): with every 64th read, a thread that read two caches in turn made
/// all its helping reads on one of them.
const HELP_SWEEP_EVERY_READS: u32 = 64;

thread_local! {
    /// Reads this thread makes before it next helps (see
    /// [`HELP_SWEEP_EVERY_READS`]): per thread, so the read path writes
    /// nothing shared.
    static READS_TO_HELP: std::cell::Cell<u32> = const { std::cell::Cell::new(HELP_SWEEP_EVERY_READS) };
    /// This thread's xorshift state, for the gaps and the shards helped.
    static HELP_RNG: std::cell::Cell<u64> = const { std::cell::Cell::new(0x2545_f491_4f6c_dd1d) };
}

/// How far before the instant it was built a cache's ticks start, if the
/// platform's `Instant` reaches back that far (else the most of 2^50 and
/// 2^40 ns that it does, else none): about 146 years, so that instants
/// before the build (a clock that steps back, against the [`Clock`] docs)
/// have ticks of their own. Read as the build's instant, they made a write
/// after such a step take its times from the build, and its entry outlived
/// its time-to-live by the step. About 438 years of ticks are left ahead.
const TICKS_BEFORE_BUILD: [u64; 3] = [1 << 62, 1 << 50, 1 << 40];

/// A concurrent, bounded, in-process cache. See the [crate docs](crate) for an
/// example and docs/cache.md for a guide.
///
/// Cloning is cheap and yields a handle to the same cache.
///
/// Values are returned by clone: store `Arc<T>` to share large values instead
/// of copying them on every hit.
///
/// # User code and the cache's locks
/// The cache's locks are not reentrant, so code of yours that runs while
/// one is held must not use this cache. That is only: the keys' `Hash`,
/// `Eq` and `Borrow` and the hasher (the tables are searched under the
/// locks), the values' `Clone` on a read, the
/// [`retain`](Self::retain) predicate, and with the `metrics` feature the
/// installed recorder. Everything else runs with no lock held and may use
/// the cache: the keys' and values' `Drop` (entries that leave are dropped
/// after the lock is released, so dropping a large value does not hold up
/// other threads either), the [weigher](LocalCacheBuilder::weigher), the
/// [listener](LocalCacheBuilder::eviction_listener), the
/// [clock](LocalCacheBuilder::clock) and the loaders of
/// [`get_or_load`](Self::get_or_load).
pub struct LocalCache<K, V, S = DefaultHasher> {
    pub(crate) inner: Arc<Inner<K, V, S>>,
}

/// One shard behind its own lock, on its own cache line. A read-write lock:
/// reads whose policy needs nothing exclusive on a hit (Adaptive, Fifo, Ttl
/// without time-to-idle) share it, and are counted in [`ReadCounters`];
/// reads under the exclusive lock are counted in the shard.
///
/// Aligned to 512 bytes, not just a cache line: the lock and shard take
/// between 257 and 384 bytes on 64-bit targets, and a power-of-two stride makes a shard's
/// address one shift and add from its index instead of a multiply by
/// three, a shift and an add, on every read and write.
#[repr(align(512))]
struct ShardCell<K, V>(RwLock<Shard<K, V>>);

impl<K, V> std::ops::Deref for ShardCell<K, V> {
    type Target = RwLock<Shard<K, V>>;

    #[inline]
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

pub(crate) struct Inner<K, V, S> {
    shards: Box<[ShardCell<K, V>]>,
    shard_mask: usize,
    capacity: u64,
    /// Each shard's share of the capacity (`capacity / shards`).
    share: u64,
    /// See [`LocalCache::own_eviction_floor`].
    floor: u64,
    weight: CachePadded<AtomicU64>,
    /// Each shard's earliest timer ([`NEVER`] without one), written under
    /// the shard's write lock: a lower bound on when anything in it
    /// expires, read without the lock by a write to a full cache
    /// ([`LocalCache::sweep_elsewhere`]).
    due: Box<[AtomicU64]>,
    /// A lower bound on every shard's `due` (never above any of them), so
    /// that a write to a full cache learns that nothing is due anywhere
    /// from one load instead of one per shard
    /// ([`LocalCache::sweep_elsewhere`]). A shard's `due` that rises (a
    /// sweep fired its earliest timer) leaves it low, which only costs a
    /// scan; one that falls lowers it at once. See [`Earliest`].
    earliest: Earliest,
    hasher: S,
    policy: Policy,
    weigher: Option<Weigher<K, V>>,
    expiry: Option<ExpiryFn<K, V>>,
    listener: Option<Listener<K, V>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) origin: Instant,
    /// Whether the clock is the [`SystemClock`](crate::SystemClock), for
    /// which [`LocalCache::now_ticks`] reads `counter` instead.
    system_clock: bool,
    /// The time-stamp counter that stands in for the system clock, set up
    /// on the first read (which calibrates it, once per process: a cache
    /// that never expires anything does not pay for it), with its origin
    /// there; `None` inside if it is not to be trusted on this machine.
    counter: OnceLock<Option<Counter>>,
    ttl: u64,
    tti: u64,
    /// Set once any entry can expire; until then reads skip the clock.
    expiry_in_use: AtomicBool,
    /// Whether reads take the shard's shared lock
    /// ([`PolicyState::shared_hits`]).
    shared_reads: bool,
    /// While no entry can expire (`expiry_in_use` unset) and reads take
    /// the shared lock: [`UNEXPIRING_COUNTED`] or [`UNEXPIRING_UNCOUNTED`]
    /// (whether the policy counts hits per entry), the one value a read
    /// checks for the plain hit-or-miss path; [`NOT_UNEXPIRING`] otherwise,
    /// and once `expiry_in_use` is set.
    unexpiring_reads: AtomicU8,
    /// Reads made under the shared lock.
    reads: ReadCounters,
    pub(crate) loads: Loads<K, V>,
    /// The sweeper thread, if one was started ([`LocalCache::sweep_every`]).
    sweeper: Sweeper,
}

/// `Inner::sweeper`: whether a sweeper thread was started, and the thread,
/// which the cache's drop wakes so that it ends at once (it holds the cache
/// weakly, and waited for its next tick: an hour's idle thread after the
/// cache was gone, for an hour's interval). Not generic, so that its `Drop`
/// adds no drop-check constraint on the keys' and values' types.
#[derive(Debug, Default)]
struct Sweeper {
    started: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// `Inner::earliest`: a lower bound on the shards' `due`, exact under races.
///
/// Every fall of a shard's `due` happens under `moves` (with the shard's
/// write lock held, as every store to its `due`), and lowers the bound in
/// the same critical section; a rise needs neither, as the bound stays
/// below it. The bound is raised only under `moves` too, to the least
/// `due` read there: no shard's `due` can fall meanwhile, and each value
/// read is at most the shard's `due` at the time of the store (a fall
/// released `moves` before, so it is seen; a rise only makes the value
/// read low). So the bound is never above any shard's `due`, and never
/// transiently either (a bound recomputed without the lock can miss a fall
/// published between the reads and the store, and would hide a due shard
/// until the next fall).
#[derive(Debug)]
struct Earliest {
    bound: AtomicU64,
    moves: Mutex<()>,
}

impl Default for Earliest {
    fn default() -> Self {
        Self {
            bound: AtomicU64::new(NEVER),
            moves: Mutex::new(()),
        }
    }
}

impl Earliest {
    /// No shard's `due` is below this.
    #[inline]
    fn bound(&self) -> u64 {
        // Acquire: pairs with `raise`'s release, which read the `due`s
        // with acquire (see `LocalCache::publish_due`).
        self.bound.load(Ordering::Acquire)
    }

    /// Stores `next` in a shard's `due`, below its current value; called
    /// with that shard write-locked.
    #[cold]
    #[inline(never)]
    fn lower(&self, due: &AtomicU64, next: u64) {
        let _moves = self.moves.lock();
        due.store(next, Ordering::Release);
        if next < self.bound.load(Ordering::Relaxed) {
            self.bound.store(next, Ordering::Relaxed);
        }
    }

    /// Raises the bound to the least of `dues`, unless another thread is
    /// moving it (then it stays low, which is safe).
    fn raise(&self, dues: &[AtomicU64]) {
        if let Some(_moves) = self.moves.try_lock() {
            let least = dues
                .iter()
                .map(|due| due.load(Ordering::Acquire))
                .min()
                .unwrap_or(NEVER);
            self.bound.store(least, Ordering::Release);
        }
    }
}

impl<K, V, S> Clone for LocalCache<K, V, S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V, S> fmt::Debug for LocalCache<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("LocalCache")
            .field("policy", &i.policy)
            .field("max_capacity", &i.capacity)
            .field("weighted_size", &i.weight.load(Ordering::Relaxed))
            .field("shards", &i.shards.len())
            .finish_non_exhaustive()
    }
}

impl<K, V, S> LocalCache<K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    /// Starts a thread (named `torque-cache-sweep`) that frees what has
    /// expired every `every`, as [`run_pending_tasks`](Self::run_pending_tasks)
    /// does, also while nothing reads or writes the cache. Without it an
    /// idle cache keeps its expired entries, and their values' memory, until
    /// its next use: reads and writes free what is due a little at a time,
    /// but an idle cache makes none.
    ///
    /// The thread holds the cache weakly: once the last handle to the cache
    /// is dropped it wakes and ends (dropping never waits for it). A sweep
    /// holds the cache while it runs, so if the last handle is dropped
    /// meanwhile, the cache, with its keys, values and listener, is dropped
    /// on the sweeper thread as that sweep ends. The listener hears the
    /// entries it frees on that thread; a listener (or clock) that panics
    /// there does not stop it. The interval is real time; what has expired
    /// is decided by the cache's clock.
    ///
    /// # Errors
    /// [`std::io::ErrorKind::InvalidInput`] for a zero interval,
    /// [`std::io::ErrorKind::AlreadyExists`] if this cache already has a
    /// sweeper, and the operating system's error if the thread cannot
    /// start.
    ///
    /// ```
    /// use std::time::Duration;
    /// use torque_cache::LocalCache;
    ///
    /// let sessions: LocalCache<u64, String> = LocalCache::builder()
    ///     .max_capacity(10_000)
    ///     .time_to_live(Duration::from_secs(30 * 60))
    ///     .build()?;
    /// // Expired sessions are freed within a second even if traffic stops.
    /// sessions.sweep_every(Duration::from_secs(1))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sweep_every(&self, every: Duration) -> std::io::Result<()> {
        use std::io::{Error, ErrorKind};
        if every.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "sweep_every needs an interval above zero",
            ));
        }
        if self.inner.sweeper.started.swap(true, Ordering::AcqRel) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "this cache already has a sweeper thread",
            ));
        }
        let cache = Arc::downgrade(&self.inner);
        let started = std::thread::Builder::new()
            .name("torque-cache-sweep".to_string())
            .spawn(move || {
                loop {
                    std::thread::park_timeout(every);
                    let Some(inner) = cache.upgrade() else {
                        return;
                    };
                    let cache = LocalCache { inner };
                    // A panicking listener, `Drop` of a freed value or
                    // clock is the caller's bug, reported by the panic
                    // hook; the entries the listener was told of are
                    // accounted for, and the next tick sweeps again.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        // Only the shards with something due are locked
                        // (as a write to a full cache sweeps them), and none
                        // when nothing is due anywhere or nothing can
                        // expire: a short interval costs a busy cache little
                        // more than this check.
                        if !cache.inner.expiry_in_use.load(Ordering::Relaxed) {
                            return;
                        }
                        let timing = cache.timing();
                        if cache.inner.earliest.bound() <= timing.now {
                            let mut removed = cache.removed();
                            cache.sweep_due_shards(usize::MAX, timing, &mut removed);
                            cache.notify(&mut removed);
                        }
                    }));
                }
            });
        match started {
            Ok(handle) => {
                // Set while this handle keeps the cache alive, so before
                // the drop that reads it.
                let _ = self.inner.sweeper.thread.set(handle.thread().clone());
                Ok(())
            }
            Err(e) => {
                self.inner.sweeper.started.store(false, Ordering::Release);
                Err(e)
            }
        }
    }
}

impl<K: Hash + Eq, V> LocalCache<K, V, DefaultHasher> {
    /// A builder; [`max_capacity`](LocalCacheBuilder::max_capacity) is the
    /// one required setting.
    pub fn builder() -> LocalCacheBuilder<K, V, DefaultHasher> {
        LocalCacheBuilder::new()
    }

    /// A cache of at most `max_capacity` entries with the default policy and
    /// no expiry.
    pub fn new(max_capacity: u64) -> Self {
        Self::from_builder(
            Self::builder(),
            max_capacity,
            crate::builder::default_shards(max_capacity),
        )
    }
}

impl<K: Hash + Eq, V, S: BuildHasher> LocalCache<K, V, S> {
    pub(crate) fn from_builder(
        b: LocalCacheBuilder<K, V, S>,
        capacity: u64,
        shards: usize,
    ) -> Self {
        let per_shard = capacity.div_ceil(shards as u64);
        let shard_count = shards;
        let weighted = b.weigher.is_some();
        let tti = b.time_to_idle.map_or(NEVER, to_nanos);
        // A zero time-to-idle makes every entry idle too long the moment it
        // is written: as with a zero time-to-live, it expires on arrival and
        // is never stored (stored, it lingered until the next operation,
        // counted in the weight and told to the listener late).
        let ttl = if tti == 0 {
            0
        } else {
            b.time_to_live.map_or(NEVER, to_nanos)
        };
        let built = b.clock.now();
        let origin = TICKS_BEFORE_BUILD
            .iter()
            .find_map(|&nanos| built.checked_sub(Duration::from_nanos(nanos)))
            .unwrap_or(built);
        let shards: Box<[ShardCell<K, V>]> = (0..shards)
            .map(|_| {
                ShardCell(RwLock::new(Shard::new(PolicyState::new(
                    b.policy, per_shard, weighted,
                ))))
            })
            .collect();
        // Every shard runs the same policy with the same settings.
        let shared_reads = shards[0].read().shared_hits(tti != NEVER);
        let counts_hits = shards[0].read().counts_hits();
        let due = shards.iter().map(|_| AtomicU64::new(NEVER)).collect();
        let expiry_in_use = ttl != NEVER || tti != NEVER || b.expiry.is_some();
        Self {
            inner: Arc::new(Inner {
                shard_mask: shards.len() - 1,
                shards,
                capacity,
                share: per_shard,
                // Three quarters of the share; none with one shard.
                floor: if shard_count == 1 {
                    0
                } else {
                    per_shard - per_shard / 4
                },
                weight: CachePadded::new(AtomicU64::new(0)),
                due,
                earliest: Earliest::default(),
                hasher: b.hasher,
                policy: b.policy,
                expiry_in_use: AtomicBool::new(expiry_in_use),
                unexpiring_reads: AtomicU8::new(if !shared_reads || expiry_in_use {
                    NOT_UNEXPIRING
                } else if counts_hits {
                    UNEXPIRING_COUNTED
                } else {
                    UNEXPIRING_UNCOUNTED
                }),
                weigher: b.weigher,
                expiry: b.expiry,
                listener: b.listener,
                clock: b.clock,
                origin,
                system_clock: b.system_clock,
                counter: OnceLock::new(),
                ttl,
                tti,
                shared_reads,
                reads: ReadCounters::new(crate::reads::default_stripes()),
                loads: Loads::new(),
                sweeper: Sweeper::default(),
            }),
        }
    }

    #[inline]
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.inner.hasher.hash_one(key)
    }

    /// The shard of a hash. The table inside the shard uses the hash's low
    /// bits (bucket) and top 7 bits (tag), so the shard index is taken from
    /// a remix of the hash to stay independent of both: Fibonacci hashing
    /// (Knuth, TAOCP vol. 3, 6.4), whose middle bits depend on all the low
    /// ones, so even a weak user hasher (the identity on small integers)
    /// spreads over the shards.
    #[inline]
    fn shard_index(&self, hash: u64) -> usize {
        (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize & self.inner.shard_mask
    }

    /// Ticks (nanoseconds since the cache's origin, a while before it was
    /// built: see [`TICKS_BEFORE_BUILD`]) by the cache's clock.
    #[inline]
    pub(crate) fn now_ticks(&self) -> u64 {
        if self.inner.system_clock
            && let Some(Some(counter)) = self.inner.counter.get()
        {
            // The counter never reads before its origin.
            return counter
                .nanos()
                .saturating_add(TICKS_BEFORE_BUILD[0])
                .min(NEVER - 1);
        }
        self.now_ticks_slow()
    }

    /// [`Self::now_ticks`] by the [`Clock`] itself: a custom clock, or the
    /// system clock where the counter is not to be trusted, or before the
    /// counter is set up (by this call). Out of line, so that the
    /// counter's read stays small.
    #[cold]
    #[inline(never)]
    fn now_ticks_slow(&self) -> u64 {
        if self.inner.system_clock
            && let Some(counter) = self.inner.counter.get_or_init(Counter::new)
        {
            return counter
                .nanos()
                .saturating_add(TICKS_BEFORE_BUILD[0])
                .min(NEVER - 1);
        }
        let since = self
            .inner
            .clock
            .now()
            .saturating_duration_since(self.inner.origin);
        // Stays below NEVER, so "now" is never mistaken for "no deadline".
        to_nanos(since).min(NEVER - 1)
    }

    #[inline]
    pub(crate) fn timing(&self) -> Timing {
        if self.inner.expiry_in_use.load(Ordering::Relaxed) {
            Timing {
                now: self.now_ticks(),
                tti: self.inner.tti,
            }
        } else {
            Timing { now: 0, tti: NEVER }
        }
    }

    fn over_capacity(&self) -> bool {
        self.inner.weight.load(Ordering::Acquire) > self.inner.capacity
    }

    /// Publishes shard `index`'s earliest timer (see `Inner::due`); called
    /// with the shard write-locked, after anything that may have armed or
    /// fired a timer.
    ///
    /// Call it after the shard's freed weight is taken off the cache's
    /// total, never before: a full cache's write reads the `due`s (and the
    /// `earliest` bound raised from them) without locking, and skips a
    /// shard whose `due` has risen; seeing that rise with the freed weight
    /// still counted, it evicted a live entry for room that existed. The
    /// store is a release (and the lock-free loads acquire) so that whoever
    /// sees the rise sees the weight too.
    #[inline]
    fn publish_due(&self, index: usize, shard: &Shard<K, V>) {
        let due = &self.inner.due[index];
        let next = shard.next_timer();
        let old = due.load(Ordering::Relaxed);
        if next > old {
            // A rise keeps `earliest` below it.
            due.store(next, Ordering::Release);
        } else if next < old {
            self.inner.earliest.lower(due, next);
        }
    }

    /// Frees what has expired in the shards other than `own` (which the
    /// write sweeps itself), before a write that would overflow the cache
    /// evicts a live entry for it: only shards whose earliest timer is due
    /// are locked, one at a time.
    #[inline]
    fn sweep_elsewhere(&self, own: usize, timing: Timing, removed: &mut Removed<K, V>) {
        // Nothing due in any shard: the common case, on one load.
        if self.inner.earliest.bound() > timing.now {
            return;
        }
        self.sweep_due_shards(own, timing, removed);
    }

    /// [`Self::sweep_elsewhere`] once some shard may be due: sweeps those
    /// that are, then raises `earliest` to the shards' earliest timer.
    #[cold]
    #[inline(never)]
    fn sweep_due_shards(&self, own: usize, timing: Timing, removed: &mut Removed<K, V>) {
        for (index, due) in self.inner.due.iter().enumerate() {
            if index == own || due.load(Ordering::Acquire) > timing.now {
                continue;
            }
            let mut shard = self.inner.shards[index].write();
            let freed = shard.sweep(timing, removed);
            // Published before the shard is unlocked, as every sweep does:
            // a writer that sees the shard without the freed entries must
            // not see the cache still over capacity and evict for them.
            // Then the `due` (see `publish_due`).
            self.inner.weight.fetch_sub(freed, Ordering::AcqRel);
            self.publish_due(index, &shard);
            drop(shard);
        }
        // `own` too: the writer sweeps it under its lock next, but its
        // `due` is what bounds it until then.
        self.inner.earliest.raise(&self.inner.due);
    }

    /// After a read of a cache whose entries can expire: about once in
    /// [`HELP_SWEEP_EVERY_READS`], frees what is due in a shard picked at
    /// random. Call with no lock held.
    #[inline]
    fn help_after_read(&self, timing: Timing) {
        let left = READS_TO_HELP.with(|n| {
            let left = n.get().wrapping_sub(1);
            n.set(left);
            left
        });
        if left == 0 {
            self.read_help(timing);
        }
    }

    /// Draws this thread's next gap and the shard to help, and frees what
    /// is due in that shard for a read, if anything is and its lock is free
    /// (see [`Self::help_sweep`]), and tells the listener.
    #[cold]
    #[inline(never)]
    fn read_help(&self, timing: Timing) {
        // xorshift64 (Marsaglia, "Xorshift RNGs", 2003).
        let r = HELP_RNG.with(|state| {
            let mut x = state.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.set(x);
            x
        });
        let gap = 1 + (r >> 32) as u32 % (2 * HELP_SWEEP_EVERY_READS - 1);
        READS_TO_HELP.with(|n| n.set(gap));
        let index = r as usize & self.inner.shard_mask;
        if self.inner.due[index].load(Ordering::Acquire) > timing.now {
            return;
        }
        let mut removed = self.removed();
        self.help_sweep(index, timing, &mut removed);
        self.notify(&mut removed);
    }

    /// Publishes a shard's change of weight to the cache's total. Called
    /// before the shard is unlocked, everywhere: a writer that sees the
    /// shard without the freed entries must not see the total still
    /// counting them (it would evict a live entry for room that exists).
    fn add_weight(&self, before: u64, after: u64) {
        // One compare: a fall is added in two's complement (the atomic add
        // wraps), which is the same as subtracting it.
        if after != before {
            self.inner
                .weight
                .fetch_add(after.wrapping_sub(before), Ordering::AcqRel);
        }
    }

    pub(crate) fn removed(&self) -> Removed<K, V> {
        Removed::new()
    }

    /// Tells the listener, if any, of what left the cache, and drops it.
    /// Called with no lock held: the listener and the keys' and values'
    /// `Drop` are user code, which may use this cache. Without a listener
    /// this is the drop alone, inlined (nothing at all for keys and values
    /// without drop glue), so that a write that evicts pays no call.
    ///
    /// Takes `removed` by reference: moved in by value, it was copied (48
    /// bytes for `u64` keys and values) on every write, listener or not.
    #[inline]
    pub(crate) fn notify(&self, removed: &mut Removed<K, V>) {
        // Recorded here, not where the shard counts them, so that the
        // recorder (user code) never runs under a shard lock; taken, so
        // that nothing is recorded twice.
        #[cfg(feature = "metrics")]
        if !removed.is_empty() {
            removed.causes().for_each(crate::metrics::record_removal);
            if self.inner.listener.is_none() {
                drop(removed.take());
            }
        }
        if let Some(listener) = &self.inner.listener
            && !removed.is_empty()
        {
            Self::tell(listener, removed.take());
        }
    }

    /// Tells the listener of each departure in turn. A listener that
    /// panics (a bug of its own, which the caller may catch) is still told
    /// of the departures after that one, and the first panic resumes once
    /// all were told: unwinding at once dropped the rest untold, though
    /// they had left and `stats()` counted them (a listener that frees a
    /// resource per entry leaked theirs).
    #[inline(never)]
    fn tell(listener: &Listener<K, V>, removed: impl IntoIterator<Item = (K, V, RemovalCause)>) {
        let mut panicked = None;
        for (key, value, cause) in removed {
            let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                listener(&key, &value, cause);
            }));
            if let Err(panic) = told {
                panicked.get_or_insert(panic);
            }
        }
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
    }

    /// The value for `key`, if cached and unexpired. Counts a hit or a miss
    /// and, for the policy, a use of the key.
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let hash = self.hash(key);
        let lock = &self.inner.shards[self.shard_index(hash)];
        // Until an entry can expire there is no clock, deadline or timer to
        // look at: a hit or a miss under the shared lock.
        let unexpiring = self.inner.unexpiring_reads.load(Ordering::Relaxed);
        // The default policy's path first, on one compare. (Checked as
        // `!= NOT_UNEXPIRING` first and then split, the default policy's
        // read took 2.3 instructions more per request.)
        if unexpiring == UNEXPIRING_COUNTED {
            return self.get_unexpiring::<true, _>(lock, hash, key);
        }
        if unexpiring == UNEXPIRING_UNCOUNTED {
            return self.get_unexpiring::<false, _>(lock, hash, key);
        }
        if self.inner.shared_reads {
            return self.get_shared_expiring(lock, hash, key);
        }
        self.get_exclusive(lock, hash, key)
    }

    /// [`get`](Self::get) while no entry can expire and hits take the
    /// shared lock, with the entry's hit count bumped if `COUNT_HITS` (the
    /// shard's `counts_hits`, known from the flag that picked this path).
    #[inline(always)]
    fn get_unexpiring<const COUNT_HITS: bool, Q>(
        &self,
        lock: &RwLock<Shard<K, V>>,
        hash: u64,
        key: &Q,
    ) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let value = lock
            .read()
            .get_shared_unexpiring::<COUNT_HITS, _>(hash, key)
            .cloned();
        self.inner.reads.count(value.is_some());
        #[cfg(feature = "metrics")]
        crate::metrics::record_read(value.is_some());
        value
    }

    /// [`get`](Self::get) for policies that reorder on a hit (Lru, Lfu; Ttl
    /// with a time-to-idle): under the exclusive lock. Out of line, so that
    /// the shared-lock path inlined into callers stays small (no large
    /// stack frame, few saved registers).
    #[inline(never)]
    fn get_exclusive<Q>(&self, lock: &RwLock<Shard<K, V>>, hash: u64, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        if !self.inner.expiry_in_use.load(Ordering::Relaxed) {
            // No clock, deadline or timer to look at.
            let value = lock.write().get_exclusive_unexpiring(hash, key).cloned();
            #[cfg(feature = "metrics")]
            crate::metrics::record_read(value.is_some());
            return value;
        }
        let timing = self.timing();
        // As in `get_shared_expiring`: None when something in the shard
        // has expired.
        let found = {
            let mut shard = lock.write();
            if shard.sweep_due(timing.now) {
                None
            } else {
                match shard.get_exclusive(hash, key, timing) {
                    Lookup::Hit(v) => Some(Some(v.clone())),
                    Lookup::Miss => Some(None),
                    Lookup::Expired => None,
                }
            }
        };
        let value = match found {
            Some(value) => value,
            None => self.get_expiring(hash, key, timing),
        };
        #[cfg(feature = "metrics")]
        crate::metrics::record_read(value.is_some());
        self.help_after_read(timing);
        value
    }

    /// [`get`](Self::get) under the shared lock once entries can expire;
    /// kept out of line so that the path without expiry stays small.
    #[inline(never)]
    fn get_shared_expiring<Q>(&self, lock: &RwLock<Shard<K, V>>, hash: u64, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let timing = self.timing();
        // The common cases touch no listener, weight or timer: a hit or a
        // miss with nothing due to expire in the shard, counted as the read
        // without expiry counts them (one count, its counter picked by the
        // outcome: counted in two arms, each with its own code, a read took
        // about 6 instructions more).
        let found = {
            let shard = lock.read();
            if shard.sweep_due(timing.now) {
                None
            } else {
                match shard.get_shared(hash, key, timing) {
                    Lookup::Hit(v) => Some(Some(v.clone())),
                    Lookup::Miss => Some(None),
                    Lookup::Expired => None,
                }
            }
        };
        let value = match found {
            Some(value) => {
                self.inner.reads.count(value.is_some());
                value
            }
            None => self.get_expiring(hash, key, timing),
        };
        #[cfg(feature = "metrics")]
        crate::metrics::record_read(value.is_some());
        self.help_after_read(timing);
        value
    }

    /// [`get`](Self::get) when something in the shard has expired: frees it
    /// under the exclusive lock and tells the listener.
    #[cold]
    #[inline(never)]
    fn get_expiring<Q>(&self, hash: u64, key: &Q, timing: Timing) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let mut removed = self.removed();
        let index = self.shard_index(hash);
        let mut shard = self.inner.shards[index].write();
        if shard.sweep_due(timing.now) {
            let freed = shard.sweep(timing, &mut removed);
            // The freed weight before the `due` (see `publish_due`): the
            // lookup below runs user code, and may take its time.
            self.inner.weight.fetch_sub(freed, Ordering::AcqRel);
            self.publish_due(index, &shard);
        }
        let before = shard.weight();
        // The lookup runs the key's `Eq` and the value's `Clone`, user code:
        // should either panic (and the caller catch it), what was freed
        // must still be accounted for and reported; then the panic resumes.
        let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shard.get(hash, key, timing, &mut removed).cloned()
        }));
        let after = shard.weight();
        self.add_weight(before, after);
        drop(shard);
        self.notify(&mut removed);
        value.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Frees what is due in `shard`, which a write holds locked, and
    /// publishes the freed weight at once: the write then looks its key up
    /// (the key's `Eq`, user code), and should that panic, the global
    /// weight must not go on counting entries that are gone. Only a sweep
    /// pays the extra update.
    #[inline]
    fn sweep_for_write(
        &self,
        shard: &mut Shard<K, V>,
        timing: Timing,
        removed: &mut Removed<K, V>,
    ) {
        if shard.sweep_due(timing.now) {
            let freed = shard.sweep(timing, removed);
            self.inner.weight.fetch_sub(freed, Ordering::AcqRel);
        }
    }

    /// The value for `key` without counting a read or telling the policy,
    /// as of `timing` (from [`Self::timing`]; taken by the caller before
    /// it locks anything, as it reads the clock).
    pub(crate) fn peek_at<Q>(&self, key: &Q, timing: Timing) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let hash = self.hash(key);
        self.inner.shards[self.shard_index(hash)]
            .read()
            .peek(hash, key, timing)
            .cloned()
    }

    /// Records a use of `key` as a [`get`](Self::get) hit does (its
    /// time-to-idle, and the policy's view of it) without counting a read:
    /// for a `get_or_load` caller that got the value another way than by
    /// its own read, whose call already counted its miss. Nothing if the
    /// key is absent or expired. Reads the clock: call with no lock held.
    pub(crate) fn touch<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let timing = self.timing();
        let lock = &self.inner.shards[self.shard_index(hash)];
        if self.inner.shared_reads {
            lock.read().touch_shared(hash, key, timing);
        } else {
            lock.write().touch_exclusive(hash, key, timing);
        }
    }

    /// Whether `key` is cached and unexpired. Not a read: no hit or miss is
    /// counted and the policy is not told. Like a read, it may free expired
    /// entries (and tell the listener of them): see docs/cache.md, Expiry.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let timing = self.timing();
        let found = self.inner.shards[self.shard_index(hash)]
            .read()
            .contains(hash, key, timing);
        if self.inner.expiry_in_use.load(Ordering::Relaxed) {
            self.help_after_read(timing);
        }
        found
    }

    /// Stores `value` under `key`, replacing any older value (which the
    /// listener sees as [`RemovalCause::Replaced`]), with the time-to-live
    /// the [`Expiry`](crate::Expiry) gives it if one is set, else the
    /// cache-wide one. Evicts as needed to stay
    /// within capacity; see [`LocalCacheBuilder::weigher`] for entries heavier
    /// than the whole capacity and
    /// [`LocalCacheBuilder::max_capacity`] for a capacity of zero.
    ///
    /// Under [`Policy::Lru`], [`Policy::Lfu`], [`Policy::Fifo`] and
    /// [`Policy::Ttl`] the entry written is never the victim of its own
    /// write's evictions (unless nothing else is left to evict). Under the
    /// default [`Policy::Adaptive`] a new key enters a small window and must
    /// win the admission contest when it leaves it (an entry heavier than
    /// the window meets it at once), so a key written once and not read
    /// again may be refused; the listener hears it as
    /// [`RemovalCause::Capacity`].
    pub fn insert(&self, key: K, value: V) {
        self.insert_expiring(key, value, None);
    }

    /// Like [`insert`](Self::insert), with a time-to-live for this entry that
    /// replaces the cache-wide one (a time-to-idle still applies).
    /// `Duration::ZERO` means the entry expires on arrival and is never
    /// stored.
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        self.inner.expiry_in_use.store(true, Ordering::Relaxed);
        self.inner
            .unexpiring_reads
            .store(NOT_UNEXPIRING, Ordering::Relaxed);
        // A zero time-to-idle expires every entry on arrival (see
        // `from_builder`), whatever its time-to-live.
        let ttl = if self.inner.tti == 0 {
            0
        } else {
            to_nanos(ttl)
        };
        self.insert_expiring(key, value, Some(ttl));
    }

    /// [`insert`](Self::insert) with a time-to-live in ticks, or `None` for
    /// the cache's own rules ([`Self::prepare`]).
    fn insert_expiring(&self, key: K, value: V, ttl: Option<u64>) {
        // Filled in place: returned by value, it was copied (48 bytes for
        // `u64` keys and values) on every write.
        let mut removed = self.removed();
        // User code that runs before anything can leave the cache (the
        // weigher, the expiry, the hasher, the clock): a panic there has
        // nothing to report, and writes nothing.
        let write = self.prepare(&key, &value, ttl);
        // Only now, before the store: a load of the key in flight must not
        // store its older value over this one. Marked before `prepare`, a
        // panic there left the load unstored for a write that never came.
        self.inner.loads.supersede(Some(&key));
        // The write runs the key's `Eq` (user code) after its sweep may
        // have freed expired entries: should it panic (and the caller catch
        // it), the listener must still hear of those; then the panic
        // resumes.
        let stored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.store_prepared(key, value, write, &mut removed);
        }));
        // The shard counted the insert even if the key's `Eq` panicked;
        // recorded before the listener, which may panic too.
        #[cfg(feature = "metrics")]
        crate::metrics::record_insert();
        self.notify(&mut removed);
        if let Err(panic) = stored {
            std::panic::resume_unwind(panic);
        }
    }

    /// Runs what a write of `key` and `value` needs from user code (the
    /// weigher, the expiry, the hasher, the clock), so that a caller that
    /// must write under a lock of its own (a finishing load) can run it
    /// before taking that lock: such code may use this cache. The entry's
    /// time-to-live is `ttl` (ticks) if given, else the
    /// [`Expiry`](crate::Expiry)'s, else the cache-wide one.
    #[inline]
    pub(crate) fn prepare(&self, key: &K, value: &V, ttl: Option<u64>) -> Prepared {
        let weight = self
            .inner
            .weigher
            .as_ref()
            .map_or(1, |w| w(key, value))
            .max(1);
        let ttl = match (ttl, &self.inner.expiry) {
            (Some(ttl), _) => ttl,
            (None, None) => self.inner.ttl,
            (None, Some(expiry)) => self.expiring_ttl(expiry.as_ref(), key, value),
        };
        Prepared {
            weight,
            hash: self.hash(key),
            timing: self.timing(),
            ttl,
        }
    }

    /// The time-to-live in ticks that `expiry` gives `key` and `value`.
    /// Out of line (not cold: with an `Expiry` every write calls it), so
    /// that writes without one stay small.
    #[inline(never)]
    fn expiring_ttl(&self, expiry: &dyn crate::Expiry<K, V>, key: &K, value: &V) -> u64 {
        // A zero time-to-idle expires every entry on arrival (see
        // `from_builder`), whatever its time-to-live.
        if self.inner.tti == 0 {
            return 0;
        }
        expiry
            .expire_after_write(key, value)
            .map_or(self.inner.ttl, to_nanos)
    }

    /// The write of [`insert`](Self::insert) with a time-to-live in ticks,
    /// with the user code already run (see [`Self::prepare`]); adds what
    /// left the cache to `removed`, for the caller to tell the listener of
    /// and drop once it holds nothing that the listener or a `Drop` could
    /// wait on (a load's leader first leaves the in-flight map). The caller
    /// records the insert with the `metrics` feature, then too: a recorder
    /// is user code, which may use this cache (a write takes the in-flight
    /// map's lock, which a finishing load holds here).
    pub(crate) fn store_prepared(
        &self,
        key: K,
        value: V,
        write: Prepared,
        removed: &mut Removed<K, V>,
    ) {
        let Prepared {
            weight,
            hash,
            timing,
            ttl,
        } = write;
        let expires = if ttl == NEVER {
            NEVER
        } else {
            timing.now.saturating_add(ttl)
        };
        let index = self.shard_index(hash);
        if u64::from(weight) > self.inner.capacity || expires <= timing.now {
            let cause = if expires <= timing.now {
                RemovalCause::Expired
            } else {
                RemovalCause::Capacity
            };
            let mut shard = self.inner.shards[index].write();
            self.sweep_for_write(&mut shard, timing, removed);
            self.publish_due(index, &shard);
            let before = shard.weight();
            shard.reject(hash, key, value, cause, removed);
            let after = shard.weight();
            self.add_weight(before, after);
            drop(shard);
            return;
        }
        let mut help = None;
        let expiring = self.inner.expiry_in_use.load(Ordering::Relaxed);
        // A write that would overflow the cache first frees what has
        // expired in the other shards: otherwise it evicts a live entry of
        // its own shard while the cache holds dead ones.
        if expiring
            && self
                .inner
                .weight
                .load(Ordering::Relaxed)
                .saturating_add(u64::from(weight))
                > self.inner.capacity
        {
            self.sweep_elsewhere(index, timing, removed);
        }
        {
            let mut shard = self.inner.shards[index].write();
            self.sweep_for_write(&mut shard, timing, removed);
            let before = shard.weight();
            shard.insert(hash, key, value, weight, expires, timing, removed);
            if expiring {
                self.publish_due(index, &shard);
            }
            // The write's net change goes to the shared total once, after
            // the evictions it causes: in a full cache an insert and its
            // victim cancel out and the shared counter is only read, not
            // written (a locked read-modify-write costs as much as the rest
            // of a read hit on some CPUs, and its cache line would bounce
            // between the cores of every writer). The net change is
            // `after - before`, evictions counted into `before`.
            let (after, mut before) = (shard.weight(), before);
            let floor = self.own_eviction_floor();
            // The cache-wide test first: it is the one that ends the loop
            // in a full cache, after the write's one eviction.
            while self
                .inner
                .weight
                .load(Ordering::Acquire)
                .saturating_add(after)
                > self.inner.capacity.saturating_add(before)
                && shard.len() > 1
                && shard.weight() > floor
            {
                match shard.evict_one(removed) {
                    Some(freed) => before += freed,
                    None => break,
                }
            }
            // Published before the shard is unlocked, so whoever evicts one
            // of this shard's entries later finds its weight counted.
            self.add_weight(before, after);
            // Writers to other shards may have published in the meantime.
            if self.over_capacity() {
                self.evict_own_after_publish(&mut shard, floor, removed);
            }
            if shard.writes_since_help >= HELP_SWEEP_EVERY {
                help = self.help_target(&mut shard, index);
            }
        }
        if self.over_capacity() {
            self.evict_elsewhere(index, timing, removed);
        }
        if let Some(other) = help {
            self.help_sweep(other, timing, removed);
        }
    }

    /// The eviction a write makes from its own shard (write-locked, as
    /// `shard`) after publishing its change, when writers to other shards
    /// have taken the cache over capacity in the meantime; each eviction
    /// is published at once. Out of line: rare, and kept in the write path
    /// it cost every write registers and stack.
    #[cold]
    #[inline(never)]
    fn evict_own_after_publish(
        &self,
        shard: &mut Shard<K, V>,
        floor: u64,
        removed: &mut Removed<K, V>,
    ) {
        while self.over_capacity() && shard.len() > 1 && shard.weight() > floor {
            match shard.evict_one(removed) {
                Some(freed) => {
                    self.inner.weight.fetch_sub(freed, Ordering::AcqRel);
                }
                None => break,
            }
        }
    }

    /// Which other shard a write to shard `index` (write-locked, as
    /// `shard`) that reached [`HELP_SWEEP_EVERY`] writes sweeps, if any.
    /// Out of line, with [`Self::help_sweep`]: one write in 64 gets here,
    /// and kept in the write path they cost it registers and stack.
    #[cold]
    #[inline(never)]
    fn help_target(&self, shard: &mut Shard<K, V>, index: usize) -> Option<usize> {
        shard.writes_since_help = 0;
        if !self.inner.expiry_in_use.load(Ordering::Relaxed) {
            return None;
        }
        // The other shards in turn: always the next one left the expired
        // entries of all the others held for as long as the traffic stayed
        // on a few hot keys.
        let others = self.inner.shard_mask.max(1);
        shard.helped = (shard.helped + 1) % others;
        let other = (index + 1 + shard.helped) & self.inner.shard_mask;
        (other != index).then_some(other)
    }

    /// Frees what has expired in shard `other` for a write to another
    /// shard (see [`Self::help_target`]) or for a read, unless that shard
    /// is locked.
    #[cold]
    #[inline(never)]
    fn help_sweep(&self, other: usize, timing: Timing, removed: &mut Removed<K, V>) {
        if let Some(mut shard) = self.inner.shards[other].try_write() {
            let before = shard.weight();
            shard.sweep(timing, removed);
            let after = shard.weight();
            self.add_weight(before, after);
            self.publish_due(other, &shard);
            drop(shard);
        }
    }

    /// How light a writer's own shard may get by its own evictions: three
    /// quarters of its share of the capacity (none with one shard). Below
    /// it, the writer evicts from shards above their share instead.
    ///
    /// Without this floor, weighted caches drifted: a heavy entry's insert
    /// emptied its own small shard while others kept stale entries, so the
    /// shards' weights random-walked away from their shares, a few shards
    /// held so little that they evicted entries read a moment before, and
    /// the miss ratio depended on which shards the hasher's seed filled
    /// (Zipf 0.9, about 2,100 entries of 1–190 weight units in 8 shards:
    /// 0.507 and 0.568 in two runs, against 0.476 with one shard;
    /// `cargo run --release -p torque-benches --example cache_weighted_shards`).
    /// Entries of one weight keep every shard at its share by construction
    /// (each insert evicts one entry of the same shard), so this floor does
    /// not bind there.
    #[inline]
    fn own_eviction_floor(&self) -> u64 {
        self.inner.floor
    }

    /// Evicts from the other shards (wrapping round to `start` itself) until
    /// the cache fits: first only from shards holding more than their share,
    /// and only down to it, then from any. Each shard first frees what has
    /// expired in it (as a write does in its own shard): an expired entry
    /// leaves as expired, not for capacity, and no live entry is evicted
    /// while the shard holds expired ones.
    ///
    /// The first pass skips `start`: the writer has evicted from it already,
    /// down to its floor or to the one entry it just wrote, and a shard that
    /// holds a heavy new entry alone is above its share because of that
    /// entry. Evicting it there threw away the write after live entries of
    /// other shards had left to make room for it (an entry of the whole
    /// capacity's weight fitted with one shard, never with eight). The
    /// second pass comes back to `start` last, once every other shard is
    /// empty, as a one-shard cache would evict the new entry last.
    fn evict_elsewhere(&self, start: usize, timing: Timing, removed: &mut Removed<K, V>) {
        let n = self.inner.shards.len();
        for above_share in [true, false] {
            for step in 1..=n {
                if !self.over_capacity() {
                    return;
                }
                let index = (start + step) & self.inner.shard_mask;
                if above_share && index == start {
                    continue;
                }
                let mut shard = self.inner.shards[index].write();
                if shard.sweep_due(timing.now) {
                    let freed = shard.sweep(timing, removed);
                    self.inner.weight.fetch_sub(freed, Ordering::AcqRel);
                    self.publish_due(index, &shard);
                }
                while self.over_capacity() && (!above_share || shard.weight() > self.inner.share) {
                    // Only the writer's own shard spares the entry of its
                    // latest write (`Lfu`, `Fifo`, `Ttl`): the entry being written.
                    // Another shard's latest write is over, and sparing its
                    // entry kept an unread (or the soonest-expiring) entry
                    // while entries read since left in its place.
                    let evicted = if index == start {
                        shard.evict_one(removed)
                    } else {
                        shard.evict_one_for_another_shard(removed)
                    };
                    match evicted {
                        Some(freed) => {
                            self.inner.weight.fetch_sub(freed, Ordering::AcqRel);
                        }
                        None => break,
                    }
                }
            }
        }
    }

    /// Removes `key` and returns its value, if cached and unexpired. The
    /// listener sees it as [`RemovalCause::Removed`] (or
    /// [`RemovalCause::Expired`] if it had expired, in which case `None` is
    /// returned). Like a write, it also frees what has expired in the key's
    /// shard (the listener hears of those first, as expired).
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // User code first (the hasher, the clock), as in `insert`: should
        // it panic, nothing is removed, and no load may be superseded.
        let hash = self.hash(key);
        let timing = self.timing();
        self.inner.loads.supersede(Some(key));
        let index = self.shard_index(hash);
        let mut removed = self.removed();
        let mut shard = self.inner.shards[index].write();
        // A write of the shard frees what is due in it, as `insert` does
        // (an expired `key` among them, which then leaves as expired).
        if shard.sweep_due(timing.now) {
            let freed = shard.sweep(timing, &mut removed);
            self.inner.weight.fetch_sub(freed, Ordering::AcqRel);
            self.publish_due(index, &shard);
        }
        let before = shard.weight();
        // The key's `Eq` is user code: should it panic, what the sweep
        // freed is still told (as after `get`'s); then the panic resumes.
        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shard.remove(hash, key, timing)
        }));
        let after = shard.weight();
        self.add_weight(before, after);
        drop(shard);
        // What the sweep freed left first. A listener that panics on one
        // of them is still told of the key removed; then the first panic
        // resumes.
        let swept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.notify(&mut removed);
        }));
        let taken = taken.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let Some((key, value, cause)) = taken else {
            if let Err(panic) = swept {
                std::panic::resume_unwind(panic);
            }
            return None;
        };
        #[cfg(feature = "metrics")]
        crate::metrics::record_removal(cause);
        let told = match &self.inner.listener {
            Some(listener) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                listener(&key, &value, cause);
            })),
            None => Ok(()),
        };
        if let Err(panic) = swept.and(told) {
            std::panic::resume_unwind(panic);
        }
        (cause == RemovalCause::Removed).then_some(value)
    }

    /// Removes every entry (the listener sees each as
    /// [`RemovalCause::Removed`], or [`RemovalCause::Expired`] if it had
    /// already expired). Shards are cleared one at a time, so a concurrent
    /// write may survive.
    pub fn invalidate_all(&self) {
        // The clock (user code) first: see `remove`.
        let timing = self.timing();
        self.inner.loads.supersede::<K>(None);
        // A listener that panics on one shard's entries must not leave the
        // later shards uncleared (they kept serving invalidated values):
        // every shard is cleared and told of, then the first panic resumes.
        let mut panicked = None;
        for (index, shard) in self.inner.shards.iter().enumerate() {
            let mut removed = self.removed();
            let mut shard = shard.write();
            let before = shard.weight();
            // Expired entries leave as expired, as with `remove`.
            shard.sweep(timing, &mut removed);
            let cleared = shard.clear();
            self.add_weight(before, 0);
            self.publish_due(index, &shard);
            drop(shard);
            // Recorded before the listener hears of anything: should it
            // panic, what the shard cleared is still recorded.
            #[cfg(feature = "metrics")]
            crate::metrics::record_removals(RemovalCause::Removed, cleared.entries());
            // The expired and the cleared entries told apart: told in one
            // go, a panic on an expired one dropped the cleared ones untold.
            let expired = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.notify(&mut removed);
            }));
            let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if let Some(listener) = &self.inner.listener {
                    Self::tell(listener, cleared);
                }
            }));
            for outcome in [expired, told] {
                if let Err(panic) = outcome {
                    panicked.get_or_insert(panic);
                }
            }
        }
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
    }

    /// Keeps only the entries for which `keep` returns true; the others leave
    /// with [`RemovalCause::Removed`]. Expired entries are never shown to
    /// `keep`: they leave first, with [`RemovalCause::Expired`].
    ///
    /// `keep` runs while a shard is locked: it must not use this cache. If it
    /// panics, the entries removed so far are still accounted for and
    /// reported, and the panic then resumes.
    ///
    /// A load in flight is not an entry yet, and there is no value to show
    /// `keep`, so `retain` supersedes every load in flight, as
    /// [`invalidate_all`](Self::invalidate_all) does: each still gives its
    /// value to the callers already waiting for it, but does not store it
    /// (a call made after `retain` began loads afresh). A loader may have read
    /// its source before the change that this `retain` is there to clear
    /// out; stored after `retain` returned, its value would stay whatever
    /// `keep` would have said. The cost is a miss on those keys later.
    pub fn retain<F>(&self, mut keep: F)
    where
        F: FnMut(&K, &V) -> bool,
    {
        // The clock (user code) first: see `remove`.
        let timing = self.timing();
        self.inner.loads.supersede::<K>(None);
        // As in `invalidate_all`: a panicking listener does not stop it
        // half way (a panicking `keep` does, as documented).
        let mut panicked = None;
        for (index, shard) in self.inner.shards.iter().enumerate() {
            let mut removed = self.removed();
            let mut shard = shard.write();
            let swept = shard.weight();
            shard.sweep(timing, &mut removed);
            let before = shard.weight();
            self.add_weight(swept, before);
            self.publish_due(index, &shard);
            // A panicking `keep` must not skip the weight update and the
            // listener for what this shard already removed.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                shard.retain(&mut keep, &mut removed);
            }));
            let after = shard.weight();
            self.add_weight(before, after);
            drop(shard);
            let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.notify(&mut removed);
            }));
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
            if let Err(panic) = told {
                panicked.get_or_insert(panic);
            }
        }
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
    }

    /// Frees every expired entry now, in every shard. Writes and reads
    /// already do this a little at a time; call it to make
    /// [`weighted_size`](Self::weighted_size) exact, or from a timer when the
    /// cache can sit idle with expensive expired values.
    pub fn run_pending_tasks(&self) {
        let timing = self.timing();
        // As in `invalidate_all`: a panicking listener does not stop it
        // half way.
        let mut panicked = None;
        for (index, shard) in self.inner.shards.iter().enumerate() {
            let mut removed = self.removed();
            let mut shard = shard.write();
            let before = shard.weight();
            shard.sweep(timing, &mut removed);
            let after = shard.weight();
            self.add_weight(before, after);
            self.publish_due(index, &shard);
            drop(shard);
            let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.notify(&mut removed);
            }));
            if let Err(panic) = told {
                panicked.get_or_insert(panic);
            }
        }
        // Every shard was swept: the bound may rise to their earliest
        // timer (else it stays at the deadlines just swept, and the
        // sweeper thread, which sweeps while it is due, sweeps every
        // shard on every tick).
        self.inner.earliest.raise(&self.inner.due);
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
    }

    /// The number of entries, after freeing the expired ones.
    pub fn len(&self) -> usize {
        self.run_pending_tasks();
        self.inner.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The total weight held (the entry count without a weigher), including
    /// expired entries not yet freed.
    pub fn weighted_size(&self) -> u64 {
        self.inner.weight.load(Ordering::Acquire)
    }

    /// The capacity given to the builder.
    pub fn max_capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// The eviction policy.
    pub fn policy(&self) -> Policy {
        self.inner.policy
    }

    /// A snapshot of the counters; see [`CacheStats`].
    pub fn stats(&self) -> CacheStats {
        let mut c = Counters::default();
        let (mut hits, mut misses) = self.inner.reads.sum();
        for slot in self.inner.shards.iter() {
            let shard = slot.read();
            hits += shard.counters.hits;
            misses += shard.counters.misses;
            let s = shard.counters;
            c.inserts += s.inserts;
            c.expired += s.expired;
            c.capacity += s.capacity;
            c.replaced += s.replaced;
            c.removed += s.removed;
        }
        let (loads, load_failures, load_nanos) = self.inner.loads.counters();
        CacheStats {
            hits,
            misses,
            inserts: c.inserts,
            evictions: Evictions {
                expired: c.expired,
                capacity: c.capacity,
                replaced: c.replaced,
                removed: c.removed,
            },
            loads,
            load_failures,
            total_load_time: Duration::from_nanos(load_nanos),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasherDefault, Hasher};

    use super::*;

    /// A hasher that returns the key itself: the weakest a user can plug in.
    #[derive(Default)]
    struct Identity(u64);

    impl Hasher for Identity {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0 << 8) | u64::from(b);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
    }

    #[test]
    fn the_system_clock_is_read_through_the_counter_and_a_mock_one_is_not() {
        let trusted = Counter::new().is_some();
        let counted = |cache: &LocalCache<u64, u64>| {
            // Set up by the first read of the clock, not by the build.
            assert!(cache.inner.counter.get().is_none());
            cache.insert_with_ttl(1, 1, Duration::from_secs(60));
            cache.inner.counter.get().is_some_and(Option::is_some)
        };
        let default = LocalCache::<u64, u64>::builder()
            .max_capacity(10)
            .build()
            .unwrap();
        assert_eq!(counted(&default), trusted);
        let explicit = LocalCache::<u64, u64>::builder()
            .max_capacity(10)
            .clock(crate::SystemClock)
            .build()
            .unwrap();
        assert_eq!(counted(&explicit), trusted);
        let mock = LocalCache::<u64, u64>::builder()
            .max_capacity(10)
            .clock(crate::MockClock::new())
            .build()
            .unwrap();
        assert!(!counted(&mock));
        // Set back to the system clock after a mock one.
        let back = LocalCache::<u64, u64>::builder()
            .max_capacity(10)
            .clock(crate::MockClock::new())
            .clock(crate::SystemClock)
            .build()
            .unwrap();
        assert_eq!(counted(&back), trusted);
    }

    #[test]
    fn shards_sit_a_power_of_two_bytes_apart() {
        // Else the shard's address costs a multiply again on every read.
        let stride = std::mem::size_of::<ShardCell<u64, u64>>();
        assert!(stride.is_power_of_two(), "{stride} bytes");
        // And not wastefully: at 256 bytes or less, align to 256 instead.
        if cfg!(target_pointer_width = "64") {
            assert!(std::mem::size_of::<RwLock<Shard<u64, u64>>>() > 256);
        }
    }

    #[test]
    fn a_hit_from_a_thread_local_destructor_is_served_and_counted() {
        // A hit under the shared lock stores its hit count through a
        // thread-local scratch byte; a read from another thread-local's
        // destructor, set up before or after the first read, must still
        // be served, counted, and not panic.
        struct ReadsOnDrop(LocalCache<u64, u64>, Arc<AtomicBool>);
        impl Drop for ReadsOnDrop {
            fn drop(&mut self) {
                let hit = (0..64).all(|_| self.0.get(&1) == Some(10));
                self.1.store(hit, Ordering::Relaxed);
            }
        }
        thread_local! {
            static LATE: std::cell::RefCell<Option<ReadsOnDrop>> =
                const { std::cell::RefCell::new(None) };
        }
        for late_first in [true, false] {
            let cache = LocalCache::<u64, u64>::builder()
                .max_capacity(100)
                .policy(crate::Policy::Adaptive)
                .build()
                .expect("valid config");
            cache.insert(1, 10);
            let served = Arc::new(AtomicBool::new(false));
            let (for_thread, flag) = (cache.clone(), Arc::clone(&served));
            std::thread::spawn(move || {
                let late = ReadsOnDrop(for_thread.clone(), flag);
                if late_first {
                    LATE.with(|l| *l.borrow_mut() = Some(late));
                    assert_eq!(for_thread.get(&1), Some(10));
                } else {
                    assert_eq!(for_thread.get(&1), Some(10));
                    LATE.with(|l| *l.borrow_mut() = Some(late));
                }
            })
            .join()
            .expect("no panic in the thread or its destructors");
            assert!(served.load(Ordering::Relaxed), "late_first: {late_first}");
            assert_eq!(cache.stats().hits, 65, "late_first: {late_first}");
        }
    }

    #[test]
    fn the_earliest_bound_stays_below_every_shards_due_under_concurrent_writes() {
        // Writers with short and long time-to-lives on a clock that moves
        // on: shards' `due` fall (a shorter timer) and rise (a sweep)
        // concurrently with the scans that raise the bound. Once they are
        // done, the bound must be below every shard's `due` (a bound above
        // one hides that shard from full-cache writes), and each `due`
        // must be its shard's earliest timer.
        for round in 0..20_u64 {
            let clock = crate::MockClock::new();
            let cache = LocalCache::<u64, u64>::builder()
                .max_capacity(64)
                .shards(8)
                .clock(clock.clone())
                .build()
                .expect("valid config");
            std::thread::scope(|s| {
                for t in 0..3_u64 {
                    let (cache, clock) = (&cache, &clock);
                    s.spawn(move || {
                        let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ (round << 8 | t);
                        for i in 0..3_000 {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            let ttl = Duration::from_millis(1 + rng % 50);
                            cache.insert_with_ttl(rng % 500, i, ttl);
                            if t == 0 && i % 16 == 0 {
                                clock.advance(Duration::from_millis(3));
                            }
                        }
                    });
                }
            });
            let inner = &cache.inner;
            let dues: Vec<u64> = inner
                .due
                .iter()
                .map(|d| d.load(Ordering::Relaxed))
                .collect();
            for (index, shard) in inner.shards.iter().enumerate() {
                assert_eq!(
                    dues[index],
                    shard.read().next_timer(),
                    "round {round}: {dues:?}"
                );
            }
            let least = dues.iter().copied().min().unwrap_or(NEVER);
            assert!(
                inner.earliest.bound() <= least,
                "round {round}: bound {} above a shard's due {least}",
                inner.earliest.bound()
            );
        }
    }

    #[test]
    fn run_pending_tasks_raises_the_earliest_bound_past_what_it_swept() {
        // The sweeper thread (`sweep_every`) sweeps only while the bound is
        // due. Left at the swept timer's deadline, it stayed due for good
        // in a cache that is never full (only a full cache's write raised
        // it), and every tick write-locked every shard for nothing.
        let clock = crate::MockClock::new();
        let cache = LocalCache::<u64, u64>::builder()
            .max_capacity(64)
            .shards(4)
            .clock(clock.clone())
            .build()
            .expect("valid config");
        cache.insert_with_ttl(1, 1, Duration::from_secs(1));
        cache.insert_with_ttl(2, 2, Duration::from_secs(3_600));
        clock.advance(Duration::from_secs(2));
        cache.run_pending_tasks();
        assert!(!cache.contains_key(&1));
        let now = cache.timing().now;
        assert!(
            cache.inner.earliest.bound() > now,
            "bound {} still due at {now} after a full sweep",
            cache.inner.earliest.bound()
        );
    }

    #[test]
    fn rewrites_with_ever_earlier_deadlines_keep_the_timer_heap_in_proportion() {
        // Each rewrite of these keys has an earlier deadline than the
        // slot's timer, so it arms a new record and leaves the old one
        // stale. None comes due (the deadlines are days away) and with one
        // shard no other shard's writes help sweep this one: the heap
        // must still be kept in proportion to the entries, not grow with
        // every write until a timer fires (with a per-entry time-to-live
        // jittered around an hour, by about half the writes for an hour).
        let clock = crate::MockClock::new();
        let cache = LocalCache::<u64, u64>::builder()
            .max_capacity(64)
            .shards(1)
            .clock(clock)
            .build()
            .expect("valid config");
        let base = Duration::from_secs(1_000_000);
        for i in 0..20_000_u64 {
            cache.insert_with_ttl(i % 8, i, base - Duration::from_millis(i));
            let shard = cache.inner.shards[0].read();
            assert!(
                !shard.timers_oversized(),
                "write {i}: {} timer records for {} entries",
                shard.timer_records(),
                shard.len()
            );
        }
    }

    #[test]
    fn a_full_cache_write_never_sees_a_freed_shard_with_its_weight_still_counted() {
        // A read that sweeps a shard publishes that shard's `due` as it
        // leaves it; a full cache's write reads the `due`s (and the
        // `earliest` bound raised from them) without locking, and skips
        // the shards that have nothing due. Should it see the sweep's
        // `due` before the sweep's freed weight, it evicts a live entry of
        // its own shard for room that exists. Here the read is held
        // between the two by its key's `Eq` (user code, run under the
        // shard's lock after the sweep) while the write runs.
        use std::sync::atomic::AtomicBool;
        static ARMED: AtomicBool = AtomicBool::new(false);
        static ENTERED: AtomicBool = AtomicBool::new(false);
        static OPEN: AtomicBool = AtomicBool::new(false);
        const GATED: u64 = u64::MAX;
        #[derive(Debug, Clone)]
        struct Key(u64);
        impl std::hash::Hash for Key {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state);
            }
        }
        impl PartialEq for Key {
            fn eq(&self, other: &Self) -> bool {
                if self.0 == GATED && ARMED.swap(false, Ordering::SeqCst) {
                    ENTERED.store(true, Ordering::SeqCst);
                    while !OPEN.load(Ordering::SeqCst) {
                        std::thread::yield_now();
                    }
                }
                self.0 == other.0
            }
        }
        impl Eq for Key {}

        let clock = crate::MockClock::new();
        let events = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let cache = LocalCache::<Key, u64>::builder()
            .max_capacity(8)
            .shards(2)
            .policy(Policy::Lru)
            .clock(clock.clone())
            .eviction_listener(move |k: &Key, _: &u64, c| sink.lock().push((k.0, c)))
            .build()
            .expect("valid config");
        let shard_of = |k: u64| cache.shard_index(cache.hash(&Key(k)));
        let gated_shard = shard_of(GATED);
        let (mut same, mut other) = (Vec::new(), Vec::new());
        for k in 0..1_000 {
            if shard_of(k) == gated_shard {
                same.push(k);
            } else {
                other.push(k);
            }
        }
        let hour = Duration::from_secs(3600);
        // The gated key's shard: it and three entries about to expire.
        cache.insert_with_ttl(Key(GATED), 0, hour);
        for &k in &same[..3] {
            cache.insert_with_ttl(Key(k), k, Duration::from_secs(1));
        }
        // The writer's shard: four live entries, and the cache is full.
        for &k in &other[..4] {
            cache.insert_with_ttl(Key(k), k, hour);
        }
        assert_eq!(cache.weighted_size(), 8);
        clock.advance(Duration::from_secs(2));
        events.lock().clear();
        ARMED.store(true, Ordering::SeqCst);
        std::thread::scope(|s| {
            let reader = s.spawn(|| cache.get(&Key(GATED)));
            while !ENTERED.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            // The reader has swept its shard and is inside its lookup.
            cache.insert_with_ttl(Key(other[4]), 0, hour);
            OPEN.store(true, Ordering::SeqCst);
            assert_eq!(reader.join().expect("no panic"), Some(0));
        });
        let events = events.lock().clone();
        assert!(
            events.iter().all(|(_, c)| *c == RemovalCause::Expired),
            "a live entry evicted while the expired ones had left: {events:?}"
        );
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(cache.weighted_size(), 6);
    }

    /// A two-shard cache of `policy` (capacity 8, one unit an entry) with
    /// the identity hasher and a mock clock, its listener's log, and eight
    /// keys of its second shard (`b`) and one of its first (`a`).
    #[allow(clippy::type_complexity)]
    fn two_shards(
        policy: Policy,
    ) -> (
        LocalCache<u64, u64, BuildHasherDefault<Identity>>,
        Arc<Mutex<Vec<(u64, RemovalCause)>>>,
        Vec<u64>,
        u64,
    ) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let cache = LocalCache::<u64, u64>::builder()
            .max_capacity(8)
            .shards(2)
            .policy(policy)
            .clock(crate::MockClock::new())
            .hasher(BuildHasherDefault::<Identity>::default())
            .eviction_listener(move |k: &u64, _: &u64, cause| {
                sink.lock().push((*k, cause));
            })
            .build()
            .expect("valid config");
        let shard = |k: &u64| cache.shard_index(cache.hash(k));
        let b: Vec<u64> = (0..).filter(|k| shard(k) == 1).take(8).collect();
        let a = (0..).find(|k| shard(k) == 0).unwrap();
        (cache, log, b, a)
    }

    #[test]
    fn lfu_spares_only_the_entry_being_written_not_another_shards_last_write() {
        // Shard B holds the whole capacity: seven entries read once (two
        // uses), then one written and never read (one use). A new key of
        // the empty shard A cannot evict in its own shard (it is alone
        // there), so it evicts from B: B's least used entry is the unread
        // one. It is B's latest write, but that write finished long ago;
        // only the entry being written (in A) is spared.
        let (cache, log, b, a) = two_shards(Policy::Lfu);
        for &k in &b[..7] {
            cache.insert(k, k);
            assert_eq!(cache.get(&k), Some(k));
        }
        cache.insert(b[7], b[7]);
        assert!(log.lock().is_empty());
        cache.insert(a, a);
        assert_eq!(*log.lock(), [(b[7], RemovalCause::Capacity)]);
        assert_eq!(cache.get(&b[0]), Some(b[0]));
        assert_eq!(cache.get(&a), Some(a));
    }

    #[test]
    fn ttl_spares_only_the_entry_being_written_not_another_shards_last_write() {
        // As for Lfu: B's latest write, the entry of B nearest its expiry,
        // is the one a write to A evicts from B.
        let (cache, log, b, a) = two_shards(Policy::Ttl);
        let long = Duration::from_secs(100);
        for &k in &b[..7] {
            cache.insert_with_ttl(k, k, long);
        }
        cache.insert_with_ttl(b[7], b[7], Duration::from_secs(10));
        assert!(log.lock().is_empty());
        cache.insert_with_ttl(a, a, long);
        assert_eq!(*log.lock(), [(b[7], RemovalCause::Capacity)]);
        assert_eq!(cache.get(&b[0]), Some(b[0]));
        assert_eq!(cache.get(&a), Some(a));
    }

    #[test]
    fn small_integer_hashes_spread_over_every_shard() {
        let cache = LocalCache::<u64, u64>::builder()
            .max_capacity(100_000)
            .shards(16)
            .hasher(BuildHasherDefault::<Identity>::default())
            .build()
            .expect("valid config");
        for k in 0..1_600 {
            cache.insert(k, k);
        }
        for shard in cache.inner.shards.iter() {
            let len = shard.read().len();
            assert!((50..=150).contains(&len), "a shard holds {len} of 1,600");
        }
    }

    #[test]
    fn regression_weighted_shards_stay_near_their_share() {
        // Entries of 1 to 190 weight units; each insert used to evict from
        // its own shard only, so the shards' weights random-walked and some
        // ran nearly dry (their entries evicted a moment after a read).
        let weight = |k: &u64| ((k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as u32) * 3 + 1;
        let cache = LocalCache::<u64, u64>::builder()
            .max_capacity(20_000)
            .weigher(move |k: &u64, _: &u64| weight(k))
            .shards(8)
            .build()
            .expect("valid config");
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = rng % 5_000;
            if cache.get(&k).is_none() {
                cache.insert(k, k);
            }
        }
        let share = cache.inner.share;
        let weights: Vec<u64> = cache
            .inner
            .shards
            .iter()
            .map(|s| s.read().weight())
            .collect();
        assert!(weights.iter().sum::<u64>() <= 20_000, "{weights:?}");
        for &w in &weights {
            // The floor is 3/4 of the share; one heavy insert can take a
            // shard a little under it.
            assert!(
                w >= share / 2,
                "a shard holds {w} of its {share}: {weights:?}"
            );
        }
    }
}
