//! One shard: a hash table of slot ids, the slot arena holding the entries,
//! the policy's view of those ids, and a deadline heap for proactive expiry.
//! Everything here runs under the shard's lock: reads that the policy lets
//! run under the shared lock ([`Shard::get_shared`]) touch only atomics (an
//! entry's hit count and last-access time); everything else takes the
//! exclusive lock. The cache layer owns the global weight counter, counts the
//! reads made under the shared lock, and tells the listener of departed
//! entries and drops them after unlocking (see [`Removed`]).

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use hashbrown::HashTable;

use crate::RemovalCause;
use crate::policy::{Hits, MAX_HITS, NEVER, PolicyState};

/// A cached key and value.
#[derive(Debug)]
struct Entry<K, V> {
    key: K,
    value: V,
}

/// The expiry times of the entry in a slot, kept apart from the slots so
/// that a cache without expiry carries none (and its reads check none).
#[derive(Debug)]
struct Times {
    /// Hard deadline from a time-to-live (cache-wide or per entry), in ticks.
    expires: u64,
    /// Last read or write, in ticks; only kept current with a time-to-idle.
    /// Atomic so that a read under the shared lock can refresh it.
    accessed: AtomicU64,
}

impl Times {
    /// The times of a slot with no timer (see [`Shard::arm_for_write`]):
    /// a deadline of [`NEVER`] whatever the time-to-idle.
    fn disarmed() -> Self {
        Self {
            expires: NEVER,
            accessed: AtomicU64::new(NEVER),
        }
    }

    /// Marks the slot as having no timer, once its timer has fired.
    #[inline]
    fn disarm(&mut self) {
        *self = Self::disarmed();
    }

    #[inline]
    fn deadline(&self, tti: u64) -> u64 {
        self.expires
            .min(self.accessed.load(Ordering::Relaxed).saturating_add(tti))
    }

    /// Records a read at `now` (time-to-idle only). Two racing readers may
    /// store their times out of order; the deadline is then off by the gap
    /// between their clock reads, never earlier than a read that returned.
    #[inline]
    fn touch(&self, now: u64) {
        if self.accessed.load(Ordering::Relaxed) < now {
            self.accessed.store(now, Ordering::Relaxed);
        }
    }

    /// [`Self::touch`] under the exclusive lock. Never moves the last use
    /// back either: a clock that steps back (against the [`Clock`] docs,
    /// but a user's clock may) made an exclusive read set an earlier last
    /// use than the one the entry's timer was armed for, so the entry was
    /// expired for `get` and `contains_key` while sweeps, `len()` and
    /// `retain` kept it until the timer came due; reads under the shared
    /// lock kept it alive until then, so policies disagreed too.
    ///
    /// [`Clock`]: crate::Clock
    #[inline]
    fn touch_exclusive(&mut self, now: u64) {
        let accessed = self.accessed.get_mut();
        *accessed = (*accessed).max(now);
    }
}

thread_local! {
    /// Where [`bump`] stores a saturated count's unchanged increment.
    static BUMP_SCRATCH: AtomicU8 = const { AtomicU8::new(0) };
}

/// One slot of the arena: what a read touches, in as few bytes as possible
/// (40 for `u64` keys and values), so more of the cache fits in the CPU's
/// caches. The slot's hit count is not here but in [`Shard::hits`].
#[derive(Debug)]
pub(crate) struct Cell<K, V> {
    hash: u64,
    /// Bumped whenever a new timer is armed for this slot, so that the
    /// record of the one it replaces is recognised as stale and dropped.
    /// (An entry that leaves does not bump it: the slot keeps its timer
    /// for the next entry, see [`Shard::arm_for_write`].)
    generation: u32,
    weight: u32,
    entry: Option<Entry<K, V>>,
}

/// Counts a hit in `hits` (a slot's count in [`Shard::hits`]), saturating.
/// Whether a count is saturated depends on the key read, which no branch
/// predictor can learn (in callgrind's model the branch missed on about
/// half of all read hits of the throughput bench, and a branch measured
/// 0.90 × the throughput of this on it, 2026-12-07), so the store goes
/// either to the count or, once saturated, to a scratch byte of the
/// thread's, picked without a branch: a saturated count (a hot key's) is
/// still never written, so its cache line is not taken from the other
/// cores reading it. (`select_unpredictable` is a hint; on x86-64 with
/// Rust 1.95 it compiles to a conditional move, checked in the disassembly
/// and by callgrind's branch model, 2026-12-05.)
#[inline]
fn bump(hits: &AtomicU8) {
    let h = hits.load(Ordering::Relaxed);
    // The scratch byte is the thread's own, so no other core ever wants
    // its line; and being static, its store is never dead, so the
    // compiler keeps the select (a scratch byte on the stack needed a
    // `black_box` of its address to stay, two instructions more).
    BUMP_SCRATCH.with(|scratch| {
        let target = std::hint::select_unpredictable(h < MAX_HITS, hits, scratch);
        target.store(h.wrapping_add(1), Ordering::Relaxed);
    });
}

