//! Configuration of a [`LocalCache`], validated once in [`LocalCacheBuilder::build`].

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::{DefaultHasher, Expiry, LocalCache, Policy, RemovalCause};

pub(crate) type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u32 + Send + Sync>;
pub(crate) type Listener<K, V> = Arc<dyn Fn(&K, &V, RemovalCause) + Send + Sync>;
pub(crate) type ExpiryFn<K, V> = Arc<dyn Expiry<K, V>>;

/// The largest number of shards [`LocalCacheBuilder::shards`] accepts.
pub const MAX_SHARDS: usize = 4096;

/// Why [`LocalCacheBuilder::build`] refused a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No capacity was given.
    #[error(
        "max_capacity is not set: call .max_capacity(n) with the most entries \
         (or, with a weigher, the most total weight) the cache may hold; \
         0 is allowed and makes a cache that stores nothing"
    )]
    MissingCapacity,
    /// The shard count is not a power of two in `1..=MAX_SHARDS`.
    #[error(
        "shards must be a power of two from 1 to {MAX_SHARDS}, got {shards}: \
         {advice}, or leave it unset for a default sized to the machine and \
         the capacity",
        advice = shards_advice(*shards)
    )]
    InvalidShards {
        /// The rejected shard count.
        shards: usize,
    },
}

/// What [`BuildError::InvalidShards`] tells the caller to pick instead:
/// the valid counts nearest to `shards` (the next power of two alone sent
/// a caller above [`MAX_SHARDS`] to a count refused too).
fn shards_advice(shards: usize) -> String {
    if shards == 0 {
        "use 1 or more".to_string()
    } else if shards > MAX_SHARDS {
        format!("use {MAX_SHARDS} at most")
    } else {
        let above = shards.next_power_of_two();
        format!("use {} or {above}", above / 2)
    }
}

/// The plain-data part of a [`LocalCache`]'s configuration, for settings
/// loaded from a file (with the `serde` feature) or passed around; closures
/// (weigher, listener), the hasher and the clock are set on the builder.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use torque_cache::{LocalCache, LocalCacheConfig, Policy};
///
/// let config = LocalCacheConfig {
///     max_capacity: 1_000,
///     policy: Policy::Lru,
///     time_to_live: Some(Duration::from_secs(30)),
///     ..LocalCacheConfig::default()
/// };
/// let cache: LocalCache<u32, u32> = LocalCache::builder().config(&config).build()?;
/// assert_eq!(cache.policy(), Policy::Lru);
/// # Ok::<(), torque_cache::BuildError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct LocalCacheConfig {
    /// See [`LocalCacheBuilder::max_capacity`]. Default: 10,000.
    pub max_capacity: u64,
    /// See [`LocalCacheBuilder::policy`]. Default: [`Policy::Adaptive`].
    pub policy: Policy,
    /// See [`LocalCacheBuilder::time_to_live`]. Default: none.
    pub time_to_live: Option<Duration>,
    /// See [`LocalCacheBuilder::time_to_idle`]. Default: none.
    pub time_to_idle: Option<Duration>,
    /// See [`LocalCacheBuilder::shards`]. Default: sized to the machine.
    pub shards: Option<usize>,
}

impl Default for LocalCacheConfig {
    fn default() -> Self {
        Self {
            max_capacity: 10_000,
            policy: Policy::default(),
            time_to_live: None,
            time_to_idle: None,
            shards: None,
        }
    }
}

/// Builds a [`LocalCache`]; start with [`LocalCache::builder`].
///
/// # Example
/// ```
/// use std::time::Duration;
/// use torque_cache::{LocalCache, Policy};
///
/// let cache: LocalCache<String, Vec<u8>> = LocalCache::builder()
///     .max_capacity(64 * 1024 * 1024) // bytes, because of the weigher
///     .weigher(|k: &String, v: &Vec<u8>| (k.len() + v.len()).try_into().unwrap_or(u32::MAX))
///     .policy(Policy::Adaptive)
///     .time_to_live(Duration::from_secs(300))
///     .build()?;
/// cache.insert("k".to_string(), vec![1, 2, 3]);
/// assert_eq!(cache.weighted_size(), 4);
/// # Ok::<(), torque_cache::BuildError>(())
/// ```
pub struct LocalCacheBuilder<K, V, S = DefaultHasher> {
    pub(crate) max_capacity: Option<u64>,
    pub(crate) policy: Policy,
    pub(crate) time_to_live: Option<Duration>,
    pub(crate) time_to_idle: Option<Duration>,
    pub(crate) weigher: Option<Weigher<K, V>>,
    pub(crate) expiry: Option<ExpiryFn<K, V>>,
    pub(crate) listener: Option<Listener<K, V>>,
    pub(crate) hasher: S,
    pub(crate) clock: Arc<dyn Clock>,
    /// Whether `clock` is the [`SystemClock`], which the cache reads
    /// through the time-stamp counter instead (see its docs).
    pub(crate) system_clock: bool,
    pub(crate) shards: Option<usize>,
    _types: PhantomData<fn(K, V)>,
}

