//! Per-entry time-to-live decided from the entry itself.

use std::time::Duration;

/// Decides each entry's time-to-live from its key and value, for every
/// write: [`insert`](crate::LocalCache::insert) and every value a loader of
/// [`get_or_load`](crate::LocalCache::get_or_load) or
/// [`get_or_load_async`](crate::LocalCache::get_or_load_async) stores (which
/// [`insert_with_ttl`](crate::LocalCache::insert_with_ttl) cannot reach).
/// Set it with [`LocalCacheBuilder::expiry`](crate::LocalCacheBuilder::expiry).
///
/// Any `Fn(&K, &V) -> Option<Duration>` closure is one.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use torque_cache::{LocalCache, MockClock};
///
/// #[derive(Clone)]
/// struct Quote {
///     price: u64,
///     final_price: bool,
/// }
///
/// let clock = MockClock::new();
/// let cache: LocalCache<u32, Quote> = LocalCache::builder()
///     .max_capacity(1_000)
///     .time_to_live(Duration::from_secs(300))
///     // Final prices keep the cache-wide 5 minutes; live ones 1 second.
///     .expiry(|_: &u32, q: &Quote| (!q.final_price).then_some(Duration::from_secs(1)))
///     .clock(clock.clone())
///     .build()?;
/// cache.insert(1, Quote { price: 10, final_price: false });
/// let loaded = cache.get_or_load(2, || Ok::<_, std::io::Error>(Quote { price: 20, final_price: true }));
/// assert_eq!(loaded.unwrap().price, 20);
///
/// clock.advance(Duration::from_secs(2));
/// assert!(cache.get(&1).is_none(), "a live price expires after 1 s");
/// assert!(cache.get(&2).is_some(), "a loaded final price keeps 5 minutes");
/// # Ok::<(), torque_cache::BuildError>(())
/// ```
pub trait Expiry<K, V>: Send + Sync {
    /// How long the value just written for `key` lives, counted from the
    /// write: `Some(ttl)` is this entry's time-to-live, in place of the
    /// cache-wide [`time_to_live`](crate::LocalCacheBuilder::time_to_live);
    /// `None` leaves it to the cache-wide one (or to no expiry, without
    /// one). A [`time_to_idle`](crate::LocalCacheBuilder::time_to_idle)
    /// still applies, whichever comes first. `Duration::ZERO` expires the
    /// entry on arrival, as with `insert_with_ttl`: it is never stored and
    /// the listener sees it as [`Expired`](crate::RemovalCause::Expired);
    /// durations too long to count (centuries) mean no expiry.
    ///
    /// It runs before the write takes any lock, so it may use the cache; a
    /// panic here reaches the writer (for a load: the leader's call
    /// panics and its waiters retry, while [`stats`](crate::LocalCache::stats)
    /// count the loader's run in `loads`, not `load_failures`, since the
    /// loader returned a value), and nothing is stored.
    fn expire_after_write(&self, key: &K, value: &V) -> Option<Duration>;
}

impl<K, V, F> Expiry<K, V> for F
where
    F: Fn(&K, &V) -> Option<Duration> + Send + Sync,
{
    fn expire_after_write(&self, key: &K, value: &V) -> Option<Duration> {
        self(key, value)
    }
}