/// [`bump`] under the exclusive lock, by a write of the entry: a plain add
/// of zero or one.
#[inline]
fn bump_exclusive(hits: &mut AtomicU8) {
    let h = hits.get_mut();
    *h += u8::from(*h < MAX_HITS);
}

/// The per-entry hit counts of a shard, lent to its policy under the
/// exclusive lock (so plain loads and stores, no atomic read-modify-write).
#[derive(Debug)]
pub(crate) struct CellHits<'a, K, V> {
    cells: &'a [Cell<K, V>],
    hits: &'a mut [AtomicU8],
}

impl<K, V> Hits for CellHits<'_, K, V> {
    #[inline]
    fn take(&mut self, id: u32) -> u8 {
        std::mem::take(self.hits[id as usize].get_mut())
    }

    #[cold]
    #[inline(never)]
    fn halve_all(&mut self) {
        for h in self.hits.iter_mut() {
            *h.get_mut() >>= 1;
        }
    }

    #[inline]
    fn hash(&self, id: u32) -> u64 {
        self.cells[id as usize].hash
    }
}

/// What a read found.
#[derive(Debug)]
pub(crate) enum Lookup<T> {
    Hit(T),
    Miss,
    /// Present but expired: the caller frees it under the exclusive lock
    /// (and counts the miss there).
    Expired,
}

/// Entries that left a shard, held until its lock is released: the caller
/// then tells the listener (if any) and drops them there, so that no key's
/// or value's `Drop` runs under a lock (it may use the cache; the locks are
/// not reentrant) and dropping a large value does not lengthen the critical
/// section. The first entry is kept inline, so a write that displaces one
/// (a replacement, or the one eviction of a write to a full cache) allocates
/// nothing; only a second one spills to the heap.
#[derive(Debug)]
pub(crate) struct Removed<K, V> {
    first: Option<(K, V)>,
    /// The cause of `first`'s departure (meaningless while it is `None`).
    /// Beside it rather than in one tuple: a push built the tuple on the
    /// stack and copied it, loading the cause's byte as part of a word
    /// right after storing it alone, a load the CPU cannot forward from
    /// the store and must wait for (about a quarter of all samples of
    /// `evict_one` on the throughput workload, 2026-12-07).
    first_cause: RemovalCause,
    /// Empty while `first` is `None`.
    rest: Vec<(K, V, RemovalCause)>,
    /// The key and value of a write whose look-up of its key panicked (the
    /// key's `Eq`, user code): never stored, so nothing to tell the
    /// listener, but dropped like the rest once the lock is released.
    /// Dropped where the panic unwound, under the shard's lock (and a
    /// load's in-flight map lock), a value whose `Drop` uses the cache
    /// deadlocked its own thread. Boxed, so that the hot path's `Removed`
    /// grows by one pointer only.
    unstored: Option<Box<(K, V)>>,
}

impl<K, V> Removed<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            first: None,
            first_cause: RemovalCause::Removed,
            rest: Vec::new(),
            unstored: None,
        }
    }

    /// Keeps the key and value of a write that panicked before storing
    /// them, to be dropped with the rest (see `unstored`).
    #[cold]
    #[inline(never)]
    fn keep_unstored(&mut self, key: K, value: V) {
        self.unstored = Some(Box::new((key, value)));
    }

    #[inline]
    fn push(&mut self, key: K, value: V, cause: RemovalCause) {
        if self.first.is_none() {
            self.first = Some((key, value));
            self.first_cause = cause;
        } else {
            self.spill((key, value, cause));
        }
    }

    #[cold]
    #[inline(never)]
    fn spill(&mut self, item: (K, V, RemovalCause)) {
        self.rest.push(item);
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The causes of what is held, in the order it left.
    #[cfg(feature = "metrics")]
    pub(crate) fn causes(&self) -> impl Iterator<Item = RemovalCause> + '_ {
        self.first
            .iter()
            .map(|_| self.first_cause)
            .chain(self.rest.iter().map(|(_, _, cause)| *cause))
    }

    /// Everything held so far, leaving `self` empty.
    pub(crate) fn take(&mut self) -> Self {
        std::mem::replace(self, Self::new())
    }
}

impl<K, V> IntoIterator for Removed<K, V> {
    type Item = (K, V, RemovalCause);
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<Self::Item>, std::vec::IntoIter<Self::Item>>;

