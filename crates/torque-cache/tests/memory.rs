//! Memory that cache operations take beyond what the cache holds, by the
//! process's peak resident size (Linux: `/proc/self/status`, reset through
//! `/proc/self/clear_refs`). One test in this binary, so that no other test
//! moves the peak; elsewhere it checks nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use torque_cache::LocalCache;

/// A field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: usize = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Runs `op` and returns how far the resident size rose above where it
/// stood before, at its peak; `None` where that cannot be measured.
fn extra_resident(op: impl FnOnce()) -> Option<usize> {
    // Resets the peak ("VmHWM") to the current size.
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    let before = status_bytes("VmRSS:")?;
    op();
    let peak = status_bytes("VmHWM:")?;
    Some(peak.saturating_sub(before))
}

/// A value with bytes of its own, as values usually have.
type Value = [u64; 32];

const ENTRIES: u64 = 200_000;

#[test]
fn invalidate_all_takes_no_second_copy_of_the_entries() {
    // The entries must be dropped after the shard's lock is released; moved
    // one by one into a list of their own, sized for the whole shard, they
    // were held twice at once. (Sized above glibc's largest mmap threshold,
    // so that such a list takes fresh pages rather than freed ones.)
    let entries = ENTRIES as usize * std::mem::size_of::<(u64, Value)>();
    for with_listener in [false, true] {
        let told = Arc::new(AtomicUsize::new(0));
        // One shard, so that clearing it clears everything.
        let mut builder = LocalCache::builder().max_capacity(ENTRIES).shards(1);
        if with_listener {
            let told = Arc::clone(&told);
            builder = builder.eviction_listener(move |_: &u64, _: &Value, _| {
                told.fetch_add(1, Ordering::Relaxed);
            });
        }
        let cache = builder.build().expect("valid config");
        for k in 0..ENTRIES {
            cache.insert(k, [k; 32]);
        }
        let Some(extra) = extra_resident(|| cache.invalidate_all()) else {
            return;
        };
        assert!(
            extra < entries / 4,
            "invalidate_all (listener: {with_listener}) took {extra} bytes more, for \
             {entries} bytes of entries"
        );
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.weighted_size(), 0);
        assert_eq!(cache.stats().evictions.removed, ENTRIES);
        let expected = if with_listener { ENTRIES as usize } else { 0 };
        assert_eq!(told.load(Ordering::Relaxed), expected);
    }
}
