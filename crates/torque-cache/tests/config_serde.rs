//! `LocalCacheConfig` and `Policy` read from and written to a config file's
//! format (JSON here) with the `serde` feature.
#![cfg(feature = "serde")]

use std::time::Duration;

use torque_cache::{LocalCache, LocalCacheConfig, Policy};

#[test]
fn policies_are_written_in_snake_case_and_read_in_either_case() {
    let all = [
        (Policy::Lru, "lru", "Lru"),
        (Policy::Lfu, "lfu", "Lfu"),
        (Policy::Fifo, "fifo", "Fifo"),
        (Policy::Ttl, "ttl", "Ttl"),
        (Policy::Adaptive, "adaptive", "Adaptive"),
    ];
    for (policy, snake, variant) in all {
        assert_eq!(
            serde_json::to_string(&policy).unwrap(),
            format!("\"{snake}\"")
        );
        let read = |name: &str| serde_json::from_str::<Policy>(&format!("\"{name}\"")).unwrap();
        assert_eq!(read(snake), policy);
        assert_eq!(read(variant), policy);
    }
    let err = serde_json::from_str::<Policy>("\"LRU\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown variant") && err.contains("`lru`"),
        "{err}"
    );
}

#[test]
fn a_config_file_builds_the_cache_it_describes() {
    let config: LocalCacheConfig = serde_json::from_str(
        r#"{ "max_capacity": 500, "policy": "lfu", "time_to_live": { "secs": 30, "nanos": 0 } }"#,
    )
    .unwrap();
    assert_eq!(
        config,
        LocalCacheConfig {
            max_capacity: 500,
            policy: Policy::Lfu,
            time_to_live: Some(Duration::from_secs(30)),
            ..LocalCacheConfig::default()
        }
    );
    let cache: LocalCache<u32, u32> = LocalCache::builder().config(&config).build().unwrap();
    assert_eq!(cache.policy(), Policy::Lfu);
    // Omitted fields take their defaults, and a config round-trips.
    let defaults: LocalCacheConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(defaults, LocalCacheConfig::default());
    let written = serde_json::to_string(&config).unwrap();
    assert!(written.contains(r#""policy":"lfu""#), "{written}");
    assert_eq!(
        serde_json::from_str::<LocalCacheConfig>(&written).unwrap(),
        config
    );
}

/// `stats()` is written as a plain record (for a `/stats` endpoint), every
/// counter by its field name.
#[test]
fn stats_are_written_with_their_field_names() {
    let cache = LocalCache::<u64, u64>::new(10);
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.get(&2), None);
    let json = serde_json::to_value(cache.stats()).unwrap();
    assert_eq!(
        (json["hits"].as_u64(), json["misses"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(json["inserts"].as_u64(), Some(1));
    assert!(json["evictions"].is_object(), "{json}");
}