    /// In the order they left.
    fn into_iter(self) -> Self::IntoIter {
        let cause = self.first_cause;
        self.first
            .map(|(key, value)| (key, value, cause))
            .into_iter()
            .chain(self.rest)
    }
}

/// The entries a [`Shard::clear`] took: the shard's whole arena, handed out
/// as it was, so that clearing a shard moves and allocates nothing under
/// its lock (a list of the entries, like [`Removed`], would hold a second
/// copy of every key and value at once), and they are told to the
/// listener and dropped after the lock is released.
#[derive(Debug)]
pub(crate) struct Cleared<K, V>(Vec<Cell<K, V>>);

impl<K, V> Cleared<K, V> {
    /// How many entries were taken.
    #[cfg(feature = "metrics")]
    pub(crate) fn entries(&self) -> u64 {
        self.0.iter().filter(|cell| cell.entry.is_some()).count() as u64
    }
}

impl<K, V> IntoIterator for Cleared<K, V> {
    type Item = (K, V, RemovalCause);
    type IntoIter =
        std::iter::FilterMap<std::vec::IntoIter<Cell<K, V>>, fn(Cell<K, V>) -> Option<Self::Item>>;

    /// In slot order; the entries not yet taken are dropped with the
    /// iterator.
    fn into_iter(self) -> Self::IntoIter {
        let entry: fn(Cell<K, V>) -> Option<Self::Item> =
            |cell| cell.entry.map(|e| (e.key, e.value, RemovalCause::Removed));
        self.0.into_iter().filter_map(entry)
    }
}

/// Plain counters, summed across shards by `stats()`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    /// Reads under the exclusive lock; reads under the shared lock are
    /// counted per thread by the cache (`reads::ReadCounters`).
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) inserts: u64,
    pub(crate) expired: u64,
    pub(crate) capacity: u64,
    pub(crate) replaced: u64,
    pub(crate) removed: u64,
}

impl Counters {
    /// Counts one departure. The `metrics` feature records it later, once
    /// the shard is unlocked (`LocalCache::notify`): a recorder is user
    /// code, which may use this cache.
    fn count(&mut self, cause: RemovalCause) {
        match cause {
            RemovalCause::Expired => self.expired += 1,
            RemovalCause::Capacity => self.capacity += 1,
            RemovalCause::Replaced => self.replaced += 1,
            RemovalCause::Removed => self.removed += 1,
        }
    }
}

/// Expiry settings shared by all shards, in ticks (nanoseconds since the
/// cache's origin).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) now: u64,
    /// Time-to-idle, or [`NEVER`].
    pub(crate) tti: u64,
}

#[derive(Debug)]
pub(crate) struct Shard<K, V> {
    table: HashTable<u32>,
    cells: Vec<Cell<K, V>>,
    /// Reads and rewrites of each slot's entry since the policy last took
    /// them, saturating at [`MAX_HITS`]; bumped under the shared lock
    /// (lossy when two readers race, as in quick_cache and S3-FIFO: it is
    /// a hint, not a count that anything must add up to). Only policies
    /// that ask for it use it.
    ///
    /// A dense array beside `cells` rather than a field of [`Cell`]: a
    /// read's store to the count comes before the shard's unlock, a locked
    /// instruction that waits for it, and the count's address then
    /// depended on the entry's own cache line, the read's last and slowest
    /// load; here (a byte per slot, mostly in the CPU's nearest cache) it
    /// depends only on the slot's id. On a 10k-entry cache holding every
    /// key (`cache_throughput_sweep 10000 10000 1.0 0`), reads went from
    /// 1.31–1.46 to 1.14–1.25 × quick_cache's time, with the same
    /// instructions; a read without any count ran at 0.94–0.97 ×
    /// (docs/benchmarks.md, 2026-12-07).
    hits: Vec<AtomicU8>,
    /// Expiry times by slot id. Slots at or past its end hold entries that
    /// never expire: it stays empty until an entry with a deadline arrives
    /// (always, with a time-to-idle), and from then on every write of a
    /// slot it covers sets its times.
    times: Vec<Times>,
    free: Vec<u32>,
    policy: PolicyState,
    /// Min-heap of `(deadline, id, generation)`, at most one live record
    /// per slot, due no later than the slot's entry; records are re-armed
    /// lazily when they come due (after a time-to-idle read, or a rewrite
    /// with a later deadline).
    timers: BinaryHeap<Reverse<(u64, u32, u32)>>,
    weight: u64,
    pub(crate) counters: Counters,
    /// Whether the policy uses the per-entry hit counts (set once).
    count_hits: bool,
    /// Writes since the last time this shard helped sweep another.
    pub(crate) writes_since_help: u32,
    /// Which of the other shards it helped last (0: the next one).
    pub(crate) helped: usize,
}

