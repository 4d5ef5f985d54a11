//! The two operations of the cache throughput workloads, for our cache and
//! the peers, shared by the `cache_throughput` bench and the
//! `cache_callgrind` and `cache_throughput_sweep` examples (included with
//! `#[path]`), so that all three time the same calls.

use std::hash::BuildHasher;

use dashmap::DashMap;
use parking_lot::Mutex;
use torque_cache::LocalCache;

/// A cache of `u64` keys and values, as the workloads use it.
pub(crate) trait Contender: Send + Sync {
    fn get(&self, k: u64) -> Option<u64>;
    fn insert(&self, k: u64, v: u64);
}

impl<S: BuildHasher + Send + Sync> Contender for LocalCache<u64, u64, S> {
    fn get(&self, k: u64) -> Option<u64> {
        LocalCache::get(self, &k)
    }
    fn insert(&self, k: u64, v: u64) {
        LocalCache::insert(self, k, v)
    }
}

impl Contender for quick_cache::sync::Cache<u64, u64> {
    fn get(&self, k: u64) -> Option<u64> {
        quick_cache::sync::Cache::get(self, &k)
    }
    fn insert(&self, k: u64, v: u64) {
        quick_cache::sync::Cache::insert(self, k, v)
    }
}

impl Contender for moka::sync::Cache<u64, u64> {
    fn get(&self, k: u64) -> Option<u64> {
        moka::sync::Cache::get(self, &k)
    }
    fn insert(&self, k: u64, v: u64) {
        moka::sync::Cache::insert(self, k, v)
    }
}

impl Contender for Mutex<lru::LruCache<u64, u64>> {
    fn get(&self, k: u64) -> Option<u64> {
        self.lock().get(&k).copied()
    }
    fn insert(&self, k: u64, v: u64) {
        self.lock().put(k, v);
    }
}

impl Contender for DashMap<u64, u64> {
    fn get(&self, k: u64) -> Option<u64> {
        DashMap::get(self, &k).map(|v| *v)
    }
    fn insert(&self, k: u64, v: u64) {
        DashMap::insert(self, k, v);
    }
}