impl<K, V> LocalCacheBuilder<K, V, DefaultHasher> {
    pub(crate) fn new() -> Self {
        Self {
            max_capacity: None,
            policy: Policy::default(),
            time_to_live: None,
            time_to_idle: None,
            weigher: None,
            expiry: None,
            listener: None,
            hasher: DefaultHasher::default(),
            clock: Arc::new(SystemClock),
            system_clock: true,
            shards: None,
            _types: PhantomData,
        }
    }
}

impl<K, V, S> LocalCacheBuilder<K, V, S> {
    /// The most entries the cache holds, or with a [`weigher`](Self::weigher)
    /// the most total weight. Required. The bound holds for the cache as a
    /// whole, not per shard.
    ///
    /// `0` is allowed: the cache then stores nothing (every insert is
    /// evicted on arrival with [`RemovalCause::Capacity`]), which turns
    /// caching off without changing code.
    pub fn max_capacity(mut self, max_capacity: u64) -> Self {
        self.max_capacity = Some(max_capacity);
        self
    }

    /// Applies every field of `config` (replacing what was set before for
    /// those fields).
    pub fn config(mut self, config: &LocalCacheConfig) -> Self {
        self.max_capacity = Some(config.max_capacity);
        self.policy = config.policy;
        self.time_to_live = config.time_to_live;
        self.time_to_idle = config.time_to_idle;
        self.shards = config.shards;
        self
    }

