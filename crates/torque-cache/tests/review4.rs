//! Fourth review: weighted capacity across shards, expiry with a clock that
//! misbehaves, and the other paths of that review, each test named for the
//! defect it pins.

use std::sync::{Arc, Mutex};

use torque_cache::{LocalCache, Policy, RemovalCause};

type Log = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

fn listener(log: &Log) -> impl Fn(&u32, &u32, RemovalCause) + Send + Sync + 'static {
    let log = Arc::clone(log);
    move |k, v, c| log.lock().unwrap().push((*k, *v, c))
}

/// The policies that pick a victim by a fixed order, with no admission
/// contest that may refuse a newcomer (`Adaptive` may, by design).
const ORDERED: [Policy; 4] = [Policy::Lru, Policy::Lfu, Policy::Fifo, Policy::Ttl];

#[test]
fn regression_a_heavy_entry_alone_in_its_shard_is_not_evicted_for_being_above_its_share() {
    // An entry as heavy as the whole capacity (or most of it) fits, as it
    // does with one shard: the other entries make room for it. With
    // several shards the writer emptied its own shard but for the new
    // entry, then walked the shards for more room, its own included;
    // holding the new entry alone, its own shard was above its share, and
    // the first pass evicted the entry just written, after a dozen live
    // entries had already left for it.
    for policy in ORDERED {
        for shards in [1, 8, 64, 4096] {
            for heavy in [100, 60] {
                let log = Log::default();
                let cache: LocalCache<u32, u32> = LocalCache::builder()
                    .max_capacity(100)
                    .shards(shards)
                    .policy(policy)
                    .weigher(|_: &u32, v: &u32| *v)
                    .eviction_listener(listener(&log))
                    .build()
                    .unwrap();
                for k in 0..100 {
                    cache.insert(k, 1);
                }
                cache.insert(1000, heavy);
                let at = format!("{policy:?}, {shards} shards, weight {heavy}");
                assert_eq!(cache.get(&1000), Some(heavy), "{at}");
                assert_eq!(cache.weighted_size(), 100, "{at}");
                assert_eq!(cache.len(), 101 - heavy as usize, "{at}");
                let log = log.lock().unwrap();
                assert_eq!(log.len(), heavy as usize, "{at}: only the room needed");
                assert!(
                    log.iter()
                        .all(|&(k, _, c)| k != 1000 && c == RemovalCause::Capacity)
                );
            }
        }
    }
}
