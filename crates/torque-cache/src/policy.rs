//! Eviction policies: which entry leaves when the cache is over capacity.
//!
//! Each policy is a sans-IO state machine over the small integer ids of one
//! shard's slots: the shard tells it what happened (insert, read hit, read miss,
//! update, removal) and asks it for a victim. No clock, no locking, no keys;
//! each is unit-tested alone in its module.

mod adaptive;
mod fifo;
mod lfu;
mod list;
mod lru;
mod sketch;
mod ttl;

/// Helpers for the policies' tests against a sorted reference.
#[cfg(test)]
pub(crate) mod reference {
    use std::collections::BTreeMap;

    /// xorshift64: the tests' deterministic random numbers.
    pub(crate) fn next(rng: &mut u64) -> u64 {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    }

    /// Takes the id with the smallest key out of `reference`: the victim a
    /// policy ordered by that key must choose.
    pub(crate) fn pop_min<K: Ord + Copy>(reference: &mut BTreeMap<u32, K>) -> Option<u32> {
        let id = reference
            .iter()
            .min_by_key(|&(_, &key)| key)
            .map(|(&id, _)| id)?;
        reference.remove(&id);
        Some(id)
    }

    /// [`pop_min`] for a policy that spares the entry of the latest write
    /// (`written`) while any other is left; clears `written` when it goes.
    pub(crate) fn pop_min_sparing<K: Ord + Copy>(
        reference: &mut BTreeMap<u32, K>,
        written: &mut Option<u32>,
    ) -> Option<u32> {
        let spared = written.and_then(|w| reference.remove_entry(&w));
        match pop_min(reference) {
            Some(victim) => {
                reference.extend(spared);
                Some(victim)
            }
            None => {
                *written = None;
                spared.map(|(w, _)| w)
            }
        }
    }
}

/// The victim of another shard's write, for a policy (`Lfu`, `Fifo`, `Ttl`)
/// whose `evict` spares the entry of its own shard's latest write, kept in
/// the field `written` returns: `evict` with nothing spared, the spare left
/// in place for this shard's own evictions unless it was the victim.
fn evict_sparing_none<P>(
    policy: &mut P,
    written: fn(&mut P) -> &mut u32,
    evict: fn(&mut P) -> Option<u32>,
) -> Option<u32> {
    let spare = std::mem::replace(written(policy), list::NIL);
    let id = evict(policy);
    if id != Some(spare) {
        *written(policy) = spare;
    }
    id
}

/// Deadline of an entry that never expires.
pub(crate) const NEVER: u64 = u64::MAX;

/// Where a per-entry hit count saturates: the sketch's counters saturate at
/// 15 too, so more would tell the policy nothing.
pub(crate) const MAX_HITS: u8 = 15;

/// The per-entry hit counts the shard keeps beside each entry (bumped by
/// reads, possibly under the shared lock), lent to a policy that uses them
/// ([`PolicyState::counts_hits`]) while the shard is exclusively locked.
pub(crate) trait Hits {
    /// The hits of `id` since they were last taken; resets them to zero.
    fn take(&mut self, id: u32) -> u8;
    /// Halves every entry's hits: ages them together with the sketch.
    fn halve_all(&mut self);
    /// The key hash of the entry in slot `id` (kept in the slot, beside the
    /// hits, so the policy need not store a copy).
    fn hash(&self, id: u32) -> u64;
}