impl<K: Hash + Eq, V> Shard<K, V> {
    pub(crate) fn new(policy: PolicyState) -> Self {
        Self {
            table: HashTable::new(),
            cells: Vec::new(),
            hits: Vec::new(),
            times: Vec::new(),
            free: Vec::new(),
            count_hits: policy.counts_hits(),
            policy,
            timers: BinaryHeap::new(),
            weight: 0,
            counters: Counters::default(),
            writes_since_help: 0,
            helped: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether reads may use [`Self::get_shared`] (see
    /// [`PolicyState::shared_hits`]).
    pub(crate) fn shared_hits(&self, time_to_idle: bool) -> bool {
        self.policy.shared_hits(time_to_idle)
    }

    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }

    /// The deadline of the entry in slot `id` ([`NEVER`] without times).
    #[inline]
    fn deadline(&self, id: u32, tti: u64) -> u64 {
        self.times
            .get(id as usize)
            .map_or(NEVER, |t| t.deadline(tti))
    }

    /// Whether the entry in slot `id` has expired.
    #[inline]
    fn expired(&self, id: u32, timing: Timing) -> bool {
        !self.times.is_empty() && self.deadline(id, timing.tti) <= timing.now
    }

    /// Sets the times of slot `id` for a write at `timing.now` (covering
    /// the slot only if the entry can expire or the slot is covered
    /// already), and returns the entry's deadline, making sure that a
    /// timer fires no later.
    ///
    /// A slot keeps its timer when its entry leaves or is overwritten:
    /// whenever a covered slot's deadline (by its times, [`NEVER`] once
    /// [disarmed](Times::disarm)) is not [`NEVER`], the heap holds a live
    /// record for it (its generation the cell's) due no later. So a write
    /// whose deadline is no earlier than the slot's (every write with a
    /// cache-wide time-to-live) keeps that record: when it fires, the
    /// sweep re-arms it for the entry's deadline, as it does for a
    /// time-to-idle. Arming a new record on every write pushed to the heap
    /// each time and left the old record stale, so that the heap had to be
    /// compacted every few thousand writes.
    ///
    /// Inlined whole (it has two callers): a call cost a write without
    /// expiry 26 instructions more.
    #[inline(always)]
    fn arm_for_write(&mut self, id: u32, expires: u64, timing: Timing) -> u64 {
        let i = id as usize;
        let Some(t) = self.times.get_mut(i) else {
            if expires == NEVER && timing.tti == NEVER {
                return NEVER;
            }
            return self.cover(id, expires, timing);
        };
        // Without a time-to-idle a deadline is its `expires` (as in
        // `get_shared`): through `Times::deadline` twice, a write took about
        // 11 instructions more.
        let (armed, deadline) = if timing.tti == NEVER {
            *t.accessed.get_mut() = timing.now;
            (std::mem::replace(&mut t.expires, expires), expires)
        } else {
            let armed = t.deadline(timing.tti);
            t.expires = expires;
            *t.accessed.get_mut() = timing.now;
            (armed, t.deadline(timing.tti))
        };
        if armed != NEVER && armed <= deadline {
            return deadline;
        }
        self.arm_timer(id, deadline);
        // The record this one replaces is stale now. Compacted only by a
        // sweep, the heap grew with every such write until a timer came
        // due: with per-entry deadlines that fall from one write to the
        // next (a jittered time-to-live), for up to a time-to-live, in a
        // shard that no other shard's writes help.
        if self.timers_oversized() {
            self.compact_timers();
        }
        deadline
    }

    /// [`Self::arm_for_write`] for a slot not covered yet (so with no
    /// timer): covers it and arms one.
    #[cold]
    #[inline(never)]
    fn cover(&mut self, id: u32, expires: u64, timing: Timing) -> u64 {
        let i = id as usize;
        self.times.resize_with(i + 1, Times::disarmed);
        let t = &mut self.times[i];
        t.expires = expires;
        *t.accessed.get_mut() = timing.now;
        let deadline = t.deadline(timing.tti);
        self.arm_timer(id, deadline);
        deadline
    }

    #[inline]
    fn find<Q>(&self, hash: u64, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let cells = &self.cells;
        self.table
            .find(hash, |&id| {
                cells[id as usize]
                    .entry
                    .as_ref()
                    .is_some_and(|e| e.key.borrow() == key)
            })
            .copied()
    }

    /// Looks `key` up for a read under the shared lock, for policies whose
    /// hits need no exclusive access ([`PolicyState::shared_hits`]): bumps
    /// the entry's hit count (the caller counts the hit or miss). An expired
    /// entry is not returned: the caller frees it under the exclusive lock.
    #[inline]
    pub(crate) fn get_shared<Q>(&self, hash: u64, key: &Q, timing: Timing) -> Lookup<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(id) = self.find(hash, key) else {
            return Lookup::Miss;
        };
        let cell = &self.cells[id as usize];
        let Some(entry) = cell.entry.as_ref() else {
            return Lookup::Expired;
        };
        if let Some(times) = self.times.get(id as usize) {
            // Without a time-to-idle the deadline is `expires`: checked
            // alone, it spares a read the load of the last use, the
            // saturating add of the time-to-idle and the `min` of
            // `Times::deadline` (2 instructions per read in all).
            if timing.tti == NEVER {
                if times.expires <= timing.now {
                    return Lookup::Expired;
                }
            } else {
                if times.deadline(timing.tti) <= timing.now {
                    return Lookup::Expired;
                }
                times.touch(timing.now);
            }
        }
        if self.count_hits {
            bump(&self.hits[id as usize]);
        }
        Lookup::Hit(&entry.value)
    }

    /// [`Self::get_shared`] for a cache in which no entry can expire (no
    /// expiry times, no timers): a hit, with the entry's hit count bumped
    /// if `COUNT_HITS`, or a miss, with nothing else to check.
    /// `COUNT_HITS` must be the shard's `count_hits`
    /// ([`PolicyState::counts_hits`]): the caller has it at hand in the
    /// flag that picked this path, which spares the read a check.
    #[inline]
    pub(crate) fn get_shared_unexpiring<const COUNT_HITS: bool, Q>(
        &self,
        hash: u64,
        key: &Q,
    ) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        debug_assert_eq!(COUNT_HITS, self.count_hits);
        let found = self.find(hash, key).and_then(|id| {
            let cell = &self.cells[id as usize];
            cell.entry.as_ref().map(|entry| (id, entry))
        });
        let (id, entry) = found?;
        if COUNT_HITS {
            bump(&self.hits[id as usize]);
        }
        Some(&entry.value)
    }

