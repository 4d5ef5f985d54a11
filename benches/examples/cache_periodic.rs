//! Miss ratios on periodic traffic: a Zipf(s) sample of `period` requests
//! over 100,000 keys, replayed to 1,000,000 requests (every key comes back
//! after the same number of requests, as a periodic job's would), for
//! `Adaptive` (default shards), quick_cache, moka and `lru::LruCache`.
//!
//! ```text
//! cargo run --release -p torque-benches --example cache_periodic -- 1.0
//! PERIODS=30000 CAPS=10000 SEGS=1 target/release/examples/cache_periodic 1.0
//! ```
//!
//! The argument is Zipf's s (default 1.0); `PERIODS` and `CAPS` pick the
//! periods and capacities (comma-separated; default 10,000 to 1,000,000
//! requests and 1,000 and 10,000 entries); `SEGS` prints each cache's miss
//! ratio per 100,000-request tenth to stderr (ours, quick_cache, moka,
//! LRU), which shows how fast a cache converges from cold.
#[path = "../benches/cache_traces/mod.rs"]
mod cache_traces;
use cache_traces::zipf_trace;
use std::num::NonZeroUsize;
use torque_cache::LocalCache;

/// Miss ratio of `trace` through `f` (get, inserting on a miss).
fn misses(trace: &[u64], mut f: impl FnMut(u64) -> bool) -> f64 {
    let mut segs = Vec::new();
    let mut total = 0usize;
    for chunk in trace.chunks(100_000) {
        let m = chunk.iter().filter(|&&k| !f(k)).count();
        total += m;
        segs.push(format!("{:.3}", m as f64 / chunk.len() as f64));
    }
    if std::env::var("SEGS").is_ok() {
        eprintln!("{}", segs.join(" "));
    }
    total as f64 / trace.len() as f64
}

/// The comma-separated numbers in the environment variable `name`, else
/// `default`.
fn list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: {x:?} is not a number"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let s: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let len = 1_000_000;
    println!("| s | period | cap | ours | qc | moka | lru |");
    for period in list("PERIODS", &[10_000, 30_000, 65_536, 200_000, 1_000_000]) {
        let base = zipf_trace(100_000, s, period, 0xc0ffee);
        let t: Vec<u64> = (0..len).map(|i| base[i % period]).collect();
        for cap in list("CAPS", &[1_000, 10_000]) {
            let ours: LocalCache<u64, u64> = LocalCache::new(cap as u64);
            let a = misses(&t, |k| {
                let h = ours.get(&k).is_some();
                if !h {
                    ours.insert(k, k)
                }
                h
            });
            let q = quick_cache::sync::Cache::<u64, u64>::new(cap);
            let qm = misses(&t, |k| {
                let h = q.get(&k).is_some();
                if !h {
                    q.insert(k, k)
                }
                h
            });
            let m = moka::sync::Cache::<u64, u64>::new(cap as u64);
            let mm = misses(&t, |k| {
                let h = m.get(&k).is_some();
                if !h {
                    m.insert(k, k);
                    m.run_pending_tasks();
                }
                h
            });
            let mut l = lru::LruCache::new(NonZeroUsize::new(cap).expect("non-zero capacity"));
            let lm = misses(&t, |k| {
                let h = l.get(&k).is_some();
                if !h {
                    l.put(k, k);
                }
                h
            });
            println!("| {s} | {period} | {cap} | {a:.4} | {qm:.4} | {mm:.4} | {lm:.4} |");
        }
    }
}