/// The eviction policy of a [`LocalCache`](crate::LocalCache), chosen at build
/// time.
///
/// See docs/cache.md for how to choose; in short, keep the default unless you
/// know the access pattern.
///
/// With the `serde` feature a policy is written in snake case (`"lru"`,
/// `"adaptive"`), as torque-parallel's limiter kinds are; the variant
/// names (`"Lru"`, `"Adaptive"`) are read too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Policy {
    /// Least recently used: evicts the entry read or written longest ago.
    #[cfg_attr(feature = "serde", serde(alias = "Lru"))]
    Lru,
    /// Least frequently used: evicts the entry with the fewest uses since
    /// it was inserted, the insert, reads and rewrites each counting one
    /// (ties: least recently used). As textbook LFU, which makes room before
    /// it inserts, the entry being written is never its own write's victim
    /// (unless it is alone): a new key always gets in, with one use, and is
    /// the likely victim of the next new key unless it is read meanwhile.
    /// Counts do not age, so a once-popular entry can linger; prefer
    /// [`Policy::Adaptive`].
    #[cfg_attr(feature = "serde", serde(alias = "Lfu"))]
    Lfu,
    /// First in, first out: evicts the entry inserted longest ago; reads and
    /// replacing an existing key's value do not change its place (with a
    /// weigher, a rewrite that makes the oldest entry heavier evicts the
    /// next oldest, not the entry being written).
    #[cfg_attr(feature = "serde", serde(alias = "Fifo"))]
    Fifo,
    /// Evicts the entry nearest its expiry; entries without expiry go last,
    /// oldest insert first. As a cache that makes room before it writes
    /// (Redis's `volatile-ttl`), the entry being written is never its own
    /// write's victim (unless it is alone): a new entry nearer its expiry
    /// than every resident still gets in, and is the next write's likely
    /// victim.
    #[cfg_attr(feature = "serde", serde(alias = "Ttl"))]
    Ttl,
    /// W-TinyLFU: a small window in front of a segmented LRU, guarded by a
    /// frequency sketch that admits a newcomer only if it is more popular
    /// than the entry it would replace, or was turned away lately and came
    /// back (a ghost of recent refusals). Without a weigher the window's
    /// size adapts, from 1 % up to 95 % of a shard, as refused keys or
    /// evicted ones come back (ARC's adaptation), so recency-driven
    /// traffic gets a larger window. Scan resistant and frequency aware;
    /// the best hit ratio on skewed workloads (docs/benchmarks.md). Where
    /// keys are hot for a while and then never asked for again,
    /// [`Policy::Lru`] still misses less (docs/cache.md). A read hit
    /// only bumps a counter in the entry, under a shared lock; the segments
    /// act on the counters when evicting (CLOCK-style second chances).
    #[default]
    #[cfg_attr(feature = "serde", serde(alias = "Adaptive"))]
    Adaptive,
}

/// The per-shard state of the chosen policy (enum dispatch: no virtual calls
/// on the hot path). With an explicit tag byte: without one, the variant
/// was encoded in a niche of the inner policies' fields, and every dispatch
/// decoded it (a load, a flip of the sign bit, a conditional move and a
/// jump table) where a tag takes one compare.
#[derive(Debug)]
#[repr(u8)]
pub(crate) enum PolicyState {
    Lru(lru::Lru),
    Lfu(lfu::Lfu),
    Fifo(fifo::Fifo),
    Ttl(ttl::NearestExpiry),
    Adaptive(Box<adaptive::Adaptive>),
}

impl PolicyState {
    /// The state for a shard expected to hold about `capacity` weight
    /// (`weighted`: a weigher sets the weights; otherwise each entry is 1).
    pub(crate) fn new(policy: Policy, capacity: u64, weighted: bool) -> Self {
        match policy {
            Policy::Lru => Self::Lru(lru::Lru::default()),
            Policy::Lfu => Self::Lfu(lfu::Lfu::default()),
            Policy::Fifo => Self::Fifo(fifo::Fifo::default()),
            Policy::Ttl => Self::Ttl(ttl::NearestExpiry::default()),
            Policy::Adaptive => Self::Adaptive(Box::new(adaptive::Adaptive::new(
                capacity,
                adaptive::HILL_CLIMBING,
                weighted,
            ))),
        }
    }

    /// Whether the shard should keep per-entry hit counts for this policy.
    pub(crate) fn counts_hits(&self) -> bool {
        matches!(self, Self::Adaptive(_))
    }