    /// Whether the shard keeps per-entry hit counts for its policy.
    pub(crate) fn counts_hits(&self) -> bool {
        self.count_hits
    }

    /// The slot of `key` for a read under the exclusive lock; a miss is
    /// counted and told to the policy.
    #[inline]
    fn find_for_read<Q>(&mut self, hash: u64, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let found = self.find(hash, key);
        if found.is_none() {
            self.counters.misses += 1;
            self.policy.on_miss(hash);
        }
        found
    }

    /// [`Self::get_exclusive`] for a cache in which no entry can expire: a
    /// hit or a miss, counted and told to the policy, with no times to check.
    /// Always inlined into its one caller (out of line, its own frame and
    /// call cost `Lru` reads about 11 instructions).
    #[inline(always)]
    pub(crate) fn get_exclusive_unexpiring<Q>(&mut self, hash: u64, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let id = self.find_for_read(hash, key)?;
        if self.count_hits {
            bump(&self.hits[id as usize]);
        }
        self.counters.hits += 1;
        self.policy.on_access(id, NEVER);
        self.cells[id as usize].entry.as_ref().map(|e| &e.value)
    }

    /// Looks `key` up for a read under the exclusive lock: counts a hit or a
    /// miss and tells the policy. An expired entry is left for
    /// [`Self::get`] to free.
    #[inline]
    pub(crate) fn get_exclusive<Q>(&mut self, hash: u64, key: &Q, timing: Timing) -> Lookup<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(id) = self.find_for_read(hash, key) else {
            return Lookup::Miss;
        };
        let mut deadline = NEVER;
        if let Some(times) = self.times.get_mut(id as usize) {
            // Without a time-to-idle the deadline is `expires`, as in
            // `get_shared`.
            if timing.tti == NEVER {
                deadline = times.expires;
                if deadline <= timing.now {
                    return Lookup::Expired;
                }
            } else {
                deadline = times.deadline(timing.tti);
                if deadline <= timing.now {
                    return Lookup::Expired;
                }
                times.touch_exclusive(timing.now);
                deadline = times.deadline(timing.tti);
            }
        }
        let cell = &self.cells[id as usize];
        if cell.entry.is_none() {
            return Lookup::Expired;
        }
        if self.count_hits {
            bump(&self.hits[id as usize]);
        }
        self.counters.hits += 1;
        self.policy.on_access(id, deadline);
        match self.cells[id as usize].entry.as_ref() {
            Some(e) => Lookup::Hit(&e.value),
            None => Lookup::Expired,
        }
    }

    /// Records a use of `key` as [`Self::get_shared`] does on a hit (its
    /// time-to-idle, its hit count) but counts no read: for a caller that
    /// got the key's value from a load it waited for. Nothing if the key
    /// is absent or expired.
    pub(crate) fn touch_shared<Q>(&self, hash: u64, key: &Q, timing: Timing)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(id) = self.find(hash, key) else {
            return;
        };
        if let Some(times) = self.times.get(id as usize) {
            if times.deadline(timing.tti) <= timing.now {
                return;
            }
            if timing.tti != NEVER {
                times.touch(timing.now);
            }
        }
        if self.count_hits {
            bump(&self.hits[id as usize]);
        }
    }

    /// Records a use of `key` as [`Self::get_exclusive`] does on a hit
    /// (its time-to-idle, its hit count, the policy) but counts no read:
    /// see [`Self::touch_shared`].
    pub(crate) fn touch_exclusive<Q>(&mut self, hash: u64, key: &Q, timing: Timing)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(id) = self.find(hash, key) else {
            return;
        };
        let mut deadline = NEVER;
        if let Some(times) = self.times.get_mut(id as usize) {
            deadline = times.deadline(timing.tti);
            if deadline <= timing.now {
                return;
            }
            if timing.tti != NEVER {
                times.touch_exclusive(timing.now);
                deadline = times.deadline(timing.tti);
            }
        }
        let cell = &self.cells[id as usize];
        if cell.entry.is_none() {
            return;
        }
        if self.count_hits {
            bump(&self.hits[id as usize]);
        }
        self.policy.on_access(id, deadline);
    }

    /// Looks `key` up for a read: counts a hit or a miss, tells the policy,
    /// and frees the entry if it has expired.
    pub(crate) fn get<Q>(
        &mut self,
        hash: u64,
        key: &Q,
        timing: Timing,
        removed: &mut Removed<K, V>,
    ) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(id) = self.find(hash, key)
            && self.expired(id, timing)
        {
            self.remove_id(id, RemovalCause::Expired, removed);
        }
        match self.get_exclusive(hash, key, timing) {
            Lookup::Hit(v) => Some(v),
            Lookup::Miss | Lookup::Expired => None,
        }
    }

    /// Whether `key` is present and unexpired; no statistics, no policy
    /// update.
    pub(crate) fn contains<Q>(&self, hash: u64, key: &Q, timing: Timing) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(hash, key)
            .is_some_and(|id| !self.expired(id, timing))
    }

    fn arm_timer(&mut self, id: u32, deadline: u64) {
        let cell = &mut self.cells[id as usize];
        cell.generation = cell.generation.wrapping_add(1);
        if deadline != NEVER {
            self.timers.push(Reverse((deadline, id, cell.generation)));
        }
    }

    /// Stores `value` under `key`; returns the signed change in weight.
    /// A previous value leaves with [`RemovalCause::Replaced`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        weight: u32,
        expires: u64,
        timing: Timing,
        removed: &mut Removed<K, V>,
    ) -> i64 {
        self.counters.inserts += 1;
        self.writes_since_help = self.writes_since_help.wrapping_add(1);
        let (cells, table, probe) = (&self.cells, &mut self.table, &key);
        // The look-up runs the key's `Eq` (user code) under the shard's
        // lock: should it panic, the key and value must not be dropped
        // here, while the unwinding write still holds the lock, but with
        // what leaves the cache, after it is released (see
        // `Removed::unstored`).
        let looked_up = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            // Moved in, so that the entry may borrow the table past the
            // closure.
            let table = table;
            table.entry(
                hash,
                move |&i| {
                    cells[i as usize]
                        .entry
                        .as_ref()
                        .is_some_and(|e| e.key == *probe)
                },
                move |&i| cells[i as usize].hash,
            )
        }));
        let slot = match looked_up {
            Ok(slot) => slot,
            Err(panic) => {
                removed.keep_unstored(key, value);
                std::panic::resume_unwind(panic);
            }
        };
        let vacant = match slot {
            hashbrown::hash_table::Entry::Occupied(found) => {
                let id = *found.get();
                let cell = &mut self.cells[id as usize];
                let Some(entry) = cell.entry.as_mut() else {
                    return 0;
                };
                let old_value = std::mem::replace(&mut entry.value, value);
                let old_weight = std::mem::replace(&mut cell.weight, weight);
                if self.count_hits {
                    bump_exclusive(&mut self.hits[id as usize]);
                }
                let deadline = self.arm_for_write(id, expires, timing);
                self.policy.on_update(id, weight, deadline);
                self.weight = self.weight - u64::from(old_weight) + u64::from(weight);
                self.counters.count(RemovalCause::Replaced);
                removed.push(key, old_value, RemovalCause::Replaced);
                return i64::from(weight) - i64::from(old_weight);
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => vacant,
        };
        let entry = Entry { key, value };
        let id = match self.free.pop() {
            Some(id) => {
                let cell = &mut self.cells[id as usize];
                cell.hash = hash;
                cell.weight = weight;
                *self.hits[id as usize].get_mut() = 0;
                cell.entry = Some(entry);
                id
            }
            None => {
                // Ids are u32; a shard never holds 4 billion entries because
                // each weighs at least 1 and capacity is split across shards.
                let id = u32::try_from(self.cells.len()).unwrap_or(u32::MAX - 1);
                self.cells.push(Cell {
                    generation: 1,
                    hash,
                    weight,
                    entry: Some(entry),
                });
                self.hits.push(AtomicU8::new(0));
                id
            }
        };
        vacant.insert(id);
        let deadline = self.arm_for_write(id, expires, timing);
        self.policy.on_insert(
            id,
            hash,
            weight,
            deadline,
            &mut CellHits {
                cells: &self.cells,
                hits: &mut self.hits,
            },
        );
        self.weight += u64::from(weight);
        i64::from(weight)
    }

    /// Takes entry `id` out of the table and arena (not the policy) and
    /// counts its departure; returns it with its weight.
    #[inline(always)]
    fn take(&mut self, id: u32, cause: RemovalCause) -> Option<(K, V, u64)> {
        let cell = &mut self.cells[id as usize];
        // The slot keeps its timer (see `arm_for_write`).
        let entry = cell.entry.take()?;
        if let Ok(found) = self.table.find_entry(cell.hash, |&i| i == id) {
            found.remove();
        }
        self.free.push(id);
        let weight = u64::from(cell.weight);
        self.weight -= weight;
        self.counters.count(cause);
        Some((entry.key, entry.value, weight))
    }

    #[inline(always)]
    fn detach(&mut self, id: u32, cause: RemovalCause, removed: &mut Removed<K, V>) -> u64 {
        match self.take(id, cause) {
            Some((key, value, weight)) => {
                removed.push(key, value, cause);
                weight
            }
            None => 0,
        }
    }

    fn remove_id(&mut self, id: u32, cause: RemovalCause, removed: &mut Removed<K, V>) -> u64 {
        self.policy.on_remove(
            id,
            &mut CellHits {
                cells: &self.cells,
                hits: &mut self.hits,
            },
        );
        self.detach(id, cause, removed)
    }

    /// Removes `key` explicitly and returns it, with
    /// [`RemovalCause::Expired`] if it had already expired.
    pub(crate) fn remove<Q>(
        &mut self,
        hash: u64,
        key: &Q,
        timing: Timing,
    ) -> Option<(K, V, RemovalCause)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let id = self.find(hash, key)?;
        let expired = self.expired(id, timing);
        let cause = if expired {
            RemovalCause::Expired
        } else {
            RemovalCause::Removed
        };
        self.policy.on_remove(
            id,
            &mut CellHits {
                cells: &self.cells,
                hits: &mut self.hits,
            },
        );
        self.take(id, cause).map(|(k, v, _)| (k, v, cause))
    }

    /// The value of `key` if present and unexpired; no statistics, no policy
    /// update.
    pub(crate) fn peek<Q>(&self, hash: u64, key: &Q, timing: Timing) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(hash, key)
            .filter(|&id| !self.expired(id, timing))
            .and_then(|id| self.cells[id as usize].entry.as_ref())
            .map(|e| &e.value)
    }

    /// A write that can never be stored (too heavy, or expired on arrival):
    /// the older value of the key leaves as replaced, the new one leaves at
    /// once with `cause`.
    pub(crate) fn reject(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        cause: RemovalCause,
        removed: &mut Removed<K, V>,
    ) {
        self.counters.inserts += 1;
        // As in `insert`: a panic of the key's `Eq` must not drop the key
        // and value under the lock.
        let found =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.find(hash, &key)));
        match found {
            Ok(Some(id)) => {
                self.remove_id(id, RemovalCause::Replaced, removed);
            }
            Ok(None) => {}
            Err(panic) => {
                removed.keep_unstored(key, value);
                std::panic::resume_unwind(panic);
            }
        }
        self.counters.count(cause);
        removed.push(key, value, cause);
    }

    /// Evicts the policy's victim; returns the freed weight, or `None` when
    /// the shard is empty.
    pub(crate) fn evict_one(&mut self, removed: &mut Removed<K, V>) -> Option<u64> {
        let id = self.policy.evict(&mut CellHits {
            cells: &self.cells,
            hits: &mut self.hits,
        })?;
        Some(self.detach(id, RemovalCause::Capacity, removed))
    }

    /// Evicts the policy's victim for a write to another shard (see
    /// [`PolicyState::evict_for_another_shard`]); returns the freed weight,
    /// or `None` when the shard is empty.
    pub(crate) fn evict_one_for_another_shard(
        &mut self,
        removed: &mut Removed<K, V>,
    ) -> Option<u64> {
        let id = self.policy.evict_for_another_shard(&mut CellHits {
            cells: &self.cells,
            hits: &mut self.hits,
        })?;
        Some(self.detach(id, RemovalCause::Capacity, removed))
    }

    /// The earliest timer's deadline ([`NEVER`] without one): no entry of
    /// this shard expires before it.
    #[inline]
    pub(crate) fn next_timer(&self) -> u64 {
        self.timers.peek().map_or(NEVER, |Reverse((d, _, _))| *d)
    }

    /// Whether some entry may have expired by `now`.
    #[inline]
    pub(crate) fn sweep_due(&self, now: u64) -> bool {
        self.timers
            .peek()
            .is_some_and(|Reverse((d, _, _))| *d <= now)
    }

    /// Frees every entry whose deadline has passed; returns the freed weight.
    pub(crate) fn sweep(&mut self, timing: Timing, removed: &mut Removed<K, V>) -> u64 {
        let mut freed = 0;
        while let Some(&Reverse((due, id, generation))) = self.timers.peek() {
            if due > timing.now {
                break;
            }
            self.timers.pop();
            let cell = &self.cells[id as usize];
            if cell.generation != generation {
                continue;
            }
            if cell.entry.is_none() {
                // The timer of an empty slot: it has none now.
                self.times[id as usize].disarm();
                continue;
            }
            let deadline = self.deadline(id, timing.tti);
            if deadline <= timing.now {
                freed += self.remove_id(id, RemovalCause::Expired, removed);
                self.times[id as usize].disarm();
            } else {
                // Read since the timer was armed (time-to-idle): re-arm.
                self.arm_timer(id, deadline);
            }
        }
        // Replacements leave stale records behind; keep the heap in
        // proportion to the live entries.
        if self.timers_oversized() {
            self.compact_timers();
        }
        freed
    }

    /// Whether the timer heap holds more records than the live entries
    /// call for (stale ones, left by writes that armed a new timer).
    #[inline]
    pub(crate) fn timers_oversized(&self) -> bool {
        self.timers.len() > 2 * self.table.len() + 64
    }

    /// The number of records in the timer heap, stale ones included.
    #[cfg(test)]
    pub(crate) fn timer_records(&self) -> usize {
        self.timers.len()
    }

    /// Drops the heap's stale records, and the live ones of empty slots
    /// (which then have no timer).
    #[cold]
    #[inline(never)]
    fn compact_timers(&mut self) {
        let (cells, times) = (&self.cells, &mut self.times);
        self.timers.retain(|&Reverse((_, id, g))| {
            let cell = &cells[id as usize];
            if cell.generation != g {
                return false;
            }
            if cell.entry.is_none() {
                // An empty slot's live timer: dropped, so it has none.
                times[id as usize].disarm();
                return false;
            }
            true
        });
    }

    /// Removes every entry with [`RemovalCause::Removed`] and returns them,
    /// for the caller to tell the listener of and drop after unlocking.
    pub(crate) fn clear(&mut self) -> Cleared<K, V> {
        for cell in &self.cells {
            if cell.entry.is_some() {
                self.counters.count(RemovalCause::Removed);
            }
        }
        // The arena goes with its entries (and its memory with them).
        let cells = std::mem::take(&mut self.cells);
        self.hits = Vec::new();
        self.times.clear();
        self.free.clear();
        self.table.clear();
        self.timers.clear();
        self.policy.clear();
        self.weight = 0;
        Cleared(cells)
    }

    /// Removes the entries for which `keep` says false; returns the freed
    /// weight.
    pub(crate) fn retain(
        &mut self,
        keep: &mut dyn FnMut(&K, &V) -> bool,
        removed: &mut Removed<K, V>,
    ) -> u64 {
        let mut freed = 0;
        for id in 0..self.cells.len() {
            let drop = self.cells[id]
                .entry
                .as_ref()
                .is_some_and(|e| !keep(&e.key, &e.value));
            if drop {
                freed += self.remove_id(id as u32, RemovalCause::Removed, removed);
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_keeps_one_entry_inline_and_the_rest_in_order() {
        let mut removed = Removed::<u32, u32>::new();
        assert!(removed.is_empty());
        removed.push(1, 10, RemovalCause::Replaced);
        assert!(!removed.is_empty());
        // The hot path's one displaced entry allocates nothing.
        assert_eq!(removed.rest.capacity(), 0);
        removed.push(2, 20, RemovalCause::Capacity);
        removed.push(3, 30, RemovalCause::Expired);
        let taken = removed.take();
        assert!(removed.is_empty());
        let keys: Vec<u32> = taken.into_iter().map(|(k, _, _)| k).collect();
        assert_eq!(keys, [1, 2, 3]);
    }
}