    /// The eviction policy; [`Policy::Adaptive`] unless set.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Every entry expires this long after it was written.
    /// [`LocalCache::insert_with_ttl`] and an [`expiry`](Self::expiry)
    /// override it per entry.
    /// `Duration::ZERO` means entries expire on arrival: they are never
    /// stored and the listener sees them with [`RemovalCause::Expired`].
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    /// Every entry expires once it has gone this long without a read or a
    /// write (combined with a time-to-live, whichever comes first).
    /// `Duration::ZERO` means entries expire on arrival, as with a zero
    /// [`time_to_live`](Self::time_to_live).
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.time_to_idle = Some(tti);
        self
    }

    /// Decides each written entry's time-to-live from its key and value
    /// (see [`Expiry`]): for `insert` and for the values loaders store,
    /// which have no per-call time-to-live. [`LocalCache::insert_with_ttl`]
    /// still sets its own.
    pub fn expiry<E>(mut self, expiry: E) -> Self
    where
        E: Expiry<K, V> + 'static,
    {
        self.expiry = Some(Arc::new(expiry));
        self
    }

    /// Makes capacity a total weight instead of an entry count.
    ///
    /// A weight of `0` counts as `1`, so that the number of entries stays
    /// bounded by `max_capacity`. An entry heavier than `max_capacity` is
    /// never stored: it goes straight to the listener with
    /// [`RemovalCause::Capacity`] (and any older value of its key with
    /// [`RemovalCause::Replaced`]), and counts in
    /// [`Evictions::capacity`](crate::Evictions::capacity).
    ///
    /// It runs before the write takes any lock, so it may use the cache.
    pub fn weigher<F>(mut self, weigher: F) -> Self
    where
        F: Fn(&K, &V) -> u32 + Send + Sync + 'static,
    {
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// Called once for every entry that leaves the cache, with the cause.
    ///
    /// It runs on the thread that caused the removal, after the shard lock is
    /// released, so it may use the cache; keep it short, as that thread
    /// waits for it. The entry is dropped after the listener returns, also
    /// with no lock held. Entries still cached when the cache is dropped are
    /// not reported. If it panics, it is still told of the other entries
    /// that the same call removed (and `invalidate_all`, `retain` and
    /// `run_pending_tasks` still go through every shard); then the first
    /// panic resumes in that call.
    pub fn eviction_listener<F>(mut self, listener: F) -> Self
    where
        F: Fn(&K, &V, RemovalCause) + Send + Sync + 'static,
    {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// The hasher for keys. The default, [`DefaultHasher`] (foldhash), is
    /// fast and randomly seeded per cache but not designed to resist
    /// deliberate collisions: when keys come from untrusted input (request
    /// paths, user names) and a flood of colliding keys is a threat, pass
    /// [`std::hash::RandomState`] (SipHash-1-3) instead.
    pub fn hasher<S2>(self, hasher: S2) -> LocalCacheBuilder<K, V, S2> {
        LocalCacheBuilder {
            max_capacity: self.max_capacity,
            policy: self.policy,
            time_to_live: self.time_to_live,
            time_to_idle: self.time_to_idle,
            weigher: self.weigher,
            expiry: self.expiry,
            listener: self.listener,
            hasher,
            clock: self.clock,
            system_clock: self.system_clock,
            shards: self.shards,
            _types: PhantomData,
        }
    }

    /// The time source for expiry and load timing; [`SystemClock`] unless
    /// set. Tests pass a [`MockClock`](crate::MockClock). The cache reads
    /// it with no lock held, so a clock may use the cache (see
    /// [`Clock`]).
    pub fn clock<C: Clock + 'static>(mut self, clock: C) -> Self {
        self.system_clock = std::any::TypeId::of::<C>() == std::any::TypeId::of::<SystemClock>();
        self.clock = Arc::new(clock);
        self
    }

    /// The number of independently locked shards, a power of two up to
    /// [`MAX_SHARDS`]. Unset, it is four per CPU, fewer for small caches
    /// (each shard's policy sees only its own entries, so very small shards
    /// make eviction choices coarser; the default keeps at least about 128
    /// weight units per shard). One shard gives exact global LRU/LFU/
    /// FIFO order at the cost of concurrency. Many more shards than
    /// entries gain no concurrency and cost writes: an insert into a full
    /// cache whose own shard holds only the new entry locks the other
    /// shards in turn until it finds one to evict from, about
    /// `shards / entries` of them.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Checks the configuration and builds the cache.
    ///
    /// # Errors
    /// [`BuildError::MissingCapacity`] without
    /// [`max_capacity`](Self::max_capacity);
    /// [`BuildError::InvalidShards`] if [`shards`](Self::shards) is not a
    /// power of two in `1..=MAX_SHARDS`.
    pub fn build(self) -> Result<LocalCache<K, V, S>, BuildError>
    where
        K: Hash + Eq,
        S: BuildHasher,
    {
        let capacity = self.max_capacity.ok_or(BuildError::MissingCapacity)?;
        let shards = match self.shards {
            Some(n) if n.is_power_of_two() && n <= MAX_SHARDS => n,
            Some(n) => return Err(BuildError::InvalidShards { shards: n }),
            None => default_shards(capacity),
        };
        Ok(LocalCache::from_builder(self, capacity, shards))
    }
}

/// Four shards per CPU for concurrency, but at least ~128 weight units per
/// shard so each shard's policy has enough entries to choose well.
pub(crate) fn default_shards(capacity: u64) -> usize {
    let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
    let by_cpus = (cpus * 4).next_power_of_two();
    let per_shard = (capacity / 128).max(1);
    let by_capacity = 1usize << (63 - per_shard.leading_zeros()).min(12);
    by_cpus.min(by_capacity).clamp(1, MAX_SHARDS)
}

impl<K, V, S: fmt::Debug> fmt::Debug for LocalCacheBuilder<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCacheBuilder")
            .field("max_capacity", &self.max_capacity)
            .field("policy", &self.policy)
            .field("time_to_live", &self.time_to_live)
            .field("time_to_idle", &self.time_to_idle)
            .field("weigher", &self.weigher.is_some())
            .field("expiry", &self.expiry.is_some())
            .field("listener", &self.listener.is_some())
            .field("hasher", &self.hasher)
            .field("clock", &self.clock)
            .field("shards", &self.shards)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_shards_are_powers_of_two_and_shrink_for_small_caches() {
        for cap in [0, 1, 100, 1000, 10_000, u64::MAX] {
            let n = default_shards(cap);
            assert!(n.is_power_of_two() && n <= MAX_SHARDS, "{cap} -> {n}");
        }
        assert_eq!(default_shards(0), 1);
        assert_eq!(default_shards(200), 1);
    }
}