    /// Whether a read hit may be served under the shared lock: the policy
    /// needs nothing on a hit but the entry's hit count (Adaptive, without
    /// the hill climber), or nothing at all (Fifo; Ttl without a
    /// time-to-idle, where a read never moves a deadline).
    pub(crate) fn shared_hits(&self, time_to_idle: bool) -> bool {
        match self {
            Self::Lru(_) | Self::Lfu(_) => false,
            Self::Fifo(_) => true,
            Self::Ttl(_) => !time_to_idle,
            Self::Adaptive(p) => !p.climbs(),
        }
    }

    /// A new entry `id` was stored.
    #[inline]
    pub(crate) fn on_insert(
        &mut self,
        id: u32,
        hash: u64,
        weight: u32,
        deadline: u64,
        hits: &mut impl Hits,
    ) {
        match self {
            Self::Lru(p) => p.on_insert(id),
            Self::Lfu(p) => p.on_insert(id),
            Self::Fifo(p) => p.on_insert(id),
            Self::Ttl(p) => p.on_insert(id, deadline),
            Self::Adaptive(p) => p.on_insert(id, hash, weight, hits),
        }
    }

    /// A read under the exclusive lock found entry `id`, whose deadline is
    /// now `deadline` (the shard has already bumped its hit count).
    #[inline]
    pub(crate) fn on_access(&mut self, id: u32, deadline: u64) {
        match self {
            Self::Lru(p) => p.on_access(id),
            Self::Lfu(p) => p.on_access(id),
            Self::Fifo(_) => {}
            Self::Ttl(p) => p.on_deadline(id, deadline),
            Self::Adaptive(p) => p.on_access(),
        }
    }

    /// A read of `hash` found nothing.
    #[inline]
    pub(crate) fn on_miss(&mut self, hash: u64) {
        if let Self::Adaptive(p) = self {
            p.on_miss(hash);
        }
    }

    /// Entry `id` got a new value (weight, deadline).
    #[inline]
    pub(crate) fn on_update(&mut self, id: u32, weight: u32, deadline: u64) {
        match self {
            Self::Lru(p) => p.on_access(id),
            Self::Lfu(p) => p.on_update(id),
            Self::Fifo(p) => p.on_update(id),
            Self::Ttl(p) => p.on_update(id, deadline),
            Self::Adaptive(p) => p.on_update(id, weight),
        }
    }

    /// Entry `id` left the shard other than through [`Self::evict`].
    #[inline]
    pub(crate) fn on_remove(&mut self, id: u32, hits: &mut impl Hits) {
        match self {
            Self::Lru(p) => p.on_remove(id),
            Self::Lfu(p) => p.on_remove(id),
            Self::Fifo(p) => p.on_remove(id),
            Self::Ttl(p) => p.on_remove(id),
            Self::Adaptive(p) => p.on_remove(id, hits),
        }
    }

    /// Chooses and detaches the next victim. Inlined into the shard's
    /// eviction with [`adaptive::Adaptive::evict`] (see there).
    #[inline(always)]
    pub(crate) fn evict(&mut self, hits: &mut impl Hits) -> Option<u32> {
        match self {
            Self::Lru(p) => p.evict(),
            Self::Lfu(p) => p.evict(),
            Self::Fifo(p) => p.evict(),
            Self::Ttl(p) => p.evict(),
            Self::Adaptive(p) => p.evict(hits),
        }
    }

    /// Chooses and detaches the next victim for a write to another shard:
    /// `Lfu`, `Fifo` and `Ttl` spare the entry of this shard's latest write
    /// only for that write's own evictions.
    #[inline]
    pub(crate) fn evict_for_another_shard(&mut self, hits: &mut impl Hits) -> Option<u32> {
        match self {
            Self::Lfu(p) => p.evict_any(),
            Self::Fifo(p) => p.evict_any(),
            Self::Ttl(p) => p.evict_any(),
            _ => self.evict(hits),
        }
    }

    /// Forgets every id.
    pub(crate) fn clear(&mut self) {
        match self {
            Self::Lru(p) => p.clear(),
            Self::Lfu(p) => p.clear(),
            Self::Fifo(p) => p.clear(),
            Self::Ttl(p) => p.clear(),
            Self::Adaptive(p) => p.clear(),
        }
    }
}
