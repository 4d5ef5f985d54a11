//! A sweeper thread ends once the cache is dropped. (Alone in its file: it
//! counts the process's threads by name.)

use std::time::Duration;

use torque_cache::LocalCache;

mod common;
use common::eventually;

fn sweepers_alive() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("torque-cache-sw"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn the_sweeper_ends_after_the_cache_is_dropped() {
    if !std::path::Path::new("/proc/self/task").exists() {
        eprintln!("no /proc: nothing to count");
        return;
    }
    // A long interval too: the last handle's drop wakes the sweeper, which
    // then ends at once. (It waited for its next tick: an hour's thread
    // for an hour's interval, and for ever with `Duration::MAX`.)
    for every in [
        Duration::from_millis(5),
        Duration::from_secs(3600),
        Duration::MAX,
    ] {
        let cache: LocalCache<u32, u32> = LocalCache::builder()
            .max_capacity(10)
            .time_to_live(Duration::from_secs(1))
            .build()
            .unwrap();
        assert_eq!(sweepers_alive(), 0, "{every:?}");
        cache.sweep_every(every).unwrap();
        eventually(&format!("the sweeper started ({every:?})"), || {
            sweepers_alive() >= 1
        });
        let clone = cache.clone();
        drop(cache);
        assert_eq!(sweepers_alive(), 1, "a clone keeps it ({every:?})");
        drop(clone);
        eventually(
            &format!("the sweeper ended with its cache ({every:?})"),
            || sweepers_alive() == 0,
        );
    }
}
