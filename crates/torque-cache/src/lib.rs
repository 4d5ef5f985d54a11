//! A concurrent, bounded, in-process cache: the L1 tier of Torque's tiered
//! cache, usable on its own.
//!
//! [`LocalCache`] is sharded (one lock per shard, no `unsafe`), bounded by
//! entry count or by weight for the cache as a whole, and evicts with a
//! [`Policy`] chosen at build time: `Lru`, `Lfu`, `Fifo`, `Ttl` (nearest expiry
//! first) or the default `Adaptive` (W-TinyLFU: scan resistant and frequency
//! aware). Entries can expire by time-to-live, time-to-idle or a per-entry
//! time-to-live (given on insert, or decided by an [`Expiry`] for inserts and
//! loads alike), and expired entries are freed as the cache is used, not only
//! when read. [`get_or_load`](LocalCache::get_or_load) and
//! [`get_or_load_async`](LocalCache::get_or_load_async) run one load per key
//! however many callers miss it at once. An eviction listener hears of every
//! entry that leaves, with its [`RemovalCause`], and [`stats`](LocalCache::stats)
//! counts hits, misses, evictions and loads. The Redis L2 tier comes in a later
//! release.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use torque_cache::{LocalCache, MockClock, Policy};
//!
//! let clock = MockClock::new();
//! let cache: LocalCache<u64, Arc<String>> = LocalCache::builder()
//!     .max_capacity(10_000)
//!     .policy(Policy::Adaptive)
//!     .time_to_live(Duration::from_secs(60))
//!     .clock(clock.clone())
//!     .build()?;
//!
//! cache.insert(1, Arc::new("one".to_string()));
//! assert_eq!(cache.get(&1).as_deref().map(String::as_str), Some("one"));
//!
//! // A miss loads once, even with many callers; errors are not cached.
//! let two = cache.get_or_load(2, || Ok::<_, std::io::Error>(Arc::new("two".into())));
//! assert_eq!(two.unwrap().as_str(), "two");
//!
//! clock.advance(Duration::from_secs(61));
//! assert_eq!(cache.get(&1), None, "expired");
//! let stats = cache.stats();
//! assert_eq!((stats.hits, stats.loads), (1, 1));
//! # Ok::<(), torque_cache::BuildError>(())
//! ```
//!
//! # Feature flags
//! - `metrics`: also publish the [`CacheStats`] counters through the
//!   [`metrics`](https://docs.rs/metrics) facade (no recorder is installed;
//!   that is the application's job).
//! - `serde`: `Serialize`/`Deserialize` for [`LocalCacheConfig`] and
//!   [`Policy`], to load cache settings from a configuration file.

mod builder;
mod cache;
mod clock;
mod expiry;
mod load;
#[cfg(feature = "metrics")]
mod metrics;
mod policy;
mod reads;
mod shard;
mod stats;

// The guide's code blocks run as doctests, so that what users copy compiles
// against the current API.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/cache.md")]
struct GuideDoctests;

pub use builder::{BuildError, LocalCacheBuilder, LocalCacheConfig, MAX_SHARDS};
pub use cache::{LocalCache, RemovalCause};
pub use clock::{Clock, MockClock, SystemClock};
pub use expiry::Expiry;
pub use policy::Policy;
pub use stats::{CacheStats, Evictions};

/// The default key hasher: foldhash, fast and randomly seeded per cache. See
/// [`LocalCacheBuilder::hasher`] for when to choose a DoS-resistant one.
pub type DefaultHasher = foldhash::fast::RandomState;
